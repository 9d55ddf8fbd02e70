"""Checkpoints of E3VA models: pre-trained Swin weights in, crash-safe files and deltas out.

- :class:`E3VACheckpointer` loads any supported Swin checkpoint (official, timm, detectron2
  main) into the trunk of a :class:`~e3va_d2.modeling.backbone.TunedSwin`, strictly: a frozen
  weight that the file does not provide would stay random forever, so that is an error.
- Every file is written to a temporary file, fsynced and renamed, so a job killed mid-save
  never leaves a truncated ``last_checkpoint`` behind.
- :func:`export_delta` / :func:`load_delta` store only what training changed (a few MB for
  E3VA) plus a fingerprint of the frozen base it must be applied to.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import pickle
import re
import secrets
import time
import zipfile
from collections import Counter
from typing import IO, Any, Callable, Dict, List, Mapping, Optional, Tuple

import detectron2
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import hooks
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager
from torch import Tensor, nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

import e3va_d2

from .modeling.backbone import TunedSwin
from .modeling.swin_weights import (
    ConversionReport,
    SwinCheckpointError,
    convert_swin_checkpoint,
    is_output_norm_key,
)

__all__ = [
    "E3VACheckpointer",
    "CheckpointReadError",
    "DeltaMismatchError",
    "atomic_save",
    "atomic_write",
    "base_fingerprint",
    "export_delta",
    "load_delta",
]

logger = logging.getLogger(__name__)

DELTA_FORMAT = "e3va_d2.delta"
DELTA_VERSION = 1


class CheckpointReadError(ValueError):
    """A file given as a checkpoint that cannot be read as one (not a pickle, truncated...)."""


class DeltaMismatchError(ValueError):
    """A delta checkpoint that does not belong to the model it is loaded into."""


# --------------------------------------------------------------------------- atomic files


def _is_local(path: str) -> bool:
    """Plain file-system paths only; other path handlers (s3://, manifold://, ...) cannot
    rename atomically, so they keep detectron2's direct writes."""
    return "://" not in path


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
    if not _is_local(path):
        with PathManager.open(path, "wb") as f:
            torch.save(obj, f)
        return
    atomic_write(path, lambda f: torch.save(obj, f))


_TEMPORARY = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")  # what atomic_write leaves when killed
_PERIODIC = re.compile(r"^model_(\d{7})\.pth$")


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


class PeriodicCheckpointer(hooks.PeriodicCheckpointer):
    """detectron2's hook, with ``max_to_keep`` applied to the periodic checkpoints on disk, so
    that it also counts those of earlier (interrupted, resumed) runs in the same folder."""

    def step(self, iteration: int, **kwargs: Any) -> None:
        super().step(iteration, **kwargs)
        folder = self.checkpointer.save_dir
        if self.max_to_keep is None or not folder or not _is_local(folder):
            return
        periodic = sorted(n for n in os.listdir(folder) if _PERIODIC.match(n))
        for name in periodic[: max(len(periodic) - self.max_to_keep, 0)]:
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(folder, name))
        self.recent_checkpoints = [os.path.join(folder, n) for n in periodic[-self.max_to_keep:]]


# --------------------------------------------------------------------------- checkpointer


