"""The side-network contract: what a tuning method may run beside a frozen trunk.

A :class:`~e3va_d2.modeling.tuning.TuningMethod` either edits the trunk in place (LoRA,
adapters: ``attach`` returns None) or returns a :class:`SideNetwork`. :class:`TunedSwin` then
stores it as ``side`` (its parameters are named ``side.…``) and calls it instead of the trunk:
the side network decides what of the trunk runs, and how (E3VA runs the trunk without autograd
and carries its own features; see :class:`~e3va_d2.modeling.e3va.E3VAHighway`).
"""
from __future__ import annotations

from typing import Dict

from torch import Tensor, nn

__all__ = ["SideNetwork", "SIDE_PREFIX"]

SIDE_PREFIX = "side."  # parameter names of the side network inside a TunedSwin


class SideNetwork(nn.Module):
    """Base class of modules that run beside a trunk and produce the backbone's outputs."""

    def forward(self, trunk: nn.Module, images: Tensor) -> Dict[str, Tensor]:
        """The backbone's outputs (``trunk``'s ``out_features``, same shapes) for ``images``."""
        raise NotImplementedError

    def inherited_weights(self, trunk_prefix: str, side_prefix: str) -> Dict[str, str]:
        """Own parameter name -> trunk parameter it copies whenever pre-trained weights are
        loaded (E3VA's trainable copies of the patch merging layers). Default: none."""
        return {}
