"""Swin checkpoint layouts, the strict E3VA checkpointer, crash-safe saves and deltas.

Every checkpoint is written by the tests themselves in the layout of its source (official
classification / detection release, timm, detectron2 main), from tiny Swins.
"""

from __future__ import annotations

import logging
import os
import pickle

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from torch import nn

from e3va_d2.checkpoint import (
    DeltaMismatchError,
    E3VACheckpointer,
    base_fingerprint,
    export_delta,
    load_delta,
)
from e3va_d2.modeling.backbone import TunedSwin
from e3va_d2.modeling.swin import SwinTransformer, relative_position_index, swin_size
from e3va_d2.modeling.swin_weights import (
    SwinCheckpointError,
    convert_swin_checkpoint,
    detect_swin_layout,
    is_output_norm_key,
    resize_position_bias_table,
    swin_architecture,
)
from e3va_d2.modeling.tuning import E3VATuning

from .conftest import TINY_SWIN

TINY = {**TINY_SWIN, "drop_path_rate": 0.0}  # deterministic: trunks are compared exactly
CLASSIFIER_NORM = 7.0  # a value no freshly built LayerNorm has


def tiny_trunk(seed: int = 0, **overrides) -> SwinTransformer:
    """A tiny Swin whose every tensor is random (LayerNorms too), so mix-ups show."""
    torch.manual_seed(seed)
    trunk = SwinTransformer(**{**TINY, **overrides}).eval()
    with torch.no_grad():
        for p in trunk.parameters():
            p.add_(0.1 * torch.randn_like(p))
    return trunk


def trunk_weights(trunk: SwinTransformer) -> dict:
    """The trunk's pre-trained tensors (output norms are not pre-trained)."""
    return {k: v.clone() for k, v in trunk.state_dict().items() if not is_output_norm_key(k)}


def official_classification(trunk: SwinTransformer, image_size: int = 224) -> dict:
    """The key set of Microsoft's classification release, as a file's content."""
    sd = trunk_weights(trunk)
    channels = trunk.num_features[-1]
    sd["norm.weight"] = torch.full((channels,), CLASSIFIER_NORM)
    sd["norm.bias"] = torch.full((channels,), -CLASSIFIER_NORM)
    sd["head.weight"] = torch.randn(10, channels)
    sd["head.bias"] = torch.randn(10)
    grid = image_size // 4
    for i, stage in enumerate(trunk.layers):
        for j, _ in enumerate(stage.blocks):
            key = f"layers.{i}.blocks.{j}."
            sd[key + "attn.relative_position_index"] = relative_position_index(trunk.window_size)
            if j % 2:
                size = grid >> i
                sd[key + "attn_mask"] = stage.shift_mask((size, size), torch.device("cpu"))
    return {"model": sd}


def official_detection(trunk: SwinTransformer) -> dict:
    """The official detection release (mmdet): ``backbone.`` prefix, output norms, a neck."""
    sd = {f"backbone.{k}": v.clone() for k, v in trunk.state_dict().items()}
    sd["neck.lateral_convs.0.conv.weight"] = torch.randn(8, 32, 1, 1)
    sd["roi_head.bbox_head.fc_cls.weight"] = torch.randn(81, 8)
    return {"state_dict": sd, "meta": {"epoch": 36}}


def detectron2_main(trunk: SwinTransformer) -> dict:
    """detectron2 main's SwinTransformer inside a detectron2 model: same names as ours, plus
    persistent ``relative_position_index`` buffers, behind ``backbone.bottom_up.``."""
    sd = {f"backbone.bottom_up.{k}": v.clone() for k, v in trunk.state_dict().items()}
    for i, stage in enumerate(trunk.layers):
        for j, _ in enumerate(stage.blocks):
            index = relative_position_index(trunk.window_size)
            sd[f"backbone.bottom_up.layers.{i}.blocks.{j}.attn.relative_position_index"] = index
    sd["backbone.fpn_lateral2.weight"] = torch.randn(8, 32, 1, 1)
    sd["roi_heads.box_predictor.cls_score.weight"] = torch.randn(4, 8)
    return {"model": sd, "iteration": 89999}


