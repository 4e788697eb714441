import argparse

import numpy as np
import pytest
import torch

from simexplain.datasets import write_idx
from simexplain.errors import SimexplainError
from simexplain.training import add_train_arguments, augment, cli_train, train_fmnist
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
