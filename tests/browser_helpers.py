"""Headless Chromium for the tests that drive a real browser (the web app, the notebook
widget's front end, the documentation site): Debian's Chromium driven by Playwright, and a real
uvicorn on 127.0.0.1 for an app, or a plain static file server for a folder. Importable from any test (pytest's `pythonpath` has tests/)."""

from __future__ import annotations

import http.server
import os
import socket
import threading
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = Path(os.environ.get("SIMEXPLAIN_SCREENSHOTS") or ROOT / "test-artifacts")
CHROMIUM = os.environ.get("SIMEXPLAIN_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
VIEWPORT = {"width": 1400, "height": 1000}

# a cheap fingerprint of a canvas's pixels
CANVAS_HASH = """(canvas) => {
  const d = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
  let h = 2166136261;
  for (let i = 0; i < d.length; i += 3) { h ^= d[i]; h = Math.imul(h, 16777619) >>> 0; }
  return h;
}"""


@contextmanager
def serve(app):
    """Run `app` with uvicorn on 127.0.0.1, on a free port, in a background thread."""
    import uvicorn
    # proto IPPROTO_TCP: asyncio then sets TCP_NODELAY on accepted connections, as when
    # uvicorn binds the port itself (else keep-alive responses wait ~40 ms for delayed ACKs)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        if time.time() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@contextmanager
def static_server(folder: Path):
    """Serve the files of `folder` on 127.0.0.1, on a free port, in a background thread
    (Python's http.server, no app): yields the base URL. `.js` and `.mjs` go out as
    JavaScript, which module scripts need, whatever the system's MIME table says."""

    class Quiet(http.server.SimpleHTTPRequestHandler):
        extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                          ".js": "text/javascript", ".mjs": "text/javascript"}

        def log_message(self, *args) -> None:  # no line per request in the test output
            pass

    handler = partial(Quiet, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@contextmanager
def chromium():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is missing at {CHROMIUM}: the browser tests need it. Install it "
                    "with `sudo apt-get install chromium` (scripts/setup.sh does), or point "
                    "SIMEXPLAIN_CHROMIUM at a Chromium binary.", pytrace=False)
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def open_page(browser, url):
    context = browser.new_context(viewport=VIEWPORT, accept_downloads=True)
    page = context.new_page()
    problems: list[str] = []
    page.on("pageerror", lambda exc: problems.append(f"page error: {exc}"))
    page.on("console", lambda msg: problems.append(f"console: {msg.text}")
            if msg.type == "error" else None)
    page.goto(url)
    return page, problems


def shoot(page, path):
    """A screenshot of the page down to the end of its content."""
    bottom = page.evaluate("Math.ceil(document.querySelector('main').getBoundingClientRect()"
                           ".bottom) + 8")
    page.screenshot(path=str(path), clip={"x": 0, "y": 0, "width": VIEWPORT["width"],
                                          "height": min(max(bottom, 200), VIEWPORT["height"])})


def stat(page, name):
    return page.evaluate(f"window.simexplain.stats.{name}")


def wait_stat(page, name, at_least, timeout=30_000):
    page.wait_for_function(f"window.simexplain && window.simexplain.stats.{name} >= {at_least}"
                           " && window.simexplain.stats.inFlight === 0", timeout=timeout)


def canvas_hash(page, selector):
    return page.eval_on_selector(selector, CANVAS_HASH)


def point_on(page, selector, fy, fx):
    box = page.locator(selector).bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


def hover_and_wait(page, selector, fy, fx, steps=8):
    before = stat(page, "pointApplied")
    x, y = point_on(page, selector, fy, fx)
    page.mouse.move(x, y, steps=steps)
    wait_stat(page, "pointApplied", before + 1)


def drag(page, selector, start, end, steps=10):
    page.mouse.move(*point_on(page, selector, *start))
    page.mouse.down()
    page.mouse.move(*point_on(page, selector, *end), steps=steps)
    page.mouse.up()
