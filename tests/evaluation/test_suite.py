"""`simexplain eval all --quick` and a benchmark subcommand: the report's structure (not its
numbers)."""

import json
import re

import pytest

from simexplain.cli import main

NUMBER_CI = re.compile(r"(-?\d+\.\d+) \[(-?\d+\.\d+), (-?\d+\.\d+)\]")
SECTIONS = ["# Benchmarks", "## Summary", "## Pointing game", "## Weakly supervised localisation",
            "## Faithfulness: deletion, insertion, ROAD", "## Correspondence (point-specific maps)",
            "## Sanity checks: parameter and reference randomisation", "## Planted shortcut",
            "## Interactive retrieval"]


def _tables(text):
    """Markdown tables as lists of rows (lists of cells)."""
    tables, current = [], []
    for line in text.splitlines():
        if line.startswith("|"):
            current.append([c.strip() for c in line.strip("|").split("|")])
        elif current:
            tables.append(current)
            current = []
    if current:
        tables.append(current)
    return tables


def test_eval_all_quick_writes_a_complete_report(tmp_path, capsys):
    out = tmp_path / "docs"
    assert main(["eval", "all", "--quick", "--model", "fmnist-gap", "--samples", "3",
                 "--out", str(out)]) == 0
    text = (out / "BENCHMARKS.md").read_text()
    positions = [text.find(s) for s in SECTIONS]
    assert all(p >= 0 for p in positions), [s for s, p in zip(SECTIONS, positions) if p < 0]
    assert positions == sorted(positions)
    assert "simexplain eval all --quick" in text and "Seed: 0" in text
    tables = _tables(text)
    assert len(tables) >= 7  # summary, 5 benchmarks, interactive
    for rows in tables:
        assert rows[1][0].startswith("---")
        assert all(len(r) == len(rows[0]) for r in rows)
    summary = tables[0]
    assert summary[0][0] == "benchmark"
    assert {r[0] for r in summary[2:]} >= {"pointing", "localisation", "faithfulness",
                                            "correspondence"}
    cis = NUMBER_CI.findall(text)
    assert len(cis) > 50
    for mean, lo, hi in cis:
        assert float(lo) <= float(mean) <= float(hi)
    for method in ("decomposition", "gradcam", "gradcam-raw", "rgradcam", "occlusion", "random"):
        assert f"| fmnist-gap | {method} |" in text
    for plot in ("localisation.png", "faithfulness.png", "sanity.png"):
        assert (out / "img" / "benchmarks" / plot).stat().st_size > 1000
        assert f"img/benchmarks/{plot}" in text
    data = json.loads((out / "benchmarks.json").read_text())
    assert set(data["results"]) == {"pointing", "localisation", "faithfulness",
                                    "correspondence", "sanity", "shortcut"}
    assert data["meta"]["seed"] == 0 and data["meta"]["quick"] is True
    # the report can be rebuilt from the saved figures alone
    from simexplain.evaluation.suite import render
    (out / "BENCHMARKS.md").unlink()
    again = render(out).read_text()
    assert [line for line in again.splitlines() if line.startswith("#")] == \
        [line for line in text.splitlines() if line.startswith("#")]
    assert len(_tables(again)) == len(tables)


def test_benchmark_subcommand_json(tmp_path, capsys):
    code = main(["eval", "pointing", "--model", "fmnist-gap", "--method", "decomposition",
                 "--method", "random", "--samples", "3", "--seed", "5", "--out", str(tmp_path),
                 "--json"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    result = printed["results"][0]
    assert result["seed"] == 5 and result["samples"] == 3
    assert set(result["methods"]) == {"decomposition", "random"}
    ci = result["methods"]["decomposition"]["hit_rate"]
    assert ci["lo"] <= ci["mean"] <= ci["hi"] and ci["n"] == 3
    assert (tmp_path / "pointing-fmnist-gap.json").exists()
    assert (tmp_path / "pointing.md").read_text().startswith("## Pointing game")


def test_benchmark_subcommand_rejects_unknown_method(tmp_path, capsys):
    code = main(["eval", "correspondence", "--model", "fmnist-gap", "--method", "gradcam",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "not supported" in capsys.readouterr().err


@pytest.mark.parametrize("command,message", [
    (["pointing", "--model", "fmnist-gap", "--seed", "-1", "--out", "OUT"],
     "--seed must be >= 0, got -1"),  # was numpy's ValueError after the model loaded
    (["all", "--quick", "--seed", "-1", "--out", "OUT"], "--seed must be >= 0"),
    (["interactive", "--quick", "--seed", "-1"], "--seed must be >= 0"),
    (["pointing", "--model", "fmnist-gap", "--out", "FILE"],
     "--out FILE exists and is not a folder"),  # was FileExistsError from mkdir
    (["pointing", "--model", "fmnist-gap", "--out", "INDEX/results"],
     "an index simexplain wrote"),  # wrote into the index, which then no longer opened
    (["retrieval", "--model", "fmnist-gap", "--limit", "0"], "--limit must be at least 2"),
    (["retrieval", "--model", "fmnist-gap", "--limit", "-3"], "got -3"),  # was [:-3]
    (["interactive", "--quick", "--queries", "0"], "need at least one query"),  # was default
])
def test_bad_eval_options_are_one_line_errors(tmp_path, monkeypatch, capsys, command, message):
    from simexplain.files import INDEX_MARKER
    monkeypatch.chdir(tmp_path)
    (tmp_path / "FILE").write_text("mine")
    (tmp_path / "INDEX").mkdir()
    (tmp_path / "INDEX" / INDEX_MARKER).write_text("{}")
    assert main(["eval", *command]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert (tmp_path / "FILE").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["FILE", "INDEX"]
    assert [p.name for p in (tmp_path / "INDEX").iterdir()] == [INDEX_MARKER]
