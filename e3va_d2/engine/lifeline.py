"""Worker processes die with their launcher.

``torch.multiprocessing.spawn`` workers outlive a launcher killed with SIGKILL (the OOM killer,
``kill -9``, a scheduler): orphaned, they keep training and writing the output folder, racing
the next run. :func:`die_with_parent` ties a worker's life to its parent's: on Linux the kernel
kills it when the parent dies (``prctl(PR_SET_PDEATHSIG, SIGKILL)``); elsewhere a daemon thread
polls the parent's pid every second.

The same holds one level down: a training process's DataLoader workers (spawned, like their
parent) outlived it when the launcher was SIGKILLed, together with the resource tracker they
keep open (about 740 MB each, under pid 1; their own watchdog can hang on a full queue to a
dead reader). :func:`tie_loader_workers` arms every worker of a loader the same way, through
its ``worker_init_fn``, so the kernel takes them along with the process that reads them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from typing import Callable, Optional

__all__ = ["die_with_parent", "tie_loader_workers"]

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


class _DieWithReader:
    """A DataLoader ``worker_init_fn``: tie the worker to the process that reads it, then run
    the loader's own ``worker_init_fn``. A class, so that spawned workers can unpickle it."""

    def __init__(self, reader: int, then: Optional[Callable[[int], None]] = None):
        self.reader = reader
        self.then = then

    def __call__(self, worker_id: int) -> None:
        die_with_parent(self.reader)
        if self.then is not None:
            self.then(worker_id)


def tie_loader_workers(loader):
    """Make the worker processes of ``loader`` die with this process; returns ``loader``.

    ``loader``: a torch ``DataLoader``, a loader that passes its ``worker_init_fn`` attribute on
    to one (:class:`~e3va_d2.data.loader.ResumableTrainLoader`), or detectron2's training loader
    (an iterable over a ``DataLoader``, its ``dataset``). Anything else is returned as it is.
    Call it before the loader is first iterated.
    """
    import torch.utils.data as torchdata

    target = loader
    if not hasattr(target, "worker_init_fn") and isinstance(
            getattr(target, "dataset", None), torchdata.DataLoader):
        target = target.dataset  # detectron2's AspectRatioGroupedDataset
    if hasattr(target, "worker_init_fn") and not isinstance(target.worker_init_fn,
                                                            _DieWithReader):
        target.worker_init_fn = _DieWithReader(os.getpid(), target.worker_init_fn)
    return loader
