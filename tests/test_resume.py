"""Exact resume: a run that crashes after a checkpoint and is resumed with ``--resume``
ends with bit-identical trainable weights and buffers to the uninterrupted run, for all three
demo models (Mask R-CNN, RetinaNet with its running loss normaliser, UPerNet), and the loader's
batches are a pure function of (seed, position), with workers or without; the CUDA RNG state
is the process's GPU's, restorable where fewer GPUs are visible."""
import os

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from e3va_d2.config import load_config
from e3va_d2.data import build_resumable_train_loader
from e3va_d2.engine import E3VATrainer

from .helpers import short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMOS = {
    "mask_rcnn": ("mask_rcnn_swin_demo_e3va.py", "shapes_mini_train", "shapes_mini_val"),
    "retinanet": ("retinanet_swin_demo_e3va.py", "shapes_mini_train", "shapes_mini_val"),
    "upernet": ("upernet_swin_demo_e3va.py", "shapes_sem_seg_mini_train",
                "shapes_sem_seg_mini_val"),
}
MAX_ITER, PERIOD, CRASH_AT = 4, 2, 3  # a checkpoint after iteration 1; crash as 3 starts
# The uninterrupted runs (`straight`) are shared: keep the module in one xdist worker
# (`--dist loadgroup`, as `make test` runs it) so that each is trained once.
pytestmark = pytest.mark.xdist_group("test_resume_straight")


class Crash(RuntimeError):
    pass


class CrashBefore(HookBase):
    """Kill the run as the given iteration starts (after the checkpoint of an earlier one)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            raise Crash(self.iteration)


def demo_cfg(name, output_dir, *overrides):
    config, train_set, test_set = DEMOS[name]
    cfg = short_run_config(
        os.path.join(ROOT, "configs/Shapes", config), output_dir, train_set, test_set, MAX_ITER,
        f"train.checkpointer.period={PERIOD}",
        "dataloader.train.total_batch_size=2",
        *overrides,
    )
    del cfg.dataloader.evaluator  # no evaluation at the end: the weights are compared
    return cfg


def run(cfg, *, seed, resume=False, crash_at=None):
    seed_all_rng(seed)
    trainer = E3VATrainer(cfg)
    if crash_at is not None:
        trainer.register_hooks([CrashBefore(crash_at)])
    trainer.resume_or_load(resume=resume)
    if crash_at is None:
        trainer.train()
    else:
        with pytest.raises(Crash):
            trainer.train()
    return trainer


def final_state(trainer):
    model = trainer._trainer.model
    params = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    normaliser = getattr(model, "loss_normalizer", None)
    return params, buffers, normaliser


def assert_same(a, b):
    (pa, ba, na), (pb, bb, nb) = a, b
    assert pa.keys() == pb.keys() and ba.keys() == bb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), f"trainable {name} differs"
    for name in ba:
        assert torch.equal(ba[name], bb[name]), f"buffer {name} differs"
    assert na == nb


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted runs' final states, per demo (built on first use)."""
    cache = {}

    def get(name):
        if name not in cache:
            out = str(tmp_path_factory.mktemp(f"straight_{name}"))
            cache[name] = final_state(run(demo_cfg(name, out), seed=0))
        return cache[name]

    return get


def crashed_run(name, out):
    run(demo_cfg(name, out), seed=0, crash_at=CRASH_AT)


@pytest.mark.parametrize("name", ["mask_rcnn", "retinanet", "upernet"])
def test_crash_and_resume_equals_the_uninterrupted_run(tmp_path, straight, name):
    expected = straight(name)
    out = str(tmp_path)
    crashed_run(name, out)
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_0000001.pth"  # the crash came before the next save
    # Another seed for the resumed process: what matters must come from the checkpoint.
    resumed = run(demo_cfg(name, out), seed=123, resume=True)
    assert resumed.start_iter == PERIOD
    assert_same(final_state(resumed), expected)
    if name == "retinanet":
        assert expected[2] is not None and expected[2] != 100  # the normaliser did move


def test_resume_without_the_training_state_differs(tmp_path, straight, monkeypatch):
    """The control: the same resume with the data position, RNGs and EMAs left out ends
    elsewhere, so the test above can fail."""
    out = str(tmp_path)
    crashed_run("retinanet", out)
    import e3va_d2.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "load_training_state", lambda *args: None)
    resumed = final_state(run(demo_cfg("retinanet", out), seed=123, resume=True))
    with pytest.raises(AssertionError):
        assert_same(resumed, straight("retinanet"))


