"""float16 AMP with its dynamic grad scaler, the CUDA default on cards without bfloat16, run
on the CPU (whose autocast has float16 too): the trainer trains, E3VA and its spatial variant
train under every memory option with the gradients of float32, a resumed run equals the
uninterrupted one (the scaler's state included), and an overflow is skipped."""
import math
from itertools import repeat

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from e3va_d2.engine import E3VATrainer
from e3va_d2.engine.step import TrainStep
from e3va_d2.modeling import E3VATuning, SwinTransformer, TunedSwin
from e3va_d2.modeling.tuning import SpatialE3VATuning

from .conftest import TINY_SWIN
from .helpers import small_demo_cfg

FLOAT16 = ("train.amp.enabled=True", "train.amp.dtype=float16")
INITIAL_SCALE = 2.0 ** 16  # torch's GradScaler


class OverflowAt(HookBase):
    """Make one iteration's backward produce an inf gradient (as an fp16 overflow does)."""

    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_train(self):
        param = next(p for p in self.trainer._trainer.model.parameters() if p.requires_grad)
        param.register_hook(lambda g: g.clone().fill_(math.inf)
                            if self.trainer.iter == self.iteration else g)


class CrashBefore(HookBase):
    def __init__(self, iteration: int):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            raise InterruptedError(self.iteration)


def train(cfg, *hooks, resume=False, seed=0):
    seed_all_rng(seed)
    trainer = E3VATrainer(cfg)
    trainer.register_hooks(list(hooks))
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


def trainable(trainer):
    return {n: p.detach().clone() for n, p in trainer._trainer.model.named_parameters()
            if p.requires_grad}


class Record(HookBase):
    """Each iteration's loss and skipped-step count, and the box head's output dtypes."""

    def __init__(self):
        self.losses, self.skipped, self.dtypes = [], [], set()

    def before_train(self):
        self.trainer._trainer.model.roi_heads.box_head.register_forward_hook(
            lambda m, a, out: self.dtypes.add(out.dtype))

    def after_step(self):
        storage = self.trainer.storage
        self.losses.append(storage.history("total_loss").latest())
        self.skipped.append(storage.history("amp_skipped_steps").latest())


MAX_ITER, PERIOD, CRASH_AT = 4, 2, 3  # a checkpoint after iteration 1; crash as 3 starts
# The uninterrupted run is shared: keep its tests in one xdist worker (`--dist loadgroup`).
SHARES_THE_RUN = pytest.mark.xdist_group("test_float16_straight")


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The uninterrupted float16 run, with an overflow forced at iteration 0 (the scale the
    checkpoint of iteration 1 holds is then not a new scaler's)."""
    record = Record()
    out = str(tmp_path_factory.mktemp("straight"))
    trainer = train(small_demo_cfg(out, MAX_ITER, *FLOAT16, f"train.checkpointer.period={PERIOD}"),
                    OverflowAt(0), record)
    return trainer, record


@SHARES_THE_RUN
def test_the_trainer_trains_in_float16_on_cpu_with_a_grad_scaler(straight):
    trainer, record = straight
    step = trainer._trainer
    assert step.amp_dtype == torch.float16 and isinstance(step.grad_scaler, torch.amp.GradScaler)
    assert record.dtypes == {torch.float16}
    assert all(math.isfinite(v) for v in record.losses)
    assert record.losses[-1] < record.losses[0]  # it learns
    # The scaler halves its scale at each overflow (the forced one; a detector's first steps
    # may overflow too) and skips that update; the count is logged.
    skipped = step.precision.skipped_steps
    assert record.skipped[-1] == skipped and 1 <= skipped < MAX_ITER
    assert step.grad_scaler.get_scale() == INITIAL_SCALE / 2**skipped


@SHARES_THE_RUN
def test_a_float16_resume_equals_the_uninterrupted_run_scaler_included(straight, tmp_path):
    """The resumed run continues with the checkpoint's scale and growth count (a new scaler's
    would overflow and skip again, and round the gradients of float16 activations otherwise)."""
    straight, _ = straight
    cfg = small_demo_cfg(str(tmp_path), MAX_ITER, *FLOAT16, f"train.checkpointer.period={PERIOD}")
    with pytest.raises(InterruptedError):
        train(cfg, OverflowAt(0), CrashBefore(CRASH_AT))
    resumed = train(cfg, resume=True, seed=123)
    assert resumed.start_iter == PERIOD
    expected = straight._trainer.grad_scaler.state_dict()
    assert resumed._trainer.grad_scaler.state_dict() == expected
    assert resumed._trainer.precision.skipped_steps == straight._trainer.precision.skipped_steps
    ours, theirs = trainable(resumed), trainable(straight)
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[n], theirs[n]) for n in ours)


# -- E3VA and e3va_spatial, every memory option, on the tiny Swin ----------------------------

