"""Crash-safe checkpoint files: write to a temp file, fsync, rename.

A job killed mid-save never leaves a truncated checkpoint or ``last_checkpoint`` behind; the
temp files such a kill leaves are removed by the next checkpointer of that folder. A save that
fails (a full disk) is an error naming the file, and leaves the previous file in place.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import secrets
import shutil
import time
from typing import IO, Any, Callable, List

import torch
from detectron2.utils.file_io import PathManager

__all__ = [
    "CheckpointWriteError",
    "atomic_save",
    "atomic_write",
    "is_local",
    "remove_stale_temporaries",
]

logger = logging.getLogger("e3va_d2.checkpoint")


def is_local(path: str) -> bool:
    """Plain file-system paths only; other path handlers (s3://, manifold://, ...) cannot
    rename atomically, so they keep detectron2's direct writes."""
    return "://" not in path


class CheckpointWriteError(OSError):
    """A checkpoint could not be written (a full disk...); the message names the file."""


def _write_failed(path: str, folder: str, error: BaseException) -> CheckpointWriteError:
    try:
        free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB are free there"
    except OSError:
        free = "its free space is unknown"
    return CheckpointWriteError(
        f"Could not write {path} ({type(error).__name__}: {str(error).strip()}); {free}: is the "
        f"disk full? Nothing was replaced: {os.path.basename(path)} is as it was before. Free "
        "some space (or set another output folder) and run again.")


def atomic_write(path: str, write: Callable[[IO[bytes]], None]) -> None:
    """Write through ``write`` into a hidden temp file beside ``path``, fsync, then rename.

    ``os.replace`` is atomic within a folder, so readers see the old file or the new one,
    never a partial one. The temp name does not end in ``.pth``, so a file left by a killed
    process is never taken for a checkpoint.
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # torch's zip writer: "unexpected pos" on a full disk
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise _write_failed(path, folder, e) from e
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    # Make the rename itself durable (POSIX; a no-op where folders cannot be opened).
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def atomic_save(obj: Any, path: str) -> None:
    """``torch.save(obj, path)`` that never leaves a partial file at ``path``."""
    if not is_local(path):
        with PathManager.open(path, "wb") as f:
            torch.save(obj, f)
        return
    atomic_write(path, lambda f: torch.save(obj, f))


_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what atomic_write leaves when killed


_STALE_SECONDS = 3600  # no save takes an hour; a younger temp file may be another process's


def remove_stale_temporaries(folder: str) -> List[str]:
    """Delete the temp files that killed saves left in ``folder``: those older than an hour,
    so that a live save of another process (an eval next to a running training) is kept."""
    removed = []
    now = time.time()
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if _TEMPORARY.match(name) and now - os.path.getmtime(path) > _STALE_SECONDS:
                with contextlib.suppress(OSError):
                    os.unlink(path)
                    removed.append(name)
    if removed:
        logger.info("Removed %d temporary files of interrupted saves in %s", len(removed), folder)
    return removed