def _loader(cfg, **kwargs):
    from detectron2.config import instantiate

    loader_cfg = cfg.dataloader.train
    dataset = instantiate(loader_cfg.dataset)
    mapper = instantiate(loader_cfg.mapper)
    return build_resumable_train_loader(
        dataset, mapper=mapper, total_batch_size=3, seed=7, **kwargs
    )


def _signature(batch):
    return [(d["file_name"], d["image"].sum().item()) for d in batch]


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_state_replays_buckets_and_continues_the_stream(tmp_path, workers):
    cfg = demo_cfg("mask_rcnn", str(tmp_path))
    reference = iter(_loader(cfg, num_workers=0))
    expected = [_signature(next(reference)) for _ in range(10)]

    first = _loader(cfg, num_workers=workers)
    stream = iter(first)
    for taken in range(1, 8):  # stop where an aspect-ratio bucket holds leftovers
        assert _signature(next(stream)) == expected[taken - 1]
        state = first.state_dict()
        if state["pending"]:
            break
    assert state["pending"] and state["next_position"] > 3 * taken and state["seed"] == 7
    second = _loader(cfg, num_workers=workers)
    second.load_state_dict(state)
    assert second.state_dict() == state  # saved again before it is iterated: nothing lost
    stream = iter(second)
    assert [_signature(next(stream)) for _ in expected[taken:]] == expected[taken:]


def test_loader_draws_nothing_from_the_global_rng(tmp_path):
    cfg = demo_cfg("mask_rcnn", str(tmp_path))
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    stream = iter(_loader(cfg, num_workers=0))
    for _ in range(3):
        next(stream)
    assert torch.equal(torch.rand(3), expected)


def test_config_loaders_are_resumable():
    for config in ("mask_rcnn_swin_demo_e3va.py", "retinanet_swin_demo_e3va.py",
                   "upernet_swin_demo_e3va.py"):
        cfg = load_config(os.path.join(ROOT, "configs/Shapes", config), [])
        assert cfg.dataloader.train._target_ is build_resumable_train_loader, config


class FakeGPUs:
    """torch.cuda's RNG calls on ``count`` visible GPUs, this process on ``current``; a state
    per GPU (a one-byte tensor). Restoring a GPU that is not visible fails, as CUDA does."""

    def __init__(self, monkeypatch, count, current, states=None):
        self.count, self.current = count, current
        self.states = states or {i: torch.tensor([i], dtype=torch.uint8) for i in range(count)}
        for name in ("is_available", "is_initialized"):
            monkeypatch.setattr(torch.cuda, name, lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: self.current)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: self.count)
        monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": self._get())
        monkeypatch.setattr(torch.cuda, "set_rng_state",
                            lambda state, device="cuda": self._set(self.current, state))
        monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                            lambda: [self.states[i] for i in range(self.count)])
        monkeypatch.setattr(torch.cuda, "set_rng_state_all", lambda states: [
            self._set(i, s) for i, s in enumerate(states)])

    def _get(self):
        return self.states[self.current].clone()

    def _set(self, device, state):
        if device >= self.count:
            raise RuntimeError("CUDA error: invalid device ordinal")
        self.states[device] = state.clone()


def test_the_cuda_rng_state_is_the_process_gpus_and_restores_with_fewer_gpus(monkeypatch):
    """Rank 3 of a run on 8 GPUs saves its own GPU's state, and a resume on one GPU restores it
    (a state for every visible GPU could not be restored where fewer are visible)."""
    from e3va_d2.engine.resume import rng_state, set_rng_state

    FakeGPUs(monkeypatch, count=8, current=3)
    state = rng_state()
    assert torch.equal(state["cuda"], torch.tensor([3], dtype=torch.uint8))
    one = FakeGPUs(monkeypatch, count=1, current=0)
    set_rng_state(state)
    assert torch.equal(one.states[0], torch.tensor([3], dtype=torch.uint8))
    # A checkpoint from before, one state per visible GPU: this process's GPU's is restored.
    two = FakeGPUs(monkeypatch, count=2, current=1)
    set_rng_state(dict(state, cuda=[torch.tensor([v], dtype=torch.uint8) for v in (5, 6)]))
    assert two.states[1].item() == 6 and two.states[0].item() == 0
