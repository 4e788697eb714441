"""The `simexplain pair` and `simexplain models` commands, and loading user models."""

import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

from simexplain.zoo.user import load_user_model
from simexplain.cli import main
from simexplain.errors import ModelError
from simexplain.toy import HeadModel


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    paths = []
    for name in ("a.png", "b.png"):
        Image.fromarray(rng.integers(0, 255, (60, 80, 3), dtype=np.uint8)).save(folder / name)
        paths.append(str(folder / name))
    return paths


def test_pair_writes_figures_and_result_json(pictures, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["pair", *pictures, "--model", "simexplain.toy:tiny_cnn", "--layer", "features",
                 "--size", "64", "--out", str(out), "--point", "10,20", "--point", "32,32"])
    assert code == 0
    printed = capsys.readouterr().out
    assert f"wrote {out / 'overall.png'}" in printed
    result = json.loads((out / "result.json").read_text())
    assert result["similarity"] == "cosine" and result["residual"] < 1e-4
    assert result["points_a"] == [[10.0, 20.0], [32.0, 32.0]]
    for name in ("overall_a.png", "overall_b.png", "relative_a.png", "relative_b.png",
                 "overall.png", "points.png"):
        assert Image.open(out / name).size[0] > 0
    # relative maps in result.json: signed, summing to 0; point maps labelled by kind
    for side in "ab":
        relative = np.array(result[f"relative_{side}"])
        assert relative.shape == tuple(result[f"grid_{side}"])
        assert abs(relative.sum()) < 1e-9 * np.abs(relative).sum()
    assert result["point_map_kind"] == "match-centred"
    assert "cosine of centred contributions" in result["point_map_label"]


def test_pair_json_goes_to_stdout(pictures, tmp_path, capsys):
    code = main(["pair", *pictures, "--model", "simexplain.toy:tiny_cnn", "--layer", "features",
                 "--size", "64", "--out", str(tmp_path), "--json", "--similarity", "dot"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result) >= {"score", "similarity", "residual"} and result["similarity"] == "dot"


def test_pair_bad_layer_is_a_clear_error(pictures, tmp_path, capsys):
    code = main(["pair", *pictures, "--model", "simexplain.toy:tiny_cnn", "--layer", "featurez",
                 "--out", str(tmp_path)])
    assert code == 2
    assert "layer 'featurez' not found" in capsys.readouterr().err


def test_unknown_model_is_a_clear_error(pictures, tmp_path, capsys):
    assert main(["pair", *pictures, "--model", "no-such-model", "--layer", "x",
                 "--out", str(tmp_path)]) == 2
    assert "cannot find model 'no-such-model'" in capsys.readouterr().err


def test_models_lists_the_zoo(capsys):
    assert main(["models"]) == 0
    assert "efficientnet-lite0" in capsys.readouterr().out


def test_torchscript_sequential_is_unscripted_exactly(tmp_path):
    torch.manual_seed(0)
    eager = torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, stride=2, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
        torch.nn.BatchNorm1d(4)).eval()
    path = tmp_path / "model.ts"
    torch.jit.script(eager).save(str(path))
    model = load_user_model(str(path))
    x = torch.randn(2, 3, 16, 16)
    torch.testing.assert_close(model(x), eager(x))
    from simexplain import Explainer
    result = Explainer(model, "1", similarity="dot").explain(x[:1], x[1:])
    assert result.residual < 1e-4 * abs(result.score)


def test_torchscript_with_custom_forward_is_refused(tmp_path):
    path = tmp_path / "custom.ts"
    torch.jit.script(HeadModel("gap").eval()).save(str(path))
    with pytest.raises(ModelError, match="custom forward"):
        load_user_model(str(path))


def test_pickled_module_file(tmp_path):
    model = HeadModel("gmp").eval()
    path = tmp_path / "whole.pt"
    torch.save(model, path)
    loaded = load_user_model(str(path))
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x), model(x))
    state = tmp_path / "state.pt"
    torch.save(model.state_dict(), state)
    with pytest.raises(ModelError, match="not a model"):
        load_user_model(str(state))


USER_MODELS = """
import torch
from simexplain.toy import tiny_cnn


def broken():
    raise RuntimeError("weights file missing")


def needs_argument(depth):
    return tiny_cnn()


class Refusing(torch.nn.Module):  # a model that asserts its input size, as timm's do
    def __init__(self):
        super().__init__()
        self.inner = tiny_cnn()

    def forward(self, x):
        assert x.shape[-1] == 224, f"Input width ({x.shape[-1]}) doesn't match model (224)"
        return self.inner(x)


def refusing():
    return Refusing()


NOT_A_FACTORY = 3
"""


