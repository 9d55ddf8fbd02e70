"""Startup checks of training settings: each a clear error naming the key, raised before a
model is built, instead of a run that trains nothing (and exits 0) or dies deep in a scheduler.
"""
from __future__ import annotations

import logging

from ..config import ConfigError

__all__ = ["check_max_iter", "check_process_count", "check_resume_iteration"]

logger = logging.getLogger("e3va_d2.trainer")


def check_max_iter(max_iter, key: str) -> None:
    """``max_iter`` must be an integer >= 1: 0 or less would train nothing, yet evaluate and
    save an untrained model as if it were trained."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"{key}={max_iter!r}: the number of training iterations must be an "
                          f"integer >= 1 (to only evaluate, use --eval-only)")


def check_resume_iteration(start_iter: int, max_iter: int, key: str, checkpoint: str) -> None:
    """After ``--resume``: a checkpoint beyond ``max_iter`` is an error (the run would do
    nothing); one exactly at the end is a finished run, said in the log."""
    if start_iter > max_iter:
        raise ConfigError(
            f"--resume: {checkpoint} was saved after iteration {start_iter - 1}, but {key}="
            f"{max_iter}, so there is nothing left to train. Raise {key} above {start_iter - 1} "
            "to train on, or evaluate that checkpoint with --eval-only.")
    if start_iter == max_iter:
        logger.warning("--resume: %s is the end of the run (%s=%d): nothing left to train.",
                       checkpoint, key, max_iter)


def check_process_count(num_processes_per_machine, num_machines) -> None:
    """``--num-gpus 0`` would start no process at all and exit 0 without a word."""
    for value, flag in ((num_processes_per_machine, "--num-gpus"), (num_machines,
                                                                     "--num-machines")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} {value}: must be >= 1 (processes per machine; without "
                             "CUDA, --num-gpus N starts N CPU processes)")