def tiny_detector(tuning="e3va", seed: int = 1, **trunk_overrides) -> nn.Module:
    """Mask R-CNN + FPN on a tiny TunedSwin, with thin heads to keep the tests fast."""
    torch.manual_seed(seed)
    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
    cfg.backbone.bottom_up = L(TunedSwin)(
        trunk=L(SwinTransformer)(**{**TINY, **trunk_overrides}), tuning=tuning
    )
    cfg.backbone.in_features = ["p0", "p1", "p2", "p3"]
    cfg.backbone.out_channels = 16
    cfg.proposal_generator.head.in_channels = 16
    cfg.roi_heads.num_classes = 3
    cfg.roi_heads.box_head.input_shape = ShapeSpec(channels=16, height=7, width=7)
    cfg.roi_heads.box_head.fc_dims = [32, 32]
    cfg.roi_heads.box_predictor.input_shape = ShapeSpec(channels=32)
    cfg.roi_heads.mask_head.input_shape = ShapeSpec(channels=16, width=14, height=14)
    cfg.roi_heads.mask_head.conv_dims = [16, 16]
    return instantiate(cfg).eval()


def clone_state(model: nn.Module) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.fixture(scope="module")
def source() -> SwinTransformer:
    return tiny_trunk(seed=0)


@pytest.fixture(scope="module")
def official_file(source, tmp_path_factory) -> str:
    path = str(tmp_path_factory.mktemp("official") / "swin_tiny_patch4_window7_224.pth")
    torch.save(official_classification(source), path)
    return path


# --------------------------------------------------------------------------- layouts


def test_detect_layouts(source):
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    timm_model = timm_swin.SwinTransformer(**{**TINY, "drop_path_rate": 0.1}, img_size=224)
    assert detect_swin_layout(official_classification(source)) == "official"
    assert detect_swin_layout(official_detection(source)) == "official"
    assert detect_swin_layout(timm_model.state_dict()) == "timm"
    assert detect_swin_layout(detectron2_main(source)) == "detectron2"
    ours = {f"backbone.bottom_up.trunk.{k}": v for k, v in source.state_dict().items()}
    assert detect_swin_layout({"model": ours}) == "e3va"
    with pytest.raises(SwinCheckpointError, match="not a Swin checkpoint.*conv1.weight"):
        detect_swin_layout({"conv1.weight": torch.zeros(1), "fc.bias": torch.zeros(1)})


def test_architecture_is_read_from_shapes(source):
    arch = swin_architecture(official_classification(source))
    assert arch == dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)
    assert swin_architecture(tiny_trunk(window_size=12).state_dict())["window_size"] == 12


@pytest.mark.parametrize("make", [official_classification, official_detection, detectron2_main])
def test_convert_gives_exactly_the_trunk(source, make):
    trunk = tiny_trunk(seed=5)
    converted, report = convert_swin_checkpoint(make(source), trunk)
    detection = make is not official_classification
    expected = source.state_dict() if detection else trunk_weights(source)
    assert converted.keys() == expected.keys()
    assert all(torch.equal(converted[k], v) for k, v in expected.items())
    assert bool(report.output_norms) == detection
    assert bool(report.not_provided) != detection
    trunk.load_state_dict(converted, strict=detection)


def test_classifier_norm_is_never_an_output_norm(source):
    # norm3 has the classifier norm's shape: a name-matching loader would happily take it.
    converted, report = convert_swin_checkpoint(official_classification(source), tiny_trunk())
    assert not any(is_output_norm_key(k) for k in converted)
    assert report.not_provided == [f"norm{i}.{p}" for i in range(4) for p in ("weight", "bias")]
    assert any("classifier norm" in reason for reason in report.dropped)


