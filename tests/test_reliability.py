"""Nothing lost, nothing silent: a delta carries every buffer training changes (on all three demo
models, SyncBN variants included), and --eval-only refuses never-trained weights."""
import os
import subprocess
import sys
import time

import pytest
import torch
from detectron2.config import instantiate
from detectron2.utils.events import EventStorage

from e3va_d2.checkpoint import export_delta, load_delta
from e3va_d2.config import load_config
from e3va_d2.layers import adapt_sync_batchnorm
from projects.benchmark.measure import synthetic_detection_batch

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMOS = {
    "mask_rcnn": ("configs/Shapes/mask_rcnn_swin_demo_e3va.py", []),
    "retinanet": ("configs/Shapes/retinanet_swin_demo_e3va.py", []),
    "retinanet_syncbn": ("configs/Shapes/retinanet_swin_demo_e3va.py", ["model.head.norm=SyncBN"]),
    "upernet_syncbn": ("configs/Shapes/upernet_swin_demo_e3va.py", []),  # SyncBN in the head
    "upernet_bn": ("configs/Shapes/upernet_swin_demo_e3va.py", ["model.sem_seg_head.norm=BN"]),
}


def build(config, overrides, seed=0):
    cfg = load_config(os.path.join(ROOT, config), ["train.device=cpu", *overrides])
    torch.manual_seed(seed)
    model = instantiate(cfg.model)
    adapt_sync_batchnorm(model, world_size=1, device="cpu")
    return model


def train_a_little(model):
    """Two SGD steps on a synthetic batch: trainable weights move and, in training mode, every
    norm's running statistics (and num_batches_tracked) change."""
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    with EventStorage():
        for seed in range(2):
            losses = model(synthetic_detection_batch(2, 96, 3, seed=seed))
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()


@pytest.mark.parametrize("demo", sorted(DEMOS))
def test_delta_reloads_onto_a_fresh_base_with_every_changed_buffer(demo, tmp_path):
    config, overrides = DEMOS[demo]
    trained = build(config, overrides)
    initial = {k: v.clone() for k, v in trained.state_dict().items()}
    train_a_little(trained)
    changed = [k for k, v in trained.state_dict().items() if not torch.equal(v, initial[k])]
    stats = [k for k in changed if "running_" in k or "num_batches_tracked" in k]
    assert stats or demo == "mask_rcnn", "the model has no running statistics to test"

    path = str(tmp_path / "delta.pth")
    export_delta(trained, path)
    payload = torch.load(path, weights_only=True)
    assert set(stats) <= set(payload["buffers"]), sorted(set(stats) - set(payload["buffers"]))

    fresh = build(config, overrides)  # same seed: same frozen base, untrained everything else
    load_delta(fresh, path)  # strict: raises on a different base
    reference = trained.state_dict()
    for name, value in fresh.state_dict().items():
        assert torch.equal(value, reference[name]), name


def test_delta_on_another_base_is_still_refused(tmp_path):
    config, overrides = DEMOS["retinanet"]
    trained = build(config, overrides, seed=0)  # on the shipped pre-trained trunk
    path = str(tmp_path / "delta.pth")
    export_delta(trained, path)
    other = build(config, [*overrides, "model.backbone.bottom_up.weights="], seed=1)  # random
    with pytest.raises(ValueError, match="different base"):
        load_delta(other, path)


def run_train_net(*args):
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), *args], cwd=ROOT,
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.slow
@pytest.mark.parametrize("checkpoint", ["", "e3va://swin_glyphs_e32_patch4_window7_112.pth"])
def test_eval_only_refuses_untrained_adapters_and_heads(checkpoint, tmp_path):
    common = ["--config-file", "configs/Shapes/retinanet_swin_demo_e3va.py", "--eval-only",
              f"train.output_dir={tmp_path}", "train.device=cpu",
              "dataloader.test.dataset.names=shapes_voc_mini_val",
              f"train.init_checkpoint={checkpoint}"]
    refused = run_train_net(*common)
    assert refused.returncode != 0
    assert "never trained" in refused.stderr and "model_final.pth" in refused.stderr, \
        refused.stderr[-2000:]
    allowed = run_train_net(*common, "train.eval_untrained=True")
    assert allowed.returncode == 0, allowed.stderr[-2000:]


