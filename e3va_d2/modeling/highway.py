"""The highway: what runs beside a frozen trunk and produces the backbone's outputs.

A :class:`~e3va_d2.modeling.tuning.TuningMethod` either edits the trunk in place (LoRA,
adapters: ``attach`` returns None) or returns a :class:`Highway`. :class:`TunedSwin` stores it
as ``highway`` (its parameters are named ``highway.…``) and calls it instead of the trunk: the
highway decides what of the trunk runs, and how.

E3VA's highway (paper sections 3.2-3.4), for block ``i`` of the frozen trunk with attention
branch ``a1`` and MLP branch ``a2``::

    l_{i+1} = l_i + a1 + a2                       (frozen trunk, no autograd)
    e_{i+1} = e_i + A1(a1) + A2(a2)               (highway, the only autograd graph)

``e`` starts as the patch embedding and passes through the trunk's frozen patch merging at
each stage end (gradients flow through it, its weights stay fixed). The adapters ``A`` are
:mod:`.adapters`. The highway reads the trunk on its one walk (:mod:`.highway_walk`), beside
it, block by block; several highways (tasks) can share that walk.

With ``feedback_depth`` k, the trunk's last k blocks compute their branches from ``e`` instead
of ``l`` (with autograd, on their frozen weights), and the trunk stops before them: the
highway's corrections then change what those blocks compute (:mod:`.highway_walk`).

Another highway is E3VA's with other parts, not another forward: ``block_adapters`` builds each
step's module (called ``(e, a1, a2, stream, hw)``) and ``stage_mixer`` a module run on ``e`` at
each stage's end (the spatial highway, :mod:`.spatial_highway`).

Shape legend: B batch, L tokens, C channels.
"""
from __future__ import annotations

import copy
import functools
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .adapters import BlockAdapters
from .branch_recompute import BranchRecomputation
from .highway_walk import feedback_start, walk_highways
from .swin import SwinTransformer, tokens_to_map

__all__ = [
    "HIGHWAY_PREFIX",
    "Highway",
    "E3VAHighway",
]

HIGHWAY_PREFIX = "highway."  # parameter names of the highway inside a TunedSwin

# Builds one highway module from (channels, bottleneck width).
ModuleFactory = Callable[[int, int], nn.Module]


class Highway(nn.Module):
    """Base class of modules that run beside a trunk and produce the backbone's outputs."""

    def forward(self, trunk: nn.Module, images: Tensor) -> Dict[str, Tensor]:
        """The backbone's outputs (``trunk``'s ``out_features``, same shapes) for ``images``."""
        raise NotImplementedError

    def inherited_weights(self, trunk_prefix: str, highway_prefix: str) -> Dict[str, str]:
        """Own parameter name -> trunk parameter it copies whenever pre-trained weights are
        loaded (E3VA's trainable copies of the patch merging layers). Default: none."""
        return {}


