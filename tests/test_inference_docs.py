"""docs/INFERENCE.md's Python examples run as written, in order, on a stand-in for `make demo`'s
trained model (the demo's model with its initial weights, saved where the examples read it)."""
import os
import re

import torch
from detectron2.config import instantiate

from e3va_d2.config import get_config

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))


def python_examples():
    with open(os.path.join(ROOT, "docs", "INFERENCE.md")) as f:
        return re.findall(r"```python\n(.*?)```", f.read(), re.S)


def test_inference_md_examples_run(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = get_config("Shapes/mask_rcnn_swin_demo_e3va.py")
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    # An untrained box predictor scores every class alike: bias one class so boxes pass 0.05.
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.bias[0] = 5.0
    os.makedirs("output/shapes_demo_e3va")
    torch.save({"model": model.state_dict()}, "output/shapes_demo_e3va/model_final.pth")
    examples = python_examples()
    assert len(examples) == 2
    namespace = {}
    for code in examples:
        exec(compile(code, "docs/INFERENCE.md", "exec"), namespace)
    assert " at [" in capsys.readouterr().out  # the first example printed detections
    assert len(namespace["exported"]) > 0
    assert os.path.isfile("output/shapes_demo_e3va/model.ts")
