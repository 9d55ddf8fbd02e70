"""Pre-trained Swin checkpoints shipped with the project, addressed as ``e3va://<file>``.

Why: the build machine can download no ImageNet checkpoint, yet the demos and the accuracy
study must start from a really pre-trained trunk. The checkpoints here were trained by
``projects/pretrain/pretrain_swin.py`` on the glyphs pre-text task and are written in the
official Swin layout, so ``train.init_checkpoint=e3va://...`` loads through exactly the path a
user's ``swin_base_patch4_window7_224_22k.pth`` takes. ``e3va://`` is an iopath handler on
detectron2's ``PathManager`` (as ``detectron2://`` is for detectron2's model zoo): every file is
checked against its recorded sha256 before its first use in a process.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Any, Dict, List

from detectron2.utils.file_io import PathManager
from iopath.common.file_io import PathHandler

__all__ = [
    "PREFIX",
    "PretrainedSwin",
    "PRETRAINED",
    "GLYPHS_SWIN",
    "SCENES_SWIN",
    "ModelZooError",
    "get_checkpoint_path",
]

PREFIX = "e3va://"
_FOLDER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")


class ModelZooError(ValueError):
    """A shipped checkpoint that is unknown, missing or not the recorded file."""


@dataclasses.dataclass(frozen=True)
class PretrainedSwin:
    """One shipped checkpoint: its file, digest, the trunk it fits and how it was made."""

    file: str
    sha256: str
    architecture: Dict[str, Any]  # SwinTransformer keyword arguments the weights fit
    pretext: str
    val_accuracy: float  # held-out pre-text accuracy (top-1)
    command: str  # reproduces the file (same seed)
    train_minutes: float  # measured on 2 CPU cores

    @property
    def url(self) -> str:
        return PREFIX + self.file

    def trunk_kwargs(self) -> Dict[str, Any]:
        """Keyword arguments for ``SwinTransformer`` (lists, as LazyConfig keeps them)."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.architecture.items()}


# Both shipped trunks: the Swin-T layout at a third of its width.
_SWIN_E32 = dict(embed_dim=32, depths=(2, 2, 6, 2), num_heads=(1, 2, 4, 8), window_size=7)

GLYPHS_SWIN = PretrainedSwin(
    file="swin_glyphs_e32_patch4_window7_112.pth",
    sha256="e4ceac33f0d1e86d955c2139befbcbc30f4a3f248060fde2c04958fd119116df",
    architecture=dict(_SWIN_E32),
    pretext="glyphs: 16 procedurally drawn classes among clutter (the renderer of "
            "e3va_d2/data/glyphs.py at c107f8d)",
    val_accuracy=0.5630,
    # The script as it was at c107f8d (glyphs pre-text, --output).
    command="python -m projects.pretrain.pretrain_swin --output swin_glyphs.pth",
    train_minutes=71.4,
)

SCENES_SWIN = PretrainedSwin(
    file="swin_scenes_e32_patch4_window7_112.pth",
    sha256="6cbdf86a8db24ee7215662a2a41aa05ce50b18d99445ed3f41177b563fbbbcd3",
    architecture=dict(_SWIN_E32),
    pretext="glyph scenes: 36 classes in 7 styles, dense targets (projects/pretrain/pretext.py)",
    val_accuracy=0.9404,
    command="python -m projects.pretrain.pretrain_swin --run-dir projects/pretrain/runs/scenes_e32"
            "  # then <run-dir>/swin.pth",
    train_minutes=534.6,  # 30,000 steps of 64 images: 1 training thread and 1 data worker
)

PRETRAINED: Dict[str, PretrainedSwin] = {e.file: e for e in (GLYPHS_SWIN, SCENES_SWIN)}

_VERIFIED: Dict[str, str] = {}  # file -> local path, checked in this process


def _sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def get_checkpoint_path(name: str) -> str:
    """Local path of a shipped checkpoint (``e3va://<file>`` or ``<file>``), after checking
    that it exists and has its recorded sha256."""
    file = name[len(PREFIX):] if name.startswith(PREFIX) else name
    if file in _VERIFIED:
        return _VERIFIED[file]
    entry = PRETRAINED.get(file)
    if entry is None:
        raise ModelZooError(f"{PREFIX}{file} is not a shipped checkpoint; known: "
                            f"{[e.url for e in PRETRAINED.values()]}")
    path = os.path.join(_FOLDER, file)
    if not os.path.isfile(path):
        raise ModelZooError(
            f"{path} is missing: the checkpoint ships with the source tree (git checkout -- "
            f"{os.path.relpath(path)}), or rebuild it with: {entry.command}")
    actual = _sha256(path)
    if actual != entry.sha256:
        raise ModelZooError(
            f"{path} has sha256 {actual}, not the recorded {entry.sha256}: the file is "
            f"corrupt or was replaced. Restore it (git checkout -- {os.path.relpath(path)}) or, "
            "after rebuilding it on purpose, record its new digest in e3va_d2/model_zoo.")
    _VERIFIED[file] = path
    return path


class ModelZooHandler(PathHandler):
    """``e3va://<file>`` -> the verified local file (read-only)."""

    def _get_supported_prefixes(self) -> List[str]:
        return [PREFIX]

    def _get_local_path(self, path: str, force: bool = False, **kwargs: Any) -> str:
        self._check_kwargs(kwargs)
        return get_checkpoint_path(path)

    def _open(self, path: str, mode: str = "r", buffering: int = -1, **kwargs: Any):
        self._check_kwargs(kwargs)
        if any(c in mode for c in "wa+"):
            raise ModelZooError(f"{path} is read-only")
        return open(get_checkpoint_path(path), mode, buffering=buffering)

    def _exists(self, path: str, **kwargs: Any) -> bool:
        file = path[len(PREFIX):]
        return file in PRETRAINED and os.path.isfile(os.path.join(_FOLDER, file))

    def _isfile(self, path: str, **kwargs: Any) -> bool:
        return self._exists(path, **kwargs)


if PREFIX not in PathManager._path_handlers:  # one registration per process
    PathManager.register_handler(ModelZooHandler())