class E3VAHighway(Highway):
    """Adapters beside every block of a Swin trunk, plus (optionally) trainable copies of the
    trunk's patch merging layers.

    Module names mirror the trunk (``layers.{i}.blocks.{j}``) so a parameter's place in the
    highway reads like the block it adapts. ``hidden_dims``: the adapters' bottleneck width per
    stage (``E3VATuning.bottleneck_width`` derives and validates them from its options).
    ``recompute_branches``: None, or "block" / "stage": while training, keep one tensor of the
    trunk's stream per block / stage for backward instead of the adapters' inputs, and
    recompute the trunk's branch outputs from it there (see :mod:`.branch_recompute`).
    ``block_adapters``: builds each block's step from (channels, width) instead of E3VA's
    :class:`~e3va_d2.modeling.adapters.BlockAdapters` (the adapter options then go unused);
    ``stage_mixer``: builds a module ``(e, hw) -> e`` run at each stage's end, before its output
    norm and patch merging (``stage_mixers``), or None.
    ``feedback_depth``: the trunk's last blocks that run on the highway's stream, with autograd
    on their frozen weights (0: none; see :mod:`.highway_walk`).
    """

    def __init__(
        self,
        trunk: SwinTransformer,
        *,
        rank: int = 8,
        hidden_dims: Sequence[int],
        init: str = "lorand",
        adapter_kind: str = "dual_low_rank",
        structure: str = "parallel",
        zero_init: bool = False,
        recompute: bool = True,
        saved_dtype: Optional[torch.dtype] = None,
        trainable_downsampling: bool = False,
        recompute_branches: Optional[str] = None,
        block_adapters: Optional[ModuleFactory] = None,
        stage_mixer: Optional[ModuleFactory] = None,
        feedback_depth: int = 0,
    ):
        super().__init__()
        feedback_start(trunk, feedback_depth)  # a clear error for a depth the trunk has not
        self.feedback_depth = feedback_depth
        self.recompute = recompute
        self.branch_recompute = BranchRecomputation(recompute_branches) if recompute_branches \
            else None
        if block_adapters is None:
            block_adapters = functools.partial(
                _e3va_block_adapters, structure=structure, kind=adapter_kind, rank=rank,
                init=init, zero_init=zero_init, recompute=recompute, saved_dtype=saved_dtype)
        self.layers = nn.ModuleList()
        for i, stage in enumerate(trunk.layers):
            dim, width = trunk.num_features[i], hidden_dims[i]
            blocks = nn.ModuleList(block_adapters(dim, width) for _ in stage.blocks)
            self.layers.append(nn.ModuleDict({"blocks": blocks}))
        # Trainable reductions (Table 7 ablation) start as copies of the pre-trained ones; the
        # checkpointer fills them from the trunk's weights (see ``inherited_weights``).
        self.downsample = (
            nn.ModuleList(
                copy.deepcopy(stage.downsample)
                for stage in trunk.layers
                if stage.downsample is not None
            )
            if trainable_downsampling
            else None
        )
        self.stage_mixers = nn.ModuleList(
            stage_mixer(trunk.num_features[i], hidden_dims[i]) for i in range(len(trunk.layers))
        ) if stage_mixer is not None else None
        # Where the frozen trunk's walk comes from: None walks it here; a callable
        # (trunk, images, highway) -> outputs lets several tasks share one walk
        # (engine/multitask.py).
        self.trunk_pass: Optional[Callable[[SwinTransformer, Tensor, E3VAHighway],
                                           Dict[str, Tensor]]] = None

    def inherited_weights(self, trunk_prefix: str, highway_prefix: str) -> Dict[str, str]:
        """Highway parameter name -> trunk parameter name it is initialised from."""
        if self.downsample is None:
            return {}
        return {
            f"{highway_prefix}downsample.{i}.{name}": f"{trunk_prefix}layers.{i}.downsample.{name}"
            for i, merge in enumerate(self.downsample)
            for name, _ in merge.named_parameters()
        }

    def forward(self, trunk: SwinTransformer, images: Tensor) -> Dict[str, Tensor]:
        """Walk the frozen trunk without autograd, the highway beside it on its branch outputs.

        With ``trunk_pass`` set (see :mod:`e3va_d2.engine.multitask`), the walk comes from
        there: several tasks on one frozen trunk then share it.
        """
        if self.trunk_pass is not None:
            return self.trunk_pass(trunk, images, self)
        return walk_highways(trunk, images, [(self, trunk)], self.branch_recompute)[0]

    # -- the highway's part of the walk (see :mod:`.highway_walk`) ----------------------------

    @property
    def reads_highway(self) -> bool:
        """Whether a step reads ``e`` other than adding to it (the spatial highway's adapters
        read its deviation from the trunk)."""
        return any(step.reads_highway for stage in self.layers for step in stage["blocks"])

    def begin(self, embedding: Tensor) -> Tensor:
        """``e`` starts as the patch embedding, as the trunk's stream does."""
        return embedding

    def block(self, i: int, j: int, e: Tensor, x: Tensor, a1: Tensor, a2: Tensor,
              hw: Tuple[int, int]) -> Tensor:
        """``e`` past block ``j`` of stage ``i`` (``x``: the trunk's stream at its input)."""
        return self.layers[i]["blocks"][j](e, a1, a2, x, hw)

    def block_parameters(self, i: int, j: int) -> List[nn.Parameter]:
        return list(self.layers[i]["blocks"][j].parameters())

    def stage_end(self, trunk: SwinTransformer, i: int, e: Tensor, hw: Tuple[int, int],
                  outputs: Dict[str, Tensor]) -> Tensor:
        """Stage ``i``'s output into ``outputs`` (when requested); ``e`` for the next stage."""
        if self.stage_mixers is not None:
            e = self.stage_mixers[i](e, hw)
        if i in trunk.out_indices:
            outputs[f"p{i}"] = tokens_to_map(getattr(trunk, f"norm{i}")(e), hw)
        stage = trunk.layers[i]
        if stage.downsample is not None:
            e = self._merge(stage.downsample if self.downsample is None else self.downsample[i],
                            e, hw)
        return e

    def _merge(self, merge: nn.Module, e: Tensor, hw: Tuple[int, int]) -> Tensor:
        """Patch merging of the highway. With ``recompute``, its norm is recomputed in backward
        from ``e``, which the output norm keeps anyway, instead of keeping the norm's input,
        a rearranged second copy of ``e``. Its reduction needs no activation for backward
        while frozen: the gradient of its input needs its weight only."""
        if not self.recompute or not torch.is_grad_enabled():
            return merge(e, hw)
        normed = checkpoint(merge.merged_norm, e, hw, use_reentrant=False, preserve_rng_state=False)
        return merge.reduction(normed)


def _e3va_block_adapters(dim: int, width: int, *, structure: str, **options) -> BlockAdapters:
    return BlockAdapters(dim, structure, hidden_dim=width, **options)
