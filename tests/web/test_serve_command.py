"""The README's flow, for real: `simexplain index build` then `simexplain serve --index` in a
separate process, answering on 127.0.0.1 until stopped."""

import http.client
import json
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
from PIL import Image

from simexplain.cli import main


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int, path: str, host: str) -> tuple[int, dict]:
    """GET with an explicit Host header: (status, lower-cased headers)."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.putrequest("GET", path, skip_host=True)
        connection.putheader("Host", host)
        connection.endheaders()
        response = connection.getresponse()
        response.read()
        return response.status, {k.lower(): v for k, v in response.getheaders()}
    finally:
        connection.close()


def test_index_build_then_serve(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    index = tmp_path / "photos.index"
    assert main(["index", "build", str(photos), "--model", "simexplain.toy:tiny_cnn",
                 "--layer", "features", "--size", "64", "--out", str(index), "--quiet"]) == 0
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "simexplain.cli", "serve", "--index", str(index),
         "--model", "simexplain.toy:tiny_cnn", "--layer", "features", "--size", "64",
         "--port", str(port), "--samples", str(photos), "--allowed-host", "photos.example"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as r:
                    health = json.loads(r.read())
                    assert r.status == 200
                    break
            except OSError:
                assert server.poll() is None, server.stdout.read()
                assert time.monotonic() < deadline, "the server did not come up in 60 s"
                time.sleep(0.3)
        assert health["status"] == "ok" and health["index_size"] == 4, health
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as r:
            assert "simexplain" in r.read().decode()
        # Host names: the bound address, localhost forms and --allowed-host; nothing else,
        # and no redirect ever points at a host the server did not accept
        for host, status in [(f"localhost:{port}", 200), (f"[::1]:{port}", 200),
                             ("photos.example", 200), ("evil.example", 400),
                             (f"evil.example:{port}", 400)]:
            assert get(port, "/healthz", host)[0] == status, host
        status, headers = get(port, "/api/images/", "evil.example")
        assert status == 400 and "location" not in headers
        status, headers = get(port, "/api/images/", f"127.0.0.1:{port}")
        assert status == 307 and headers["location"].startswith(f"http://127.0.0.1:{port}/")
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_serve_options_no_server_can_use_are_refused_before_any_work(monkeypatch, capsys):
    """A port out of range was a traceback from bind() after the model had loaded, an unknown
    host or a port in use uvicorn's own log line after it; an upload
    limit of 0 or less or a --max-size of 0 started a server that refused every upload or
    every input size."""
    import pytest
    import uvicorn

    import simexplain.web.engine  # noqa: F401 - imported now, it binds the real zoo.resolve
    from simexplain import zoo
    from simexplain.web import create_app

    def never(*args, **kwargs):
        raise AssertionError("no model is loaded and no server starts")
    monkeypatch.setattr(zoo, "resolve", never)
    monkeypatch.setattr(uvicorn, "run", never)
    model = ["--model", "simexplain.toy:tiny_cnn", "--layer", "features"]
    busy = socket.create_server(("127.0.0.1", 0))  # a port in use: uvicorn logged its own
    # error and exited after the model had loaded
    for options, message in [
            (["--port", "-1"], "--port must be 0 to 65535, got -1"),
            (["--port", "99999"], "--port must be 0 to 65535, got 99999"),
            (["--max-upload-mb", "0"], "upload limit (--max-upload-mb) must be a positive size"),
            (["--max-upload-mb", "-1"], "got -1 MB"), (["--max-upload-mb", "inf"], "got inf MB"),
            (["--max-size", "0"], "largest input size (--max-size) must be 16 to 1024 px, got 0"),
            (["--max-size", "100000"], "got 100000"),
            (["--host", "no-such-host.invalid"], "cannot serve on no-such-host.invalid:8000"),
            (["--port", str(busy.getsockname()[1])], "Address already in use")]:
        assert main(["serve", *model, *options]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (options, err)
    busy.close()
    from simexplain.errors import SimexplainError
    with pytest.raises(SimexplainError, match="upload limit"):
        create_app(model="fmnist-gap", max_upload_bytes=0)
