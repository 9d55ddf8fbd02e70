"""One training run per output folder.

Two runs writing one folder interleave their logs and overwrite each other's checkpoints, both
exiting 0. :class:`OutputDirLock` holds ``<output_dir>/.run.lock`` while a run writes the folder:
an exclusive ``flock`` (which the kernel releases when its process dies, however it dies),
on a file that says who holds it (pid, host, start time) for the error message. A lock left by
a killed run is therefore free to take: it is taken over, with a line in the log naming the run
that left it. A live one is a clear error naming its pid, host and the folder.

The lock file is opened with ``O_NOFOLLOW``: a symbolic link planted under its name is refused,
naming it, instead of truncating the file it points to.

Where ``flock`` is not supported (some network file systems), the file's pid is checked
instead: a dead pid on this host is a stale lock; a lock of another host is refused.
"""
from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import socket
import time
from typing import Optional

__all__ = ["LOCK_NAME", "LinkedLockError", "OutputDirLock", "OutputDirLockedError"]

logger = logging.getLogger("e3va_d2.trainer")

LOCK_NAME = ".run.lock"


class OutputDirLockedError(RuntimeError):
    """Another live run holds the output folder."""


class LinkedLockError(RuntimeError):
    """The lock file's name is a symbolic link: writing the lock would overwrite its target."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class OutputDirLock:
    """``with OutputDirLock(folder):`` hold the folder for one run (see the module docstring).

    Reentrant within a process is not needed and not supported: a second lock of the same
    folder in the same process fails like another run's would.
    """

    def __init__(self, folder: str):
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)
        self._fd: Optional[int] = None

    def _holder(self) -> dict:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                return json.loads(f.read(4096) or b"{}")
        except (OSError, ValueError):
            return {}

    def _open(self) -> int:
        """The lock file, created if missing, never through a symbolic link."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            if e.errno != errno.ELOOP or not os.path.islink(self.path):
                raise
            raise LinkedLockError(
                f"{self.path} is a symbolic link (to {os.readlink(self.path)}): a run never "
                "writes through a link in its output folder, as that would overwrite the file "
                "it points to. Remove the link, or set another output folder "
                "(train.output_dir=... / OUTPUT_DIR ...).") from None

    def _refuse(self, holder: dict) -> None:
        pid, host = holder.get("pid", "?"), holder.get("host", "?")
        raise OutputDirLockedError(
            f"{os.path.abspath(self.folder)} is in use by another run (pid {pid} on {host}, "
            f"started {holder.get('started', '?')}): two runs in one folder overwrite each "
            f"other's checkpoints. Wait for it, stop it, or set another output folder "
            f"(train.output_dir=... / OUTPUT_DIR ...).")

    def acquire(self) -> OutputDirLock:
        import fcntl

        os.makedirs(self.folder, exist_ok=True)
        while True:
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                self._refuse(self._holder())
            except OSError as e:
                if e.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS):
                    os.close(fd)
                    raise
                self._check_pid_only()
            # The holder may have released and removed the file between our open and flock:
            # then we locked an unlinked file; start again on the current one.
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        previous = self._holder()
        if previous and previous.get("pid") != os.getpid():
            logger.warning("Taking over %s: the run that left it (pid %s on %s, started %s) is "
                           "no longer running.", self.path, previous.get("pid"),
                           previous.get("host"), previous.get("started"))
        record = json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                             "started": time.strftime("%Y-%m-%d %H:%M:%S")}).encode()
        os.ftruncate(fd, 0)
        os.pwrite(fd, record, 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _check_pid_only(self) -> None:
        """No flock here: a live pid on this host, or any other host's lock, is in use."""
        holder = self._holder()
        if not holder or holder.get("pid") == os.getpid():
            return
        if holder.get("host") != socket.gethostname() or _pid_alive(int(holder.get("pid", 0))):
            self._refuse(holder)

    def release(self) -> None:
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still locked: nobody can take a half-released lock
        os.close(self._fd)  # releases the flock
        self._fd = None

    def __enter__(self) -> OutputDirLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
