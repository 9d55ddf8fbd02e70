"""Worker processes die with their launcher.

``torch.multiprocessing.spawn`` workers outlive a launcher killed with SIGKILL (the OOM killer,
``kill -9``, a scheduler): orphaned, they keep training and writing the output folder, racing
the next run. :func:`die_with_parent` ties a worker's life to its parent's: on Linux the kernel
kills it when the parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere a daemon thread
polls the parent's pid every second.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time

__all__ = ["die_with_parent"]

_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def _set_parent_death_signal(signum: int) -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch(parent: int, interval: float) -> None:
    while os.getppid() == parent:
        time.sleep(interval)
    os._exit(1)  # the launcher is gone: nothing to clean up that it would wait for


def die_with_parent(parent: int, interval: float = 1.0) -> None:
    """Make this process exit as soon as ``parent`` (the pid that started it) dies.

    ``parent`` is passed in rather than read here: if the launcher died before this call, the
    process was already re-parented, and ``os.getppid()`` would name its new parent.
    """
    if _set_parent_death_signal(signal.SIGKILL):
        if os.getppid() != parent:  # died before the signal was armed
            os._exit(1)
        return
    threading.Thread(target=_watch, args=(parent, interval), name="die-with-parent",
                     daemon=True).start()