def test_trunk_that_stops_early_takes_only_its_stages(source):
    trunk = tiny_trunk(out_features=("p0", "p1", "p2"))
    converted, report = convert_swin_checkpoint(official_detection(source), trunk)
    assert not any(
        k.startswith("layers.3.") or k.startswith("layers.2.downsample") for k in converted
    )
    assert "norm3.weight" not in converted and "norm2.weight" in converted
    reasons = " ".join(report.dropped)
    assert "stages after" in reasons and "patch merging after" in reasons
    trunk.load_state_dict(converted)


def test_timm_weights_reproduce_timm_features():
    """Maps timm's layout (merging at the start of the next stage) and checks our Swin against
    an independent implementation, stage by stage, before the output norms."""
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    torch.manual_seed(0)
    # Detection Swins always shift windows; timm skips the shift when a stage is one window
    # (7x7 at 224px) unless always_partition is set.
    reference = timm_swin.SwinTransformer(
        **TINY, img_size=224, always_partition=True
    ).eval()
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(0.05 * torch.randn_like(p))
    trunk = tiny_trunk(seed=3)
    converted, report = convert_swin_checkpoint(reference.state_dict(), trunk)
    assert report.layout == "timm" and report.moved == 9
    trunk.load_state_dict(converted, strict=False)

    stage_outputs = []
    hooks = [
        s.register_forward_hook(lambda m, i, o: stage_outputs.append(o[0])) for s in trunk.layers
    ]
    images = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        trunk(images)
        expected = reference.forward_intermediates(images, intermediates_only=True)
    for hook in hooks:
        hook.remove()
    for ours, theirs in zip(stage_outputs, expected):
        B, C, H, W = theirs.shape
        ours = ours.transpose(1, 2).reshape(B, C, H, W)  # B, H*W, C -> B, C, H, W
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)


@pytest.mark.skipif(
    not hasattr(__import__("detectron2.modeling").modeling, "SwinTransformer"),
    reason="detectron2 main's SwinTransformer is not in this detectron2",
)
def test_detectron2_main_swin_matches_ours(source):
    from detectron2.modeling import SwinTransformer as D2Swin

    theirs = D2Swin(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), drop_path_rate=0)
    theirs.load_state_dict(
        {
            k[len("backbone.bottom_up.") :]: v
            for k, v in detectron2_main(source)["model"].items()
            if k.startswith("backbone.bottom_up.")
        }
    )
    ours = tiny_trunk(seed=9)
    ours.load_state_dict(convert_swin_checkpoint(detectron2_main(source), ours)[0])
    images = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        expected, got = theirs.eval()(images), ours.eval()(images)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-4, rtol=1e-4)


def test_position_bias_is_interpolated_between_window_sizes():
    big = tiny_trunk(seed=2, window_size=12)
    trunk = tiny_trunk(seed=4, window_size=7)
    converted, report = convert_swin_checkpoint(official_classification(big, 384), trunk)
    table = converted["layers.0.blocks.0.attn.relative_position_bias_table"]
    assert table.shape == (13 * 13, 1) and torch.isfinite(table).all()
    assert len(report.resized) == sum(TINY["depths"])
    trunk.load_state_dict(converted, strict=False)
    # Bicubic resampling keeps a constant table constant, and 7 -> 12 works the other way.
    flat = resize_position_bias_table(torch.full((23 * 23, 3), 0.5), 7)
    torch.testing.assert_close(flat, torch.full((13 * 13, 3), 0.5))
    up = convert_swin_checkpoint(official_classification(trunk), tiny_trunk(window_size=12))[0]
    assert up["layers.3.blocks.1.attn.relative_position_bias_table"].shape == (23 * 23, 8)
    # Same window: an exact copy.
    same = convert_swin_checkpoint(official_classification(trunk), tiny_trunk(seed=6))[0]
    for k, v in trunk_weights(trunk).items():
        assert torch.equal(same[k], v), k


