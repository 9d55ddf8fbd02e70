"""Swin checkpoint layouts -> the key names of :class:`~e3va_d2.modeling.swin.SwinTransformer`.

The only module that knows how released Swin weights are laid out. Supported layouts:

- ``"official"``: Microsoft's classification release (``{"model": ...}``, patch merging at the
  *end* of stage ``i`` as ``layers.{i}.downsample``, classifier ``norm``/``head``, buffers
  ``attn_mask``/``relative_position_index``), and the official detection release (mmdet,
  ``backbone.`` prefix, output norms ``norm{i}``). Our names equal these.
- ``"timm"``: timm >= 0.9, patch merging at the *start* of the next stage
  (``layers.{i+1}.downsample``), classifier ``head.fc``. Older timm used the official layout.
- ``"detectron2"``: detectron2 main's ``SwinTransformer`` inside a detectron2 model
  (``backbone.bottom_up.`` prefix, ``norm{i}``, persistent ``relative_position_index``).
- ``"e3va"``: a full-model checkpoint of ours (``….trunk.`` prefix).

All functions are pure: they read a state dict and return new dicts; nothing is loaded here.
It is longer than most modules (about 380 lines) because every layout rule lives here and
nowhere else.
"""

from __future__ import annotations

import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..utils.state import strip_prefix
from .swin import SWIN_SIZES, SwinTransformer

__all__ = [
    "SwinCheckpointError",
    "ConversionReport",
    "LAYOUTS",
    "detect_swin_layout",
    "swin_architecture",
    "describe_architecture",
    "trunk_architecture",
    "convert_swin_checkpoint",
    "resize_position_bias_table",
    "is_output_norm_key",
]

LAYOUTS = ("official", "timm", "detectron2", "e3va")

# A key of the Swin trunk itself (what a pre-trained checkpoint must provide), in our names.
_SWIN_KEY = re.compile(
    r"^(patch_embed\.(proj|norm)\.(weight|bias)"
    r"|layers\.\d+\.blocks\.\d+\."
    r"(norm1|norm2|attn\.qkv|attn\.proj|mlp\.fc1|mlp\.fc2)\.(weight|bias)"
    r"|layers\.\d+\.blocks\.\d+\.attn\.relative_position_bias_table"
    r"|layers\.\d+\.downsample\.(norm|reduction)\.(weight|bias))$"
)
_OUTPUT_NORM_KEY = re.compile(r"^norm(\d+)\.(weight|bias)$")
_STAGE_KEY = re.compile(r"^layers\.(\d+)\.")
_BLOCK_KEY = re.compile(r"^layers\.(\d+)\.blocks\.(\d+)\.")
_DOWNSAMPLE_KEY = re.compile(r"^layers\.(\d+)\.downsample\.(.+)$")
_TABLE = "attn.relative_position_bias_table"
# Where each layout keeps the trunk: (layout, key prefix), tried in this order.
_PREFIXES = (
    ("detectron2", "backbone.bottom_up."),
    ("official", "backbone."),  # official detection release (mmdet)
    ("official", ""),  # classification release, or timm (told apart below)
)
_E3VA_PROBE = re.compile(r"^(.*\btrunk\.)patch_embed\.proj\.weight$")

# Drop reasons shown in the report.
DROP_CLASSIFIER = "classifier head"
DROP_CLASSIFIER_NORM = "classifier norm (never an output norm)"
DROP_BUFFERS = "derived buffers (attn_mask, relative_position_index)"
DROP_NOT_BACKBONE = "not part of the Swin trunk (neck, heads, adapters, ...)"
DROP_STAGES = "stages after the model's last output"
DROP_LAST_MERGE = "patch merging after the model's last stage"
DROP_UNUSED_NORMS = "output norms of outputs the model does not return"


class SwinCheckpointError(ValueError):
    """A checkpoint that cannot be loaded into the Swin trunk as it is."""


