"""The documentation site: it builds in strict mode (no broken link, no stale API name), works
without a network (nothing from a CDN; search from file://), its references are generated from
the code, and every Python example on its pages runs as written."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.rglob("*.md"))
# a resource the browser fetches by itself: scripts, styles, images, fonts, frames, imports
FETCHED_URL = re.compile(
    r"""(?:<script[^>]*\bsrc|<link[^>]*\bhref|<img[^>]*\bsrc|<iframe[^>]*\bsrc|url\(|import\()"""
    r"""\s*=?\s*["']?(https?:)?//""", re.I)


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("site")
    build = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--clean", "-d", str(out)],
        cwd=ROOT, capture_output=True, text=True, env={**_env(), "NO_MKDOCS_2_WARNING": "1"})
    assert build.returncode == 0, f"mkdocs build --strict failed:\n{build.stderr[-4000:]}"
    return out


def _env() -> dict:
    import os
    return dict(os.environ)


def test_every_page_is_in_the_navigation():
    config = (ROOT / "mkdocs.yml").read_text()
    pages = [p.relative_to(DOCS).as_posix() for p in PAGES] + [
        p.relative_to(DOCS).as_posix() for p in DOCS.rglob("*.ipynb")]
    missing = [p for p in pages if f": {p}" not in config]
    assert not missing, f"pages not in mkdocs.yml's nav: {missing}"


def test_the_site_fetches_nothing_from_the_network(site):
    offenders = {}
    for page in site.rglob("*.html"):
        hits = [m.group(0) for m in FETCHED_URL.finditer(page.read_text(errors="replace"))]
        if hits:
            offenders[page.relative_to(site).as_posix()] = hits[:3]
    assert not offenders, f"pages that would fetch from the network: {offenders}"
    assert (site / "assets/javascripts/iframe-worker-shim.js").stat().st_size > 500


def test_cli_reference_has_every_command_as_its_own_help_prints_it(site):
    page = (site / "reference/cli.html").read_text()
    import html
    text = html.unescape(re.sub(r"<[^>]+>", "", page))
    for command in (["--help"], ["pair", "--help"], ["index", "build", "--help"],
                    ["search", "--help"], ["eval", "pointing", "--help"], ["audit", "--help"]):
        printed = subprocess.run([sys.executable, "-m", "simexplain.cli", *command],
                                 capture_output=True, text=True, env={**_env(), "COLUMNS": "100"})
        assert printed.returncode == 0, printed.stderr
        usage = printed.stdout.split("\n\n")[0]            # the usage paragraph
        assert " ".join(usage.split()) in " ".join(text.split()), f"{command} is not in the page"


def test_api_reference_documents_the_public_api(site):
    page = (site / "reference/api.html").read_text()
    for name in ("simexplain.Explainer.explain", "simexplain.Explainer.explain_gallery",
                 "simexplain.PairExplanation.point_map", "simexplain.PairExplanation.residual",
                 "simexplain.retrieval.Index.search", "simexplain.zoo.resolve"):
        assert f'id="{name}"' in page, f"{name} is not in the API reference"


@pytest.mark.parametrize("page", [p for p in PAGES if "```python" in p.read_text()],
                         ids=lambda p: p.relative_to(DOCS).as_posix())
def test_python_examples_run_as_written(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)
    namespace: dict = {}
    for block in blocks:             # the blocks of a page run in order, as a reader would
        exec(compile(block, str(page), "exec"), namespace)


def test_search_works_from_the_file_system(site, headless_chromium):
    page = headless_chromium.new_page(viewport={"width": 1400, "height": 1000})
    try:
        page.goto((site / "index.html").as_uri())
        page.keyboard.press("/")                     # the theme's shortcut to the search box
        page.keyboard.type("residual")
        page.wait_for_selector(".md-search-result__item", timeout=15000)
        titles = page.locator(".md-search-result__item").all_inner_texts()
        assert any("residual" in t.lower() for t in titles), titles
    finally:
        page.close()
