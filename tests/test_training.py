import argparse

import numpy as np
import pytest
import torch

from simexplain.datasets import write_idx
from simexplain.errors import SimexplainError
from simexplain.train_options import add_train_arguments
from simexplain.training import augment, cli_train, train_fmnist
from simexplain.zoo.fmnist import load_fmnist


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    """A small Fashion-MNIST-shaped data set (IDX files): class k has a bar at row 2 + 2k."""
    root = tmp_path_factory.mktemp("tiny-fmnist")
    rng = np.random.default_rng(0)
    for prefix, n in (("train", 512), ("t10k", 200)):
        labels = np.arange(n) % 10
        images = rng.integers(0, 60, (n, 28, 28))
        for i, label in enumerate(labels):
            images[i, 2 + 2 * label: 4 + 2 * label, 4:24] = 255
        write_idx(root / f"{prefix}-images-idx3-ubyte.gz", images.astype(np.uint8))
        write_idx(root / f"{prefix}-labels-idx1-ubyte.gz", labels.astype(np.uint8))
    return root


def _run(tiny_data, out, seed=0, head="gap"):
    return train_fmnist(head, epochs=1, seed=seed, out=out, data_root=tiny_data, batch_size=64,
                        progress=False)


def test_training_writes_checkpoint_and_is_seeded(tiny_data, tmp_path):
    first = _run(tiny_data, tmp_path / "a.pt")
    second = _run(tiny_data, tmp_path / "b.pt")
    other = _run(tiny_data, tmp_path / "c.pt", seed=1)
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    a, b, c = (torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in "abc")
    for key in ("state_dict", "head", "embedding_dim", "metrics", "seed", "epochs"):
        assert key in a
    assert a["head"] == "gap" and a["epochs"] == 1 and a["seed"] == 0
    assert set(a["metrics"]) >= {"recall_at_1", "map_at_r"}
    assert 0.0 <= a["metrics"]["recall_at_1"] <= 1.0 and 0.0 <= a["metrics"]["map_at_r"] <= 1.0
    assert a["metrics"]["test_images"] == 200
    assert first["metrics"]["recall_at_1"] == second["metrics"]["recall_at_1"]
    assert a["state_dict"].keys() == b["state_dict"].keys()
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    assert not all(torch.equal(a["state_dict"][k], c["state_dict"][k]) for k in a["state_dict"])
    del other
    # The checkpoint loads as a model.
    model = load_fmnist("gap", path=tmp_path / "a.pt")
    with torch.no_grad():
        assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 64)


def test_cli_arguments_and_run(tiny_data, tmp_path, capsys):
    parser = add_train_arguments(argparse.ArgumentParser())
    out = tmp_path / "gmp.pt"
    args = parser.parse_args(["fmnist", "--head", "gmp", "--epochs", "1", "--seed", "3",
                              "--out", str(out), "--data", str(tiny_data),
                              "--batch-size", "128"])
    assert args.head == "gmp" and args.epochs == 1 and args.batch_size == 128
    assert cli_train(args) == 0
    checkpoint = torch.load(out, weights_only=True)
    assert checkpoint["head"] == "gmp" and checkpoint["seed"] == 3
    assert checkpoint["batch_size"] == 128
    printed = capsys.readouterr().out
    assert "Recall@1=" in printed and str(out) in printed
    with pytest.raises(SystemExit):
        parser.parse_args(["mnist"])
    with pytest.raises(SystemExit):
        parser.parse_args(["fmnist", "--head", "avg"])


def test_bad_arguments(tiny_data, tmp_path):
    with pytest.raises(SimexplainError, match="head"):
        train_fmnist("avg", 1, 0, tmp_path / "x.pt", data_root=tiny_data)
    with pytest.raises(SimexplainError, match="epochs"):
        train_fmnist("gap", 0, 0, tmp_path / "x.pt", data_root=tiny_data)
    assert not (tmp_path / "x.pt").exists()


def test_augment_is_seeded_and_keeps_shape():
    batch = torch.randn(8, 1, 28, 28)
    first = augment(batch, torch.Generator().manual_seed(5))
    again = augment(batch, torch.Generator().manual_seed(5))
    assert first.shape == batch.shape
    assert torch.equal(first, again)
    assert not torch.equal(first, batch)