def test_unreadable_checkpoint_files_are_named(tmp_path):
    from e3va_d2.checkpoint import CheckpointReadError, E3VACheckpointer

    model = build(*DEMOS["mask_rcnn"])
    text = tmp_path / "notes.txt"
    text.write_text("not a checkpoint\n")
    good = tmp_path / "good.pth"
    torch.save({"model": model.state_dict()}, good)
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    for path in (text, truncated):
        with pytest.raises(CheckpointReadError, match="not a readable checkpoint") as info:
            E3VACheckpointer(model).load(str(path))
        assert str(path) in str(info.value)


def test_override_types_are_checked_at_load_time():
    from e3va_d2.config import ConfigError

    demo = os.path.join(ROOT, DEMOS["mask_rcnn"][0])
    with pytest.raises(ConfigError, match="train.max_iter is an int"):
        load_config(demo, ["train.max_iter=abc"])
    with pytest.raises(ConfigError, match="tuning.rank must be an integer >= 1"):
        load_config(demo, ["model.backbone.bottom_up.tuning.rank=2.5"])
    with pytest.raises(ConfigError, match="recompute_adapters is a bool"):  # a target default
        load_config(demo, ["model.backbone.bottom_up.tuning.recompute_adapters=3"])
    cfg = load_config(demo, ["optimizer.lr=1", "train.max_iter=7"])  # an int is a fine float
    assert cfg.optimizer.lr == 1 and cfg.train.max_iter == 7


@pytest.mark.parametrize("options, message", [
    (dict(rank=2.5), "rank must be an integer >= 1"),
    (dict(rank=0), "rank must be an integer >= 1"),
    (dict(hidden_dim=0), "hidden_dim must be an integer >= 1"),
    (dict(hidden_ratio=0.001), "hidden_ratio=0.001 leaves the 32-channel stage"),
    (dict(hidden_dim=32, hidden_ratio=0.25), "hidden_dim=32 and hidden_ratio=0.25 both set"),
])
def test_e3va_options_are_validated_where_declared(options, message):
    from e3va_d2.modeling import E3VATuning, SwinTransformer, TunedSwin

    from .conftest import TINY_SWIN

    with pytest.raises(ValueError, match=message):
        TunedSwin(trunk=SwinTransformer(**TINY_SWIN), tuning=E3VATuning(**options))


def test_missing_image_files_fail_at_startup(tmp_path):
    from detectron2.data.datasets import register_coco_instances

    from e3va_d2.data import DatasetError, ensure_shapes_split, load_dataset_dicts

    paths = ensure_shapes_split("shapes_mini_val")
    images = tmp_path / "images"
    images.mkdir()
    names = sorted(os.listdir(paths.image_root))
    for name in names[3:]:  # the first three images are missing
        os.symlink(os.path.join(paths.image_root, name), images / name)
    register_coco_instances("t_missing_images", {}, paths.json_file, str(images))
    with pytest.raises(DatasetError, match=f"3 of {len(names)} image files do not exist") as info:
        load_dataset_dicts("t_missing_images", filter_empty=False)
    assert names[0] in str(info.value)


def test_stale_temporaries_removed_and_max_to_keep_counts_files_on_disk(tmp_path):
    from e3va_d2.checkpoint import E3VACheckpointer, PeriodicCheckpointer

    stale = [".model_0000009.pth.0a1b2c3d.tmp", ".last_checkpoint.deadbeef.tmp"]
    for name in stale:
        (tmp_path / name).write_bytes(b"partial")
        os.utime(tmp_path / name, (time.time() - 7200,) * 2)  # left by a save killed 2 h ago
    live = tmp_path / ".model_0000019.pth.0badcafe.tmp"  # another process saving right now
    live.write_bytes(b"being written")
    for k in range(5):  # an earlier run's periodic checkpoints, before an interruption
        (tmp_path / f"model_{k:07d}.pth").write_bytes(b"old")
    (tmp_path / "model_final.pth").write_bytes(b"keep")
    (tmp_path / "notes.tmp").write_bytes(b"not ours")
    checkpointer = E3VACheckpointer(torch.nn.Linear(2, 2), str(tmp_path))
    assert not any((tmp_path / name).exists() for name in stale)
    assert (tmp_path / "notes.tmp").exists() and live.exists()
    hook = PeriodicCheckpointer(checkpointer, period=1, max_to_keep=3)
    for iteration in (10, 11):
        hook.step(iteration)
    periodic = sorted(p.name for p in tmp_path.glob("model_*.pth"))
    assert periodic == ["model_0000004.pth", "model_0000010.pth", "model_0000011.pth",
                        "model_final.pth"]
