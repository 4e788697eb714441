"""`simexplain eval retrieval`: the trained models retrieve their class far above chance."""

import json

from simexplain.cli import main


def test_eval_retrieval_json(capsys):
    assert main(["eval", "retrieval", "--model", "fmnist-gap", "--limit", "600", "--json"]) == 0
    (result,) = json.loads(capsys.readouterr().out)
    assert result["images"] == 600 and result["model"] == "fmnist-gap"
    assert result["recall_at_1"] > 0.8  # chance is 0.1
    assert 0.5 < result["map_at_r"] <= 1.0
