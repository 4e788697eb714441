"""The widget in a real Jupyter kernel (nbclient): a notebook cell that explains a pair and
shows `result.widget()` outputs a widget view, and the widget answers a front-end request
inside that kernel."""

from __future__ import annotations

import json

import nbformat
import numpy as np
import pytest
from nbclient import NotebookClient

BUILD = """\
import torch
from simexplain import Explainer, Preprocess
from simexplain.toy import tiny_cnn
explainer = Explainer(tiny_cnn(), "features", transform=Preprocess(size=(64, 64)))
torch.manual_seed(0)
result = explainer.explain(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64))
widget = result.widget()
widget"""

# a request as the front end sends it, delivered the way the kernel delivers comm messages;
# the answer the widget sends back is compared with the pair's own point map
ASK = """\
import json
sent = []
widget.comm.send = lambda data=None, metadata=None, buffers=None: sent.append(data)
widget._handle_msg({"content": {"data": {"method": "custom", "content": {
    "type": "point", "side": "a", "row": 20.0, "col": 41.5, "id": 1}}}, "buffers": []})
answer = sent[-1]["content"]
expected = result.point_map("a", (20.0, 41.5)).tolist()
print(json.dumps({"type": answer["type"], "id": answer["id"], "map": answer["map"],
                  "expected": expected}))"""


@pytest.fixture(scope="module")
def executed():
    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell(BUILD), nbformat.v4.new_code_cell(ASK)]
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                       "language": "python"}
    NotebookClient(notebook, timeout=120, kernel_name="python3").execute()
    return notebook


def test_the_cell_outputs_a_widget_view(executed):
    outputs = executed.cells[0].outputs
    views = [o for o in outputs if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1, outputs
    view = views[0]["data"]["application/vnd.jupyter.widget-view+json"]
    assert view["model_id"]
    # the widget's state (saved into the notebook) carries the ES module and both images
    state = executed.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    model = state[view["model_id"]]["state"]
    assert "class MapView" in model["_esm"] and "export default { render }" in model["_esm"]
    assert model["kind"] == "match-centred" and model["sides"]["a"]["grid"] == [8, 8]


def test_the_widget_answers_in_the_kernel(executed):
    printed = "".join(o.get("text", "") for o in executed.cells[1].outputs)
    answer = json.loads(printed)
    assert answer["type"] == "answer" and answer["id"] == 1
    np.testing.assert_allclose(answer["map"], answer["expected"], rtol=1e-5, atol=1e-7)
