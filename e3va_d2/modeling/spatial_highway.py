"""A highway with spatial context: this project's extension of E3VA (not the paper's method).

E3VA's adapters are token-wise functions of the frozen trunk's branch outputs, and they never
read the highway itself: every bit of spatial mixing on the highway is the frozen attention's,
and a correction made at block 2 cannot be built on at block 5. Three additions, each an
option, each keeping E3VA's guarantees (the trunk runs without autograd; backward keeps only
what the adapters read; a zero-initialised highway is the frozen model bit for bit):

- ``conv_kernels``: depthwise convolutions on the token grid inside each adapter's bottleneck,
  ``A(a) = a + U(GELU(M(D(a))))`` with ``M(h) = h + mean_k DWConv_k(h)``. The convolutions start
  at zero (``M`` is the identity, so the highway starts as E3VA's) and are recomputed in
  backward with the rest of the adapter, so they keep nothing.
- ``read_state``: each adapter's bottleneck also reads the highway's deviation from the trunk,
  ``d = e - l`` at the block's start: ``A(a) = a + U(GELU(M(D(a + d))))``. The skip still adds
  ``a`` alone. ``l`` is the trunk's own stream (rebuilt without autograd from the recorded
  branches), so ``d`` is exactly zero while the highway is, and the adapter keeps ``a + d``
  instead of ``a``: no extra memory. Corrections now compound along the highway.
- ``stage_mixer``: one more zero-initialised bottleneck with the same spatial mixing on the
  highway at each stage's end, before the output norm and the patch merging. It reads the
  highway itself (trunk features and corrections together) and keeps its input per stage.

All three are on by default (the tuning method ``e3va_spatial``). The spatial highway is E3VA's
highway (:class:`~e3va_d2.modeling.highway.E3VAHighway`) built with these steps and stage
mixers (:func:`spatial_highway`), so it walks the trunk as E3VA does and takes E3VA's memory
options: ``recompute_branches`` (adapters that read the deviation keep the highway at each
segment's start too), ``trunk_dtype`` and ``saved_input_dtype``, and its ``feedback_depth``
(inside the feedback blocks the highway is the stream they read, so the deviation is zero).

Shape legend: B batch, L tokens, C channels, h bottleneck width.
"""
from __future__ import annotations

import functools
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from ..layers.bottleneck import recomputed
from .adapters import DualLowRankLinear, HighwayAdapter, init_dual_low_rank_
from .highway import E3VAHighway
from .swin import SwinTransformer, tokens_to_map

__all__ = ["GridMixer", "SpatialAdapter", "SpatialBlockAdapters", "StageMixer", "spatial_highway"]


