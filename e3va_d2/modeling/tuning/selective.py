"""Methods that add nothing and train a subset of the pre-trained trunk (paper section 4.1)."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .base import TuningMethod, option, register_tuning

__all__ = ["BitFitTuning", "NormTuning", "PartialTuning"]

_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm2d)


@register_tuning("bitfit")
@dataclass
class BitFitTuning(TuningMethod):
    """Only the trunk's bias terms train (BitFit), the relative position bias tables included:
    that is how the paper counts 0.20M parameters for Swin-B (0.14M without the tables)."""

    def trainable_parameters(self, trunk, highway):
        for name, param in trunk.named_parameters():
            if name.rsplit(".", 1)[-1] in ("bias", "relative_position_bias_table"):
                yield "trunk." + name, param


@register_tuning("norm")
@dataclass
class NormTuning(TuningMethod):
    """Only the trunk's normalisation layers train (selected by module type, not by name)."""

    def trainable_parameters(self, trunk, highway):
        for module_name, module in trunk.named_modules():
            if isinstance(module, _NORMS):
                for name, param in module.named_parameters(recurse=False):
                    yield f"trunk.{module_name}.{name}", param


@register_tuning("partial1", last_blocks=1)
@dataclass
class PartialTuning(TuningMethod):
    """Only the last ``last_blocks`` Swin blocks train. Earlier blocks get no autograd graph
    (their inputs and weights need no gradient), so they store nothing for backward."""

    last_blocks: int = option(1, minimum=1)

    def trainable_parameters(self, trunk, highway):
        blocks = [(f"layers.{i}.blocks.{j}", b) for i, stage in enumerate(trunk.layers)
                  for j, b in enumerate(stage.blocks)]
        if self.last_blocks > len(blocks):
            raise ValueError(
                f"last_blocks={self.last_blocks} but the trunk has {len(blocks)} blocks")
        for prefix, block in blocks[-self.last_blocks :]:
            for name, param in block.named_parameters():
                yield f"trunk.{prefix}.{name}", param
