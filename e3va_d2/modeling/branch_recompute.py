"""Recomputing, in backward, what the highway's adapters read from the frozen trunk.

By default the highway keeps, for backward, every adapter's input: the two branch outputs
``a1``, ``a2`` of every trunk block, the bulk of what E3VA adds to the frozen model's memory.
This module keeps one tensor of the trunk's residual stream per *segment* of blocks instead (a
block, or a whole stage) and runs the segment's trunk blocks again, without autograd, when
backward reaches it.

Why a whole stage can be one segment: the highway is ``e_{j+1} = e_j + f_j(a1_j, a2_j)``, where
``f_j`` (the block's adapters, minus their identity paths) never reads ``e``. So the gradient
along ``e`` is the same at every block of a stage, ``dL/de_j = dL/de_{stage end}``, and each
block's adapter gradients need only that one gradient and the block's own ``a1, a2``. Backward
recomputes the stage's trunk blocks in forward order and differentiates each block's adapters
as soon as its branches exist, so at most one block's branches are alive at a time.

The same functions run in the same order as without recomputation (the trunk is frozen and in
eval mode: no randomness), so the forward pass is bit for bit the default one and the gradients
are the default's; the price is one more forward pass of the trunk's blocks per step.

Shape legend: B batch, L tokens, C channels.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor, nn

from ..layers.bottleneck import _autocast_state
from .swin import SwinBlock, SwinTransformer, next_grid, tokens_to_map
from .trunk_precision import blocks_autocast, check_stream, narrowed_dtype, to_highway

__all__ = ["RECOMPUTE_BRANCHES", "BranchRecomputation", "forward_recomputing_branches"]

RECOMPUTE_BRANCHES = (None, "block", "stage")

Pair = Tuple[SwinBlock, nn.Module]  # (frozen trunk block, its BlockAdapters)


def _trunk_block(block: SwinBlock, x: Tensor, hw, mask,
                 narrow: Optional[torch.dtype]) -> Tuple[Tensor, Tensor, Tensor]:
    """``(a1, a2, next x)`` of one frozen block, as ``trace_trunk`` computes them."""
    with blocks_autocast(narrow, x.device.type):
        a1 = block.attention_branch(x, hw, mask)
        x = x + a1
        a2 = block.mlp_branch(x)
        return a1, a2, x + a2


class _RecomputedBranches(torch.autograd.Function):
    """``(e, x) -> (e + sum of the segment's adaptations, x after the segment's blocks)``,
    keeping only ``x`` (the trunk stream at the segment's input) for backward."""

    @staticmethod
    def forward(ctx, e, x, hw, stage, pairs, highway_dtype, *params):
        device = x.device.type
        ctx.autocast = (device, *_autocast_state(device))
        ctx.hw, ctx.stage, ctx.pairs, ctx.highway_dtype = hw, stage, pairs, highway_dtype
        ctx.narrow = x.dtype if highway_dtype is not None else None  # narrowed blocks' dtype
        ctx.save_for_backward(x)
        mask = stage.shift_mask(hw, x.device)
        for block, adapters in pairs:
            a1, a2, x = _trunk_block(block, x, hw, mask, ctx.narrow)
            e = adapters(e, to_highway(a1, highway_dtype), to_highway(a2, highway_dtype))
        ctx.mark_non_differentiable(x)
        return e, x

    @staticmethod
    def backward(ctx, grad_e, grad_x):
        (x,) = ctx.saved_tensors
        device, enabled, dtype = ctx.autocast
        grads: List[Optional[Tensor]] = []
        # The forward ran under the caller's autocast; the recomputation must round as it did.
        with torch.autocast(device, dtype=dtype) if enabled else contextlib.nullcontext():
            mask = ctx.stage.shift_mask(ctx.hw, x.device)
            zero = grad_e.new_zeros(())  # the adaptations do not read e: any e gives their grads
            for block, adapters in ctx.pairs:
                with torch.no_grad():
                    a1, a2, x = _trunk_block(block, x, ctx.hw, mask, ctx.narrow)
                params = list(adapters.parameters())
                wanted = [p for p in params if p.requires_grad]
                with torch.enable_grad():
                    out = adapters(zero, to_highway(a1, ctx.highway_dtype),
                                   to_highway(a2, ctx.highway_dtype))
                    found = iter(torch.autograd.grad(out, wanted, grad_e, allow_unused=True)
                                 if wanted else ())
                grads += [next(found) if p.requires_grad else None for p in params]
                del a1, a2, out
        grad_e_in = grad_e if ctx.needs_input_grad[0] else None
        return (grad_e_in, None, None, None, None, None, *grads)


def _segments(pairs: List[Pair], per: str) -> List[List[Pair]]:
    if per == "stage":
        return [pairs]
    if per == "block":
        return [[pair] for pair in pairs]
    raise ValueError(f"recompute_branches={per!r}; expected one of {RECOMPUTE_BRANCHES}")


def forward_recomputing_branches(highway: nn.Module, trunk: SwinTransformer, images: Tensor,
                                 per: str) -> Dict[str, Tensor]:
    """:meth:`E3VAHighway.from_trace`'s outputs for ``images``, running trunk and highway
    stage by stage and keeping one trunk-stream tensor per ``per`` ("block" or "stage") for
    backward instead of every block's two branch outputs."""
    with torch.no_grad():
        x, hw = trunk.patch_embed(images)
    e = x  # the highway starts at the patch embedding, as the trunk does
    narrow = narrowed_dtype(trunk)
    highway_dtype = x.dtype if narrow is not None else None
    outs = {}
    for i, (stage, adapters) in enumerate(zip(trunk.layers, highway.layers)):
        if narrow is not None:
            x = x.to(narrow)
        for segment in _segments(list(zip(stage.blocks, adapters["blocks"])), per):
            params = [p for _, block_adapters in segment for p in block_adapters.parameters()]
            e, x = _RecomputedBranches.apply(e, x, hw, stage, segment, highway_dtype, *params)
        check_stream(x, i)
        if i in trunk.out_indices:
            outs[f"p{i}"] = tokens_to_map(getattr(trunk, f"norm{i}")(e), hw)
        if stage.downsample is not None:
            merge = stage.downsample if highway.downsample is None else highway.downsample[i]
            e = highway._merge(merge, e, hw)
            with torch.no_grad():
                x = stage.downsample(x if narrow is None else x.to(highway_dtype), hw)
            hw = next_grid(hw)
    return outs


class BranchRecomputation(nn.Module):
    """:func:`forward_recomputing_branches` as a child of the highway (no parameters), so
    that what it keeps for backward is attributed to the highway by module name."""

    def __init__(self, per: str):
        super().__init__()
        if per not in RECOMPUTE_BRANCHES[1:]:
            raise ValueError(f"recompute_branches={per!r}; expected one of {RECOMPUTE_BRANCHES}")
        self.per = per

    def forward(self, highway: nn.Module, trunk: SwinTransformer, images: Tensor
                ) -> Dict[str, Tensor]:
        return forward_recomputing_branches(highway, trunk, images, self.per)

    def extra_repr(self) -> str:
        return f"per={self.per!r}"