@dataclass
class ConversionReport:
    """What :func:`convert_swin_checkpoint` did, for logging."""

    layout: str
    checkpoint_architecture: Dict[str, Any]
    loaded: int = 0
    dropped: Dict[str, List[str]] = field(default_factory=dict)  # reason -> checkpoint keys
    resized: List[str] = field(default_factory=list)  # "key: (old) -> (new)"
    moved: int = 0  # timm patch merging keys moved back to the end of the previous stage
    output_norms: List[str] = field(default_factory=list)  # norm{i} keys taken from the file
    not_provided: List[str] = field(default_factory=list)  # trunk keys left as initialised

    def summary(self) -> str:
        arch = describe_architecture(self.checkpoint_architecture)
        parts = [f"{self.layout} layout, {arch}: {self.loaded} tensors"]
        if self.moved:
            parts.append(f"{self.moved} patch-merging tensors moved to the end of their stage")
        if self.resized:
            parts.append(f"{len(self.resized)} position-bias tables resized ({self.resized[0]})")
        if self.output_norms:
            parts.append(f"output norms from the checkpoint: {len(self.output_norms)} tensors")
        for reason, keys in self.dropped.items():
            parts.append(f"dropped {len(keys)} ({reason}{_examples(keys)})")
        if self.not_provided:
            parts.append(
                f"not in the checkpoint: {len(self.not_provided)}{_examples(self.not_provided)}"
            )
        return "; ".join(parts)


def _examples(keys: Sequence[str], n: int = 2) -> str:
    shown = ", ".join(list(keys)[:n])
    return f": {shown}{', ...' if len(keys) > n else ''}"


def is_output_norm_key(key: str) -> bool:
    """``norm{i}.weight`` / ``norm{i}.bias`` of the trunk (not pre-trained by classification)."""
    return _OUTPUT_NORM_KEY.match(key) is not None


def _flatten(checkpoint: Mapping[str, Any]) -> Dict[str, Any]:
    """The tensor dict of a checkpoint file's content (``model`` / ``state_dict`` wrappers and a
    DDP ``module.`` prefix removed)."""
    sd: Mapping[str, Any] = checkpoint
    for wrapper in ("model", "state_dict"):
        if isinstance(sd.get(wrapper), Mapping):
            sd = sd[wrapper]
    return strip_prefix(sd)


def _layout_and_prefix(sd: Mapping[str, Any]) -> Tuple[str, str]:
    for key in sd:
        match = _E3VA_PROBE.match(key)
        if match:
            return "e3va", match.group(1)
    for layout, prefix in _PREFIXES:
        if f"{prefix}patch_embed.proj.weight" in sd and any(
            k.startswith(prefix + "layers.0.blocks.0." + _TABLE) for k in sd
        ):
            if prefix == "" and _merging_at_stage_start(sd):
                return "timm", prefix
            return layout, prefix
    keys = list(sd)[:6]
    raise SwinCheckpointError(
        "not a Swin checkpoint: no known layout (official, timm, detectron2, e3va) matches; "
        "expected keys such as 'patch_embed.proj.weight' and "
        f"'layers.0.blocks.0.{_TABLE}' (maybe behind 'backbone.' or 'backbone.bottom_up.'). "
        f"The checkpoint has {len(sd)} entries, e.g. {keys}"
    )


def _merging_at_stage_start(sd: Mapping[str, Any]) -> bool:
    """timm's patch merging of stage i reads stage i-1's channels: norm over 2*C_i, not 4*C_i."""
    for key, value in sd.items():
        match = _DOWNSAMPLE_KEY.match(key)
        if match and match.group(2) == "norm.weight":
            stage_norm = sd.get(f"layers.{match.group(1)}.blocks.0.norm1.weight")
            if stage_norm is not None:
                return value.shape[0] == 2 * stage_norm.shape[0]
    return "head.fc.weight" in sd  # no patch merging to tell from (one stage): the head's name


def detect_swin_layout(state_dict: Mapping[str, Any]) -> str:
    """One of :data:`LAYOUTS`; raises :class:`SwinCheckpointError` for anything else.

    Accepts a plain state dict or a file's content (``{"model": ...}``, ``{"state_dict": ...}``).
    """
    return _layout_and_prefix(_flatten(state_dict))[0]


