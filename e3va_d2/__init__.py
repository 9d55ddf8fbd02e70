"""e3va-d2: memory- and time-efficient tuning (E3VA) of Swin detectors and segmenters in
detectron2.

Importing the package registers its backbones and the synthetic datasets (cheaply: nothing is
generated until a dataset is used), fvcore's flop count of fused attention, and logs which
detectron2 build it found.
"""
import logging

from . import (
    data,  # noqa: F401  (registers the synthetic datasets)
    model_zoo,  # noqa: F401  (the e3va:// checkpoints)
)
from .compat import E3VA_D2_VERSION, HAS_COMPILED_OPS, detectron2_build
from .modeling import (
    TUNING_METHODS,
    E3VATuning,
    SwinTransformer,
    TunedSwin,
    build_tuning,
    swin_size,
)
from .utils.flops import register_flop_handles

__version__ = E3VA_D2_VERSION
__all__ = [
    "HAS_COMPILED_OPS",
    "detectron2_build",
    "TUNING_METHODS",
    "E3VATuning",
    "SwinTransformer",
    "TunedSwin",
    "build_tuning",
    "swin_size",
]

register_flop_handles()  # fvcore (and detectron2's tools) count Swin's fused attention
logging.getLogger(__name__).info("e3va_d2 %s uses %s", __version__, detectron2_build())
