"""The shipped pre-trained Swin: loads strictly through the official-layout path, its sha256 is
checked, and a short fine-tune from it beats the same fine-tune from a random trunk."""
import os
import shutil

import pytest
import torch
from detectron2.config import instantiate
from detectron2.utils.file_io import PathManager

from e3va_d2 import model_zoo
from e3va_d2.checkpoint import E3VACheckpointer
from e3va_d2.config import load_config
from e3va_d2.model_zoo import GLYPHS_SWIN, ModelZooError, get_checkpoint_path
from e3va_d2.modeling import SwinTransformer
from e3va_d2.modeling.swin_weights import convert_swin_checkpoint, detect_swin_layout

from .helpers import evaluate_then_train, short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
UPERNET_DEMO = os.path.join(ROOT, "configs/Shapes/upernet_swin_demo_e3va.py")
MASK_RCNN_DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")


def test_shipped_checkpoint_is_official_layout_and_loads_strictly():
    path = get_checkpoint_path(GLYPHS_SWIN.url)
    assert os.path.getsize(path) < 15e6
    with PathManager.open(GLYPHS_SWIN.url, "rb") as f:
        loaded = torch.load(f, map_location="cpu", weights_only=True)
    assert detect_swin_layout(loaded) == "official"
    assert {"norm.weight", "head.weight"} <= set(loaded["model"])  # the release's classifier
    trunk = SwinTransformer(**GLYPHS_SWIN.trunk_kwargs())
    converted, report = convert_swin_checkpoint(loaded, trunk)
    # Every trunk tensor comes from the file; only the (never pre-trained) output norms do not.
    assert set(report.not_provided) == {k for k in trunk.state_dict() if k.startswith("norm")}
    trunk.load_state_dict(converted, strict=False)
    for key, value in converted.items():
        assert torch.equal(trunk.state_dict()[key], value.float()), key


def test_demo_loads_it_through_the_user_checkpoint_path(tmp_path):
    cfg = load_config(MASK_RCNN_DEMO, ["train.device=cpu"])
    assert cfg.train.init_checkpoint == GLYPHS_SWIN.url
    model = instantiate(cfg.model)
    E3VACheckpointer(model, str(tmp_path)).load(cfg.train.init_checkpoint)
    with PathManager.open(GLYPHS_SWIN.url, "rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)["model"]
    qkv = "layers.2.blocks.5.attn.qkv.weight"
    assert torch.equal(model.backbone.bottom_up.trunk.state_dict()[qkv], state[qkv].float())


def test_sha256_is_checked(tmp_path, monkeypatch):
    good = get_checkpoint_path(GLYPHS_SWIN.url)
    bad = tmp_path / GLYPHS_SWIN.file
    shutil.copy(good, bad)
    with open(bad, "r+b") as f:  # flip one byte of a tensor
        f.seek(os.path.getsize(bad) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    monkeypatch.setattr(model_zoo, "_FOLDER", str(tmp_path))
    monkeypatch.setattr(model_zoo, "_VERIFIED", {})
    with pytest.raises(ModelZooError, match="sha256"):
        PathManager.get_local_path(GLYPHS_SWIN.url)
    os.remove(bad)
    with pytest.raises(ModelZooError, match="missing"):
        get_checkpoint_path(GLYPHS_SWIN.file)
    with pytest.raises(ModelZooError, match="not a shipped checkpoint"):
        get_checkpoint_path("e3va://swin_nothing.pth")


def test_short_fine_tune_from_it_beats_a_random_trunk(tmp_path):
    """UPerNet E3VA, 60 iterations on the mini splits, same seed: only the trunk differs."""
    results = {}
    for name, checkpoint in (("pretrained", GLYPHS_SWIN.url), ("random", "")):
        cfg = short_run_config(
            UPERNET_DEMO, tmp_path / name, "shapes_sem_seg_mini_train",
            "shapes_sem_seg_mini_val", 60, "train.checkpointer.period=1000",
            "dataloader.train.total_batch_size=2", f"train.init_checkpoint={checkpoint}",
        )
        results[name] = evaluate_then_train(cfg)[1]["sem_seg"]["mIoU"]
    assert results["pretrained"] > results["random"] + 5, results
