"""E3VA's adapters (paper sections 3.2-3.3): what the highway adds at every block.

    A(x) = x + U(GELU(D(x)))      (D: C -> C/2, U: C/2 -> C, each a dual low-rank linear)

Because ``A(x) == x`` when ``U`` is zero, a zero-initialised highway reproduces the frozen
trunk bit for bit. The highway that runs them is :mod:`.highway`.

Shape legend: B batch, L tokens, C channels, r rank.
"""
from __future__ import annotations

import math
from typing import List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..layers.bottleneck import recomputed_bottleneck

__all__ = [
    "DualLowRankLinear",
    "HighwayAdapter",
    "BlockAdapters",
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

    - ``"lorand"`` (default): the outer two factors of the same lab's released multi low-rank
      adapter (LoRand, ``DongshuoYin/CoLin``, ``swin_lorand.py``, ``Lorand_Multi.__init__``
      and ``reset_parameters``; it has a third, (k, k) core factor, which this layer has not):
      each factor stored as (in, r) / (r, out) and drawn by ``kaiming_uniform_(a=sqrt(5))``,
      whose fan-in is then the factor's second dimension (r for ``t``, out for ``s``); the
      bias uniform in +-1/sqrt(in), as ``nn.Linear``'s. An adapter then starts at about a
      sixth of its input (median 0.158 on the scenes trunk: docs/records/adapter-init.json).
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
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.init = rank, init
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
