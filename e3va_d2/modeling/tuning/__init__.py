"""Tuning methods: each decides, when the model is built, what of the Swin trunk trains.

Registered names (``TUNING_METHODS``): full, fixed, bitfit, norm, partial1, adapter, lora,
adaptformer, e3va, e3va_plus, e3va_plusplus (the paper's), e3va_spatial (this project's). A
method with options on one line (``e3va:rank=8``) is parsed by :mod:`.spec`.
"""
from .base import TUNING_METHODS, OptionError, TuningMethod, build_tuning, register_tuning
from .e3va import E3VATuning
from .full import FixedTuning, FullTuning
from .inserted import AdaptFormerTuning, HoulsbyAdapterTuning, LoRATuning
from .selective import BitFitTuning, NormTuning, PartialTuning
from .spatial import SpatialE3VATuning
from .spec import parse_method_spec, parse_method_specs, split_method_specs

__all__ = [
    "TUNING_METHODS",
    "OptionError",
    "TuningMethod",
    "build_tuning",
    "register_tuning",
    "AdaptFormerTuning",
    "BitFitTuning",
    "E3VATuning",
    "FixedTuning",
    "FullTuning",
    "HoulsbyAdapterTuning",
    "LoRATuning",
    "NormTuning",
    "PartialTuning",
    "SpatialE3VATuning",
    "parse_method_spec",
    "parse_method_specs",
    "split_method_specs",
]
