"""Generated dataset folders that appear complete or not at all.

Why: several processes (DDP ranks, dataloader workers, parallel tests) may ask for the same
generated dataset at once, and a generation may be killed. Each writer fills its own temp folder
next to the target, marks it complete and renames it into place; a loser of the race discards its
copy and uses the winner's. A killed writer leaves only a temp folder, never a half dataset.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from typing import Callable

from .datasets import DatasetError

__all__ = ["MARKER", "is_complete", "build_folder_once"]

logger = logging.getLogger(__name__)

MARKER = "COMPLETE"
ENV_VAR = "E3VA_D2_DATASETS"  # where generated datasets go (shapes.default_cache_root)
_STALE_TMP_SECONDS = 24 * 3600


def is_complete(folder: str) -> bool:
    return os.path.isfile(os.path.join(folder, MARKER))


def _remove_stale_tmp(root: str, name: str) -> None:
    """Delete temp folders of killed writers (older than a day, so never a live one)."""
    prefix, now = f".{name}.tmp-", time.time()
    for entry in os.listdir(root):
        if entry.startswith(prefix):
            path = os.path.join(root, entry)
            try:
                if now - os.path.getmtime(path) > _STALE_TMP_SECONDS:
                    shutil.rmtree(path, ignore_errors=True)
            except OSError:
                pass


def _check_root(root: str) -> None:
    """The cache root must be a folder (or not exist yet): ``makedirs`` on a file or a dangling
    link fails with a bare ``FileExistsError``."""
    if not os.path.lexists(root) or os.path.isdir(root):
        return
    what = (f"a symbolic link to {os.readlink(root)}, which does not exist"
            if os.path.islink(root) else "a file, not a folder")
    env = os.environ.get(ENV_VAR)
    source = (f"{ENV_VAR}={env}" if env and os.path.abspath(os.path.expanduser(env)) == root
              else f"the cache folder {root}")
    raise DatasetError(
        f"{source} is {what}: generated datasets are written into that folder. Set {ENV_VAR} "
        "to a folder (it is created if missing), or unset it for the default "
        "~/.cache/e3va_d2/datasets.")


def build_folder_once(root: str, name: str, write: Callable[[str], None], what: str) -> str:
    """``root/name``, written first by ``write(folder)`` if it is not complete yet.

    ``write`` fills an empty folder; the ``COMPLETE`` marker is added after it returns. ``what``
    names the content in messages. Returns the folder's path.
    """
    final = os.path.join(root, name)
    if is_complete(final):
        return final
    _check_root(root)
    if os.path.exists(final):
        # Another process may have renamed its complete copy into place since the check above.
        if is_complete(final):
            return final
        raise DatasetError(
            f"{what} folder '{final}' exists but has no '{MARKER}' marker, so it is incomplete "
            "(not written by e3va_d2). Delete it and retry."
        )
    os.makedirs(root, exist_ok=True)
    _remove_stale_tmp(root, name)
    tmp = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=root)
    try:
        os.chmod(tmp, 0o755)  # mkdtemp uses 0700; the cache may be shared
        start = time.perf_counter()
        write(tmp)
        if not is_complete(tmp):
            open(os.path.join(tmp, MARKER), "w").close()
        try:
            os.rename(tmp, final)
        except OSError:
            if not is_complete(final):
                raise
            logger.info("Another process wrote %s first; using its copy.", final)
        else:
            logger.info("Wrote %s to %s (%.1fs).", what, final, time.perf_counter() - start)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final
