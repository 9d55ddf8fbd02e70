"""E3VA adapters and the adapter highway (paper sections 3.2-3.4).

For block ``i`` of the frozen trunk with attention branch ``a1`` and MLP branch ``a2``::

    l_{i+1} = l_i + a1 + a2                       (frozen trunk, no autograd)
    e_{i+1} = e_i + A1(a1) + A2(a2)               (highway, the only autograd graph)
    A(x)    = x + U(GELU(D(x)))                   (D: C -> C/2, U: C/2 -> C)

``e`` starts as the patch embedding and passes through the trunk's frozen patch merging at
each stage end (gradients flow through it, its weights stay fixed). Because ``A(x) == x``
when ``U`` is zero, a zero-initialised highway reproduces the frozen trunk bit for bit.

Shape legend: B batch, L tokens, C channels, r rank.
"""
from __future__ import annotations

import copy
import math
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..layers.bottleneck import recomputed_bottleneck
from .branch_recompute import BranchRecomputation
from .side import SideNetwork
from .swin import SwinTransformer, next_grid, tokens_to_map
from .trunk_precision import narrowed_dtype, to_highway

__all__ = [
    "DualLowRankLinear",
    "HighwayAdapter",
    "BlockAdapters",
    "E3VAHighway",
    "TrunkTrace",
    "trace_trunk",
    "ADAPTER_INITS",
    "ADAPTER_KINDS",
    "HIGHWAY_STRUCTURES",
]

ADAPTER_KINDS = ("dual_low_rank", "standard")
HIGHWAY_STRUCTURES = ("parallel", "stacked")


ADAPTER_INITS = ("lorand", "kaiming_fan_in", "trunc_normal")


class DualLowRankLinear(nn.Module):
    """``y = x (s1 t1 + s2 t2)^T + b`` with ``s_k: (out, r)`` and ``t_k: (r, in)``.

    The two rank-r products are stored side by side so that both branches run as one
    rank-2r matmul per factor (``s1 t1 + s2 t2 == [s1 s2] [t1; t2]``). They are still two
    branches for initialisation. Parameters: ``2 r (in + out) + out``.

    ``init`` reads the paper's "randomly initialized by Kaiming Norm" (see ``reset_parameters``):

    - ``"lorand"`` (default): as the same lab's released dual/multi low-rank adapter does
      (LoRand, ``DongshuoYin/CoLin``, ``swin_lorand.py``, ``Lorand_Multi.__init__`` and
      ``reset_parameters``): each factor stored as (in, r) / (r, out) and drawn by
      ``kaiming_uniform_(a=sqrt(5))``, whose fan-in is then the factor's second dimension
      (r for ``t``, out for ``s``); the bias uniform in +-1/sqrt(in), as ``nn.Linear``'s.
      An adapter then starts at about a tenth of its input.
    - ``"kaiming_fan_in"``: Kaiming normal (ReLU gain) over each factor's own fan-in (in for
      ``t``, r for ``s``), zero bias. Every adapter then adds a random term several times
      larger than its input: the highway starts far from the pre-trained features.
    - ``"trunc_normal"``: truncated normal, std 0.02, on every factor, zero bias (Mona's
      projections, ``Leiyi-Hu/mona``); the low-rank product is then nearly zero.
    """

    def __init__(self, in_features: int, out_features: int, rank: int, bias: bool = True,
                 init: str = "lorand"):
        super().__init__()
        if rank < 1:
            raise ValueError(f"rank must be >= 1, got {rank}")
        if init not in ADAPTER_INITS:
            raise ValueError(f"init={init!r}; expected one of {ADAPTER_INITS}")
        self.in_features, self.out_features, self.rank, self.init = in_features, out_features, rank, init
        self.input_factors = nn.Parameter(torch.empty(2, rank, in_features))  # [t1; t2]
        self.output_factors = nn.Parameter(torch.empty(out_features, 2, rank))  # [s1 s2]
        self.bias = nn.Parameter(torch.zeros(out_features)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "lorand":
            # kaiming_uniform_(a=sqrt(5)) of an (in, r) and an (r, out) factor: bounds
            # 1/sqrt(r) and 1/sqrt(out) (gain sqrt(1/3) times sqrt(3 / fan-in)).
            nn.init.uniform_(self.input_factors, -self.rank ** -0.5, self.rank ** -0.5)
            nn.init.uniform_(self.output_factors, -self.out_features ** -0.5,
                             self.out_features ** -0.5)
            if self.bias is not None:
                nn.init.uniform_(self.bias, -self.in_features ** -0.5, self.in_features ** -0.5)
            return
        if self.init == "kaiming_fan_in":
            nn.init.normal_(self.input_factors, std=math.sqrt(2.0 / self.in_features))
            nn.init.normal_(self.output_factors, std=math.sqrt(2.0 / self.rank))
        else:
            for factor in (self.input_factors, self.output_factors):
                nn.init.trunc_normal_(factor, std=0.02, a=-0.04, b=0.04)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def zero_(self) -> None:
        """Make the layer output exactly zero (for a highway that starts at the frozen model)."""
        with torch.no_grad():
            self.output_factors.zero_()
            if self.bias is not None:
                self.bias.zero_()

    def forward(self, x: Tensor) -> Tensor:
        (t, _), (s, bias) = self.linear_layers()
        return F.linear(F.linear(x, t), s, bias)  # through B, L, 2r

    def linear_layers(self) -> List[Tuple[Tensor, Optional[Tensor]]]:
        """The layer as two plain linear layers, ``[(t, None), (s, bias)]`` (views of the
        parameters), the form ``recomputed_bottleneck`` takes."""
        r2 = 2 * self.rank
        return [(self.input_factors.reshape(r2, self.in_features), None),
                (self.output_factors.reshape(self.out_features, r2), self.bias)]

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"rank={self.rank}, init={self.init}")


