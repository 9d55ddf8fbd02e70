"""Tuning methods: each decides, when the model is built, what of the Swin trunk trains."""
from .base import TUNING_METHODS, TuningMethod, build_tuning, register_tuning
from .e3va import E3VATuning
from .full import FixedTuning, FullTuning

__all__ = [
    "TUNING_METHODS",
    "TuningMethod",
    "build_tuning",
    "register_tuning",
    "E3VATuning",
    "FixedTuning",
    "FullTuning",
]