METHODS = {
    "e3va": E3VATuning(rank=4),
    "saved_input_dtype=bfloat16": E3VATuning(rank=4, saved_input_dtype="bfloat16"),
    "saved_input_dtype=float16": E3VATuning(rank=4, saved_input_dtype="float16"),
    "saved_input_dtype=float8_e4m3fn": E3VATuning(rank=4, saved_input_dtype="float8_e4m3fn"),
    "recompute_adapters=False": E3VATuning(rank=4, recompute_adapters=False),
    "recompute_branches=block": E3VATuning(rank=4, recompute_branches="block"),
    "recompute_branches=stage": E3VATuning(rank=4, recompute_branches="stage"),
    "trunk_dtype=bfloat16": E3VATuning(rank=4, trunk_dtype="bfloat16"),
    "trunk_dtype=float16": E3VATuning(rank=4, trunk_dtype="float16"),
    "e3va_spatial": SpatialE3VATuning(rank=4),
    "e3va_spatial:saved_input_dtype=float8_e4m3fn": SpatialE3VATuning(
        rank=4, saved_input_dtype="float8_e4m3fn"),
    "feedback_depth=3": E3VATuning(rank=4, feedback_depth=3),
    "e3va_spatial:feedback_depth=3:feedback_lora=True": SpatialE3VATuning(
        rank=4, feedback_depth=3, feedback_lora=True),
}


class FeatureRegression(torch.nn.Module):
    """The tiny backbone regressing its outputs onto fixed random targets (a loss whose
    gradient the output norms do not cancel, unlike the outputs' own energy)."""

    def __init__(self, tuning):
        super().__init__()
        self.backbone = TunedSwin(trunk=SwinTransformer(**TINY_SWIN), tuning=tuning)

    def forward(self, images):
        outputs = self.backbone(images)
        loss = 0
        for i, (_, f) in enumerate(sorted(outputs.items())):
            target = torch.randn(f.shape, generator=torch.Generator().manual_seed(i))
            loss = loss + (f.float() - target).square().mean()
        return {"loss": loss}


class GradientCopy(HookBase):
    """The gradients a hook sees after each backward (unscaled: a clipping hook's view)."""

    def __init__(self, model):
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.seen = []

    def after_backward(self):
        self.seen.append([p.grad.clone() for p in self.params])


def float16_steps(tuning, steps=2, lr=0.05, overflow_at=None):
    torch.manual_seed(0)
    model = FeatureRegression(tuning).train()
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    reference = [p.grad for p in _float32_gradients(model, images)]
    params = [p for p in model.parameters() if p.requires_grad]
    step = TrainStep(model, repeat(images), torch.optim.SGD(params, lr=lr),
                     amp_dtype=torch.float16)
    probe = GradientCopy(model)
    step.register_hooks([probe])
    if overflow_at is not None:
        params[0].register_hook(lambda g: g.clone().fill_(math.inf)
                                if step.iter == overflow_at else g)
    weights, scales = [], []
    with EventStorage() as storage:
        for i in range(steps):
            step.iter = storage.iter = i
            weights.append([p.detach().clone() for p in params])
            step.run_step()
            scales.append(step.grad_scaler.get_scale())
        losses = [v for v, _ in storage.history("total_loss").values()]
    return dict(step=step, reference=reference, seen=probe.seen, losses=losses,
                weights=weights + [[p.detach().clone() for p in params]], scales=scales)


def _float32_gradients(model, images):
    """The float32 gradients of the same model on the same images (left in a copy)."""
    import copy

    twin = copy.deepcopy(model)
    twin(images)["loss"].backward()
    return [p for p in twin.parameters() if p.requires_grad]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_float16_with_the_grad_scaler_trains_every_e3va_option(name):
    run = float16_steps(METHODS[name])
    assert all(math.isfinite(v) for v in run["losses"])
    assert run["losses"][-1] < run["losses"][0]
    assert run["step"].precision.skipped_steps == 0 and run["scales"][-1] == INITIAL_SCALE
    # What the hooks see after the first backward is float32's gradient, unscaled.
    for seen, exact in zip(run["seen"][0], run["reference"]):
        assert seen.dtype == torch.float32 and seen.isfinite().all()
        torch.testing.assert_close(seen, exact, rtol=0.1, atol=0.05 * exact.abs().max().item())


def test_an_overflow_is_skipped_and_halves_the_scale():
    run = float16_steps(METHODS["e3va"], steps=2, overflow_at=0)
    before, after_overflow, after_next = run["weights"]
    assert all(torch.equal(a, b) for a, b in zip(before, after_overflow))  # nothing moved
    assert run["scales"] == [INITIAL_SCALE / 2, INITIAL_SCALE / 2]
    assert run["step"].precision.skipped_steps == 1
    assert any(not torch.equal(a, b) for a, b in zip(after_overflow, after_next))  # then trains
