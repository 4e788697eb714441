"""The live point-map widget in a real JupyterLab, end to end: a notebook that builds an
explanation and shows `result.widget()` is run in JupyterLab in headless Chromium; the pointer
moves over image a and a box is dragged on it, and the widget's caption must name the point map
on b, then the region map. The test suite checks the widget's front end against a stand-in for
the notebook's widget manager (tests/notebook/test_widget_browser.py); this checks the real one.

    .venv/bin/python scripts/jupyterlab_check.py [--version 4.6.6]

JupyterLab is not a dependency of simexplain: the script installs the pinned version with pip
into a folder of its own (`~/.cache/simexplain/jupyterlab-<version>`, once; its own
dependencies are resolved by pip at that time) and runs the server from it with the project's
Python, so the project's environment is left as it is. Screenshots go to test-artifacts/.
Exit status 0 when every check passed.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the browser helpers the tests use

from browser_helpers import ARTIFACTS, chromium, drag, open_page, point_on  # noqa: E402
from playwright.sync_api import TimeoutError as PlaywrightTimeout  # noqa: E402

NOTEBOOK_CELL = """\
import torch
from simexplain import Explainer, Preprocess
from simexplain.toy import tiny_cnn

explainer = Explainer(tiny_cnn(), "features", transform=Preprocess(size=(112, 112)))
g = torch.Generator().manual_seed(0)
result = explainer.explain(torch.rand(1, 3, 112, 112, generator=g),
                           torch.rand(1, 3, 112, 112, generator=g))
result.widget()
"""
CAPTION = ".jp-OutputArea-output .simexplain-widget"


def install(version: str) -> Path:
    """The folder JupyterLab `version` is installed in (pip --target, once)."""
    target = Path.home() / ".cache" / "simexplain" / f"jupyterlab-{version}"
    if not (target / "jupyterlab").is_dir():
        print(f"installing jupyterlab=={version} into {target} (once)", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--target",
                        str(target), f"jupyterlab=={version}"], check=True)
    return target


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(site: Path, folder: Path, port: int, token: str) -> subprocess.Popen:
    """JupyterLab from `site` serving `folder`, its lab extensions (the widget managers) found
    in the project's environment; returns once its API answers."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "src")]),
               JUPYTER_CONFIG_DIR=str(folder / ".config"),
               JUPYTER_PATH=str(Path(sys.prefix) / "share" / "jupyter"))
    server = subprocess.Popen(
        [sys.executable, "-m", "jupyterlab", "--no-browser", "--allow-root",
         f"--port={port}", "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}",
         f"--ServerApp.root_dir={folder}",
         f"--LabApp.app_dir={site / 'share' / 'jupyter' / 'lab'}"],
        env=env, stdout=subprocess.DEVNULL, stderr=open(folder / "lab.log", "wb"))
    for _ in range(120):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status?token={token}", timeout=2)
            return server
        except OSError:
            if server.poll() is not None:
                raise SystemExit(f"JupyterLab exited; see {folder / 'lab.log'}") from None
            time.sleep(0.5)
    server.terminate()
    raise SystemExit(f"JupyterLab did not answer in 60 s; see {folder / 'lab.log'}")


def wait_for_text(page, selector: str, text: str, seconds: float) -> str:
    """The selector's text once it contains `text`; SystemExit naming what was there."""
    deadline, found = time.monotonic() + seconds, ""
    while time.monotonic() < deadline:
        element = page.query_selector(selector)
        found = element.inner_text() if element else ""
        if text in found:
            return found
        time.sleep(0.25)
    raise SystemExit(f"expected {text!r} in {selector}, found {found[-300:]!r}")


def check(page, url: str) -> None:
    page.goto(url)
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=60000)
    widget = f"{CAPTION} canvas.sx-view[data-side='b']"
    for _ in range(6):  # a run sent before the kernel's connection is up is dropped: again
        page.click(".jp-Cell .jp-InputArea-editor")
        page.keyboard.press("Control+Enter")  # runs the cell in place
        try:
            page.wait_for_selector(widget, timeout=20000)
            break
        except PlaywrightTimeout:
            if "[*]" in page.inner_text(".jp-Cell .jp-InputArea-prompt"):
                page.wait_for_selector(widget, timeout=120000)  # running: wait it out
                break
    else:
        raise SystemExit("the notebook's cell never ran: no kernel?")
    wait_for_text(page, CAPTION, "score (cosine)", 30)
    page.mouse.move(*point_on(page, f"{CAPTION} canvas.sx-view[data-side='a']", 0.3, 0.4))
    wait_for_text(page, CAPTION, "point map on b", 30)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-widget-point.png"))
    drag(page, f"{CAPTION} canvas.sx-view[data-side='a']", (0.2, 0.2), (0.6, 0.6))
    wait_for_text(page, CAPTION, "region map", 30)
    page.screenshot(path=str(ARTIFACTS / "jupyterlab-widget-region.png"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--version", default="4.6.6", help="JupyterLab version (default 4.6.6)")
    args = parser.parse_args()
    site = install(args.version)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="simexplain-lab-") as work:
        folder = Path(work)
        cell = {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [],
                "source": NOTEBOOK_CELL}
        (folder / "widget.ipynb").write_text(json.dumps({
            "cells": [cell], "nbformat": 4, "nbformat_minor": 5, "metadata": {
                "kernelspec": {"name": "python3", "display_name": "Python 3",
                               "language": "python"}}}))
        port, token = free_port(), "simexplain-check"
        server = start_lab(site, folder, port, token)
        try:
            with chromium() as browser:
                page, problems = open_page(browser, "about:blank")
                try:
                    check(page, f"http://127.0.0.1:{port}/lab/tree/widget.ipynb?token={token}")
                except BaseException:
                    page.screenshot(path=str(ARTIFACTS / "jupyterlab-failure.png"))
                    print("\n".join(problems[-10:]), file=sys.stderr)
                    raise
        finally:
            server.terminate()
            server.wait(timeout=30)
    widget_errors = [p for p in problems if "simexplain" in p or "widget" in p.lower()]
    if widget_errors:
        print("\n".join(widget_errors))
        return 1
    print(f"JupyterLab {args.version}: the widget showed the point map on b and the region "
          f"map; screenshots in {ARTIFACTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
