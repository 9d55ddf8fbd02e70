"""Delta checkpoints: only what training changed, bound to the frozen base it applies to.

:func:`export_delta` stores the trainable tensors (for E3VA the highway, output norms, neck
and heads: about 213 MB on Cascade Mask R-CNN Swin-B, of a 560 MB model) and the buffers
training can change, plus a sha256 fingerprint of everything else; :func:`load_delta` refuses
a delta on another base or with another trainable set.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import pickle
import zipfile
from typing import Dict, List, Mapping, Optional, Tuple

import detectron2
import torch
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from torch import Tensor, nn

from ..compat import E3VA_D2_VERSION
from ..modeling.backbone import tuned_swins
from ..modeling.pretrained import CheckpointReadError
from ..utils.safe_load import UnsafeCheckpointError, read_checkpoint_file
from ..utils.state import unwrap_ddp
from .files import atomic_save
from .sanity import NonFiniteCheckpointError, non_finite_tensors

__all__ = ["DeltaMismatchError", "base_fingerprint", "export_delta", "load_delta"]

logger = logging.getLogger("e3va_d2.checkpoint")

DELTA_NAME = "model_final_delta.pth"  # what a training run writes
DELTA_FORMAT = "e3va_d2.delta"
DELTA_VERSION = 1


class DeltaMismatchError(ValueError):
    """A delta checkpoint that does not belong to the model it is loaded into."""


def _split_state(model: nn.Module) -> Tuple[Dict[str, Tensor], List[str], List[str], List[str]]:
    """(state, trainable params, buffers training can change, base).

    A buffer belongs to the delta when training can change it: it lies anywhere under a module
    that owns a trainable parameter (detectron2's ``CycleBatchNormList`` keeps the trainable
    affine weights on the parent and the running statistics on its children), or it is a
    running statistic of a norm (which updates in training mode even when its weights are
    frozen). The base (and its fingerprint) is everything else: what is truly frozen.
    """
    model = unwrap_ddp(model)
    state = model.state_dict(keep_vars=True)
    trainable = [k for k, v in state.items() if isinstance(v, nn.Parameter) and v.requires_grad]
    changing = {
        name
        for name, module in model.named_modules()
        if any(p.requires_grad for p in module.parameters(recurse=False))
        or (isinstance(module, nn.modules.batchnorm._NormBase) and module.track_running_stats)
    }
    buffers = [
        k for k, v in state.items()
        if not isinstance(v, nn.Parameter) and any(m in changing for m in _ancestors(k))
    ]
    in_delta = set(trainable) | set(buffers)
    base = [k for k in state if k not in in_delta]
    return state, trainable, buffers, base


def _ancestors(key: str) -> List[str]:
    """Names of the modules above a state key, nearest first, the root ("") last."""
    parts = key.split(".")[:-1]
    return [".".join(parts[:i]) for i in range(len(parts), -1, -1)]


def _fingerprint(state: Mapping[str, Tensor], names: List[str]) -> str:
    digest = hashlib.sha256()
    for name in sorted(names):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        # Raw bytes, not pickles: Swin-L's 200M parameters hash in a few seconds.
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def base_fingerprint(model: nn.Module) -> str:
    """sha256 over name, dtype, shape and bytes of every frozen parameter and persistent
    buffer that a delta does not contain: what a delta must be applied on top of."""
    state, _, _, base = _split_state(model)
    return _fingerprint(state, base)


def _delta_metadata(model: nn.Module, trainable: List[str], state: Mapping[str, Tensor]) -> dict:
    tuned = tuned_swins(model)
    tuning = tuned[0].tuning if tuned else None
    options = dataclasses.asdict(tuning) if dataclasses.is_dataclass(tuning) else {}
    return {
        "tuning": getattr(tuning, "name", None),
        "tuning_options": options,
        "trainable_tensors": len(trainable),
        "trainable_parameters": int(sum(state[k].numel() for k in trainable)),
        "versions": {
            "e3va_d2": E3VA_D2_VERSION,
            "torch": str(torch.__version__),
            "detectron2": str(detectron2.__version__),
        },
    }


def export_delta(model: nn.Module, path: str, extra: Optional[dict] = None) -> Optional[str]:
    """Save the trainable tensors (adapters, trainable norms, neck, heads), the buffers of
    the modules that own them, and the base fingerprint. Only the main process writes;
    returns ``path`` there and ``None`` elsewhere. ``extra`` must hold plain Python data."""
    if not comm.is_main_process():
        return None
    model = unwrap_ddp(model)
    state, trainable, buffers, base = _split_state(model)
    payload = {
        "format": DELTA_FORMAT,
        "version": DELTA_VERSION,
        "tensors": {k: state[k].detach().cpu().clone() for k in trainable + buffers},
        "trainable": trainable,
        "buffers": buffers,
        "base_fingerprint": _fingerprint(state, base),
        "meta": _delta_metadata(model, trainable, state),
        "extra": dict(extra or {}),
    }
    atomic_save(payload, path)
    logger.info(
        "Saved delta to %s: %d trainable tensors (%d parameters) and %d buffers.",
        path,
        len(trainable),
        payload["meta"]["trainable_parameters"],
        len(buffers),
    )
    return path


def _read_delta(path: str):
    """The delta file's content, read as data only, or an error naming the file (torch's own,
    e.g. "failed finding central directory" for a truncated copy, names none)."""
    if os.path.isdir(path):
        raise CheckpointReadError(f"train.delta_checkpoint={path} is a folder; pass the delta "
                                  f"file in it, e.g. {os.path.join(path, DELTA_NAME)}")
    try:
        return read_checkpoint_file(PathManager, path)  # data only, never code
    except UnsafeCheckpointError:
        raise  # readable only by running its code: refused, the opt-in named
    except FileNotFoundError as e:
        raise FileNotFoundError(f"Delta checkpoint {path} not found ({e.strerror})") from e
    except (pickle.UnpicklingError, EOFError, RuntimeError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointReadError(
            f"{path} is not a readable delta checkpoint ({type(e).__name__}: {e}). A truncated "
            "or partly copied file fails like this: compare its size with the original, or "
            "export it again from its run's model_final.pth.") from e


def load_delta(model: nn.Module, path: str, strict: bool = True) -> dict:
    """Load a delta written by :func:`export_delta` into a model built and initialised as
    the one it was trained from; returns its ``extra``.

    Refuses a different base (fingerprint) or a different set of trainable tensors; with
    ``strict=False`` those become warnings, and only the matching tensors are loaded. Shape
    mismatches are always errors.
    """
    payload = _read_delta(path)
    if not isinstance(payload, dict) or payload.get("format") != DELTA_FORMAT:
        raise DeltaMismatchError(f"{path} is not a delta checkpoint (written by export_delta)")
    bad = non_finite_tensors(payload["tensors"])
    if bad:
        raise NonFiniteCheckpointError(f"{path} holds {len(bad)} tensors with NaN or infinite "
                                       f"values (a diverged run), e.g. {bad[:4]}")
    model = unwrap_ddp(model)
    state, trainable, buffers, base = _split_state(model)
    tensors: Dict[str, Tensor] = payload["tensors"]
    wanted = trainable + buffers
    problems = []
    missing = [k for k in wanted if k not in tensors]
    if missing:
        problems.append(
            f"{len(missing)} tensors the model trains are not in the delta: {missing[:6]}"
        )
    unknown = sorted(set(tensors) - set(wanted))
    if unknown:
        problems.append(
            f"{len(unknown)} tensors of the delta are not trained by the model: {unknown[:6]}"
        )
    fingerprint = _fingerprint(state, base)
    if fingerprint != payload["base_fingerprint"]:
        problems.append(
            f"delta was trained on a different base: expected fingerprint "
            f"{payload['base_fingerprint']}, the model's base is {fingerprint}; load the same "
            "init_checkpoint first"
        )
    shapes = [
        f"{k}: delta {tuple(tensors[k].shape)}, model {tuple(state[k].shape)}"
        for k in wanted
        if k in tensors and tensors[k].shape != state[k].shape
    ]
    if shapes:
        problems.append(f"shapes differ: {shapes[:6]}")
    if problems and (strict or shapes):
        raise DeltaMismatchError(f"cannot load delta {path}: " + "; ".join(problems))
    for problem in problems:
        logger.warning("Loading delta %s anyway: %s", path, problem)
    result = model.load_state_dict({k: tensors[k] for k in wanted if k in tensors}, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    logger.info("Loaded delta %s (%d tensors).", path, len(wanted) - len(missing))
    return payload.get("extra", {})
