"""UPerNet head and the semantic segmentation path: shapes at odd input sizes, losses with and
without the auxiliary head, gradients of the full SemanticSegmentor under E3VA and LoRA, mIoU
with detectron2's SemSegEvaluator on the shapes, and a short run of the demo whose mIoU rises."""
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import (
    DatasetCatalog,
    DatasetMapper,
    MetadataCatalog,
    build_detection_test_loader,
)
from detectron2.evaluation import SemSegEvaluator, inference_on_dataset
from detectron2.layers import ShapeSpec
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY, SemanticSegmentor
from detectron2.utils.events import EventStorage
from PIL import Image

from e3va_d2.modeling import SwinTransformer, TunedSwin, UPerNetHead

from .conftest import TINY_SWIN
from .helpers import evaluate_then_train, short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/upernet_swin_demo_e3va.py")
SHAPES = {f"p{i}": ShapeSpec(channels=32 * 2**i, stride=4 * 2**i) for i in range(4)}
NUM_CLASSES = 4


def head(**kwargs) -> UPerNetHead:
    args = dict(input_shape=SHAPES, in_features=["p0", "p1", "p2", "p3"],
                num_classes=NUM_CLASSES, channels=16, aux_channels=8, norm="BN")
    return UPerNetHead(**{**args, **kwargs})


def features(batch: int, height: int, width: int) -> dict:
    """Random maps with the sizes a Swin gives for a (height, width) input (ceil per stage)."""
    return {
        name: torch.randn(batch, spec.channels, math.ceil(height / spec.stride),
                          math.ceil(width / spec.stride))
        for name, spec in SHAPES.items()
    }


def segmentor(tuning="e3va", seed=0) -> SemanticSegmentor:
    torch.manual_seed(seed)
    return SemanticSegmentor(
        backbone=TunedSwin(trunk=SwinTransformer(**TINY_SWIN), tuning=tuning),
        sem_seg_head=head(),
        pixel_mean=[123.675, 116.28, 103.53],
        pixel_std=[58.395, 57.12, 57.375],
    )


