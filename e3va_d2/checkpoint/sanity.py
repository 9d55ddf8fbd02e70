"""Checks that keep a checkpoint from being silently wrong: non-finite weights, tensors whose
shapes do not fit the model (another adapter rank...), and which file to resume from when the
last one is unusable.

Pure functions over state dicts and folders, used by :class:`~.checkpointer.E3VACheckpointer`.
"""
from __future__ import annotations

import os
import re
from typing import Iterable, List, Mapping, Tuple

import torch
from torch import Tensor, nn

from ..utils.state import strip_ddp_prefix, strip_prefix

__all__ = [
    "CheckpointShapeError",
    "NonFiniteCheckpointError",
    "NonFiniteWeightsError",
    "non_finite_tensors",
    "resume_candidates",
    "trainable_shape_mismatches",
]

_SAVED = re.compile(r"^model_(\d{7}|final)\.pth$")  # what the trainers save (not deltas)


class NonFiniteCheckpointError(ValueError):
    """A checkpoint file whose weights hold NaN or infinity (a diverged run): evaluating or
    resuming from it can only give NaN."""


class NonFiniteWeightsError(FloatingPointError):
    """The model's weights became NaN or infinite: saving them would replace the last good
    checkpoint with a useless one."""


class CheckpointShapeError(ValueError):
    """Tensors of the checkpoint whose shapes differ from the model's in modules that train:
    loading around them would leave those modules at their random initialisation."""


def non_finite_tensors(state: Mapping[str, object]) -> List[str]:
    """Names of the floating-point tensors of ``state`` with any NaN or infinite element."""
    bad = []
    for name, value in state.items():
        if isinstance(value, Tensor) and value.is_floating_point() and value.numel():
            if not bool(torch.isfinite(value).all()):
                bad.append(name)
        elif hasattr(value, "dtype") and getattr(value.dtype, "kind", "") == "f":  # numpy
            import numpy as np

            if not np.isfinite(value).all():
                bad.append(name)
    return bad


def _trainable_keys(model: nn.Module) -> List[str]:
    """State keys (without DDP's prefix) that training changes: trainable parameters and every
    tensor of a module that owns one (e.g. a trainable norm's running statistics)."""
    trainable_modules = {
        strip_ddp_prefix(name)
        for name, module in model.named_modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
    }
    keys = []
    for key in model.state_dict(keep_vars=True):
        bare = strip_ddp_prefix(key)
        if bare.rpartition(".")[0] in trainable_modules:
            keys.append(bare)
    return keys


def trainable_shape_mismatches(
    model: nn.Module, state: Mapping[str, Tensor]
) -> List[Tuple[str, tuple, tuple]]:
    """(key, shape in ``state``, shape in the model) for every tensor of a trainable module
    whose shape differs between the two."""
    own = {strip_ddp_prefix(k): v for k, v in model.state_dict().items()}
    state = strip_prefix(state)
    found = []
    for key in _trainable_keys(model):
        if key in state and hasattr(state[key], "shape"):
            theirs, ours = tuple(state[key].shape), tuple(own[key].shape)
            if theirs != ours:
                found.append((key, theirs, ours))
    return found


def describe_mismatches(mismatches: Iterable[Tuple[str, tuple, tuple]], limit: int = 6) -> str:
    mismatches = list(mismatches)
    shown = "; ".join(f"{k}: checkpoint {a}, model {b}" for k, a, b in mismatches[:limit])
    more = f" (+{len(mismatches) - limit} more)" if len(mismatches) > limit else ""
    return shown + more


def resume_candidates(folder: str, last: str) -> List[str]:
    """Files to resume from, best first: ``last`` (what ``last_checkpoint`` names), then the
    other checkpoints the trainers saved in ``folder``, newest first (by modification time: the
    order they were written in, across interrupted and resumed runs)."""
    others = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            path = os.path.join(folder, name)
            if _SAVED.match(name) and os.path.abspath(path) != os.path.abspath(last):
                try:
                    others.append((os.path.getmtime(path), name, path))
                except OSError:
                    continue
    return [last] + [path for _, _, path in sorted(others, reverse=True)]
