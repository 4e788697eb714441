"""`simexplain audit` end to end on a small Fashion-MNIST index (the trained fmnist-gap model,
explain-ready), and its one-line errors (exit 2)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from simexplain.cli import main
from simexplain.datasets import fashion_mnist

N_IMAGES = 40


@pytest.fixture(scope="module")
def fmnist_index(tmp_path_factory) -> Path:
    images, labels = fashion_mnist("test")
    root = tmp_path_factory.mktemp("fmnist")
    gallery = root / "gallery"
    gallery.mkdir()
    for i in range(N_IMAGES):
        Image.fromarray(images[i]).save(gallery / f"{i:03d}_class{labels[i]}.png")
    assert main(["index", "build", str(gallery), "--model", "fmnist-gap", "--out",
                 str(root / "index"), "--explain", "--quiet"]) == 0
    return root


def test_audit_writes_its_report_and_json(fmnist_index, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["audit", "--index", str(fmnist_index / "index"), "--sample", "8", "-k", "3",
                 "--region", "corner=0,0,0.15,0.15", "--region", "centre=0.25,0.25,0.75,0.75",
                 "--out", str(out), "--json", "--quiet"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "result.json").read_text())
    assert printed["pairs"] == written["pairs"] == 24 and written["queries"] == 8
    assert written["model"] == "fmnist-gap" and written["grid"] == [7, 7]
    corner = written["regions"]["corner"]
    assert corner["box"] == [0, 0, 0.15, 0.15] and corner["area_share"] == pytest.approx(0.0225)
    assert len(corner["shares"]) == 24 and len(corner["top_pairs"]) == 8
    # a black border carries next to nothing of a trained Fashion-MNIST model's similarity;
    # the item in the centre carries more than its area share
    assert abs(corner["aggregate_share"]) < 0.05
    centre = written["regions"]["centre"]
    assert centre["aggregate_share"] > centre["area_share"] == pytest.approx(0.25)
    assert written["findings"] == []  # an ordinary trained model: no hot spot to report
    page = (out / "index.html").read_text()
    for png in out.glob("*.png"):
        assert f"src='{png.name}'" in page
    assert (out / "map_overall_query.png").is_file()


def test_audit_of_query_files_prints_a_summary(fmnist_index, tmp_path, capsys):
    gallery = fmnist_index / "gallery"
    queries = sorted(gallery.iterdir())[:2]
    capsys.readouterr()
    assert main(["audit", "--index", str(fmnist_index / "index"), "--queries",
                 *map(str, queries), "-k", "2", "--region", "top=0,0,0.2,1", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "audited 4 pairs (2 queries x top-2)" in text and "region top:" in text


def test_audit_of_a_gallery_folder_without_an_index(fmnist_index, capsys):
    capsys.readouterr()
    assert main(["audit", "--gallery", str(fmnist_index / "gallery"), "--model", "fmnist-gap",
                 "--sample", "3", "-k", "2", "--json", "--quiet"]) == 0
    assert json.loads(capsys.readouterr().out)["pairs"] == 6


@pytest.mark.parametrize("extra,message", [
    (["--queries", "EMPTY"], "holds no images"),
    (["--queries", "NOWHERE/q.png"], "does not exist"),
    (["--out", "FOREIGN"], "not empty and not an audit report"),
    (["-k", "0"], "-k must be >= 1"),
    (["--region", "a=0,0,1,1", "--region", "a=0,0,0.5,0.5"], "same name"),
    (["--seed", "-5"], "--seed must be >= 0, got -5"),  # was numpy's ValueError
    (["--out", "."], "is the working folder"),  # was an OSError from rmtree('.')
    (["--out", "INDEX/report"], "an index simexplain wrote"),  # broke the index
])
def test_audit_errors_are_one_line(fmnist_index, tmp_path, capsys, monkeypatch, extra, message):
    (tmp_path / "EMPTY").mkdir()
    (tmp_path / "FOREIGN").mkdir()
    (tmp_path / "FOREIGN" / "mine.txt").write_text("keep")
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")  # empty: an audit report could replace it
    extra = [str(tmp_path / e) if e in ("EMPTY", "FOREIGN", "NOWHERE/q.png") else e
             for e in extra]
    extra = [str(fmnist_index / "index" / "report") if e == "INDEX/report" else e
             for e in extra]
    capsys.readouterr()
    assert main(["audit", "--index", str(fmnist_index / "index"), "--quiet", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1
    assert (tmp_path / "FOREIGN" / "mine.txt").read_text() == "keep"
    assert not (fmnist_index / "index" / "report").exists()
    assert main(["search", str(fmnist_index / "index"), str(fmnist_index / "gallery" /
                                                            "000_class9.png"), "--json"]) == 0


def test_a_query_cut_short_fails_naming_it_and_writes_no_report(fmnist_index, tmp_path, capsys):
    """Queries are checked by their headers first and decoded once, when explained: one whose
    pixels are cut short then fails, one line naming it, and no report is written."""
    from simexplain.images import check_image_file
    whole, other = sorted((fmnist_index / "gallery").iterdir())[:2]
    data = whole.read_bytes()
    cut = tmp_path / "cut.png"
    cut.write_bytes(data[:len(data) // 2])
    assert check_image_file(cut) == (28, 28)  # the header is whole
    out = tmp_path / "report"
    capsys.readouterr()
    assert main(["audit", "--index", str(fmnist_index / "index"), "--queries", str(other),
                 str(cut), "-k", "2", "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{cut}: cannot decode image" in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_missing_index_and_bad_region_exit_2(tmp_path, capsys):
    assert main(["audit", "--index", str(tmp_path / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["audit", "--gallery", str(tmp_path)]) == 2
    assert "--gallery needs --model" in capsys.readouterr().err
    assert main(["audit", "--gallery", str(tmp_path / "nowhere"), "--model", "fmnist-gap"]) == 2
    assert "gallery folder" in capsys.readouterr().err
    for region in ("corner=0,0,1.2,0.5", "corner", "corner=0,0,x,1", "c=0.5,0,0.5,1"):
        with pytest.raises(SystemExit) as exc:
            main(["audit", "--index", str(tmp_path), "--region", region])
        assert exc.value.code == 2
        assert "--region" in capsys.readouterr().err


def test_audit_of_a_pairs_file(fmnist_index, tmp_path, capsys):
    """--pairs: exactly the listed pairs, paths relative to the file's folder (CSV with quotes,
    tabs or spaces, a header, comments, blank lines), in order."""
    gallery = sorted((fmnist_index / "gallery").iterdir())
    (tmp_path / "mine").mkdir()
    own = tmp_path / "mine" / "item one.png"  # outside the gallery, a space in its name
    own.write_bytes(gallery[5].read_bytes())
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"query,hit\n# two gallery items\n{gallery[0]},{gallery[1]}\n\n"
                     f"\"mine/item one.png\",{gallery[2]}\n{gallery[3]}\t{gallery[0]}\n"
                     f"{gallery[1]}   {gallery[4]}\n")
    capsys.readouterr()
    assert main(["audit", "--index", str(fmnist_index / "index"), "--pairs", str(pairs),
                 "--region", "centre=0.25,0.25,0.75,0.75", "--json", "--quiet"]) == 0
    written = json.loads(capsys.readouterr().out)
    assert written["given_pairs"] is True and written["pairs"] == 4
    assert [(p["query"], p["hit"], p["rank"]) for p in written["pair_list"]] == [
        (str(gallery[0]), str(gallery[1]), 0), (str(own), str(gallery[2]), 0),
        (str(gallery[3]), str(gallery[0]), 0), (str(gallery[1]), str(gallery[4]), 0)]
    assert [p["hit_row"] for p in written["pair_list"]] == [1, 2, 0, 4]
    assert main(["audit", "--index", str(fmnist_index / "index"), "--pairs", str(pairs),
                 "--quiet"]) == 0
    assert "audited 4 pairs (given, 4 distinct queries)" in capsys.readouterr().out


@pytest.mark.parametrize("text,message", [
    ("GOOD\nonly-one.png\n", "pairs.txt line 2: expected two image paths"),
    ("GOOD\nGOOD\nGALLERY,missing.png\n", "pairs.txt line 3: .*missing.png does not exist"),
    ("a,b,c\n", "line 1: expected two image paths"),
    ("# nothing\n\n", "holds no pairs"),
])
def test_bad_pairs_files_are_one_line_errors(fmnist_index, tmp_path, capsys, text, message):
    import re
    image = sorted((fmnist_index / "gallery").iterdir())[0]
    text = text.replace("GOOD", f"{image},{image}").replace("GALLERY", str(image))
    (tmp_path / "pairs.txt").write_text(text)
    capsys.readouterr()
    assert main(["audit", "--index", str(fmnist_index / "index"), "--pairs",
                 str(tmp_path / "pairs.txt"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert re.search(message, err) and len(err.splitlines()) == 1


def test_pairs_file_missing_or_with_queries_exits_2(fmnist_index, tmp_path, capsys):
    assert main(["audit", "--index", str(fmnist_index / "index"), "--pairs",
                 str(tmp_path / "nowhere.txt")]) == 2
    assert "cannot read the pairs file" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["audit", "--index", str(fmnist_index / "index"), "--pairs", "p.txt",
              "--queries", "q.png"])
    assert exc.value.code == 2 and "not allowed with" in capsys.readouterr().err


def test_audit_by_occlusion_end_to_end(fmnist_index, tmp_path, capsys):
    capsys.readouterr()
    out = tmp_path / "report"
    assert main(["audit", "--index", str(fmnist_index / "index"), "--sample", "4", "-k", "2",
                 "--region", "centre=0.25,0.25,0.75,0.75", "--method", "occlusion",
                 "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "audited 8 pairs (4 queries x top-2) by occlusion" in printed
    written = json.loads((out / "result.json").read_text())
    assert written["method"] == "occlusion" and written["pairs"] == 8
    assert len(written["mean_maps"]["overall_query"]) == 7  # the feature grid, 7 x 7
    centre = written["regions"]["centre"]
    assert len(centre["shares"]) == 8 and 0 < centre["aggregate_share"] < 1
    assert "Audited by occlusion" in (out / "index.html").read_text()


def test_an_unknown_method_is_a_one_line_error(fmnist_index, capsys):
    capsys.readouterr()
    assert main(["audit", "--index", str(fmnist_index / "index"), "--method", "erase",
                 "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown audit method 'erase'" in err and len(err.splitlines()) == 1
