"""Swin trunk, E3VA highway, tuning methods, the backbone that combines them, and heads."""
from . import builders  # noqa: F401  (registers the yacs backbone builders)
from .adapters import BlockAdapters, DualLowRankLinear, HighwayAdapter
from .backbone import TunedSwin, unreachable_trainable_parameters
from .highway import E3VAHighway, Highway
from .swin import SWIN_SIZES, SwinTransformer, swin_output_shapes, swin_size, swin_stage_channels
from .tuning import TUNING_METHODS, E3VATuning, FixedTuning, FullTuning, TuningMethod, build_tuning
from .upernet import PyramidPoolingModule, UPerNetHead

__all__ = [
    "SWIN_SIZES",
    "SwinTransformer",
    "swin_size",
    "swin_output_shapes",
    "swin_stage_channels",
    "TunedSwin",
    "Highway",
    "unreachable_trainable_parameters",
    "DualLowRankLinear",
    "HighwayAdapter",
    "BlockAdapters",
    "E3VAHighway",
    "TUNING_METHODS",
    "TuningMethod",
    "E3VATuning",
    "FixedTuning",
    "FullTuning",
    "build_tuning",
    "UPerNetHead",
    "PyramidPoolingModule",
]
