"""Recomputing, in backward, what the highways read from the frozen trunk (``recompute_branches``).

By default a highway keeps, for backward, every adapter's input: the two branch outputs
``a1``, ``a2`` of every trunk block, the bulk of what E3VA adds to the frozen model's memory.
This policy keeps one tensor of the trunk's residual stream per *segment* of blocks instead (a
block, or a whole stage) and runs the segment's trunk blocks again, without autograd, when
backward reaches it. It is a way of running the one walk of the trunk
(:class:`~e3va_d2.modeling.highway_walk.HighwayWalk`): each segment's blocks run through
:meth:`~e3va_d2.modeling.swin.SwinStage.walk_blocks`, in forward and again in backward.

Why a whole stage can be one segment: E3VA's highway is ``e_{j+1} = e_j + f_j(a1_j, a2_j)``,
where ``f_j`` (the block's adapters, minus their identity paths) never reads ``e``. So the
gradient along ``e`` is the same at every block of a stage, ``dL/de_j = dL/de_{stage end}``, and
each block's adapter gradients need only that one gradient and the block's own ``a1, a2``.
Backward recomputes the segment's trunk blocks in forward order and differentiates each block's
adapters as soon as its branches exist, so at most one block's branches are alive at a time.

A highway whose steps read ``e`` (``reads_highway``: the spatial highway's adapters read its
deviation from the trunk) has no such shortcut: for it the segment also keeps ``e`` at its
start, and backward reruns the segment's highway steps with autograd from there (every step's
adapter inputs alive at once, for one segment) before differentiating them.

The same functions run in the same order as without recomputation (the trunk is frozen and in
eval mode: no randomness), so the forward pass is bit for bit the default one and the gradients
are the default's; the price is one more forward pass of the trunk's blocks per step.

Shape legend: B batch, L tokens, C channels.
"""
from __future__ import annotations

import contextlib
from typing import Dict, List, Optional

import torch
from torch import Tensor, nn

from ..layers.bottleneck import _autocast_state
from .swin import SwinStage

__all__ = ["RECOMPUTE_BRANCHES", "BranchRecomputation"]

RECOMPUTE_BRANCHES = (None, "block", "stage")


def _segment_parameters(walk, i: int, blocks: range) -> List[Tensor]:
    """The parameters of every lane's steps over ``blocks`` of stage ``i``, in a fixed order."""
    return [p for highway, _ in walk.lanes for j in blocks for p in highway.block_parameters(i, j)]


class _RecomputedSegment(torch.autograd.Function):
    """``(x, e_1..e_N, params) -> (x after the segment, e_1'..e_N')`` for the walk's N lanes,
    keeping only ``x`` (the trunk stream at the segment's input), and the ``e`` of lanes that
    read it, for backward."""

    @staticmethod
    def forward(ctx, walk, i, stage, blocks, hw, x, n, *tensors):
        states, reads = list(tensors[:n]), [highway.reads_highway for highway, _ in walk.lanes]
        device = x.device.type
        ctx.autocast = (device, *_autocast_state(device))
        ctx.walk, ctx.i, ctx.stage, ctx.blocks, ctx.hw, ctx.n = walk, i, stage, blocks, hw, n
        # The stream as the highway holds it (beside a narrowed trunk) is not differentiable:
        # the walk carries it on; backward rebuilds it from the segment's start.
        ctx.save_for_backward(x, walk.stream, *(e for e, read in zip(states, reads) if read))
        walk.states = states
        x = stage.walk_blocks(x, hw, lambda j, x, a1, a2: walk.advance(i, j, x, a1, a2, hw),
                              blocks, context=walk.blocks_context)
        ctx.mark_non_differentiable(x)
        return (x, *walk.states)

    @staticmethod
    def backward(ctx, grad_x, *grad_states):
        x, stream, *kept = ctx.saved_tensors
        held = [stream]  # the held stream at the current block's input, or None
        walk, i, hw = ctx.walk, ctx.i, ctx.hw
        highways = [highway for highway, _ in walk.lanes]
        kept = iter(kept)
        starts = {k: next(kept).detach().requires_grad_() for k, h in enumerate(highways)
                  if h.reads_highway}
        replayed = dict(starts)  # lanes that read e: their steps again, with autograd
        grads: Dict[int, Optional[Tensor]] = {}  # id(parameter) -> its gradient

        def on_block(j, x, a1, a2):
            a1, a2 = walk.widen(a1), walk.widen(a2)
            if held[0] is not None:
                x, held[0] = held[0], walk.next_stream(held[0], a1, a2)
            with torch.enable_grad():
                for k, highway in enumerate(highways):
                    if k in replayed:
                        replayed[k] = highway.block(i, j, replayed[k], x, a1, a2, hw)
                        continue
                    wanted = [p for p in highway.block_parameters(i, j) if p.requires_grad]
                    if not wanted or grad_states[k] is None:
                        continue
                    # The step does not read e: any e gives its parameters' gradients.
                    out = highway.block(i, j, grad_states[k].new_zeros(()), x, a1, a2, hw)
                    found = torch.autograd.grad(out, wanted, grad_states[k], allow_unused=True)
                    grads.update((id(p), g) for p, g in zip(wanted, found))

        device, enabled, dtype = ctx.autocast
        grad_e_in = [g if ctx.needs_input_grad[7 + k] else None for k, g in enumerate(grad_states)]
        # The forward ran under the caller's autocast; the recomputation must round as it did.
        with torch.autocast(device, dtype=dtype) if enabled else contextlib.nullcontext():
            with torch.no_grad():
                ctx.stage.walk_blocks(x, hw, on_block, ctx.blocks, context=walk.blocks_context)
            for k, start in starts.items():
                if grad_states[k] is None:
                    continue
                wanted = [p for j in ctx.blocks for p in highways[k].block_parameters(i, j)
                          if p.requires_grad]
                found = torch.autograd.grad(replayed[k], [start, *wanted], grad_states[k],
                                            allow_unused=True)
                grad_e_in[k] = found[0] if ctx.needs_input_grad[7 + k] else None
                grads.update((id(p), g) for p, g in zip(wanted, found[1:]))
        params = _segment_parameters(walk, i, ctx.blocks)
        return (None,) * 7 + (*grad_e_in, *(grads.get(id(p)) for p in params))


class BranchRecomputation(nn.Module):
    """The policy as a child of the highway (no parameters), so that what it keeps for backward
    is attributed to the highway by module name. ``per``: "block" or "stage"."""

    def __init__(self, per: str):
        super().__init__()
        if per not in RECOMPUTE_BRANCHES[1:]:
            raise ValueError(f"recompute_branches={per!r}; expected one of {RECOMPUTE_BRANCHES}")
        self.per = per

    def segments(self, depth: int) -> List[range]:
        """The segments of a stage of ``depth`` blocks: each keeps one tensor of the stream."""
        return [range(depth)] if self.per == "stage" else [range(j, j + 1) for j in range(depth)]

    def forward(self, walk, i: int, stage: SwinStage, blocks: range, x: Tensor, hw) -> Tensor:
        """Every lane of ``walk`` past ``blocks`` of stage ``i``; returns the trunk's stream."""
        params = _segment_parameters(walk, i, blocks)
        x, *states = _RecomputedSegment.apply(walk, i, stage, blocks, hw, x, len(walk.states),
                                              *walk.states, *params)
        walk.states = states
        return x

    def extra_repr(self) -> str:
        return f"per={self.per!r}"
