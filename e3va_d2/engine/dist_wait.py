"""Waits for other processes that say what they wait for, and end.

A process whose peer froze or never started used to wait silently for torch's 30 minutes.
:func:`announced_wait` logs what is awaited and its timeout, repeats it while the wait lasts,
and the timeout itself (``train.dist_timeout_minutes``, yacs ``DIST_TIMEOUT_MINUTES``) is what
the process group is created with, so every collective ends in an error, not a hang.
"""
from __future__ import annotations

import contextlib
import logging
import threading
import time
from datetime import timedelta
from typing import Iterator

__all__ = ["announced_wait"]

logger = logging.getLogger("e3va_d2.launch")


def _make_visible() -> None:
    """A freshly spawned worker has no logging set up yet (its main function does that): give
    this logger a console handler of its own, so the waits before it are not silent."""
    if not logger.hasHandlers():
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("[%(asctime)s %(name)s]: %(message)s", "%H:%M:%S"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


@contextlib.contextmanager
def announced_wait(what: str, timeout: timedelta, every: float = 30.0) -> Iterator[None]:
    """Log ``what`` is awaited (with the timeout), then again every ``every`` seconds until
    the block ends; a block that ends by timing out gets its reason added to the error."""
    _make_visible()
    minutes = timeout.total_seconds() / 60
    logger.info("Waiting for %s (fails after %.3g min: train.dist_timeout_minutes).", what,
                minutes)
    start = time.monotonic()
    done = threading.Event()

    def remind():
        while not done.wait(every):
            logger.warning("Still waiting for %s after %.0f s (fails after %.3g min).", what,
                           time.monotonic() - start, minutes)

    thread = threading.Thread(target=remind, name="announced-wait", daemon=True)
    thread.start()
    try:
        yield
    except Exception as e:
        raise RuntimeError(
            f"Gave up waiting for {what} after {time.monotonic() - start:.0f} s (timeout "
            f"{minutes:.3g} min, train.dist_timeout_minutes / DIST_TIMEOUT_MINUTES): "
            f"{type(e).__name__}: {e}") from e
    finally:
        done.set()
        thread.join()
