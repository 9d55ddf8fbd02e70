"""Reading checkpoint files and loading a pre-trained Swin into a tuned backbone.

Shared by :class:`~e3va_d2.modeling.backbone.TunedSwin` (its ``weights``, loaded as the model
is built) and :class:`~e3va_d2.checkpoint.E3VACheckpointer` (``train.init_checkpoint``), so
that both read files, convert layouts and refuse incomplete trunks the same way. It sits below
both and imports neither: a backbone must be able to load its trunk without the checkpoint
package, which itself builds on the backbone.
"""
from __future__ import annotations

import logging
import os
import pickle
import zipfile
from typing import Any, Dict, List, Mapping, Optional, Tuple

from detectron2.checkpoint import DetectionCheckpointer
from torch import Tensor, nn

from ..utils.safe_load import UnsafeCheckpointError, read_checkpoint_file
from .swin_weights import (
    ConversionReport,
    SwinCheckpointError,
    convert_swin_checkpoint,
    is_output_norm_key,
)

__all__ = [
    "CheckpointReadError",
    "read_checkpoint",
    "pretrained_state",
    "required_pretrained_keys",
    "check_pretrained_state",
    "load_pretrained_swin",
]

logger = logging.getLogger("e3va_d2.checkpoint")


class CheckpointReadError(ValueError):
    """A file given as a checkpoint that cannot be read as one (not a pickle, truncated...)."""


def refuse_a_folder(path: str) -> None:
    """A folder given where a checkpoint file is expected is named as one (it used to be "not
    found"), with the checkpoint files in it."""
    if "://" in path or not os.path.isdir(path):
        return
    files = sorted(n for n in os.listdir(path)
                   if n.endswith((".pth", ".pkl", ".pyth", ".safetensors")))
    inside = (f"e.g. {os.path.join(path, files[-1])} (it holds {files[:6]})" if files
              else "it holds no .pth/.pkl/.safetensors file")
    raise CheckpointReadError(f"Checkpoint {path} is a folder, not a file: pass one checkpoint "
                              f"file in it, {inside}.")


def read_checkpoint(
    filename: str, reader: Optional[DetectionCheckpointer] = None
) -> Dict[str, Any]:
    """The content of a checkpoint file, as detectron2 reads it (``{"model": ...}`` plus
    whatever else the file holds), or a :class:`CheckpointReadError` naming the file.

    ``reader``: the checkpointer whose path manager opens the file (default: detectron2's).
    """
    reader = reader or DetectionCheckpointer(nn.Module(), save_to_disk=False)
    refuse_a_folder(filename)
    if not os.path.isfile(filename):  # a URL or a handler's path (e3va://): fetched, cached
        local = reader.path_manager.get_local_path(filename)
        if not os.path.isfile(local):
            raise FileNotFoundError(f"Checkpoint {filename} not found")
        filename = local
    try:
        return _read(filename, reader)
    except UnsafeCheckpointError:
        raise  # readable, but only by running its code: refused, with the opt-in named
    except (pickle.UnpicklingError, EOFError, KeyError, RuntimeError, ValueError,
            zipfile.BadZipFile, UnicodeDecodeError) as e:
        if isinstance(e, SwinCheckpointError):
            raise
        raise CheckpointReadError(
            f"{filename} is not a readable checkpoint ({type(e).__name__}: {e}). Pass a "
            ".pth/.pkl/.safetensors file written by torch.save, detectron2 or timm; a "
            "truncated copy fails like this (compare its size or sha256 with the source)."
        ) from e


def _read(filename: str, reader: DetectionCheckpointer) -> Dict[str, Any]:
    if filename.endswith(".safetensors"):  # how timm's hub weights are published
        from safetensors.torch import load_file

        return {"model": load_file(filename, device="cpu")}
    # Never detectron2's own _load_file: it unpickles .pkl files without restriction.
    return _as_checkpoint(filename, read_checkpoint_file(reader.path_manager, filename))


def _as_checkpoint(filename: str, loaded: Any) -> Dict[str, Any]:
    """What a file holds, in the layout fvcore's loader expects (``{"model": state, ...}``):
    detectron2's handling of its own, Detectron's and pycls's formats, on data read safely."""
    if not isinstance(loaded, Mapping):
        raise ValueError(f"it holds a {type(loaded).__name__}, not a dict of tensors")
    if filename.endswith(".pkl"):
        if "model" in loaded and "__author__" in loaded:  # detectron2's model zoo
            return dict(loaded)
        data = loaded.get("blobs", loaded)  # Caffe2 / Detectron: detection models have blobs
        data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
        return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
    if filename.endswith(".pyth"):  # pycls
        state = {k: v for k, v in loaded["model_state"].items()
                 if not k.endswith("num_batches_tracked")}
        return {"model": state, "__author__": "pycls", "matching_heuristics": True}
    return dict(loaded) if isinstance(loaded.get("model"), Mapping) else {"model": dict(loaded)}


def pretrained_state(
    backbone: nn.Module, checkpoint: Mapping[str, Any]
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """A tuned backbone's state (names relative to it) from a pre-trained Swin checkpoint: the
    trunk's tensors in our names, plus the highway's copies of trunk tensors
    (``backbone.inherited_weights()``)."""
    converted, report = convert_swin_checkpoint(checkpoint, backbone.trunk)
    state = {f"trunk.{k}": v for k, v in converted.items()}
    for target, source in backbone.inherited_weights().items():
        state[target] = state[source].clone()
    ignored = sorted(k for k in checkpoint if k != "model")
    if ignored:  # e.g. the optimizer of the pre-training run: never resumed from
        report.dropped["entries of the file besides the weights"] = ignored
    return state, report


def required_pretrained_keys(backbone: nn.Module) -> List[str]:
    """Names (relative to ``backbone``) a pre-trained Swin must provide: every frozen trunk
    parameter, which would otherwise stay random forever. Output norms are not pre-trained by
    classification and may stay as built."""
    return [
        f"trunk.{name}" for name, p in backbone.trunk.named_parameters()
        if not p.requires_grad and not is_output_norm_key(name)
    ]


def check_pretrained_state(
    required: List[str], state: Mapping[str, Tensor], own: Mapping[str, Tensor], what: str
) -> None:
    """Refuse a load that would leave ``required`` weights uninitialised or misshapen.

    ``own``: the model's state (for shapes); ``what`` names the file's kind in the error.
    """
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
        raise SwinCheckpointError(f"frozen parameters with other shapes in {what}: {wrong[:10]}")


def load_pretrained_swin(backbone: nn.Module, path: str) -> ConversionReport:
    """Load the pre-trained Swin at ``path`` (any layout ``convert_swin_checkpoint`` reads)
    into ``backbone``'s trunk and the highway's copies of it; refuse an incomplete trunk.

    A backbone built on the meta device (shapes only) has no storage to copy into: the file is
    still read, converted and checked, so a wrong path or architecture fails as it would for
    real weights.
    """
    state, report = pretrained_state(backbone, read_checkpoint(path))
    own = backbone.state_dict()
    check_pretrained_state(required_pretrained_keys(backbone), state, own,
                           "the converted Swin checkpoint")
    if any(t.is_meta for t in own.values()):
        logger.info("Checked the pre-trained Swin %s (not copied: the model is on the meta "
                    "device): %s", path, report.summary())
        return report
    result = backbone.load_state_dict(state, strict=False)
    assert not result.unexpected_keys, result.unexpected_keys
    logger.info("Loaded a pre-trained Swin from %s into the trunk: %s", path, report.summary())
    return report