def _canonical(
    sd: Mapping[str, Any], layout: str, prefix: str
) -> Tuple[Dict[str, Tensor], Dict[str, List[str]], int]:
    """Keys renamed to ours, classification-only and foreign entries dropped."""
    out: Dict[str, Tensor] = {}
    dropped: Dict[str, List[str]] = defaultdict(list)
    moved = 0
    for key, value in sd.items():
        if not key.startswith(prefix):
            dropped[DROP_NOT_BACKBONE].append(key)
            continue
        name = key[len(prefix) :]
        if name.endswith(("attn_mask", "relative_position_index")):
            dropped[DROP_BUFFERS].append(key)
        elif name.startswith("head.") or name.startswith("head_"):
            dropped[DROP_CLASSIFIER].append(key)
        elif name.startswith("norm."):
            dropped[DROP_CLASSIFIER_NORM].append(key)
        else:
            match = _DOWNSAMPLE_KEY.match(name) if layout == "timm" else None
            if match:
                name = f"layers.{int(match.group(1)) - 1}.downsample.{match.group(2)}"
                moved += 1
            if isinstance(value, np.ndarray):  # detectron2 .pkl files hold numpy arrays
                value = torch.from_numpy(value)
            if not isinstance(value, Tensor):
                raise SwinCheckpointError(f"checkpoint entry {key!r} is not a tensor")
            out[name] = value
    return out, dict(dropped), moved


