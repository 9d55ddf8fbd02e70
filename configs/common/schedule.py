"""Step schedules written in epochs (or any unit) and relative to ``train.max_iter``.

The multiplier is scale-invariant: ``LRMultiplier`` feeds it the fraction of training done, so
``train.max_iter=...`` on the command line shortens or lengthens the whole schedule, steps
included, without editing milestones.
"""
import math

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler, PolynomialDecayParamScheduler


def iterations_per_epoch(num_images: int, total_batch_size: int) -> int:
    return math.ceil(num_images / total_batch_size)


def step_schedule(milestones, total, warmup_fraction: float = 0.0, warmup_factor: float = 0.001):
    """LR x1, then x0.1 after ``milestones[0]``, x0.01 after ``milestones[1]`` (of ``total``),
    with a linear warmup over ``warmup_fraction`` of training."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01], milestones=list(milestones), num_updates=total
        ),
        warmup_length=warmup_fraction,
        warmup_factor=warmup_factor,
    )


def poly_schedule(power: float = 1.0, warmup_fraction: float = 0.0, warmup_factor: float = 1e-6):
    """LR x(1 - fraction of training done) ** ``power`` (mmseg's "poly", min_lr 0), with a linear
    warmup over ``warmup_fraction`` of training."""
    return L(WarmupParamScheduler)(
        scheduler=L(PolynomialDecayParamScheduler)(base_value=1.0, power=power),
        warmup_length=warmup_fraction,
        warmup_factor=warmup_factor,
    )
