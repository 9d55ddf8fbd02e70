"""Every path that builds a model leaves every parameter and buffer on the device it was asked
for. Built on ``meta`` (shapes without memory: no GPU needed), a tensor left on the CPU is a
tensor a GPU run would find on the wrong device; SyncBN swapped after the move to the GPU was
one (the first forward of every SyncBN config on one GPU failed)."""
import itertools
import os

import pytest
import torch
from torch import nn

from e3va_d2.config import load_config
from e3va_d2.engine import E3VATrainer
from e3va_d2.engine.multitask import MultiTaskPredictor
from e3va_d2.engine.predictor import Predictor
from e3va_d2.layers import adapt_sync_batchnorm

ROOT = os.path.join(os.path.dirname(__file__), "..")
MASK_RCNN = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
RETINANET = os.path.join(ROOT, "configs/Shapes/retinanet_swin_demo_e3va.py")
UPERNET = os.path.join(ROOT, "configs/Shapes/upernet_swin_demo_e3va.py")  # SyncBN in its head
CONFIGS = {
    "retinanet_syncbn": (RETINANET, ["model.head.norm=SyncBN"]),
    "upernet_syncbn": (UPERNET, []),
}


def elsewhere(model: nn.Module, device: str):
    """Names of the parameters and buffers of ``model`` that are not on ``device``."""
    tensors = itertools.chain(model.named_parameters(), model.named_buffers())
    return [name for name, t in tensors if t.device.type != device]


def on_meta(config, *overrides):
    return load_config(config, ["train.device=meta", *overrides])


@pytest.mark.parametrize("world_size, cls", [(1, nn.BatchNorm2d), (2, "NaiveSyncBatchNorm")])
def test_swapped_sync_batchnorm_keeps_the_device_dtype_and_flags_of_the_one_it_replaces(
        world_size, cls):
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.SyncBatchNorm(4)).double()
    model[1].bias.requires_grad_(False)
    model.to("meta")  # as the trainer does: moved first, then swapped
    assert adapt_sync_batchnorm(model, world_size, "cpu") == 1
    norm = model[1]
    assert not isinstance(norm, nn.SyncBatchNorm)
    assert isinstance(norm, cls) if isinstance(cls, type) else type(norm).__name__ == cls
    assert elsewhere(model, "meta") == []
    assert norm.weight.dtype == norm.running_mean.dtype == torch.float64
    assert norm.weight.requires_grad and not norm.bias.requires_grad


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_the_trainer_builds_every_tensor_on_train_device(name):
    config, overrides = CONFIGS[name]
    model = E3VATrainer.build_model(on_meta(config, *overrides))
    assert not any(isinstance(m, nn.SyncBatchNorm) for m in model.modules())
    assert elsewhere(model, "meta") == []


def test_the_predictor_builds_every_tensor_on_train_device():
    """The predictor (and so demo.py, which draws with it) on a SyncBN config."""
    predictor = Predictor(on_meta(UPERNET), checkpoint="", allow_untrained=True)
    assert elsewhere(predictor.model, "meta") == []


def test_the_multi_task_predictor_builds_every_tensor_on_train_device(monkeypatch):
    # Meta tensors hold no values: the check that both tasks share one base compares shapes.
    monkeypatch.setattr(torch, "equal", lambda a, b: a.shape == b.shape and a.dtype == b.dtype)
    multi = MultiTaskPredictor({"semantic": (on_meta(UPERNET), None),
                                "boxes": (on_meta(RETINANET, "model.head.norm=SyncBN"), None)},
                               base="")
    for predictor in multi.predictors.values():
        assert elsewhere(predictor.model, "meta") == []


def test_highway_time_moves_its_models_and_batch_to_the_device_it_times():
    from projects.benchmark import highway_time

    batch = highway_time.synthetic_detection_batch(1, 64, 3)
    steps = highway_time.build_steps(load_config(MASK_RCNN), batch, torch.device("meta"))
    for variant, step in steps.items():
        assert elsewhere(step.model, "meta") == [], variant
        assert all(d["image"].device.type == "meta" for d in step.batch), variant


def test_the_suite_runs_on_the_cpu_even_on_a_gpu_machine():
    """tests/conftest.py hides the GPUs before torch looks for them, for this process and the
    tools it starts (benchmarks on `--device auto`, launches choosing a backend)."""
    assert os.environ.get("CUDA_VISIBLE_DEVICES") == ""
    assert not torch.cuda.is_available()
