"""The frozen trunk's walk with highways beside it: one pass of the trunk, N highways.

E3VA's trunk runs without autograd; its highways (:class:`~e3va_d2.modeling.highway.Highway`)
read every block's branch outputs as the trunk produces them and build the only autograd graph.
:class:`HighwayWalk` is the :class:`~e3va_d2.modeling.swin.TrunkHooks` that does this on the one
walk of the trunk (:meth:`~e3va_d2.modeling.swin.SwinTransformer.walk`):

- the trunk (blocks, patch merging) under no_grad, each highway under the caller's autograd;
- the trunk's precision (:mod:`.trunk_precision`): the stream cast into narrowed blocks and
  back for patch merging, the blocks under their own autocast, each stage's stream checked,
  branch outputs widened for highways;
- branch recomputation (:mod:`.branch_recompute`), when a highway asks for it, runs each
  segment of blocks inside one autograd function that keeps only the trunk's stream;
- several highways (tasks) on one pass: each is a *lane* ``(highway, trunk)``, the trunk being
  the one whose output norms that highway reads (tasks tie their frozen trunk tensors, not
  their trainable norms).

A lane's highway implements ``begin(embedding) -> e``, ``block(i, j, e, l, a1, a2, hw) -> e``
(block ``j`` of stage ``i``: ``l`` the trunk's stream at its input), ``stage_end(trunk, i, e, hw,
outputs) -> e`` (its outputs, its patch merging), ``block_parameters(i, j)`` and
``reads_highway`` (whether ``block`` reads ``e`` and ``l``, other than adding to ``e``).

The stream ``l`` a lane reads is the trunk's. Beside a narrowed trunk it is the stream as the
highway holds it: the embedding plus the widened branch outputs, merged in the highway's dtype
(kept only while a lane reads it), so that ``e - l`` is exactly zero while a highway adds
nothing, as it is beside a trunk in the highway's dtype.

Shape legend: B batch, L tokens, C channels.
"""
from __future__ import annotations

from typing import ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .swin import SwinStage, SwinTransformer, TrunkHooks
from .trunk_precision import blocks_autocast, check_stream, narrowed_dtype, to_highway

__all__ = ["HighwayWalk", "walk_highways"]

Lane = Tuple[nn.Module, SwinTransformer]  # a highway, and the trunk whose output norms it reads


class HighwayWalk(TrunkHooks):
    """The walk of a frozen ``trunk`` with ``lanes`` beside it; ``recompute``: a
    :class:`~e3va_d2.modeling.branch_recompute.BranchRecomputation`, used while gradients flow.
    After the walk, ``outputs[k]`` holds lane ``k``'s features."""

    def __init__(self, trunk: SwinTransformer, lanes: Sequence[Lane],
                 recompute: Optional[nn.Module] = None):
        self.trunk, self.lanes, self.recompute = trunk, list(lanes), recompute
        self.narrow = narrowed_dtype(trunk)  # blocks in another dtype than embedding and merging
        self.grad = torch.is_grad_enabled()  # the highways' autograd (the trunk has none)
        self.highway_dtype: Optional[torch.dtype] = None
        self.device_type = "cpu"
        self.states: List[Tensor] = []
        # The stream as the highway holds it, beside a narrowed trunk that a lane reads.
        self.stream: Optional[Tensor] = None
        self.outputs: List[Dict[str, Tensor]] = [{} for _ in self.lanes]

    def start(self, x: Tensor, hw) -> None:
        # A narrowed trunk hands its branches to the highways in the embedding's dtype.
        self.highway_dtype = x.dtype if self.narrow is not None else None
        self.device_type = x.device.type
        if self.narrow is not None and any(highway.reads_highway for highway, _ in self.lanes):
            self.stream = x
        with torch.set_grad_enabled(self.grad):
            self.states = [highway.begin(x) for highway, _ in self.lanes]

    def stage_input(self, i: int, x: Tensor) -> Tensor:
        return x if self.narrow is None else x.to(self.narrow)

    def run_blocks(self, i: int, stage: SwinStage, x: Tensor, hw) -> Tensor:
        if self.recompute is None or not self.grad:
            return super().run_blocks(i, stage, x, hw)
        with torch.enable_grad():
            for blocks in self.recompute.segments(len(stage.blocks)):
                x = self.recompute(self, i, stage, blocks, x, hw)
        return x

    def blocks_context(self) -> ContextManager:
        return blocks_autocast(self.narrow, self.device_type)

    def block(self, i: int, j: int, x: Tensor, a1: Tensor, a2: Tensor, hw) -> None:
        with torch.set_grad_enabled(self.grad):
            self.advance(i, j, x, a1, a2, hw)

    def advance(self, i: int, j: int, x: Tensor, a1: Tensor, a2: Tensor, hw) -> None:
        """Every lane one step past block ``j`` of stage ``i``, under the current autograd."""
        a1, a2 = self.widen(a1), self.widen(a2)
        stream = x if self.stream is None else self.stream
        self.states = [highway.block(i, j, e, stream, a1, a2, hw)
                       for (highway, _), e in zip(self.lanes, self.states)]
        if self.stream is not None:
            self.stream = self.next_stream(self.stream, a1, a2)

    @staticmethod
    def next_stream(stream: Tensor, a1: Tensor, a2: Tensor) -> Tensor:
        """The held stream past a block, as the trunk adds its branches (no autograd)."""
        with torch.no_grad():
            return (stream + a1) + a2

    def widen(self, branch: Tensor) -> Tensor:
        """A branch output as the highways read it."""
        return to_highway(branch, self.highway_dtype)

    def stage_end(self, i: int, x: Tensor, hw) -> None:
        check_stream(x, i)
        with torch.set_grad_enabled(self.grad):
            self.states = [highway.stage_end(trunk, i, e, hw, outputs)
                           for (highway, trunk), e, outputs
                           in zip(self.lanes, self.states, self.outputs)]

    def merge(self, i: int, merge: nn.Module, x: Tensor, hw) -> Tensor:
        if self.stream is not None:
            self.stream = merge(self.stream, hw)
        return merge(x if self.narrow is None else x.to(self.highway_dtype), hw)


def walk_highways(trunk: SwinTransformer, images: Tensor, lanes: Sequence[Lane],
                  recompute: Optional[nn.Module] = None) -> List[Dict[str, Tensor]]:
    """Every lane's features for ``images`` from one walk of the frozen ``trunk``."""
    walk = HighwayWalk(trunk, lanes, recompute)
    with torch.no_grad():
        trunk.walk(images, walk)
    return walk.outputs
