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
:mod:`.adapters`.

Shape legend: B batch, L tokens, C channels.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from .adapters import BlockAdapters
from .branch_recompute import BranchRecomputation
from .swin import SwinTransformer, next_grid, tokens_to_map
from .trunk_precision import blocks_autocast, check_stream, narrowed_dtype, to_highway

__all__ = [
    "HIGHWAY_PREFIX",
    "Highway",
    "E3VAHighway",
    "TrunkTrace",
    "trace_trunk",
]

HIGHWAY_PREFIX = "highway."  # parameter names of the highway inside a TunedSwin

class Highway(nn.Module):
    """Base class of modules that run beside a trunk and produce the backbone's outputs."""

    def forward(self, trunk: nn.Module, images: Tensor) -> Dict[str, Tensor]:
        """The backbone's outputs (``trunk``'s ``out_features``, same shapes) for ``images``."""
        raise NotImplementedError

    def inherited_weights(self, trunk_prefix: str, highway_prefix: str) -> Dict[str, str]:
        """Own parameter name -> trunk parameter it copies whenever pre-trained weights are
        loaded (E3VA's trainable copies of the patch merging layers). Default: none."""
        return {}


class TrunkTrace:
    """What the highway reads from one pass of the frozen trunk: the patch embedding, each
    stage's token grid, and every block's two branch outputs ``(a1, a2)``."""

    def __init__(self, embedding: Tensor):
        self.embedding = embedding
        self.grids: List[Tuple[int, int]] = []
        self.branches: List[List[Tuple[Tensor, Tensor]]] = []


@torch.no_grad()
def trace_trunk(trunk: SwinTransformer, images: Tensor) -> TrunkTrace:
    """Run the frozen trunk block by block without autograd, recording its branch outputs."""
    x, hw = trunk.patch_embed(images)
    trace = TrunkTrace(x)
    narrow = narrowed_dtype(trunk)  # blocks in another dtype than embedding and merging
    for stage in trunk.layers:
        if narrow is not None:
            x = x.to(narrow)
        mask = stage.shift_mask(hw, images.device)
        branches = []
        with blocks_autocast(narrow, images.device.type):
            for block in stage.blocks:
                a1 = block.attention_branch(x, hw, mask)
                x = x + a1
                a2 = block.mlp_branch(x)
                x = x + a2
                branches.append((a1, a2))
        check_stream(x, len(trace.grids))
        trace.grids.append(hw)
        trace.branches.append(branches)
        if stage.downsample is not None:
            x = stage.downsample(x if narrow is None else x.to(trace.embedding.dtype), hw)
            hw = next_grid(hw)
    return trace


class E3VAHighway(Highway):
    """Adapters beside every block of a Swin trunk, plus (optionally) trainable copies of the
    trunk's patch merging layers.

    Module names mirror the trunk (``layers.{i}.blocks.{j}``) so a parameter's place in the
    highway reads like the block it adapts. ``hidden_dims``: the adapters' bottleneck width per
    stage (``E3VATuning.bottleneck_width`` derives and validates them from its options).
    ``recompute_branches``: None, or "block" / "stage": while training, keep one tensor of the
    trunk's stream per block / stage for backward instead of the adapters' inputs, and
    recompute the trunk's branch outputs from it there (see :mod:`.branch_recompute`).
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
    ):
        super().__init__()
        self.recompute = recompute
        self.branch_recompute = BranchRecomputation(recompute_branches) if recompute_branches \
            else None
        self.layers = nn.ModuleList()
        for i, stage in enumerate(trunk.layers):
            dim, width = trunk.num_features[i], hidden_dims[i]
            blocks = nn.ModuleList(
                BlockAdapters(
                    dim,
                    structure,
                    hidden_dim=width,
                    kind=adapter_kind,
                    rank=rank,
                    init=init,
                    zero_init=zero_init,
                    recompute=recompute,
                    saved_dtype=saved_dtype,
                )
                for _ in stage.blocks
            )
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
        # Where the frozen trunk's pass comes from: None runs the trunk here; a callable
        # (trunk, images) -> TrunkTrace lets several tasks share one pass (engine/multitask.py).
        self.trace_source: Optional[Callable[[SwinTransformer, Tensor], TrunkTrace]] = None

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
        """Run the frozen trunk without autograd, then the highway on its branch outputs.

        With ``trace_source`` set (see :mod:`e3va_d2.engine.multitask`), the trunk's pass
        comes from there: several tasks on one frozen trunk then share it.
        """
        if self.trace_source is not None:
            return self.from_trace(trunk, self.trace_source(trunk, images))
        if self.branch_recompute is not None and torch.is_grad_enabled():
            return self.branch_recompute(self, trunk, images)
        return self.from_trace(trunk, trace_trunk(trunk, images), consume=True)

    def from_trace(
        self, trunk: SwinTransformer, trace: TrunkTrace, consume: bool = False
    ) -> Dict[str, Tensor]:
        """The highway (the only autograd graph) on a recorded pass of the frozen trunk.

        ``consume``: drop each branch output from ``trace`` once its adapters have read it, so
        that what backward keeps (possibly a narrower copy) does not coexist with the whole
        recorded pass. Only for a trace nothing else reads.
        """
        e = trace.embedding
        # A narrowed trunk (``trunk_dtype``) hands its branches to the highway in e's dtype.
        highway_dtype = e.dtype if narrowed_dtype(trunk) is not None else None
        outs = {}
        for i, (stage, adapters, branches) in enumerate(
            zip(trunk.layers, self.layers, trace.branches)
        ):
            hw = trace.grids[i]
            for j, block_adapters in enumerate(adapters["blocks"]):
                a1, a2 = branches[j]
                if consume:
                    branches[j] = None
                e = block_adapters(e, to_highway(a1, highway_dtype), to_highway(a2, highway_dtype))
            del a1, a2
            if i in trunk.out_indices:
                outs[f"p{i}"] = tokens_to_map(getattr(trunk, f"norm{i}")(e), hw)
            if stage.downsample is not None:
                e = self._merge(stage.downsample if self.downsample is None else self.downsample[i],
                                e, hw)
        return outs

    def _merge(self, merge: nn.Module, e: Tensor, hw: Tuple[int, int]) -> Tensor:
        """Patch merging of the highway. With ``recompute``, its norm is recomputed in backward
        from ``e``, which the output norm keeps anyway, instead of keeping the norm's input,
        a rearranged second copy of ``e``. Its reduction needs no activation for backward
        while frozen: the gradient of its input needs its weight only."""
        if not self.recompute or not torch.is_grad_enabled():
            return merge(e, hw)
        normed = checkpoint(merge.merged_norm, e, hw, use_reentrant=False, preserve_rng_state=False)
        return merge.reduction(normed)
