"""The console printer survives a second write at one iteration (a run stopped by SIGTERM in
its first steps writes again from ``PeriodicWriter.after_train``)."""
import logging

import pytest
from detectron2.utils.events import CommonMetricPrinter, EventStorage

from e3va_d2.engine.writers import OncePerIterationPrinter, training_writers


def _write_twice_at_iteration_one(printer):
    with EventStorage(start_iter=0) as storage:
        storage.put_scalar("total_loss", 1.0)
        printer.write()
        storage.iter = 1  # no "time" yet: the iteration timer skips its warm-up iterations
        storage.put_scalar("total_loss", 0.5)
        printer.write()
        printer.write()


def test_detectron2_printer_divides_by_zero_on_a_second_write():
    with pytest.raises(ZeroDivisionError):
        _write_twice_at_iteration_one(CommonMetricPrinter(max_iter=100))


def test_once_per_iteration_printer_writes_once():
    """One line per iteration: iteration 0's, then iteration 1's once although written three
    times (detectron2's printer would print each call, or fail as above)."""
    printer = OncePerIterationPrinter(max_iter=100)
    lines = []

    class Collect(logging.Handler):
        def emit(self, record):
            lines.append(record.getMessage())

    handler, level = Collect(), printer.logger.level
    printer.logger.addHandler(handler)
    printer.logger.setLevel(logging.INFO)
    try:
        _write_twice_at_iteration_one(printer)
    finally:
        printer.logger.removeHandler(handler)
        printer.logger.setLevel(level)
    assert len(lines) == 2, lines
    assert "iter: 0" in lines[0] and "iter: 1" in lines[1], lines
    assert "total_loss: 1 " in lines[0] and "total_loss: 0.75" in lines[1], lines  # a median


def test_training_writers_swap_only_the_console_printer(tmp_path):
    writers = training_writers(str(tmp_path), 100)
    assert [type(w).__name__ for w in writers][0] == "OncePerIterationPrinter"
    assert not any(type(w) is CommonMetricPrinter for w in writers)
    assert len(writers) == 3
