"""The output folder a run writes, checked before anything is written there.

A run opens some files of its folder in place (detectron2's ``config.yaml``, ``log.txt``,
``metrics.json``, the evaluators' files under ``inference/``): a symbolic link planted under one
of those names would make the run truncate and overwrite whatever file the link points to.
Checkpoints, ``last_checkpoint`` and deltas are safe (written to a temp file and renamed over
the name, which replaces a link instead of following it), and the run lock opens its file with
``O_NOFOLLOW``. :func:`check_output_dir` refuses the folder when one of the in-place names is a
link, naming it, and when the folder is a file or a dangling link (``makedirs`` would otherwise
fail with a bare ``FileExistsError``).
"""
from __future__ import annotations

import fnmatch
import os

from ..errors import ConfigError
from .run_lock import LOCK_NAME

__all__ = ["IN_PLACE_FILES", "check_output_dir", "linked_outputs"]

# What a run opens in place (not through a temp file and rename) in its output folder.
IN_PLACE_FILES = (LOCK_NAME, "config.yaml", "log.txt", "log.txt.rank*", "metrics.json")
EVALUATION_FOLDER = "inference"  # the evaluators' output_dir: every file in it


def linked_outputs(folder: str) -> list:
    """The paths in ``folder`` that a run would write through a symbolic link."""
    found = []
    if not os.path.isdir(folder):
        return found
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if any(fnmatch.fnmatchcase(name, pattern) for pattern in IN_PLACE_FILES) \
                and os.path.islink(path):
            found.append(path)
    evaluation = os.path.join(folder, EVALUATION_FOLDER)
    if os.path.isdir(evaluation):
        found += [os.path.join(evaluation, name) for name in sorted(os.listdir(evaluation))
                  if os.path.islink(os.path.join(evaluation, name))]
    return found


def check_output_dir(folder: str, key: str) -> None:
    """Refuse an output folder that cannot be written safely; ``key`` names its setting
    (``train.output_dir``, ``OUTPUT_DIR``)."""
    if not folder or "://" in folder:
        return  # no folder, or another path handler's (no links there)
    if os.path.islink(folder) and not os.path.exists(folder):
        raise ConfigError(
            f"{key}={folder} is a symbolic link to {os.readlink(folder)}, which does not exist. "
            f"Create that folder, remove the link, or set {key} to another folder.")
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise ConfigError(f"{key}={folder} is a file, not a folder. Set {key} to a folder "
                          "(it is created if missing), or move the file away.")
    links = linked_outputs(folder)
    if links:
        shown = ", ".join(f"{path} -> {os.readlink(path)}" for path in links[:5])
        raise ConfigError(
            f"{key}={folder} holds symbolic links where the run writes its own files: {shown}. "
            "Writing them would overwrite the files they point to. Remove the links (the run "
            f"writes these files itself), or set {key} to another folder.")
