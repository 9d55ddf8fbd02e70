"""The shipped pre-trained Swin: loads strictly through the official-layout path, its sha256 is
checked, and a short fine-tune from it beats the same fine-tune from a random trunk."""
import os
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.config import instantiate
from detectron2.data.detection_utils import read_image
from detectron2.utils.file_io import PathManager
from PIL import Image

from e3va_d2 import model_zoo
from e3va_d2.checkpoint import E3VACheckpointer
from e3va_d2.config import load_config
from e3va_d2.data import load_sem_seg_dicts
from e3va_d2.model_zoo import GLYPHS_SWIN, SCENES_SWIN, ModelZooError, get_checkpoint_path
from e3va_d2.modeling import SwinTransformer
from e3va_d2.modeling.swin_weights import convert_swin_checkpoint, detect_swin_layout

ROOT = os.path.join(os.path.dirname(__file__), "..")
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
    """The demo's model starts from it as built (``weights``), and ``train.init_checkpoint``
    loads the same tensors into a random trunk: both go through E3VACheckpointer."""
    cfg = load_config(MASK_RCNN_DEMO, ["train.device=cpu"])
    assert cfg.model.backbone.bottom_up.weights == SCENES_SWIN.url
    with PathManager.open(SCENES_SWIN.url, "rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)["model"]
    qkv = "layers.2.blocks.5.attn.qkv.weight"
    built = instantiate(cfg.model)
    assert torch.equal(built.backbone.bottom_up.trunk.state_dict()[qkv], state[qkv].float())
    cfg.model.backbone.bottom_up.weights = ""
    model = instantiate(cfg.model)
    assert not torch.equal(model.backbone.bottom_up.trunk.state_dict()[qkv], state[qkv].float())
    E3VACheckpointer(model, str(tmp_path)).load(SCENES_SWIN.url)
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


def probe_miou(checkpoint: str, steps: int = 300) -> float:
    """Fine-tune a per-pixel linear classifier on the frozen trunk's features (all four stages,
    upsampled to stride 4) for the shapes' semantic labels; mIoU on the held-out mini split."""
    torch.manual_seed(0)
    trunk = SwinTransformer(**GLYPHS_SWIN.trunk_kwargs(), drop_path_rate=0.0).eval()
    if checkpoint:
        with PathManager.open(checkpoint, "rb") as f:
            converted, _ = convert_swin_checkpoint(torch.load(f, weights_only=True), trunk)
        trunk.load_state_dict(converted, strict=False)
    mean, std = torch.tensor([123.675, 116.28, 103.53]), torch.tensor([58.395, 57.12, 57.375])

    def pixels(split):
        feats, labels = [], []
        for d in load_sem_seg_dicts(split):
            image = torch.from_numpy(read_image(d["file_name"], format="RGB").copy()).float()
            x = ((image - mean) / std).permute(2, 0, 1)[None]
            with torch.no_grad():
                maps = trunk(x)
            size = maps["p0"].shape[-2:]
            f = torch.cat([F.interpolate(m, size=size, mode="bilinear") for m in maps.values()], 1)
            label = torch.from_numpy(np.array(Image.open(d["sem_seg_file_name"]))).long()
            label = F.interpolate(label[None, None].float(), size=size, mode="nearest").long()
            feats.append(f[0].flatten(1).t())
            labels.append(label.flatten())
        return torch.cat(feats), torch.cat(labels)

    x, y = pixels("shapes_sem_seg_mini_train")
    keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))[:16384]
    x, y = x[keep], y[keep]  # a fixed sample of pixels: the fit takes a second, not minutes
    x_val, y_val = pixels("shapes_sem_seg_mini_val")
    x_mean, x_std = x.mean(0), x.std(0) + 1e-6
    probe = torch.nn.Linear(x.shape[1], 4)
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(steps):
        loss = F.cross_entropy(probe((x - x_mean) / x_std), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        pred = probe((x_val - x_mean) / x_std).argmax(1)
    ious = [((pred == c) & (y_val == c)).sum() / ((pred == c) | (y_val == c)).sum().clamp(min=1)
            for c in range(4)]
    return 100 * float(torch.stack(ious).mean())


def test_short_fine_tune_from_it_beats_a_random_trunk():
    """A linear probe (the shortest fine-tune: only a per-pixel classifier trains) on the
    frozen trunk, 300 steps, same seed and data: only the trunk's weights differ. (A few hundred
    steps of a whole detector or UPerNet on the mini split learn the class prior first, from any
    trunk: not what this test is about.)"""
    pretrained, random = probe_miou(GLYPHS_SWIN.url), probe_miou("")
    assert pretrained > random + 5, (pretrained, random)