def test_sketch_training_quick_mode_is_seeded_and_loads(tiny_data, tmp_path, capsys):
    """`simexplain train sketch` on a few images: two streams, half-precision weights that
    load as the zoo's streams, the same weights for the same seed."""
    from simexplain.cli import main
    from simexplain.zoo.sketch import load_sketch_streams
    outs = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for out in outs:
        assert main(["train", "sketch", "--epochs", "1", "--batch-size", "32", "--limit", "64",
                     "--eval-limit", "40", "--data", str(tiny_data), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "sketch-to-item Recall@1=" in printed and "(40 test items" in printed
    a, b = (torch.load(out, weights_only=True) for out in outs)
    assert a["model"] == "fmnist-sketch" and a["train_images"] == 64 and a["epochs"] == 1
    assert 0.0 <= a["metrics"]["recall_at_1"] <= a["metrics"]["class_recall_at_1"] <= 1.0
    for key in ("state_dict", "state_dict_b"):
        assert a[key]["features.0.weight"].dtype == torch.float16
        for name in a[key]:
            assert torch.equal(a[key][name], b[key][name]), (key, name)
    assert not torch.equal(a["state_dict"]["features.0.weight"],
                           a["state_dict_b"]["features.0.weight"])
    assert not list(tmp_path.glob(".*.tmp"))
    sketch_stream, item_stream = load_sketch_streams(outs[0])
    with torch.no_grad():
        assert sketch_stream(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
        assert item_stream(torch.zeros(2, 1, 28, 28)).shape == (2, 64)
    # the saved (half-precision) weights give the reported Recall@1: evaluated as saved
    from simexplain.datasets import fashion_mnist
    from simexplain.training import normalize_images, sketch_retrieval, sketch_tensors
    import numpy as np
    items, labels = fashion_mnist("test", tiny_data)
    again = sketch_retrieval(sketch_stream, item_stream,
                             sketch_tensors(items[:40], np.random.default_rng([0, 1])),
                             normalize_images(items[:40]), torch.from_numpy(labels[:40]))
    assert again["recall_at_1"] == a["metrics"]["recall_at_1"]


def test_sketch_training_rejects_bad_limits(tiny_data, tmp_path):
    from simexplain.cli import main
    assert main(["train", "sketch", "--limit", "1", "--data", str(tiny_data),
                 "--out", str(tmp_path / "x.pt")]) != 0
    assert not (tmp_path / "x.pt").exists()


def test_vit_training_quick_mode_is_seeded_and_loads(tiny_data, tmp_path, capsys):
    """`simexplain train fmnist --head vit` on a few images: half-precision weights that load
    as the zoo's ViT and give the reported metrics (evaluated as saved), seeded."""
    from simexplain.cli import main
    from simexplain.training import evaluate, normalize_images
    from simexplain.zoo.vit import FashionViT, load_fmnist_vit
    outs = [tmp_path / "a.pt", tmp_path / "b.pt"]
    for out in outs:  # no --epochs: the ViT's default (one pass)
        assert main(["train", "fmnist", "--head", "vit", "--batch-size", "32", "--limit", "64",
                     "--eval-limit", "40", "--data", str(tiny_data), "--out", str(out)]) == 0
    assert "head=vit epochs=1" in capsys.readouterr().out
    a, b = (torch.load(out, weights_only=True) for out in outs)
    assert a["head"] == "vit" and a["train_images"] == 64 and a["metrics"]["test_images"] == 40
    assert a["depth"] == 4 and a["width"] == 64 and a["heads"] == 4 and a["mlp"] == 128
    for name, value in a["state_dict"].items():
        assert value.dtype == torch.float16 or not value.is_floating_point(), name
        assert torch.equal(value, b["state_dict"][name]), name
    model = load_fmnist_vit(outs[0])
    assert isinstance(model, FashionViT) and not model.training
    from simexplain.datasets import fashion_mnist
    items, labels = fashion_mnist("test", tiny_data)
    again = evaluate(model, normalize_images(items[:40]), torch.from_numpy(labels[:40]))
    assert again["recall_at_1"] == a["metrics"]["recall_at_1"]


def test_the_trainable_heads_named_in_the_help_are_the_zoos():
    """`defaults.FMNIST_HEADS` (what `train --head` offers, without importing torch) is what
    the zoo builds: the CNN's pooling heads and the ViT."""
    from simexplain.defaults import FMNIST_HEADS
    from simexplain.zoo import vit
    from simexplain.zoo.fmnist import HEADS
    assert FMNIST_HEADS == HEADS + (vit.HEAD,)


@pytest.mark.parametrize("options,message", [
    (["--out", "VICTIM"], "victim.png exists and is not a checkpoint simexplain wrote"),
    (["--out", "FOLDER"], "is a folder; name the checkpoint file to write"),
    (["--lr", "-1"], "--lr must be a positive number, got -1"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--seed", "-1"], "--seed must be 0 to 2**32 - 1, got -1"),
    (["--device", "foo"], "--device 'foo' cannot be used"),
    (["--epochs", "0"], "epochs must be >= 1"),  # was read as "the default"
    (["--head", "gmp", "--sketch"], "--head chooses the fmnist model"),
])
def test_bad_train_options_are_refused_before_training(tmp_path, monkeypatch, capsys, options,
                                                       message):
    """Each trained the model first, then failed with a traceback (or overwrote the user's
    file, or trained for the default number of epochs)."""
    from simexplain import training
    from simexplain.cli import main
    monkeypatch.setattr(training, "_splits", lambda *a, **k: pytest.fail("the data was read"))
    victim = tmp_path / "victim.png"
    victim.write_bytes(b"\x89PNG the user's picture")
    (tmp_path / "folder").mkdir()
    dataset = "sketch" if "--sketch" in options else "fmnist"
    options = [{"VICTIM": str(victim), "FOLDER": str(tmp_path / "folder")}.get(o, o)
               for o in options if o != "--sketch"]
    if "--out" not in options:
        options += ["--out", str(tmp_path / "new.pt")]
    assert main(["train", dataset, *options]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err, err
    assert victim.read_bytes() == b"\x89PNG the user's picture"
    assert not (tmp_path / "new.pt").exists()
