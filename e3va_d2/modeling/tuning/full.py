"""The two ends of the scale: train the whole trunk, or none of it."""
from __future__ import annotations

from dataclasses import dataclass

from .base import TuningMethod, register_tuning

__all__ = ["FullTuning", "FixedTuning"]


@register_tuning("full")
@dataclass
class FullTuning(TuningMethod):
    """Every trunk parameter trains; backward runs through the whole trunk."""

    def trainable_parameters(self, trunk, highway):
        for name, param in trunk.named_parameters():
            yield "trunk." + name, param


@register_tuning("fixed")
@dataclass
class FixedTuning(TuningMethod):
    """The trunk, output norms included, is frozen; only the neck and heads train."""

    trunk_runs_without_grad = True

    def trainable_parameters(self, trunk, highway):
        return iter(())
