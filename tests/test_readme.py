"""The README's quickstart runs as written (the docs pages' examples: tests/test_docs.py)."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
MAX_README_LINES = 200      # the README is the entry point; the site holds the rest


def test_readme_python_examples_run(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    for block in blocks:
        exec(compile(block, "README.md", "exec"), namespace)
    result = namespace["result"]
    assert abs(float(result.overall_a.sum()) - result.score) < 1e-4
    assert (tmp_path / "overall.png").stat().st_size > 0


def test_readme_is_short_and_links_into_the_docs():
    text = README.read_text()
    assert len(text.splitlines()) <= MAX_README_LINES
    root = README.parent
    for target in re.findall(r"\]\(([^)#]+)\)", text):
        if not target.startswith("http"):
            assert (root / target).exists(), f"README links to a missing file: {target}"
