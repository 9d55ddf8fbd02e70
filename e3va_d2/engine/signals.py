"""SIGTERM (preemption, ``scancel``, ``kill``) saves a checkpoint, then stops the run.

Without this a preempted job loses everything since the last periodic checkpoint. The handler
only sets a flag; :class:`StopOnSignal` acts at the next iteration boundary, where the weights,
optimizer and data position agree: every process agrees to stop at the same iteration (one
tiny all-reduce per iteration), the main process saves ``model_<iter>.pth`` and tags it
``last_checkpoint``, and every process exits with ``128 + signal`` (143 for SIGTERM), so a job
scheduler sees a failure and ``--resume`` continues exactly.

During an evaluation (a periodic one, or the final one after the last step) the handler stops
the evaluation at once instead: it keeps no training state, and the final one of a large model
can take an hour a preempted job does not have. A periodic evaluation then ends in the save and
stop above. After the final one nothing is left to save (the last step's checkpoint is tagged
``last_checkpoint``), and the delta, which the run writes after it, is not written: the process
exits 143, and ``--resume`` evaluates that checkpoint and writes the delta.

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
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm

__all__ = ["EvaluationStopped", "StopOnSignal", "TrainingStopped", "forward_signals_to_children"]

logger = logging.getLogger("e3va_d2.trainer")


class TrainingStopped(SystemExit):
    """The run stopped on a signal after saving a checkpoint. A ``SystemExit``: detectron2's
    loop does not log it as a crash, and the process exits with its code (128 + signal)."""


class EvaluationStopped(BaseException):
    """Raised by the signal handler inside an evaluation. A ``BaseException``, as
    ``KeyboardInterrupt`` is: no ``except Exception`` on the way may swallow it."""


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
        self._evaluating = False
        self._stopped = False  # after_step raised TrainingStopped

    def _handle(self, signum, frame) -> None:
        # Only a flag (logging or saving inside a signal handler could deadlock), or, inside an
        # evaluation, which holds no training state, an exception that ends it.
        self.received = signum
        if self._evaluating:
            raise EvaluationStopped(signum)

    def before_train(self):
        self.received = None
        self._stopped = False
        if threading.current_thread() is not threading.main_thread():
            logger.info("Training outside the main thread: SIGTERM will not save a checkpoint.")
            return
        self._previous = {s: signal.signal(s, self._handle) for s in self.signals}
        for hook in self.trainer._hooks:
            evaluate = getattr(hook, "_func", None)
            if isinstance(hook, hooks.EvalHook) and evaluate is not None \
                    and not getattr(evaluate, "stops_on_signal", False):
                hook._func = self._interruptible(evaluate)

    def _interruptible(self, evaluate: Callable[[], dict]) -> Callable[[], dict]:
        """``evaluate``, ended by the signal (no results), and not started after it."""

        def run() -> dict:
            try:
                if self.received is not None:
                    return {}
                try:
                    self._evaluating = True
                    return evaluate()
                finally:
                    self._evaluating = False
            except EvaluationStopped:
                logger.warning("%s: stopped the evaluation at iteration %d.",
                               signal.Signals(self.received).name, self.trainer.iter)
                return {}

        run.stops_on_signal = True
        return run

    def after_train(self):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous = {}
        if self.received is not None and not self._stopped \
                and self.trainer.iter >= self.trainer.max_iter:
            self._stop_after_the_last_step()

    def _stop_after_the_last_step(self) -> None:
        """The signal came after the last step (in the final evaluation): the last step's
        checkpoint is all training needs; no collective here, the processes may be anywhere
        in the evaluation."""
        last_step = self.trainer.max_iter - 1
        name = f"model_{last_step:07d}"
        saved = os.path.basename(self.checkpointer.get_checkpoint_file()) \
            if self.checkpointer.has_checkpoint() else ""
        if comm.is_main_process() and saved not in ("model_final.pth", f"{name}.pth"):
            finished, self.trainer.iter = self.trainer.iter, last_step  # what --resume reads
            try:
                self.checkpointer.save(name, iteration=last_step)
            finally:
                self.trainer.iter = finished
            saved = f"{name}.pth"
        signum = self.received
        logger.warning(
            "Stopped by %s after the last iteration, in the final evaluation: %s in %s holds the "
            "trained model; the delta was not written. --resume evaluates it and writes the "
            "delta.", signal.Signals(signum).name, saved, self.checkpointer.save_dir)
        raise TrainingStopped(128 + signum)

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
        self._stopped = True
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
