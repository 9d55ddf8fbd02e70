"""fvcore counters for ``aten::scaled_dot_product_attention``, which fvcore skips.

Why: Swin's window attention runs as one fused SDPA call, so fvcore's ``FlopCountAnalysis`` (and
detectron2's, and every tool built on them: ``tools/analyze_model.py``) reported no flops for
attention at all. The count follows fvcore's convention, one multiply-add = one flop, as its
``aten::matmul`` handle counts: ``Q @ K^T`` is ``B * Lq * Lk * D`` and ``softmax(.) @ V`` is
``B * Lq * Lk * Dv`` (``B`` all batch and head dimensions), exactly what fvcore counts for the
same attention written as two matmuls; the softmax, like fvcore's other element-wise ops, is
not counted. The activation count is the output's elements, as for a matmul.

``register_flop_handles()`` adds both to fvcore's default handles, so every analysis created
afterwards counts attention; ``import e3va_d2`` calls it (the shipped configs import e3va_d2,
so detectron2's stock tools count it too).
"""
from __future__ import annotations

import math
from typing import Any, List

from fvcore.nn.activation_count import _DEFAULT_SUPPORTED_OPS as _ACTIVATION_HANDLES
from fvcore.nn.flop_count import _DEFAULT_SUPPORTED_OPS as _FLOP_HANDLES
from fvcore.nn.jit_handles import generic_activation_jit, get_shape

__all__ = ["SDPA", "register_flop_handles", "sdpa_flop_jit"]

SDPA = "aten::scaled_dot_product_attention"


def sdpa_flop_jit(inputs: List[Any], outputs: List[Any]) -> int:
    """fvcore handle: the two matmuls of attention, from the query, key and value shapes."""
    q, k, v = (get_shape(x) for x in inputs[:3])
    batch = math.prod(q[:-2])
    lq, d = q[-2], q[-1]
    lk, dv = k[-2], v[-1]
    return batch * lq * lk * d + batch * lq * lk * dv


def register_flop_handles() -> None:
    """Add the SDPA handles to fvcore's defaults (idempotent; a handle already there is kept)."""
    _FLOP_HANDLES.setdefault(SDPA, sdpa_flop_jit)
    _ACTIVATION_HANDLES.setdefault(SDPA, generic_activation_jit())