def batch_of(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    out = []
    for h, w in sizes:
        sem_seg = torch.randint(0, NUM_CLASSES, (h, w), generator=g)
        sem_seg[:5] = 255  # some unlabelled pixels
        image = torch.randint(0, 256, (3, h, w), generator=g).float()
        out.append({"image": image, "sem_seg": sem_seg, "height": h, "width": w})
    return out


@pytest.mark.parametrize("size", [(97, 131), (200, 249)])
@pytest.mark.parametrize("aux", ["p2", None])
def test_head_losses_and_logits_at_odd_sizes(size, aux):
    h, w = size
    model = head(aux_in_feature=aux)
    feats = features(2, h, w)
    targets = torch.randint(0, NUM_CLASSES, (2, h, w))
    targets[:, :3] = 255

    model.train()
    predictions, losses = model(feats, targets)
    assert predictions is None
    assert set(losses) == ({"loss_sem_seg", "loss_sem_seg_aux"} if aux else {"loss_sem_seg"})
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()

    model.eval()
    with torch.no_grad():
        logits, losses = model(feats)
    assert losses == {}
    # At the padded input resolution (finest level x its stride); SemanticSegmentor crops.
    assert logits.shape == (2, NUM_CLASSES, math.ceil(h / 4) * 4, math.ceil(w / 4) * 4)


def test_loss_ignores_unlabelled_pixels_and_stays_finite_without_labels():
    model = head(aux_weight=0.5).train()
    feats = features(2, 64, 64)
    targets = torch.full((2, 64, 64), 255)
    losses = model(feats, targets)[1]
    assert all(v.item() == 0.0 for v in losses.values())  # not NaN: nothing to learn from
    targets[:, :32] = 1
    labelled = model(feats, targets)[1]["loss_sem_seg"]
    model.ignore_value = -100  # now the 255s are not ignored and reach cross entropy
    with pytest.raises((IndexError, RuntimeError)):
        model(feats, targets)
    assert torch.isfinite(labelled) and labelled > 0


def test_head_validates_its_arguments():
    assert SEM_SEG_HEADS_REGISTRY.get("UPerNetHead") is UPerNetHead
    with pytest.raises(ValueError, match=r"\['p4'\] are not among the backbone outputs"):
        head(in_features=["p0", "p4"])
    with pytest.raises(ValueError, match=r"\['p5'\]"):
        head(aux_in_feature="p5")
    with pytest.raises(ValueError, match="non-empty"):
        head(in_features="p0")
    with pytest.raises(ValueError, match="pool_scales"):
        head(pool_scales=[])
    # Any order of in_features: fused finest first, output stride of the finest level.
    shuffled = head(in_features=["p2", "p0", "p3", "p1"], aux_in_feature=None)
    assert shuffled.in_features == ["p0", "p1", "p2", "p3"] and shuffled.common_stride == 4
    assert not hasattr(shuffled, "aux_conv")


@pytest.mark.parametrize("tuning", ["e3va", "lora"])
def test_segmentor_trains_only_the_intended_parameters(tuning):
    model = segmentor(tuning).train()
    trunk_params = dict(model.backbone.trunk.named_parameters())
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert frozen and any(not p.requires_grad for p in trunk_params.values())
    with EventStorage():
        losses = model(batch_of([(97, 131), (120, 101)]))
    assert set(losses) == {"loss_sem_seg", "loss_sem_seg_aux"}
    sum(losses.values()).backward()
    params = dict(model.named_parameters())
    got_grad = [n for n in trainable if params[n].grad is not None]
    assert got_grad == trainable, sorted(set(trainable) - set(got_grad))[:5]
    assert all(torch.isfinite(params[n].grad).all() for n in trainable)
    assert all(params[n].grad is None for n in frozen)
    assert any(n.startswith("backbone.") for n in trainable)  # the tuning method's parameters


def test_segmentor_eval_returns_logits_at_each_image_size():
    model = segmentor().eval()
    inputs = batch_of([(97, 131), (200, 249)])
    inputs[1]["height"], inputs[1]["width"] = 100, 125  # evaluate at another resolution
    with torch.no_grad():
        outputs = model(inputs)
    shapes = [o["sem_seg"].shape for o in outputs]
    assert shapes == [(NUM_CLASSES, 97, 131), (NUM_CLASSES, 100, 125)]


def test_sem_seg_evaluator_on_shapes():
    name = "shapes_sem_seg_mini_val"
    meta = MetadataCatalog.get(name)
    assert meta.stuff_classes == ["background", "rectangle", "ellipse", "triangle"]
    assert meta.ignore_label == 255 and meta.evaluator_type == "sem_seg"
    dicts = DatasetCatalog.get(name)[:8]
    loader = build_detection_test_loader(
        dicts, mapper=DatasetMapper(is_train=False, augmentations=[], image_format="RGB"),
        num_workers=0,
    )
    model = segmentor().eval()
    evaluator = SemSegEvaluator(name, distributed=False)
    results = inference_on_dataset(model, loader, evaluator)["sem_seg"]
    assert {"mIoU", "fwIoU", "mACC", "pACC"} <= set(results)
    assert {f"IoU-{c}" for c in meta.stuff_classes} <= set(results)

    # Pixel accuracy recomputed by hand: predictions come back at each image's original size.
    correct = total = 0
    with torch.no_grad():
        for d in dicts:
            image = np.asarray(Image.open(d["file_name"]).convert("RGB")).transpose(2, 0, 1)
            out = model([{"image": torch.as_tensor(image.copy()), "height": d["height"],
                          "width": d["width"]}])[0]["sem_seg"].argmax(0).numpy()
            gt = np.asarray(Image.open(d["sem_seg_file_name"]))
            assert out.shape == gt.shape == (d["height"], d["width"])
            valid = gt != 255
            correct += int((out[valid] == gt[valid]).sum())
            total += int(valid.sum())
    assert results["pACC"] == pytest.approx(100.0 * correct / total)


@pytest.mark.slow  # a whole training and two evaluations of the demo, end to end
def test_short_demo_run_raises_miou(tmp_path):
    """The demo config on the mini splits, 50 iterations at batch 2 from a fixed seed. So short a
    run learns the class frequencies first (background: ~86% of the pixels): frequency-weighted
    IoU and pixel accuracy jump while mIoU, whose untrained value depends on what the random head
    happens to predict, moves less; the full demo learns the shapes."""
    cfg = short_run_config(
        DEMO, tmp_path, "shapes_sem_seg_mini_train", "shapes_sem_seg_mini_val", 50,
        "train.log_period=1", "train.checkpointer.period=1000",
        "dataloader.train.total_batch_size=2",
    )
    before, after = (results["sem_seg"] for results in evaluate_then_train(cfg))
    assert after["fwIoU"] > before["fwIoU"] + 20 and after["pACC"] > 80, (before, after)
    assert after["mIoU"] > before["mIoU"], (before, after)
    with open(os.path.join(tmp_path, "metrics.json")) as f:
        values = [json.loads(line)["total_loss"] for line in f if "total_loss" in line]
    assert len(values) == 50 and sum(values[-10:]) < 0.5 * sum(values[:10]), values