def linear_layers(layer: nn.Module) -> List[Tuple[Tensor, Optional[Tensor]]]:
    """An adapter projection (``nn.Linear`` or :class:`DualLowRankLinear`) as plain linear
    layers ``[(weight, bias), ...]``, applied in order."""
    if isinstance(layer, nn.Linear):
        return [(layer.weight, layer.bias)]
    return layer.linear_layers()


class HighwayAdapter(nn.Module):
    """``A(x) = x + U(GELU(D(x)))``.

    Args:
        dim: channels C of the branch it reads.
        hidden_dim: bottleneck width (the paper uses C/2 for the dual low-rank adapter and 32
            for the "standard" ablation of Table 5).
        kind: ``"dual_low_rank"`` (E3VA) or ``"standard"`` (dense ``nn.Linear`` projections).
        rank: rank of each of the two branches (``kind="dual_low_rank"`` only).
        init: how the dual low-rank factors are drawn (see :class:`DualLowRankLinear`).
        zero_init: zero the up projection so that ``A(x) == x`` at the start of training.
        recompute: keep only the adapter's input for backward and recompute its (cheap,
            low-rank) internals there, instead of storing four more activations per token.
        saved_dtype: with ``recompute``, keep the input for backward (the down projection's
            weight gradient, and the recomputation) as a copy in this dtype when it is
            narrower, e.g. ``torch.bfloat16``. The forward pass is unchanged; backward sees
            the input rounded. None keeps the input as computed.
    """

    def __init__(
        self,
        dim: int,
        hidden_dim: int,
        *,
        kind: str = "dual_low_rank",
        rank: int = 8,
        init: str = "lorand",
        zero_init: bool = False,
        recompute: bool = True,
        saved_dtype: Optional[torch.dtype] = None,
    ):
        super().__init__()
        if saved_dtype is not None and not recompute:
            raise ValueError("saved_dtype needs recompute=True: without recomputation backward "
                             "keeps the adapter's internals too, at full width")
        self.recompute = recompute
        self.saved_dtype = saved_dtype
        if kind == "dual_low_rank":
            self.down = DualLowRankLinear(dim, hidden_dim, rank, init=init)
            self.up = DualLowRankLinear(hidden_dim, dim, rank, init=init)
        elif kind == "standard":
            self.down = nn.Linear(dim, hidden_dim)
            self.up = nn.Linear(hidden_dim, dim)
            for layer in (self.down, self.up):
                nn.init.kaiming_normal_(layer.weight)
                nn.init.zeros_(layer.bias)
        else:
            raise ValueError(f"Unknown adapter kind {kind!r}; expected one of {ADAPTER_KINDS}")
        self.act = nn.GELU()
        if zero_init:
            self.zero_()

    def zero_(self) -> None:
        if isinstance(self.up, DualLowRankLinear):
            self.up.zero_()
        else:
            with torch.no_grad():
                self.up.weight.zero_()
                self.up.bias.zero_()

    def branch(self, x: Tensor) -> Tensor:
        """The adaptation ``U(GELU(D(x)))`` alone (exactly zero when zero-initialised)."""
        if self.recompute and torch.is_grad_enabled():
            layers = linear_layers(self.down)
            return recomputed_bottleneck(x, layers + linear_layers(self.up), gelu_at=len(layers),
                                         saved_dtype=self.saved_dtype)
        return self._branch(x)

    def _branch(self, x: Tensor) -> Tensor:
        return self.up(self.act(self.down(x)))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