def test_other_architecture_is_refused_with_both_named(source):
    with pytest.raises(SwinCheckpointError) as error:
        convert_swin_checkpoint(official_classification(source), tiny_trunk(depths=(2, 2, 4, 2)))
    message = str(error.value)
    assert "checkpoint is Swin (embed_dim=32, depths=(2, 2, 2, 2)" in message
    assert "model is Swin (embed_dim=32, depths=(2, 2, 4, 2)" in message
    with pytest.raises(SwinCheckpointError, match="embed_dim=48"):
        convert_swin_checkpoint(official_classification(source), tiny_trunk(embed_dim=48))
    # Released sizes are named; only shapes are read, so a few real-shaped tensors suffice.
    swin_t = {"patch_embed.proj.weight": torch.empty(96, 3, 4, 4)}
    for i, (depth, heads) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
        for j in range(depth):
            swin_t[f"layers.{i}.blocks.{j}.attn.relative_position_bias_table"] = torch.empty(
                169, heads
            )
    with torch.device("meta"):
        swin_s = SwinTransformer(**swin_size("S"))
    with pytest.raises(SwinCheckpointError, match=r"checkpoint is Swin-T .* model is Swin-S \("):
        convert_swin_checkpoint({"model": swin_t}, swin_s)


def test_foreign_and_missing_tensors_are_refused(source):
    sd = official_classification(source)
    sd["model"]["absolute_pos_embed"] = torch.zeros(1, 56 * 56, 32)
    with pytest.raises(SwinCheckpointError, match="absolute_pos_embed"):
        convert_swin_checkpoint(sd, tiny_trunk())
    sd = official_classification(source)
    del sd["model"]["layers.1.blocks.0.mlp.fc1.weight"]
    with pytest.raises(SwinCheckpointError, match=r"layers\.1\.blocks\.0\.mlp\.fc1\.weight"):
        convert_swin_checkpoint(sd, tiny_trunk())


# --------------------------------------------------------------------------- checkpointer


def test_official_checkpoint_loads_into_detector(source, official_file, caplog):
    model = tiny_detector()
    before = clone_state(model)
    with caplog.at_level(logging.INFO, logger="e3va_d2.checkpoint"):
        extra = E3VACheckpointer(model).load(official_file)
    assert extra == {}
    state = model.state_dict()
    prefix = "backbone.bottom_up.trunk."
    for k, v in trunk_weights(source).items():
        assert torch.equal(state[prefix + k], v), k
    for k, v in before.items():  # everything else untouched, output norms above all
        if not k.startswith(prefix) or is_output_norm_key(k[len(prefix) :]):
            assert torch.equal(state[k], v), k
    assert not (state[prefix + "norm3.weight"] == CLASSIFIER_NORM).any()
    log = caplog.text
    assert "backbone: highway (" in log and "backbone: output norms (8)" in log
    assert "roi_heads (" in log and "proposal_generator (" in log
    assert "classifier head" in log


def test_pickled_checkpoint_skips_detectron2_name_matching(source, tmp_path):
    path = str(tmp_path / "swin.pkl")  # detectron2 would run its fuzzy matching on this
    with open(path, "wb") as f:
        pickle.dump(official_classification(source)["model"], f)
    model = tiny_detector()
    E3VACheckpointer(model).load(path)
    trunk = model.backbone.bottom_up.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in trunk_weights(source).items())


def test_timm_safetensors_load_into_detector(tmp_path):
    safetensors = pytest.importorskip("safetensors.torch")
    timm_swin = pytest.importorskip("timm.models.swin_transformer")
    reference = timm_swin.SwinTransformer(**TINY, img_size=224)
    path = str(tmp_path / "model.safetensors")  # how timm's hub weights are published
    safetensors.save_file(reference.state_dict(), path)
    model = tiny_detector()
    E3VACheckpointer(model).load(path)
    expected, _ = convert_swin_checkpoint(reference.state_dict(), tiny_trunk())
    trunk = model.backbone.bottom_up.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in expected.items())
    assert torch.equal(
        trunk["layers.0.downsample.norm.weight"], reference.layers[1].downsample.norm.weight
    )