@pytest.mark.parametrize("spec,match", [
    ("user_models:broken", "user_models:broken: calling the factory with no arguments failed: "
                           "weights file missing"),
    ("user_models:needs_argument", "calling the factory with no arguments failed: "
                                   "needs_argument.. missing 1 required positional argument"),
    ("user_models:NOT_A_FACTORY", "user_models:NOT_A_FACTORY is a int, not a factory to call"),
    ("failing_import:f", "cannot import 'failing_import:f': ZeroDivisionError|division by zero"),
    (":f", "cannot import ':f': Empty module name"),
])
def test_user_models_that_cannot_be_built(tmp_path, monkeypatch, spec, match):
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    (tmp_path / "failing_import.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(ModelError, match=match):
        load_user_model(spec)


def test_a_folder_given_as_a_model_file(tmp_path):
    with pytest.raises(ModelError, match="is a folder, not a model file .*hf:"):
        load_user_model(str(tmp_path))


def test_a_model_asserting_its_input_size_is_one_line(pictures, tmp_path, monkeypatch, capsys):
    (tmp_path / "user_models.py").write_text(USER_MODELS)
    monkeypatch.syspath_prepend(str(tmp_path))
    code = main(["pair", *pictures, "--model", "user_models:refusing", "--layer",
                 "inner.features", "--size", "32", "--json"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "failed on an input of shape (1, 3, 32, 32): Input width (32) doesn't match" in err


def test_pair_with_a_face_model_crops_the_faces(tmp_path):
    from simexplain.datasets import face_photos
    photos = face_photos()
    out = tmp_path / "faces"
    assert main(["pair", str(photos["obama"]), str(photos["biden"]), "--model", "facenet",
                 "--out", str(out)]) == 0
    result = json.loads((out / "result.json").read_text())
    top, left, bottom, right = result["input_a"]["crop"]
    width, height = Image.open(photos["obama"]).size
    assert result["input_a"]["image_size"] == [height, width]  # the photo's own pixels
    assert 0 <= top < bottom <= height and 0 <= left < right <= width
    assert (bottom - top) * (right - left) < 0.5 * width * height  # a face, not the photo
    # the crop is the detector's face box (with its margin), and the grid tiles it
    from simexplain.faces import crop_face
    assert [top, left, bottom, right] == list(crop_face(photos["obama"], size=None)[1])
    cells = np.array(result["input_a"]["cells"])
    assert cells[:, 0].min() == top and cells[:, 2].max() == bottom
    assert cells[:, 1].min() == left and cells[:, 3].max() == right
    # the default points lie on the face, in the photo's pixels
    for row, col in result["points_a"]:
        assert top <= row <= bottom and left <= col <= right
    assert result["files"]["crops"] == "crops.png" and (out / "crops.png").exists()


def test_pair_with_the_two_stream_sketch_model_draws_patterns(tmp_path, capsys):
    """A sketch and its item through the two streams: exact, and the cross-view patterns of
    result.json are PairExplanation.patterns() in the photos' pixels, drawn in patterns.png."""
    from simexplain import zoo
    sketch_path, item_path = zoo.entry("fmnist-sketch").sample_pair()
    out = tmp_path / "out"
    assert main(["pair", str(sketch_path), str(item_path), "--model", "fmnist-sketch",
                 "--out", str(out), "--patterns", "4"]) == 0
    result = json.loads((out / "result.json").read_text())  # (--json draws no figure)
    assert result["residual"] < 1e-5 and result["model"] == "fmnist-sketch"
    expected = zoo.load("fmnist-sketch").explain(sketch_path, item_path).patterns(4)
    assert 1 <= len(result["patterns"]) <= 4
    assert result["patterns"] == json.loads(json.dumps([p.to_dict() for p in expected]))
    assert result["files"]["patterns"] == "patterns.png"
    drawn = Image.open(out / "patterns.png")
    assert drawn.width > 2 * drawn.height * 0.9  # the two views side by side
    assert main(["pair", str(sketch_path), str(item_path), "--model", "fmnist-sketch",
                 "--out", str(tmp_path / "none"), "--patterns", "0"]) == 0
    none = json.loads((tmp_path / "none" / "result.json").read_text())
    assert none["patterns"] == [] and "patterns" not in none["files"]
    assert not (tmp_path / "none" / "patterns.png").exists()
    capsys.readouterr()
    assert main(["pair", str(sketch_path), str(item_path), "--model", "fmnist-sketch",
                 "--out", str(tmp_path / "bad"), "--patterns", "-1"]) != 0
    assert "--patterns" in capsys.readouterr().err


HEAVY_MODULES = ("torch", "faiss", "matplotlib", "fastapi", "ray", "numpy")


@pytest.mark.parametrize("argv", [
    ["--help"], ["search", "--help"], ["index", "build", "--help"], ["pair", "--help"],
    ["serve", "--help"], ["eval", "--help"], ["demo", "--help"], ["models", "--help"],
    ["no-such-command"], ["search"], ["search", "INDEX", "-k", "x"], ["models", "--bogus"],
    ["pair", "a.png"], ["serve", "--port", "x"], ["eval", "no-such-benchmark"],
    ["audit", "--help"], ["audit", "--index", "INDEX", "--region", "corner=0,0,2,1"],
    ["audit", "--queries", "q.png"], ["train", "--help"], ["train", "fmnist", "--epochs", "x"]])
def test_help_and_argument_errors_import_no_heavy_module(argv):
    """Parsing in a fresh interpreter: what it imported is read from sys.modules afterwards."""
    import subprocess
    import sys
    from pathlib import Path
    script = ("import json, sys\n"
              "from simexplain.cli import build_parser\n"
              "try:\n"
              f"    build_parser().parse_args({argv!r})\n"
              "except SystemExit as exc:\n"
              "    code = exc.code\n"
              "else:\n"
              "    code = 'parsed'\n"
              f"heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
              "print(json.dumps([code, heavy]))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": src}, timeout=120)
    code, imported = json.loads(done.stdout.splitlines()[-1])
    assert code == (0 if "--help" in argv else 2), done.stderr
    assert imported == [], f"{argv}: imported {imported}"


def test_every_benchmarks_help_and_argument_errors_import_no_heavy_module():
    """`eval NAME --help` and `eval NAME --no-such-option` for every registered benchmark, in
    one fresh interpreter: what each imported is read from sys.modules after it."""
    import subprocess
    import sys
    from pathlib import Path
    from simexplain.evaluation.registry import BENCHMARKS
    script = ("import json, sys\n"
              "from simexplain.cli import build_parser\n"
              "from simexplain.evaluation.registry import BENCHMARKS\n"
              "seen = {}\n"
              "for name in BENCHMARKS:\n"
              "    for argv in (['eval', name, '--help'], ['eval', name, '--no-such-option']):\n"
              "        try:\n"
              "            build_parser().parse_args(argv)\n"
              "        except SystemExit as exc:\n"
              "            code = exc.code\n"
              "        else:\n"
              "            code = 'parsed'\n"
              f"        heavy = sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules)\n"
              "        seen[' '.join(argv)] = [code, heavy]\n"
              "print(json.dumps(seen))")
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": src}, timeout=120)
    seen = json.loads(done.stdout.splitlines()[-1])
    assert len(seen) == 2 * len(BENCHMARKS) and "eval pointing --help" in seen, done.stderr
    for argv, (code, imported) in seen.items():
        assert code == (0 if argv.endswith("--help") else 2), (argv, done.stderr)
        assert imported == [], f"{argv}: imported {imported}"


def test_the_heavy_modules_are_seen_when_a_command_loads_them():
    """The check above can fail: the same script sees torch once the training is imported."""
    import subprocess
    import sys
    from pathlib import Path
    script = ("import sys\nfrom simexplain.cli import build_parser\n"
              "build_parser().parse_args(['train', 'fmnist'])\n"
              "import simexplain.training\n"
              "print('torch' in sys.modules)")
    src = str(Path(__file__).resolve().parents[1] / "src")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": src}, timeout=120)
    assert done.stdout.strip() == "True", done.stderr


# -- issue 26: pair --out never overwrites the user's files -----------------------------------

def test_pair_out_refuses_a_folder_of_the_users_files(pictures, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    for name in ("result.json", "overall.png"):
        (out / name).write_text(f"my {name}")
    argv = ["pair", *pictures, "--model", "simexplain.toy:tiny_cnn", "--layer", "features",
            "--size", "64", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "not written by simexplain" in err
    assert {p.name: p.read_text() for p in out.iterdir()} == {
        "result.json": "my result.json", "overall.png": "my overall.png"}
    # its own output it replaces, run after run
    ours = tmp_path / "ours"
    for _ in range(2):
        assert main(argv[:-1] + [str(ours)]) == 0
    assert json.loads((ours / "result.json").read_text())["similarity"] == "cosine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine", "ours"]


@pytest.mark.parametrize("argv, named", [
    (["pair", "a.png", "b.png", "--model", "m", "--size", "100000"], "exceeds the limit of 1024"),
    (["pair", "a.png"], "the following arguments are required"),
    (["no-such-command"], "invalid choice"),
    (["search", "INDEX", "-k", "x"], "invalid int value")])
def test_argument_errors_are_one_line_without_the_usage_block(argv, named, capsys):
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "usage:" not in err, err
    assert named in err and "error:" in err and "--help`" in err


def test_size_limit_is_shown_in_help(capsys):
    from simexplain.defaults import MAX_SIZE
    with pytest.raises(SystemExit):
        main(["pair", "--help"])
    assert f"at most {MAX_SIZE} a side" in " ".join(capsys.readouterr().out.split())


def test_pair_json_computes_no_figure(pictures, tmp_path, capsys, monkeypatch):
    from simexplain import pair_report, visualize

    def refuse(*args, **kwargs):
        raise AssertionError("a figure was computed for --json")
    for name in ("figure_image", "overlay", "linked_points", "resized"):
        monkeypatch.setattr(visualize, name, refuse)
    out = tmp_path / "out"
    assert main(["pair", *pictures, "--model", "simexplain.toy:tiny_cnn", "--layer", "features",
                 "--size", "64", "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["files"] == {} and len(printed["points_a"]) == 4
    assert printed == json.loads((out / "result.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == ["result.json", "simexplain-output.json"]
    # the same summary as the figures' path gives (bar the file names)
    monkeypatch.undo()
    with_figures = pair_report.write_pair(_toy_pair(pictures), tmp_path / "figs",
                                          [tuple(p) for p in printed["points_a"]])
    assert with_figures["points_without_map"] == printed["points_without_map"]
    assert with_figures["patterns"] == printed["patterns"]


def _toy_pair(pictures):
    from simexplain.zoo import resolve
    return resolve("simexplain.toy:tiny_cnn", "features", None, 64).explain(*pictures)


def test_figures_of_a_long_thin_photo_are_drawn_from_a_reduced_copy(pictures, tmp_path,
                                                                     monkeypatch):
    """A 1 x 2,000,000 px photo (the issue's was 1 x 39,999,999: 58 s of resizing): every
    smooth resize of the figures starts from a copy reduced to a few times its target size,
    and the figures stay small."""
    import struct
    import zlib
    from simexplain import pair_report
    width = 2_000_000
    row = zlib.compress(b"\x00" + bytes(range(256)) * (width // 256) + b"\x00" * (width % 256))

    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    thin = tmp_path / "thin.png"
    thin.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, 1, 8,
                                                                      0, 0, 0, 0))
                     + chunk(b"IDAT", row) + chunk(b"IEND", b""))
    result = _toy_pair([str(thin), pictures[1]])
    smooth = []
    original = Image.Image.resize

    def spy(image, size, resample=None, *args, **kwargs):
        if resample == Image.Resampling.LANCZOS:
            smooth.append((image.size, tuple(size)))
        return original(image, size, resample, *args, **kwargs)
    monkeypatch.setattr(Image.Image, "resize", spy)
    summary = pair_report.write_pair(result, tmp_path / "out")
    assert smooth
    for source, target in smooth:
        assert all(have <= 4 * max(1, want) + 4 for have, want in zip(source, target)), \
            (source, target)
    for name in summary["files"].values():
        assert max(Image.open(tmp_path / "out" / name).size) <= 4000, name


def test_option_values_starting_with_a_minus_sign(pictures, capsys):
    """`--region -5,0,40,60` (a box reaching past the edge, clipped) and `--point -1,5` were
    taken for options by argparse ("expected one argument")."""
    from simexplain.cli import build_parser
    args = build_parser().parse_args(["search", "INDEX", "q.png", "--region", "-5,0,40,60"])
    assert tuple(args.region) == (-5, 0, 40, 60)
    assert main(["pair", *pictures, "--model", "simexplain.toy:tiny_cnn", "--layer",
                 "features", "--size", "32", "--point", "-1,5", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "point (-1, 5) lies outside the image" in err


def test_ctrl_c_is_one_line_and_status_130(pictures, monkeypatch, capsys):
    """Ctrl-C printed the traceback of wherever the work was (deep inside torch)."""
    from simexplain import Explainer

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt
    monkeypatch.setattr(Explainer, "explain_prepared", interrupted)
    argv = ["pair", *pictures, "--model", "simexplain.toy:tiny_cnn", "--layer", "features",
            "--size", "32", "--json"]
    assert main(argv) == 130
    assert capsys.readouterr().err == "simexplain: interrupted\n"
    assert main(argv + ["--debug"]) == 130
    assert "Traceback" in capsys.readouterr().err
