"""`simexplain demo` runs end to end on the defaults and the report has every section."""

import re

from simexplain.cli import main


def test_demo_report_has_every_section(tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["demo", "--out", str(out)]) == 0
    assert f"report: {(out / 'index.html').resolve()}" in capsys.readouterr().out
    page = (out / "index.html").read_text()
    for anchor in ("faces", "objects", "fashion-mnist", "cross-view"):
        assert f'<section id="{anchor}">' in page
    for kind in ("crops", "overall", "points", "patterns", "methods"):
        assert f'<figure class="{kind}">' in page
    assert page.count('<article class="pair">') == 11
    residuals = [float(r) for r in re.findall(r"decomposition residual ([0-9.e+-]+)", page)]
    assert len(residuals) == 11 and max(residuals) < 1e-4
    # the cross-view section: two-stream sketch pairs, each with its linked patterns
    cross = page[page.index('<section id="cross-view">'):]
    assert cross.count('<figure class="patterns">') == 3 and "fmnist-sketch" in cross
    # same person scores higher than different people
    scores = [float(s) for s in re.findall(r"similarity <b>([0-9.-]+)</b>", page)]
    assert scores[0] > scores[1]
    assert scores[8] > scores[10]  # a sketch is closer to its own item than to a trouser
    assert len(list(out.glob("*.png"))) >= 11 * 4