class E3VACheckpointer(DetectionCheckpointer):
    """A :class:`DetectionCheckpointer` that understands Swin checkpoint layouts.

    For a model with a :class:`TunedSwin`, a file that is not already a checkpoint of this
    model is converted by :func:`convert_swin_checkpoint` and loaded into the trunk; the
    highway's inherited weights are copied from their trunk sources. detectron2's
    name-matching heuristics never run on such models. Missing frozen parameters are errors;
    missing trainable ones are summarised per module instead of listed one by one.
    """

    def __init__(
        self, model: nn.Module, save_dir: str = "", *, save_to_disk=None, **checkpointables
    ):
        super().__init__(model, save_dir, save_to_disk=save_to_disk, **checkpointables)
        self._conversion: Optional[Tuple[str, ConversionReport]] = None
        if self.save_dir and self.save_to_disk and _is_local(self.save_dir):
            remove_stale_temporaries(self.save_dir)
        # Trainable parameters the last load() did not provide (all of them before any load,
        # or after loading nothing): evaluating them means evaluating their initialisation.
        self.untrained: List[str] = self._trainable_names()

    def _trainable_names(self) -> List[str]:
        return sorted(n for n, p in self.model.named_parameters() if p.requires_grad)

    @property
    def loaded_pretrained_backbone(self) -> bool:
        """The last load converted a pre-trained Swin (not a checkpoint of this model)."""
        return self._conversion is not None

    def load(self, path: str, checkpointables=None):
        self.untrained = self._trainable_names()
        return super().load(path, checkpointables=checkpointables)

    # ---- loading

    def _tuned_swins(self) -> List[Tuple[str, TunedSwin]]:
        return [(n, m) for n, m in self.model.named_modules() if isinstance(m, TunedSwin)]

    def _read(self, filename: str) -> Dict[str, Any]:
        try:
            return self._read_unchecked(filename)
        except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError,
                zipfile.BadZipFile, UnicodeDecodeError) as e:
            if isinstance(e, SwinCheckpointError):
                raise
            raise CheckpointReadError(
                f"{filename} is not a readable checkpoint ({type(e).__name__}: {e}). Pass a "
                ".pth/.pkl/.safetensors file written by torch.save, detectron2 or timm; a "
                "truncated copy fails like this (compare its size or sha256 with the source)."
            ) from e

    def _read_unchecked(self, filename: str) -> Dict[str, Any]:
        if filename.endswith(".safetensors"):  # how timm's hub weights are published
            from safetensors.torch import load_file

            return {"model": load_file(filename, device="cpu")}
        try:
            return super()._load_file(filename)
        except pickle.UnpicklingError as e:
            # torch >= 2.6 loads tensors only; some releases also pickle their configs.
            if "weights_only" not in str(e):
                raise
            logger.warning(
                "%s holds Python objects besides tensors; loading it with weights_only=False "
                "(only do this for files you trust).",
                filename,
            )
            with self.path_manager.open(filename, "rb") as f:
                loaded = torch.load(f, map_location="cpu", weights_only=False)
            return loaded if isinstance(loaded.get("model"), Mapping) else {"model": loaded}

    def _load_file(self, filename: str) -> Dict[str, Any]:
        self._conversion = None
        loaded = self._read(filename)
        tuned = self._tuned_swins()
        if not tuned:
            return loaded
        state = _strip_prefix(loaded["model"], "module.")
        loaded["model"] = state
        if any(f"{_prefix(path)}trunk.patch_embed.proj.weight" in state for path, _ in tuned):
            return loaded  # a checkpoint of this model (resume, evaluation): keys already match
        if len(tuned) != 1:
            raise SwinCheckpointError(
                f"the model has {len(tuned)} TunedSwin backbones ({[p for p, _ in tuned]}); "
                "cannot tell which one a pre-trained Swin checkpoint belongs to"
            )
        path, backbone = tuned[0]
        prefix = _prefix(path)
        converted, report = convert_swin_checkpoint(loaded, backbone.trunk)
        model_state = {f"{prefix}trunk.{k}": v for k, v in converted.items()}
        for target, source in backbone.inherited_weights().items():
            model_state[prefix + target] = model_state[prefix + source].clone()
        ignored = sorted(k for k in loaded if k != "model")
        if ignored:  # e.g. the optimizer of the pre-training run: never resumed from
            report.dropped["entries of the file besides the weights"] = ignored
        self._conversion = (prefix, report)
        return {"model": model_state}

    def _load_model(self, checkpoint: Dict[str, Any]):
        tuned = self._tuned_swins()
        if not tuned:
            return super()._load_model(checkpoint)
        if checkpoint.pop("matching_heuristics", False):
            logger.info("Ignoring matching_heuristics: a TunedSwin model loads names exactly.")
        self._convert_ndarray_to_tensor(checkpoint["model"])
        self._check_required(checkpoint["model"])
        self.untrained = [k for k in self._trainable_names() if k not in checkpoint["model"]]
        return super()._load_model(checkpoint)

    def _check_required(self, state: Mapping[str, Tensor]) -> None:
        """Refuse a load that would leave frozen weights (or trunk weights) uninitialised."""
        own = self.model.state_dict(keep_vars=True)
        frozen = {k for k, v in own.items() if isinstance(v, nn.Parameter) and not v.requires_grad}
        if self._conversion is None:
            required = frozen
            what = "a full-model checkpoint"
        else:
            trunk = self._conversion[0] + "trunk."
            # Output norms are not pre-trained by classification: they may stay as built.
            required = {
                k for k in frozen if k.startswith(trunk) and not is_output_norm_key(k[len(trunk) :])
            }
            what = "the converted Swin checkpoint"
            outside = sorted(k for k in frozen if not k.startswith(trunk) and k not in state)
            if outside:
                logger.warning(
                    "Frozen parameters outside the trunk keep their initial values: %s",
                    _group_counts(outside),
                )
        missing = sorted(k for k in required if k not in state)
        if missing:
            raise SwinCheckpointError(
                f"{len(missing)} frozen parameters of the model are missing from {what}; they "
                f"would stay at their random initialisation: {missing[:10]}"
                f"{' ...' if len(missing) > 10 else ''}"
            )
        wrong = [
            f"{k}: checkpoint {tuple(state[k].shape)}, model {tuple(own[k].shape)}"
            for k in sorted(required)
            if tuple(state[k].shape) != tuple(own[k].shape)
        ]
        if wrong:
            raise SwinCheckpointError(
                f"frozen parameters with other shapes in {what}: {wrong[:10]}"
            )

    def _log_incompatible_keys(self, incompatible) -> None:
        if not self._tuned_swins():
            return super()._log_incompatible_keys(incompatible)
        if self._conversion is not None:
            prefix, report = self._conversion
            logger.info("Loaded a pre-trained Swin into %strunk: %s", prefix, report.summary())
        for key, shape_file, shape_model in incompatible.incorrect_shapes:
            logger.warning(
                "Not loaded, shapes differ: %s (checkpoint %s, model %s)",
                key,
                tuple(shape_file),
                tuple(shape_model),
            )
        if incompatible.missing_keys:
            # Expected when starting from a pre-trained backbone: what training will learn.
            level = logging.INFO if self._conversion is not None else logging.WARNING
            logger.log(
                level,
                "Not in the checkpoint, left as initialised (%d tensors): %s",
                len(incompatible.missing_keys),
                _group_counts(incompatible.missing_keys),
            )
        if incompatible.unexpected_keys:
            keys = sorted(incompatible.unexpected_keys)
            listed = keys if len(keys) <= 20 else _group_counts(keys)
            logger.warning("Unexpected keys in the checkpoint, ignored (%d): %s", len(keys), listed)

    # ---- saving

    def save(self, name: str, **kwargs: Any) -> None:
        """Same as detectron2's, but crash-safe on local disks (see :func:`atomic_save`)."""
        if not self.save_dir or not self.save_to_disk:
            return
        if not _is_local(self.save_dir):
            return super().save(name, **kwargs)
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        assert os.path.basename(save_file) == basename, basename
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        atomic_save(data, save_file)
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename: str) -> None:
        if not self.save_to_disk:
            return
        if not _is_local(self.save_dir):
            return super().tag_last_checkpoint(last_filename_basename)
        save_file = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write(save_file, lambda f: f.write(last_filename_basename.encode()))


