"""mkdocs hooks for the documentation site (mkdocs.yml `hooks:`).

- The command-line reference is generated from the argument parser itself, so it cannot go
  stale: `docs/reference/cli.md` holds the marker below, replaced by every command's `--help`.
- The site must work without a network: the search worker's file:// shim (npm `iframe-worker`,
  which the theme would otherwise take from unpkg.com) is fetched once from the npm registry,
  checked against its sha256 and copied into the site; the notebook pages' loader of mermaid
  from cdnjs (used only by mermaid diagrams, which the tutorials do not have) is removed.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import re
import shutil
import tarfile
import urllib.request
from pathlib import Path

CLI_MARKER = "<!-- cli-reference -->"
HELP_WIDTH = "100"
SHIM = "assets/javascripts/iframe-worker-shim.js"          # as named in mkdocs.yml
SHIM_TARBALL = "https://registry.npmjs.org/iframe-worker/-/iframe-worker-1.0.4.tgz"
SHIM_SHA256 = "e8c5d12d87829c503afba01d67772ea9f4aba5b7ae57a0c98e1917711030efbb"
MERMAID_LOADER = re.compile(
    r'<script type="module">\s*document\.addEventListener\("DOMContentLoaded", async \(\) => \{'
    r'\s*const diagrams = document\.querySelectorAll\("\.jp-Mermaid.*?</script>', re.S)


def _commands(parser: argparse.ArgumentParser, prefix: str):
    """(command line, parser) for the parser and every subcommand below it, depth first."""
    parser.complete()  # a LazyParser adds a command's options (and subcommands) on first use
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, f"{prefix} {name}")


def cli_reference() -> str:
    from simexplain.cli import build_parser
    os.environ["COLUMNS"] = HELP_WIDTH       # argparse wraps to the terminal; pin it for the page
    sections = []
    for command, parser in _commands(build_parser(), "simexplain"):
        sections.append(f"## `{command}`\n\n```text\n{parser.format_help().rstrip()}\n```\n")
    return "\n".join(sections)


def search_shim() -> Path:
    """The iframe-worker shim, from the cache or fetched (once) from the npm registry."""
    root = Path(os.environ.get("SIMEXPLAIN_DATA", Path.home() / ".cache" / "simexplain"))
    cached = root / "docs" / "iframe-worker-shim.js"
    if not cached.exists():
        tarball = urllib.request.urlopen(SHIM_TARBALL, timeout=60).read()
        digest = hashlib.sha256(tarball).hexdigest()
        if digest != SHIM_SHA256:
            raise RuntimeError(f"{SHIM_TARBALL}: sha256 {digest}, expected {SHIM_SHA256}")
        with tarfile.open(fileobj=io.BytesIO(tarball)) as archive:
            shim = archive.extractfile("package/shim/index.js").read()
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(".part")
        partial.write_bytes(shim)
        partial.replace(cached)
    return cached


def on_page_markdown(markdown: str, page, config, files) -> str:
    if CLI_MARKER in markdown:
        return markdown.replace(CLI_MARKER, cli_reference())
    return markdown


def on_post_page(output: str, page, config) -> str:
    return MERMAID_LOADER.sub("", output)


def on_post_build(config) -> None:
    target = Path(config["site_dir"]) / SHIM
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(search_shim(), target)
