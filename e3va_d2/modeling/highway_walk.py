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
- the feedback (``feedback_depth`` k > 0): the trunk's last k blocks run on each highway's
  stream instead of the trunk's, under the highways' autograd (see below);
- several highways (tasks) on one pass: each is a *lane* ``(highway, trunk)``, the trunk being
  the one whose output norms that highway reads (tasks tie their frozen trunk tensors, not
  their trainable norms).

A lane's highway implements ``begin(embedding) -> e``, ``block(i, j, e, l, a1, a2, hw) -> e``
(block ``j`` of stage ``i``: ``l`` the trunk's stream at its input), ``stage_end(trunk, i, e, hw,
outputs) -> e`` (its outputs, its patch merging), ``block_parameters(i, j)``,
``reads_highway`` (whether ``block`` reads ``e`` and ``l``, other than adding to ``e``) and
optionally ``feedback_depth`` (0 when absent: a reader beside the trunk).

The stream ``l`` a lane reads is the trunk's. Beside a narrowed trunk it is the stream as the
highway holds it: the embedding plus the widened branch outputs, merged in the highway's dtype
(kept only while a lane reads it), so that ``e - l`` is exactly zero while a highway adds
nothing, as it is beside a trunk in the highway's dtype.

**Feedback.** With ``feedback_depth`` k, the trunk's last k blocks (counted from the end of its
last built stage, across stages) run on the highway's stream: at the first of them the trunk
stops (its stream is None from there on, nothing of it runs again), and each lane runs those
blocks on its own ``e``, with autograd, on the trunk's frozen weights (in eval mode: no
stochastic depth). Each block's branches ``a1, a2`` are then the frozen block's, computed from
``e`` (``a2`` reads ``e + a1``, as in the trunk), and the lane's step is its usual one,
``e' = block(i, j, e, e, a1, a2, hw)`` (E3VA's: ``e + A1(a1) + A2(a2)``): the adapters read
branches that now depend on every earlier correction, and gradients reach earlier adapters
through the frozen blocks. There the block's input *is* the highway, so the trunk's stream a
step reads is ``e`` itself (a step that reads the deviation ``e - l`` reads zero). Stage ends
are as before (each lane's stage mixer, output norm and patch merging of ``e``). Every lane
of one walk must have the same depth: the trunk stops at one place. Before the feedback
everything is as without it, so k = 0 is exactly the walk without feedback.

Shape legend: B batch, L tokens, C channels.
"""
from __future__ import annotations

from typing import ContextManager, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .swin import SwinStage, SwinTransformer, TrunkHooks
from .trunk_precision import blocks_autocast, check_stream, narrowed_dtype, to_highway

__all__ = ["HighwayWalk", "feedback_blocks", "feedback_start", "walk_highways"]

Lane = Tuple[nn.Module, SwinTransformer]  # a highway, and the trunk whose output norms it reads


def feedback_start(trunk: SwinTransformer, depth: int) -> int:
    """The index, counting every built block of ``trunk`` in walk order, of the first of its
    last ``depth`` blocks (the total block count for ``depth`` 0); a ValueError naming the
    allowed range when ``depth`` is outside it."""
    depths = [len(stage.blocks) for stage in trunk.layers]
    total = sum(depths)
    if isinstance(depth, bool) or not isinstance(depth, int) or not 0 <= depth <= total:
        raise ValueError(
            f"feedback_depth={depth!r} is outside 0..{total}: it counts the trunk's blocks "
            f"from its end ({'-'.join(map(str, depths))} per built stage; {depths[-1]} = the "
            f"whole last stage, {total} = every block); 0 runs no block on the highway")
    return total - depth


def feedback_blocks(trunk: SwinTransformer, depth: int) -> List[nn.Module]:
    """The trunk's last ``depth`` blocks, in walk order (checked as :func:`feedback_start`)."""
    blocks = [block for stage in trunk.layers for block in stage.blocks]
    return blocks[feedback_start(trunk, depth):]


class HighwayWalk(TrunkHooks):
    """The walk of a frozen ``trunk`` with ``lanes`` beside it; ``recompute``: a
    :class:`~e3va_d2.modeling.branch_recompute.BranchRecomputation`, used while gradients flow
    (in the blocks before the feedback). After the walk, ``outputs[k]`` holds lane ``k``'s
    features."""

    def __init__(self, trunk: SwinTransformer, lanes: Sequence[Lane],
                 recompute: Optional[nn.Module] = None):
        self.trunk, self.lanes, self.recompute = trunk, list(lanes), recompute
        depths = sorted({getattr(highway, "feedback_depth", 0) for highway, _ in self.lanes})
        if len(depths) > 1:
            raise ValueError(f"highways of feedback_depth {depths} cannot share one walk: the "
                             "trunk stops at one place; walk them separately")
        # Blocks before this index (in walk order) are the frozen trunk's; the rest feed back.
        self.feedback_from = feedback_start(trunk, depths[0] if depths else 0)
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

    def stage_input(self, i: int, x: Optional[Tensor]) -> Optional[Tensor]:
        return x if self.narrow is None or x is None else x.to(self.narrow)

    def run_blocks(self, i: int, stage: SwinStage, x: Optional[Tensor], hw) -> Optional[Tensor]:
        first = sum(len(s.blocks) for s in self.trunk.layers[:i])
        frozen = range(min(len(stage.blocks), max(0, self.feedback_from - first)))
        if len(frozen):
            x = self.run_frozen(i, stage, frozen, x, hw)
        if len(frozen) < len(stage.blocks):
            self.feed_back(i, range(len(frozen), len(stage.blocks)), hw)
            return None  # the trunk has stopped: the highways carry the stream from here
        return x

    def run_frozen(self, i: int, stage: SwinStage, blocks: range, x: Tensor, hw) -> Tensor:
        """The frozen trunk's ``blocks`` of stage ``i`` (the first ones), the lanes beside."""
        if self.recompute is None or not self.grad:
            return stage.walk_blocks(x, hw, lambda j, x, a1, a2: self.block(i, j, x, a1, a2, hw),
                                     blocks, checkpointed=self.checkpoint_blocks,
                                     context=self.blocks_context)
        with torch.enable_grad():
            for segment in self.recompute.segments(len(blocks)):
                x = self.recompute(self, i, stage, segment, x, hw)
        return x

    def feed_back(self, i: int, blocks: range, hw) -> None:
        """Every lane's ``e`` through ``blocks`` of stage ``i`` (the last ones) of the lane's own
        trunk (its frozen tensors are the walk's; what a task trains in them is its own), with
        autograd, each lane's step reading the branches the block computes from ``e``."""
        self.stream = None  # no lane reads the trunk's stream from here
        with torch.set_grad_enabled(self.grad):
            for k, (highway, trunk) in enumerate(self.lanes):
                def step(j: int, x: Tensor, a1: Tensor, a2: Tensor, k=k, highway=highway):
                    e = self.states[k]
                    self.states[k] = highway.block(i, j, e, e, self.widen(a1), self.widen(a2), hw)
                    return self.into_blocks(self.states[k])

                last = trunk.layers[i].walk_blocks(self.into_blocks(self.states[k]), hw, step,
                                                   blocks, context=self.blocks_context)
                check_stream(last, i)  # what the narrowed blocks read, as the trunk's stream

    def into_blocks(self, e: Tensor) -> Tensor:
        """The highway's stream as the (possibly narrowed) blocks read it."""
        return e if self.narrow is None else e.to(self.narrow)

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

    def stage_end(self, i: int, x: Optional[Tensor], hw) -> None:
        if x is not None:
            check_stream(x, i)
        with torch.set_grad_enabled(self.grad):
            self.states = [highway.stage_end(trunk, i, e, hw, outputs)
                           for (highway, trunk), e, outputs
                           in zip(self.lanes, self.states, self.outputs)]

    def merge(self, i: int, merge: nn.Module, x: Optional[Tensor], hw) -> Optional[Tensor]:
        if x is None:
            return None
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