def test_file_with_python_objects_is_refused_unless_trusted(source, tmp_path, caplog):
    import argparse

    from e3va_d2.utils.safe_load import UnsafeCheckpointError, trust_checkpoint_code

    path = str(tmp_path / "with_config.pth")  # torch.load(weights_only=True) refuses this
    torch.save({**official_classification(source), "config": argparse.Namespace(lr=1)}, path)
    model = tiny_detector()
    before = clone_state(model)
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint_code=True") as info:
        E3VACheckpointer(model).load(path)
    assert path in str(info.value) and "argparse.Namespace" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    with caplog.at_level(logging.WARNING, logger="e3va_d2.checkpoint"):
        with trust_checkpoint_code():  # the user's explicit opt-in for a file they trust
            assert E3VACheckpointer(model).load(path) == {}
    assert "full unpickling" in caplog.text
    trunk = model.backbone.bottom_up.trunk.state_dict()
    assert all(torch.equal(trunk[k], v) for k, v in trunk_weights(source).items())


def test_non_swin_and_incomplete_checkpoints_are_errors(source, tmp_path):
    model = tiny_detector()
    path = str(tmp_path / "resnet.pth")
    torch.save({"model": {"stem.conv1.weight": torch.zeros(64, 3, 7, 7)}}, path)
    with pytest.raises(SwinCheckpointError, match="not a Swin checkpoint"):
        E3VACheckpointer(model).load(path)

    sd = official_classification(source)
    del sd["model"]["layers.2.blocks.1.attn.qkv.bias"]
    torch.save(sd, path)
    with pytest.raises(SwinCheckpointError, match=r"layers\.2\.blocks\.1\.attn\.qkv\.bias"):
        E3VACheckpointer(model).load(path)

    # A full-model checkpoint (resume / evaluation) without one frozen trunk tensor.
    full = model.state_dict()
    del full["backbone.bottom_up.trunk.layers.0.blocks.0.attn.proj.weight"]
    torch.save({"model": full}, path)
    with pytest.raises(SwinCheckpointError, match=r"trunk\.layers\.0\.blocks\.0\.attn\.proj"):
        E3VACheckpointer(model).load(path)


def test_own_checkpoints_resume_exactly(official_file, tmp_path):
    model = tiny_detector()
    E3VACheckpointer(model).load(official_file)
    E3VACheckpointer(model, str(tmp_path)).save("model_final", iteration=7)
    restored = tiny_detector(seed=2)
    extra = E3VACheckpointer(restored, str(tmp_path)).resume_or_load("", resume=True)
    assert extra["iteration"] == 7
    expected = model.state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in restored.state_dict().items())


def test_trainable_downsampling_starts_from_the_trunk(source, official_file):
    model = tiny_detector(tuning=L(E3VATuning)(trainable_downsampling=True))
    E3VACheckpointer(model).load(official_file)
    backbone = model.backbone.bottom_up
    assert len(backbone.highway.downsample) == 3
    for i, merge in enumerate(backbone.highway.downsample):
        for name, value in merge.state_dict().items():
            trunk_value = backbone.trunk.layers[i].downsample.state_dict()[name]
            assert torch.equal(value, trunk_value)
            assert torch.equal(value, trunk_weights(source)[f"layers.{i}.downsample.{name}"])


def test_save_is_atomic(tmp_path, monkeypatch):
    model = nn.Linear(4, 2)
    checkpointer = E3VACheckpointer(model, str(tmp_path))
    checkpointer.save("model_0000001")
    expected = clone_state(model)

    def killed_midway(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed")

    with torch.no_grad():
        model.weight.add_(1.0)
    monkeypatch.setattr(torch, "save", killed_midway)
    for name in ("model_0000002", "model_0000001"):  # a new file, and overwriting the old one
        with pytest.raises(KeyboardInterrupt):
            checkpointer.save(name)
    monkeypatch.undo()

    assert sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]
    assert checkpointer.get_checkpoint_file() == str(tmp_path / "model_0000001.pth")
    fresh = nn.Linear(4, 2)
    E3VACheckpointer(fresh).load(checkpointer.get_checkpoint_file())
    assert all(torch.equal(v, expected[k]) for k, v in fresh.state_dict().items())

    E3VACheckpointer(model, str(tmp_path / "worker"), save_to_disk=False).save("model_x")
    assert not (tmp_path / "worker").exists()


