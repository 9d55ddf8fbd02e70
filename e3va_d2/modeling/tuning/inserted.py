"""Methods that insert small modules into every Swin block (paper section 4.1, "with extra
structures"): their gradients must travel back through the frozen trunk.

Each block gets a module in its two insertion points (``SwinBlock.attn_insert`` after the
windowed MSA, ``SwinBlock.mlp_insert`` after the MLP), so pre-trained names stay unchanged:

- ``adapter`` (Houlsby): stacked after each sub-layer, ``h + up(GELU(down(h)))``.
- ``lora``: ``attn(z) + B(A(z))`` and ``mlp(z) + B(A(z))``, a rank-64 linear pair parallel to
  each sub-layer (paper appendix A), ``B`` zero-initialised.
- ``adaptformer``: ``sub(z) + s * up(GELU(down(z)))`` parallel to each sub-layer, with a
  learnable scale ``s`` (initially 0.1) and ``up`` zero-initialised, as in AdaptFormer.

Parallel modules read the sub-layer's own input ``z`` (the normalised tokens); every inserted
module is token-wise, so windowing, shifting and padding commute with it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
from torch import Tensor, nn

from ..swin import SwinBlock
from .base import TuningMethod, option, output_norm_parameters, register_tuning

__all__ = [
    "Bottleneck",
    "StackedAdapter",
    "ParallelBranch",
    "HoulsbyAdapterTuning",
    "LoRATuning",
    "AdaptFormerTuning",
]


class Bottleneck(nn.Module):
    """``up(act(down(x)))``: C -> width -> C (``act=None`` gives LoRA's linear pair)."""

    def __init__(self, dim: int, width: int, *, activation: bool = True, bias: bool = True,
                 zero_up: bool = True):
        super().__init__()
        self.down = nn.Linear(dim, width, bias=bias)
        self.act = nn.GELU() if activation else nn.Identity()
        self.up = nn.Linear(width, dim, bias=bias)
        nn.init.kaiming_uniform_(self.down.weight, a=math.sqrt(5))
        if zero_up:
            nn.init.zeros_(self.up.weight)
        for layer in (self.down, self.up):
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.up(self.act(self.down(x)))


class StackedAdapter(nn.Module):
    """A residual bottleneck on the sub-layer's output (Houlsby et al.): ``h + adapter(h)``."""

    def __init__(self, adapter: Bottleneck):
        super().__init__()
        self.adapter = adapter

    def forward(self, sublayer_input: Tensor, h: Tensor) -> Tensor:
        return h + self.adapter(h)


class ParallelBranch(nn.Module):
    """``h + scale * branch(z)`` beside the sub-layer ``h = sublayer(z)``; ``scale`` is a fixed
    float or a learned scalar."""

    def __init__(self, branch: nn.Module, scale: float = 1.0, learnable_scale: bool = False):
        super().__init__()
        self.branch = branch
        if learnable_scale:
            self.scale = nn.Parameter(torch.tensor(float(scale)))
        else:
            self.scale = float(scale)

    def forward(self, sublayer_input: Tensor, h: Tensor) -> Tensor:
        return h + self.scale * self.branch(sublayer_input)


INSERTED_TYPES = (StackedAdapter, ParallelBranch)


def lora_branch(dim: int, rank: int) -> ParallelBranch:
    """LoRA beside a sub-layer: a rank-``rank`` linear pair, no bias, ``B`` zero-initialised."""
    return ParallelBranch(Bottleneck(dim, rank, activation=False, bias=False))


def insert_into_blocks(trunk: nn.Module, make: Callable[[int], nn.Module]) -> int:
    """Put ``make(dim)`` into both insertion points of every Swin block; returns how many were
    inserted, and refuses a trunk where nothing matched or something is already inserted."""
    inserted = 0
    for block in trunk.modules():
        if not isinstance(block, SwinBlock):
            continue
        dim = block.norm1.normalized_shape[0]
        for point in ("attn_insert", "mlp_insert"):
            if getattr(block, point) is not None:
                raise ValueError(f"A tuning method was already inserted into this trunk ({point})")
            setattr(block, point, make(dim))
            inserted += 1
    if not inserted:
        raise ValueError(
            "No Swin blocks found to insert modules into; the method would train nothing")
    return inserted


def inserted_parameters(trunk: nn.Module):
    """Parameters of the inserted modules, selected by module type (never by name)."""
    for module_name, module in trunk.named_modules():
        if isinstance(module, INSERTED_TYPES):
            for name, param in module.named_parameters():
                yield f"trunk.{module_name}.{name}", param


@dataclass
class _InsertedTuning(TuningMethod):
    train_output_norms: bool = True

    def trainable_parameters(self, trunk, highway):
        yield from inserted_parameters(trunk)
        if self.train_output_norms:
            yield from output_norm_parameters(trunk)


@register_tuning("adapter")
@dataclass
class HoulsbyAdapterTuning(_InsertedTuning):
    """Bottleneck adapters (width 64) stacked after MSA and after MLP in every block."""

    width: int = option(64, minimum=1)

    def attach(self, trunk):
        insert_into_blocks(trunk, lambda dim: StackedAdapter(Bottleneck(dim, self.width)))


@register_tuning("lora")
@dataclass
class LoRATuning(_InsertedTuning):
    """A rank-``rank`` linear pair (no bias) parallel to MSA and to MLP in every block, added
    unscaled (LoRA's alpha / rank is 1: ``B`` starts at zero, so a scale would only rescale the
    learning rate)."""

    rank: int = option(64, minimum=1)

    def attach(self, trunk):
        insert_into_blocks(trunk, lambda dim: lora_branch(dim, self.rank))


@register_tuning("adaptformer")
@dataclass
class AdaptFormerTuning(_InsertedTuning):
    """A GELU bottleneck (width 64) parallel to MSA and to MLP, scaled by a learned scalar."""

    width: int = option(64, minimum=1)
    scale: float = 0.1  # the learned scalar's initial value

    def attach(self, trunk):
        insert_into_blocks(
            trunk,
            lambda dim: ParallelBranch(
                Bottleneck(dim, self.width), self.scale, learnable_scale=True
            ),
        )