class BlockAdapters(nn.Module):
    """The two adapters of one highway step: ``attn_adapter`` reads a1, ``mlp_adapter`` a2."""

    def __init__(self, dim: int, structure: str = "parallel", **adapter_kwargs):
        super().__init__()
        if structure not in HIGHWAY_STRUCTURES:
            raise ValueError(f"Unknown structure {structure!r}; expected {HIGHWAY_STRUCTURES}")
        self.structure = structure
        self.attn_adapter = HighwayAdapter(dim, **adapter_kwargs)
        self.mlp_adapter = HighwayAdapter(dim, **adapter_kwargs)

    def forward(self, e: Tensor, a1: Tensor, a2: Tensor) -> Tensor:
        if self.structure == "parallel":
            # Same association as the trunk's (l + a1) + a2: exact when the adapters are zero.
            return e + self.attn_adapter(a1) + self.mlp_adapter(a2)
        # Stacked (Table 6): the MLP adapter reads its branch shifted by the attention adapter's
        # adaptation, as the MLP of a stacked adapter-tuned block would see it, so the two
        # adapters interact in forward and backward. Zeroed, it is again exactly (e + a1) + a2.
        delta = self.attn_adapter.branch(a1)
        return e + (a1 + delta) + self.mlp_adapter(a2 + delta)

    def extra_repr(self) -> str:
        return f"structure={self.structure}"


class E3VAHighway(SideNetwork):
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

    def inherited_weights(self, trunk_prefix: str, side_prefix: str) -> Dict[str, str]:
        """Highway parameter name -> trunk parameter name it is initialised from."""
        if self.downsample is None:
            return {}
        return {
            f"{side_prefix}downsample.{i}.{name}": f"{trunk_prefix}layers.{i}.downsample.{name}"
            for i, merge in enumerate(self.downsample)
            for name, _ in merge.named_parameters()
        }

    def forward(self, trunk: SwinTransformer, images: Tensor) -> Dict[str, Tensor]:
        """Run the frozen trunk without autograd, then the highway on its branch outputs.

        With ``trace_source`` set (see :mod:`e3va_d2.engine.multitask`), the trunk's pass
        comes from there: several tasks on one frozen trunk then share it.
        """
        source = getattr(self, "trace_source", None)
        if source is not None:
            return self.from_trace(trunk, source(trunk, images))
        if self.branch_recompute is not None and torch.is_grad_enabled():
            return self.branch_recompute(self, trunk, images)
        return self.from_trace(trunk, trace_trunk(trunk, images), consume=True)

    def from_trace(
        self, trunk: SwinTransformer, trace: "TrunkTrace", consume: bool = False
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
        for block in stage.blocks:
            a1 = block.attention_branch(x, hw, mask)
            x = x + a1
            a2 = block.mlp_branch(x)
            x = x + a2
            branches.append((a1, a2))
        trace.grids.append(hw)
        trace.branches.append(branches)
        if stage.downsample is not None:
            x = stage.downsample(x if narrow is None else x.to(trace.embedding.dtype), hw)
            hw = next_grid(hw)
    return trace