# --------------------------------------------------------------------------- deltas


@pytest.fixture(scope="module")
def trained(official_file):
    """A detector loaded from the official file whose trainable tensors then moved."""
    model = tiny_detector()
    E3VACheckpointer(model).load(official_file)
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(torch.randn_like(p))
    return model


def fresh_base(official_file) -> nn.Module:
    model = tiny_detector(seed=4)
    E3VACheckpointer(model).load(official_file)
    return model


def test_delta_restores_the_trained_model(trained, official_file, tmp_path):
    path = str(tmp_path / "delta.pth")
    assert export_delta(trained, path, extra={"iteration": 99}) == path
    payload = torch.load(path, weights_only=True)
    trainable = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    assert set(payload["tensors"]) == set(trainable)  # no frozen tensor travels
    assert sum(payload["tensors"][k].numel() for k in payload["trainable"]) == sum(
        p.numel() for p in trainable.values()
    )
    assert payload["meta"]["tuning"] == "e3va"
    assert payload["meta"]["trainable_parameters"] == sum(p.numel() for p in trainable.values())

    model = fresh_base(official_file)
    assert base_fingerprint(model) == base_fingerprint(trained)
    assert load_delta(model, path) == {"iteration": 99}
    expected = trained.state_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(v, expected[k]), k


def test_delta_refuses_another_base_or_other_tensors(trained, official_file, tmp_path):
    path = str(tmp_path / "delta.pth")
    export_delta(trained, path)
    other = fresh_base(official_file)
    with torch.no_grad():
        other.backbone.bottom_up.trunk.layers[1].blocks[0].mlp.fc2.bias[0] += 1e-3
    with pytest.raises(DeltaMismatchError, match="different base.*load the same init_checkpoint"):
        load_delta(other, path)

    payload = torch.load(path, weights_only=True)
    dropped = "backbone.bottom_up.highway.layers.0.blocks.0.attn_adapter.down.bias"
    del payload["tensors"][dropped]
    torch.save(payload, path)
    model = fresh_base(official_file)
    with pytest.raises(DeltaMismatchError, match="not in the delta.*attn_adapter"):
        load_delta(model, path)
    load_delta(model, path, strict=False)  # the rest loads, with a warning


def test_delta_keeps_buffers_of_trainable_modules(tmp_path):
    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
        model[0].requires_grad_(False)
        return model

    model = build()
    model.train()(torch.randn(8, 3))  # moves the running statistics
    path = str(tmp_path / "delta.pth")
    export_delta(model, path)
    payload = torch.load(path, weights_only=True)
    assert set(payload["buffers"]) == {
        "1.running_mean",
        "1.running_var",
        "1.num_batches_tracked",
    }
    assert "0.weight" not in payload["tensors"]
    restored = build()
    load_delta(restored, path)
    assert torch.equal(restored[1].running_mean, model[1].running_mean)


# --------------------------------------------------------------------------- old "side" names


def as_written_before_the_rename(state: dict) -> dict:
    """A state dict as e3va-d2 wrote it when the highway was called the side network."""
    renamed = {k.replace(".highway.", ".side."): v for k, v in state.items()}
    assert renamed != state  # the model has a highway to rename
    return renamed


def test_a_delta_with_pre_release_side_keys_is_refused_by_name(trained, official_file, tmp_path):
    """The pre-release rename shim is gone: a delta that calls the highway "side" is refused,
    naming the tensors it lacks, never loaded with a random highway."""
    path = str(tmp_path / "old_delta.pth")
    export_delta(trained, path)
    payload = torch.load(path, weights_only=True)
    payload["tensors"] = as_written_before_the_rename(payload["tensors"])
    torch.save(payload, path)
    with pytest.raises(Exception, match=r"not in the delta: \[.*highway\.") as refused:
        load_delta(fresh_base(official_file), path)
    assert "not trained by the model" in str(refused.value)
