"""Step schedules written in epochs, converted to iterations once, when the config loads."""
import math

from detectron2.config import LazyCall as L
from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler


def iterations_per_epoch(num_images: int, total_batch_size: int) -> int:
    return math.ceil(num_images / total_batch_size)


def step_schedule(max_iter: int, milestones, warmup_iters: int = 500, warmup_factor: float = 0.001):
    """LR x1 until the first milestone, then x0.1, then x0.01; linear warmup first."""
    return L(WarmupParamScheduler)(
        scheduler=L(MultiStepParamScheduler)(
            values=[1.0, 0.1, 0.01],
            milestones=list(milestones),
            num_updates=max_iter,
        ),
        warmup_length=min(warmup_iters / max_iter, 1.0),
        warmup_factor=warmup_factor,
    )
