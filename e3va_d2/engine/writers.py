"""The training writers: detectron2's defaults, with a console printer safe to call twice.

detectron2's ``CommonMetricPrinter`` estimates the ETA from its previous write while the
iteration timer has no data yet (the first iterations) and divides by zero when asked to
write twice at one iteration. That happens when a run stops by exception in its first steps
(SIGTERM's :class:`~e3va_d2.engine.signals.StopOnSignal`): ``PeriodicWriter.after_train``
writes again, and the ZeroDivisionError replaces the clean stop.
"""
from __future__ import annotations

from detectron2.engine.defaults import default_writers
from detectron2.utils.events import CommonMetricPrinter, get_event_storage

__all__ = ["OncePerIterationPrinter", "training_writers"]


class OncePerIterationPrinter(CommonMetricPrinter):
    """Prints training progress at most once per iteration (a second call adds nothing)."""

    def __init__(self, max_iter=None, window_size: int = 20):
        super().__init__(max_iter, window_size=window_size)
        self._printed_iteration = None

    def write(self):
        iteration = get_event_storage().iter
        if iteration == self._printed_iteration:
            return
        self._printed_iteration = iteration
        super().write()


def training_writers(output_dir: str, max_iter: int) -> list:
    """detectron2's ``default_writers`` (console, metrics.json, TensorBoard), with the console
    printer replaced by :class:`OncePerIterationPrinter`."""
    return [OncePerIterationPrinter(max_iter) if type(w) is CommonMetricPrinter else w
            for w in default_writers(output_dir, max_iter)]
