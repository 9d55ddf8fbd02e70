"""The frozen trunk in a narrower precision than the highway (E3VA's ``trunk_dtype``).

E3VA's trunk has no gradients, so its blocks can hold their weights and compute in bfloat16 or
float16 while the highway, the neck and the heads stay in float32: the blocks' weights take
half the memory (the largest constant of a Swin-L step after the optimizer's), and so do the
branch outputs the adapters keep for backward.

Only the *blocks* are narrowed. The patch embedding stays in the highway's precision because
its output is the highway's start, and the patch merging layers stay too because the highway
runs its own tokens through them (their weights are shared with the trunk). The trunk's stream
is cast to the blocks' dtype on the way into a stage and back for its patch merging; branch
outputs are cast to the highway's dtype (:func:`to_highway`) as the adapters read them.

Under autocast the blocks compute in their own dtype (:func:`blocks_autocast`), whatever the
AMP dtype: float16 AMP would otherwise run a bfloat16 trunk's matmuls in float16 (float16's
range, which bfloat16 is chosen to avoid) and promote its stream to float32 at ``x + a1``.

This changes what the trunk computes (its weights and activations are rounded): a lossy option,
whose accuracy must be measured. float16 also narrows the range (its largest value is 65504),
and a Swin's residual stream grows stage by stage; :func:`check_stream` stops a run whose trunk
left that range with an error that says so, rather than letting the highway read infinities.
"""
from __future__ import annotations

import contextlib
from typing import Optional

import torch
from torch import Tensor

from ..layers.bottleneck import _autocast_state
from .swin import SwinTransformer

__all__ = [
    "TRUNK_DTYPES",
    "TrunkOverflowError",
    "blocks_autocast",
    "check_stream",
    "narrow_trunk_blocks",
    "narrowed_dtype",
    "to_highway",
]

TRUNK_DTYPES = {None: None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class TrunkOverflowError(FloatingPointError):
    """The frozen trunk's stream held inf or NaN in float16 (``trunk_dtype="float16"``)."""


def check_stream(x: Tensor, stage: int) -> None:
    """Raise :class:`TrunkOverflowError` when the trunk's stream ``x`` at the end of ``stage`` is
    float16 and not finite.

    Why: without it, training stops later on a NaN loss that does not say where it came from,
    and inference returns empty or garbage detections without a word. Only a float16 stream is
    checked (bfloat16 and float32 share float32's range); on a GPU the check costs one
    synchronisation per stage.
    """
    if x.dtype == torch.float16 and not bool(torch.isfinite(x).all()):
        raise TrunkOverflowError(
            f"the frozen trunk's activations left float16's range (largest value 65504) in "
            f"stage {stage}, so the highway would read inf or NaN. Run the trunk in bfloat16 "
            f"(model.backbone.bottom_up.tuning.trunk_dtype='bfloat16': the same memory, "
            f"float32's range) or in float32 (trunk_dtype=None)."
        )


def narrow_trunk_blocks(trunk: SwinTransformer, dtype: torch.dtype) -> None:
    """Cast the weights of every block of ``trunk`` to ``dtype``, in place. Later checkpoint
    loads copy into them, so they stay narrow whatever the checkpoint's dtype."""
    for stage in trunk.layers:
        stage.blocks.to(dtype)


def narrowed_dtype(trunk: SwinTransformer) -> Optional[torch.dtype]:
    """The blocks' dtype when ``narrow_trunk_blocks`` made it differ from the patch
    embedding's, else None (also under AMP, where autocast, not the weights, narrows)."""
    blocks = trunk.layers[0].blocks[0].norm1.weight.dtype
    return blocks if blocks != trunk.patch_embed.proj.weight.dtype else None


def to_highway(branch: Tensor, dtype: Optional[torch.dtype]) -> Tensor:
    """A trunk branch output as the highway reads it (unchanged when ``dtype`` is None)."""
    return branch if dtype is None else branch.to(dtype)


def blocks_autocast(narrow: Optional[torch.dtype], device_type: str):
    """The context narrowed blocks run in: autocast to their own dtype ``narrow`` where
    autocast is on for ``device_type`` in another dtype; nothing otherwise (no autocast, the
    same dtype, or blocks that are not narrowed)."""
    enabled, dtype = _autocast_state(device_type)
    if narrow is None or not enabled or dtype == narrow:
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=narrow)
