"""E3VA with spatial context on its highway: this project's extension, not the paper's method
(see :mod:`e3va_d2.modeling.spatial_highway`)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Tuple

from ..highway import E3VAHighway
from ..spatial_highway import spatial_highway
from .base import OptionError, register_tuning
from .e3va import SAVED_INPUT_DTYPES, E3VATuning

__all__ = ["SpatialE3VATuning"]


@register_tuning("e3va_spatial")
@dataclass
class SpatialE3VATuning(E3VATuning):
    """E3VA's options (dual low-rank, parallel adapters only; its memory options too) plus:

    conv_kernels: odd depthwise kernel sizes inside each adapter's bottleneck, on the token
        grid; () for none.
    read_state: each adapter's bottleneck also reads the highway's deviation from the trunk.
    stage_mixer: a spatial bottleneck on the highway at each stage's end, its depthwise
        kernels ``conv_kernels`` (3 where those are empty). On by default: of the three it adds
        the most accuracy (docs/ACCURACY.md, "Variants").
    """

    conv_kernels: Tuple[int, ...] = field(default=(3,))
    read_state: bool = True
    stage_mixer: bool = True

    def __post_init__(self):
        super().__post_init__()
        self.conv_kernels = tuple(self.conv_kernels)
        if any(isinstance(k, bool) or not isinstance(k, int) or k < 1 or k % 2 == 0
               for k in self.conv_kernels):
            raise OptionError("SpatialE3VATuning", "conv_kernels",
                              f" must be odd sizes >= 1, got {self.conv_kernels!r}")
        if self.adapter_kind != "dual_low_rank" or self.structure != "parallel":
            raise OptionError("SpatialE3VATuning", "adapter_kind",
                              " must be 'dual_low_rank' (and structure 'parallel'): the spatial "
                              "highway builds on E3VA's parallel dual low-rank adapters")

    def build_highway(self, trunk) -> E3VAHighway:
        saved = SAVED_INPUT_DTYPES[self.saved_input_dtype]
        return spatial_highway(
            trunk,
            rank=self.rank,
            hidden_dims=self.hidden_dims(trunk),
            init=self.init,
            zero_init=self.zero_init,
            recompute=self.recompute_adapters,
            # An adapter that reads the deviation reads a sum in the highway's dtype, not the
            # narrowed trunk's own branch: keeping it in the trunk's dtype would round it. So
            # would the mixers'.
            saved_dtype=saved if self.read_state else self.adapter_saved_dtype(),
            mixer_saved_dtype=saved,
            trainable_downsampling=self.trainable_downsampling,
            recompute_branches=self.recompute_branches,
            conv_kernels=self.conv_kernels,
            read_state=self.read_state,
            stage_mixer=self.stage_mixer,
            feedback_depth=self.feedback_depth,
        )