def swin_architecture(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
    """``dict(embed_dim, depths, num_heads, window_size)`` read off the tensors' shapes.

    Works on any supported layout (and on our own trunk's state dict).
    """
    sd = _flatten(state_dict)
    if "patch_embed.proj.weight" not in sd:
        layout, prefix = _layout_and_prefix(sd)
        sd = _canonical(sd, layout, prefix)[0]
    if "patch_embed.proj.weight" not in sd:
        raise SwinCheckpointError("not a Swin checkpoint: no 'patch_embed.proj.weight'")
    blocks: Dict[int, int] = defaultdict(int)
    for key in sd:
        match = _BLOCK_KEY.match(key)
        if match:
            stage, block = int(match.group(1)), int(match.group(2))
            blocks[stage] = max(blocks[stage], block + 1)
    num_stages = max(blocks, default=-1) + 1
    if not num_stages or sorted(blocks) != list(range(num_stages)):
        raise SwinCheckpointError(f"not a Swin checkpoint: stages {sorted(blocks)} have blocks")
    tables = [sd.get(f"layers.{i}.blocks.0.{_TABLE}") for i in range(num_stages)]
    if any(t is None for t in tables):
        raise SwinCheckpointError(f"not a Swin checkpoint: a stage has no {_TABLE}")
    side = math.isqrt(tables[0].shape[0])  # the table holds (2 * window - 1) ** 2 offsets
    return dict(
        embed_dim=int(sd["patch_embed.proj.weight"].shape[0]),
        depths=tuple(blocks[i] for i in range(num_stages)),
        num_heads=tuple(int(t.shape[1]) for t in tables),
        window_size=(side + 1) // 2,
    )


def describe_architecture(arch: Mapping[str, Any]) -> str:
    """E.g. ``Swin-B (embed_dim=128, depths=(2, 2, 18, 2), num_heads=(4, 8, 16, 32))``."""
    name = "Swin"
    for size, kwargs in SWIN_SIZES.items():
        if all(tuple(_as_tuple(arch[k])) == tuple(_as_tuple(v)) for k, v in kwargs.items()):
            name = f"Swin-{size}"
    return (
        f"{name} (embed_dim={arch['embed_dim']}, depths={tuple(arch['depths'])}, "
        f"num_heads={tuple(arch['num_heads'])})"
    )


def _as_tuple(v: Any) -> Tuple:
    return tuple(v) if isinstance(v, (list, tuple)) else (v,)


def trunk_architecture(trunk: SwinTransformer) -> Dict[str, Any]:
    """The same dict as :func:`swin_architecture`, for a built trunk (all its stages, also
    those it does not build because its outputs stop early)."""
    return dict(
        embed_dim=trunk.embed_dim,
        depths=tuple(trunk.depths),
        num_heads=tuple(trunk.num_heads),
        window_size=trunk.window_size,
    )


def _check_same_architecture(ckpt: Dict[str, Any], trunk: SwinTransformer) -> None:
    model = trunk_architecture(trunk)
    n = len(ckpt["depths"])
    # A checkpoint of a trunk that stopped early (our own) may hold fewer stages.
    same = (
        ckpt["embed_dim"] == model["embed_dim"]
        and trunk.num_stages <= n <= len(model["depths"])
        and ckpt["depths"] == model["depths"][:n]
        and ckpt["num_heads"] == model["num_heads"][:n]
    )
    if not same:
        raise SwinCheckpointError(
            f"checkpoint is {describe_architecture(ckpt)} but the model is "
            f"{describe_architecture(model)}; set the trunk to match or use another checkpoint"
        )


def resize_position_bias_table(table: Tensor, window_size: int) -> Tensor:
    """((2w-1)**2, heads) -> ((2W-1)**2, heads) by bicubic interpolation over the 2-D offset
    grid (as the Swin authors do when fine-tuning 224px models at 384px)."""
    src = math.isqrt(table.shape[0])
    dst = 2 * window_size - 1
    if src * src != table.shape[0]:
        raise SwinCheckpointError(
            f"position-bias table of shape {tuple(table.shape)} is not square"
        )
    if src == dst:
        return table
    heads = table.shape[1]
    grid = table.float().t().reshape(1, heads, src, src)  # row index = dy * (2w-1) + dx
    grid = F.interpolate(grid, size=(dst, dst), mode="bicubic", align_corners=False)
    return grid.reshape(heads, dst * dst).t().contiguous().to(table.dtype)


def _why_unused(key: str, trunk: SwinTransformer) -> Optional[str]:
    """Why a Swin key of the checkpoint has no place in this (possibly shorter) trunk."""
    norm = _OUTPUT_NORM_KEY.match(key)
    if norm:
        return DROP_UNUSED_NORMS if int(norm.group(1)) not in trunk.out_indices else None
    stage = _STAGE_KEY.match(key)
    if stage is None or not _SWIN_KEY.match(key):
        return None
    i = int(stage.group(1))
    if i >= trunk.num_stages:
        return DROP_STAGES
    if i == trunk.num_stages - 1 and _DOWNSAMPLE_KEY.match(key):
        return DROP_LAST_MERGE
    return None


def convert_swin_checkpoint(
    state_dict: Mapping[str, Any], trunk: SwinTransformer
) -> Tuple[Dict[str, Tensor], ConversionReport]:
    """A state dict for exactly ``trunk`` (our names, no prefix) from a Swin checkpoint.

    Drops what the trunk has no place for (classifier, derived buffers, unbuilt stages),
    moves timm's patch merging back, interpolates position-bias tables to
    ``trunk.window_size``, and refuses other architectures, foreign keys, wrong shapes and
    missing trunk tensors. Output norms (``norm{i}``) come only from detection layouts that
    have them; otherwise they are listed in ``report.not_provided``.
    """
    sd = _flatten(state_dict)
    layout, prefix = _layout_and_prefix(sd)
    canonical, dropped, moved = _canonical(sd, layout, prefix)
    report = ConversionReport(layout, swin_architecture(canonical), moved=moved)
    _check_same_architecture(report.checkpoint_architecture, trunk)

    expected = trunk.state_dict()
    converted: Dict[str, Tensor] = {}
    foreign = []
    for name, value in canonical.items():
        if name in expected:
            converted[name] = value
            continue
        reason = _why_unused(name, trunk)
        if reason is None:
            foreign.append(name)
        else:
            dropped.setdefault(reason, []).append(name)
    if foreign:
        raise SwinCheckpointError(
            f"the {layout} checkpoint has {len(foreign)} tensors the Swin trunk has no place "
            f"for (a different Swin variant, e.g. absolute position embeddings or Swin V2?): "
            f"{foreign[:8]}"
        )

    for name, value in converted.items():
        if name.endswith(_TABLE) and value.shape != expected[name].shape:
            resized = resize_position_bias_table(value, trunk.window_size)
            report.resized.append(f"{name}: {tuple(value.shape)} -> {tuple(resized.shape)}")
            converted[name] = resized
    wrong = [
        f"{name}: checkpoint {tuple(value.shape)}, model {tuple(expected[name].shape)}"
        for name, value in converted.items()
        if value.shape != expected[name].shape
    ]
    if wrong:
        raise SwinCheckpointError(
            f"{len(wrong)} tensors of the {layout} checkpoint do not fit the model's shapes: "
            f"{wrong[:8]}"
        )
    missing = [k for k in expected if k not in converted and _SWIN_KEY.match(k)]
    if missing:
        raise SwinCheckpointError(
            f"the {layout} checkpoint lacks {len(missing)} tensors of the Swin trunk: {missing[:8]}"
            f"{' ...' if len(missing) > 8 else ''}"
        )
    report.loaded = len(converted)
    report.dropped = dropped
    report.output_norms = [k for k in converted if is_output_norm_key(k)]
    report.not_provided = [k for k in expected if k not in converted]
    return converted, report