class GridMixer(nn.Module):
    """``h + mean_k DWConv_k(h)`` on the token grid: local spatial context for a bottleneck.

    The convolutions start at zero, so the mixer starts as the identity.
    """

    def __init__(self, dim: int, kernels: Sequence[int]):
        super().__init__()
        if not kernels or any(k < 1 or k % 2 == 0 for k in kernels):
            raise ValueError(f"kernels must be odd sizes >= 1, got {tuple(kernels)}")
        self.convs = nn.ModuleList(
            nn.Conv2d(dim, dim, k, padding=k // 2, groups=dim) for k in kernels)
        for conv in self.convs:
            nn.init.zeros_(conv.weight)
            nn.init.zeros_(conv.bias)

    def forward(self, h: Tensor, hw: Tuple[int, int]) -> Tensor:
        grid = tokens_to_map(h, hw)  # B, h, H, W
        mixed = sum(conv(grid) for conv in self.convs) / len(self.convs)
        return h + mixed.flatten(2).transpose(1, 2)


class SpatialAdapter(HighwayAdapter):
    """``A(a, d) = a + U(GELU(M(D(a + d))))``; ``M`` a :class:`GridMixer` (or the identity when
    ``kernels`` is empty), ``d`` the highway's deviation (or None)."""

    def __init__(self, dim: int, hidden_dim: int, *, kernels: Sequence[int] = (3,), **kwargs):
        if kwargs.get("kind", "dual_low_rank") != "dual_low_rank":
            raise ValueError("SpatialAdapter supports the dual low-rank adapter only")
        super().__init__(dim, hidden_dim, **kwargs)
        self.mixer = GridMixer(hidden_dim, kernels) if kernels else None

    def spatial_branch(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        """``U(GELU(M(D(x))))`` (exactly zero when zero-initialised)."""
        if self.mixer is None:
            return self.branch(x)
        fn = functools.partial(self._mixed, hw=hw)
        if self.recompute and torch.is_grad_enabled():
            return recomputed(fn, x, list(self.parameters()), self.saved_dtype)
        return fn(x)

    def _mixed(self, x: Tensor, hw: Tuple[int, int]) -> Tensor:
        return self.up(self.act(self.mixer(self.down(x), hw)))

    def forward(self, a: Tensor, hw: Tuple[int, int], d: Optional[Tensor] = None) -> Tensor:
        return a + self.spatial_branch(a if d is None else a + d, hw)


class SpatialBlockAdapters(nn.Module):
    """The two adapters of one highway step, parallel: with ``read_state`` both read the
    block's starting deviation ``d = e - l`` (``l`` the trunk's stream at the block's input, as
    the highway holds it: see :mod:`.highway_walk`);
    ``e + A1(a1, d) + A2(a2, d)`` associates as the trunk's ``(l + a1) + a2``."""

    def __init__(self, dim: int, read_state: bool = True, **adapter_kwargs):
        super().__init__()
        self.read_state = read_state
        self.attn_adapter = SpatialAdapter(dim, **adapter_kwargs)
        self.mlp_adapter = SpatialAdapter(dim, **adapter_kwargs)

    @property
    def reads_highway(self) -> bool:
        return self.read_state

    def forward(self, e: Tensor, a1: Tensor, a2: Tensor, stream: Tensor,
                hw: Tuple[int, int]) -> Tensor:
        d = e - stream if self.read_state else None
        return e + self.attn_adapter(a1, hw, d) + self.mlp_adapter(a2, hw, d)


class StageMixer(nn.Module):
    """``e + U(GELU(M(D(e))))`` at a stage's end, up projection zero-initialised."""

    def __init__(self, dim: int, hidden_dim: int, rank: int, kernels: Sequence[int],
                 recompute: bool, saved_dtype: Optional[torch.dtype]):
        super().__init__()
        self.down = DualLowRankLinear(dim, hidden_dim, rank)
        self.mixer = GridMixer(hidden_dim, kernels or (3,))
        self.act = nn.GELU()
        self.up = DualLowRankLinear(hidden_dim, dim, rank)
        self.up.zero_()
        self.recompute, self.saved_dtype = recompute, saved_dtype

    def _branch(self, e: Tensor, hw: Tuple[int, int]) -> Tensor:
        return self.up(self.act(self.mixer(self.down(e), hw)))

    def forward(self, e: Tensor, hw: Tuple[int, int]) -> Tensor:
        fn = functools.partial(self._branch, hw=hw)
        if self.recompute and torch.is_grad_enabled():
            return e + recomputed(fn, e, list(self.parameters()), self.saved_dtype)
        return e + fn(e)


def spatial_highway(
    trunk: SwinTransformer,
    *,
    rank: int,
    hidden_dims: Sequence[int],
    init: str,
    zero_init: bool,
    recompute: bool,
    saved_dtype: Optional[torch.dtype],
    mixer_saved_dtype: Optional[torch.dtype],
    trainable_downsampling: bool,
    recompute_branches: Optional[str],
    conv_kernels: Sequence[int],
    read_state: bool,
    stage_mixer: bool,
    feedback_depth: int,
) -> E3VAHighway:
    """E3VA's highway with the steps and stage mixers of this module's docstring.

    Args (besides :class:`~e3va_d2.modeling.highway.E3VAHighway`'s; no defaults here: the
    tuning method :class:`~e3va_d2.modeling.tuning.SpatialE3VATuning` holds them, in one place):
        saved_dtype / mixer_saved_dtype: what the steps' adapters / the stage mixers keep their
            inputs as for backward (see ``HighwayAdapter``).
        conv_kernels: depthwise kernel sizes inside each adapter's bottleneck (empty: none).
        read_state: adapters also read the highway's deviation from the trunk.
        stage_mixer: a spatial bottleneck on the highway at each stage's end.
        feedback_depth: the trunk's last blocks that run on the highway's stream (there the
            deviation the adapters read is zero: the blocks read the highway itself).
    """
    _draw_as_replaced_e3va_adapters(trunk, hidden_dims, rank, init)
    kernels = tuple(conv_kernels)
    steps = functools.partial(
        _spatial_block_adapters, read_state=read_state, kernels=kernels, rank=rank, init=init,
        zero_init=zero_init, recompute=recompute, saved_dtype=saved_dtype)
    mixers = functools.partial(StageMixer, rank=rank, kernels=kernels, recompute=recompute,
                               saved_dtype=mixer_saved_dtype) if stage_mixer else None
    return E3VAHighway(trunk, hidden_dims=hidden_dims, recompute=recompute,
                       trainable_downsampling=trainable_downsampling,
                       recompute_branches=recompute_branches, block_adapters=steps,
                       stage_mixer=mixers, feedback_depth=feedback_depth)


def _spatial_block_adapters(dim: int, width: int, **options) -> SpatialBlockAdapters:
    return SpatialBlockAdapters(dim, hidden_dim=width, **options)


def _draw_as_replaced_e3va_adapters(trunk: SwinTransformer, hidden_dims: Sequence[int],
                                    rank: int, init: str) -> None:
    """Draw, and drop, the random numbers that E3VA's adapters used to draw here.

    Until the spatial highway became E3VA's highway with other parts, it built E3VA's adapters
    first and replaced them. Every seed of ``e3va_spatial`` (the accuracy study's records
    included) was drawn after them; drawing the same numbers keeps each seed's model as it was.
    """
    for i, stage in enumerate(trunk.layers):
        dim, width = trunk.num_features[i], hidden_dims[i]
        for _ in range(2 * len(stage.blocks)):  # an attention and an MLP adapter per block
            for fan_in, fan_out in ((dim, width), (width, dim)):  # down, up
                init_dual_low_rank_(torch.empty(2, rank, fan_in), torch.empty(fan_out, 2, rank),
                                    torch.empty(fan_out), init)
