"""RetinaNet on a tuned Swin: gradients reach exactly the trainable parameters, and a short
demo training run raises VOC2007 AP50."""
import os

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from e3va_d2.config import load_config
from e3va_d2.modeling import TunedSwin
from e3va_d2.modeling.tuning import BitFitTuning

from .helpers import evaluate_then_train, short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/retinanet_swin_demo_e3va.py")


# ---- model -----------------------------------------------------------------------------------


def _batch(height=200, width=249):
    """Two images of an odd size (exercises padding), one without objects."""
    gen = torch.Generator().manual_seed(0)
    batch = []
    for boxes in ([[10.0, 20.0, 90.0, 110.0], [120.0, 60.0, 230.0, 190.0]], []):
        inst = Instances((height, width))
        inst.gt_boxes = Boxes(torch.tensor(boxes).reshape(-1, 4))
        inst.gt_classes = torch.arange(len(boxes)) % 3
        image = torch.randint(0, 256, (3, height, width), generator=gen).float()
        batch.append({"image": image, "instances": inst, "height": height, "width": width})
    return batch


@pytest.mark.parametrize("tuning", ["e3va", "bitfit"])
def test_retinanet_gradients_reach_exactly_the_trainable_parameters(tuning):
    cfg = load_config(DEMO)
    if tuning == "bitfit":
        cfg.model.backbone.bottom_up.tuning = L(BitFitTuning)()
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    swin = model.backbone.bottom_up
    assert isinstance(swin, TunedSwin) and swin.tuning.name == tuning
    # The trunk outputs p1-p3 only: no norm0, which nothing downstream would read.
    assert swin.trunk._out_features == ["p1", "p2", "p3"] and len(swin.trunk.layers) == 4
    norms = [n for n, _ in swin.trunk.named_children() if n.startswith("norm")]
    assert norms == ["norm1", "norm2", "norm3"]
    shapes = model.backbone.output_shape()
    assert list(shapes) == model.head_in_features == ["p3", "p4", "p5", "p6", "p7"]
    assert [s.stride for s in shapes.values()] == [8, 16, 32, 64, 128]

    model.train()
    with EventStorage():
        losses = model(_batch())
    assert set(losses) == {"loss_cls", "loss_box_reg"}
    total = sum(losses.values())
    assert torch.isfinite(total)
    total.backward()
    for name, param in swin.named_parameters():
        if param.requires_grad:
            assert param.grad is not None and param.grad.abs().sum() > 0, f"{name} got no grad"
        else:
            assert param.grad is None, f"frozen {name} got a gradient"
    assert all(p.grad is not None for p in model.head.parameters())

    # P6 comes from the trunk's stride-32 p3 (C5), as detectron2's RetinaNet takes it from res5.
    model.eval()
    images = torch.zeros(1, 3, 224, 256)  # padded to size_divisibility, as RetinaNet does
    with torch.no_grad():
        bottom_up = swin(images)
        feats = model.backbone(images)
    assert feats["p6"].shape[-2:] == torch.Size([(s + 1) // 2 for s in bottom_up["p3"].shape[-2:]])


# ---- evaluation ------------------------------------------------------------------------------


# ---- training --------------------------------------------------------------------------------


@pytest.mark.slow  # a whole training and two evaluations of the demo, end to end
def test_demo_training_raises_voc_ap50(tmp_path):
    """60 steps at batch 4 on the mini split: VOC2007 AP50 0 -> ~4 (on the 2-core build machine)."""
    cfg = short_run_config(
        DEMO, tmp_path, "shapes_voc_mini_train", "shapes_voc_mini_val", 60,
        "train.log_period=20", "train.checkpointer.period=1000",
    )
    before, after = (results["bbox"] for results in evaluate_then_train(cfg))
    assert after["AP50"] > before["AP50"] + 1.0, (before, after)
