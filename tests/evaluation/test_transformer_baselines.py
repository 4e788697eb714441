"""The benchmarks compare the transformer baselines on a class-token ViT (here a toy one with
random weights registered as fmnist-vit) and leave them out on CNNs."""

import json

import pytest

from simexplain import zoo
from simexplain.cli import main
from simexplain.errors import SimexplainError
from simexplain.evaluation import pointing, report, sanity

ATTENTION_METHODS = ("attention-rollout", "chefer", "gradcam-tokens")


@pytest.fixture
def toy_vit_zoo():
    """The zoo's fmnist-vit (a trained class-token ViT, explained one block before the end)."""
    from simexplain.datasets import fashion_mnist
    fashion_mnist("test")  # the data set is part of the set-up: missing is a failure
    assert zoo.entry("fmnist-vit").layer == "blocks.2"


def test_pointing_compares_the_attention_baselines_on_a_vit(toy_vit_zoo):
    result = pointing.run("fmnist-vit", samples=2, quick=True)
    for method in ("decomposition", "relative", *ATTENTION_METHODS):
        assert method in result["methods"], method
        assert result["methods"][method]["hit_rate"]["n"] == 2
    assert result["methods"]["attention-rollout"]["flat_maps"] == 0
    table = pointing.results_table([result])
    assert "| fmnist-vit | chefer |" in table


def test_sanity_runs_the_attention_baselines_on_randomised_copies(toy_vit_zoo):
    result = sanity.run("fmnist-vit", methods=["attention-rollout", "chefer"], samples=2,
                        quick=True)
    assert set(result["methods"]) == {"attention-rollout", "chefer"}
    assert len(result["methods"]["chefer"]["cascade"]) == len(result["settings"]["stages"])


def test_cnns_leave_the_attention_baselines_out_and_naming_one_is_an_error():
    result = pointing.run("fmnist-gap", methods=["all"], samples=1, quick=True)
    assert "decomposition" in result["methods"]
    assert not set(ATTENTION_METHODS) & set(result["methods"])
    with pytest.raises(SimexplainError, match="'chefer' cannot run on fmnist-gap.*no "
                                              "self-attention"):
        pointing.run("fmnist-gap", methods=["chefer"], samples=1, quick=True)


def test_cli_benchmark_and_transformers_section(toy_vit_zoo, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["eval", "pointing", "--model", "fmnist-vit", "--method", "attention-rollout",
                 "--method", "decomposition", "--samples", "2", "--quick", "--out", str(out),
                 "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data["results"][0]["methods"]) == {"attention-rollout", "decomposition"}
    result = data["results"][0]
    section = "\n".join(report.transformer_section({"pointing": [result]}, [pointing]))
    assert section.startswith("## Transformers")
    assert "| pointing | hit rate (higher better) | fmnist-vit |" in section
    assert "| benchmark | figure | model | decomposition | attention-rollout |" in section
    empty = "\n".join(report.transformer_section({}, [pointing]))
    assert "No class-token transformer was among the models run" in empty
