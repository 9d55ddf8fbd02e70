"""SIGTERM (preemption, ``scancel``, ``kill``) saves a checkpoint, then stops the run.

Without this a preempted job loses everything since the last periodic checkpoint. The handler
only sets a flag; :class:`StopOnSignal` acts at the next iteration boundary, where the weights,
optimizer and data position agree: every process agrees to stop at the same iteration (one
tiny all-reduce per iteration), the main process saves ``model_<iter>.pth`` and tags it
``last_checkpoint``, and every process exits with ``128 + signal`` (143 for SIGTERM), so a job
scheduler sees a failure and ``--resume`` continues exactly.

:func:`forward_signals_to_children` makes a launcher pass SIGTERM on to its worker processes.
"""
from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import signal
import threading
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = ["StopOnSignal", "TrainingStopped", "forward_signals_to_children"]

logger = logging.getLogger("e3va_d2.trainer")


class TrainingStopped(SystemExit):
    """The run stopped on a signal after saving a checkpoint. A ``SystemExit``: detectron2's
    loop does not log it as a crash, and the process exits with its code (128 + signal)."""


class StopOnSignal(HookBase):
    """Save a checkpoint and stop at the next iteration boundary after one of ``signals``.

    Args:
        checkpointer: the trainer's checkpointer (the main process saves through it).
        before_save: called on every process before the main one saves (to gather the
            training state of all ranks), or None.
    """

    def __init__(self, checkpointer, signals: Sequence[int] = (signal.SIGTERM,),
                 before_save: Optional[Callable[[], None]] = None):
        self.checkpointer = checkpointer
        self.signals = tuple(signals)
        self.before_save = before_save
        self.received: Optional[int] = None
        self._previous = {}

    def _handle(self, signum, frame) -> None:
        # Only a flag: logging or saving inside a signal handler could deadlock.
        self.received = signum

    def before_train(self):
        self.received = None
        if threading.current_thread() is not threading.main_thread():
            logger.info("Training outside the main thread: SIGTERM will not save a checkpoint.")
            return
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}

    def after_train(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}

    def after_step(self):
        if not _any_process(self.received is not None):
            return
        iteration = self.trainer.iter
        name = f"model_{iteration:07d}"
        if self.before_save is not None:
            self.before_save()
        if comm.is_main_process():
            last = self.checkpointer.get_checkpoint_file() if self.checkpointer.has_checkpoint() \
                else ""
            if os.path.basename(last) != f"{name}.pth":  # the periodic hook may have just saved
                self.checkpointer.save(name, iteration=iteration)
        comm.synchronize()
        signum = self.received or signal.SIGTERM
        logger.warning(
            "Stopped by %s after iteration %d; saved %s.pth in %s. Continue with --resume.",
            signal.Signals(signum).name, iteration, name, self.checkpointer.save_dir)
        raise TrainingStopped(128 + signum)


def _any_process(flag: bool) -> bool:
    """Whether ``flag`` is set on any process (all must stop at the same iteration, or the
    next step's all-reduce would wait forever for the ones that stopped)."""
    if comm.get_world_size() == 1:
        return flag
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    value = torch.tensor([1 if flag else 0], dtype=torch.int32, device=device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item())


class Forwarded:
    """What :func:`forward_signals_to_children` passed on: the last signal, or None."""

    received: Optional[int] = None


@contextlib.contextmanager
def forward_signals_to_children(
    signals: Sequence[int] = (signal.SIGTERM,)
) -> Iterator[Forwarded]:
    """In a launcher that waits for its worker processes: pass these signals on to them (so
    each saves and stops) instead of dying and leaving them orphaned. Yields a
    :class:`Forwarded`, to tell the workers' exit on that signal from a failure."""
    forwarded = Forwarded()
    if threading.current_thread() is not threading.main_thread():
        yield forwarded
        return

    def forward(signum, frame):
        forwarded.received = signum
        children = multiprocessing.active_children()
        logging.getLogger(__name__).warning(
            "Launcher received %s: passing it on to %d worker processes.",
            signal.Signals(signum).name, len(children))
        for child in children:
            with contextlib.suppress(ProcessLookupError, TypeError):
                os.kill(child.pid, signum)

    previous = {s: signal.signal(s, forward) for s in signals}
    try:
        yield forwarded
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