def _prefix(module_path: str) -> str:
    return f"{module_path}." if module_path else ""


def _strip_prefix(state: Mapping[str, Any], prefix: str) -> Dict[str, Any]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


def _group(key: str) -> str:
    """Module group of a key for summaries: ``backbone.bottom_up.highway``,
    ``backbone.bottom_up.trunk.norm*``, ``backbone.fpn_lateral*``, ``roi_heads``, ..."""
    parts = key.split(".")[:-1] or [key]
    if "highway" in parts:
        parts = parts[: parts.index("highway") + 1]
    elif "trunk" in parts:
        parts = parts[: parts.index("trunk") + 2]
    else:
        parts = parts[: 2 if parts[0] == "backbone" else 1]
    return ".".join(parts[:-1] + [re.sub(r"\d+$", "*", parts[-1])])


def _group_counts(keys: List[str]) -> str:
    counts = Counter(_group(k) for k in keys)
    return ", ".join(f"{group} ({n})" for group, n in sorted(counts.items()))


# --------------------------------------------------------------------------- deltas


def _unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def _split_state(model: nn.Module) -> Tuple[Dict[str, Tensor], List[str], List[str], List[str]]:
    """(state, trainable params, buffers training can change, base).

    A buffer belongs to the delta when training can change it: it lies anywhere under a module
    that owns a trainable parameter (detectron2's ``CycleBatchNormList`` keeps the trainable
    affine weights on the parent and the running statistics on its children), or it is a
    running statistic of a norm (which updates in training mode even when its weights are
    frozen). The base (and its fingerprint) is everything else: what is truly frozen.
    """
    model = _unwrap(model)
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
    tuned = [m for m in model.modules() if isinstance(m, TunedSwin)]
    tuning = tuned[0].tuning if tuned else None
    options = dataclasses.asdict(tuning) if dataclasses.is_dataclass(tuning) else {}
    return {
        "tuning": getattr(tuning, "name", None),
        "tuning_options": options,
        "trainable_tensors": len(trainable),
        "trainable_parameters": int(sum(state[k].numel() for k in trainable)),
        "versions": {
            "e3va_d2": str(getattr(e3va_d2, "__version__", "unknown")),
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
    model = _unwrap(model)
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


def load_delta(model: nn.Module, path: str, strict: bool = True) -> dict:
    """Load a delta written by :func:`export_delta` into a model built and initialised as
    the one it was trained from; returns its ``extra``.

    Refuses a different base (fingerprint) or a different set of trainable tensors; with
    ``strict=False`` those become warnings, and only the matching tensors are loaded. Shape
    mismatches are always errors.
    """
    with PathManager.open(path, "rb") as f:
        payload = torch.load(f, map_location="cpu", weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != DELTA_FORMAT:
        raise DeltaMismatchError(f"{path} is not a delta checkpoint (written by export_delta)")
    model = _unwrap(model)
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
