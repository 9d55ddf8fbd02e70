"""A chain of linear layers with one GELU that keeps only its input for backward.

An E3VA adapter's branch is ``U(GELU(D(x)))``, four thin linear layers for dual low-rank D and
U. Autograd would keep every intermediate (four activations per token); ``torch.utils.checkpoint``
keeps only ``x`` but reruns the whole chain in backward, the last, widest layer included, whose
output backward never reads, and pays its bookkeeping 48 times per Swin-B step. This function
recomputes exactly the inputs the weight gradients need, and can keep ``x`` as a narrower copy
(``saved_dtype``) when the caller accepts rounded weight gradients: bfloat16 / float16, or an
8-bit float scaled per tensor so that its largest magnitude maps to the format's largest value
(float8 has too little range to hold activations unscaled).
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["recomputed", "recomputed_bottleneck"]

Layer = Tuple[Tensor, Optional[Tensor]]  # (weight (out, in), bias (out,) or None)


def _autocast_state(device: str) -> Tuple[bool, torch.dtype]:
    """Whether autocast is on for ``device`` and its dtype (torch < 2.4 has per-device calls;
    devices without autocast, e.g. "meta" for building a model, report it off)."""
    if hasattr(torch, "get_autocast_dtype"):
        try:
            return torch.is_autocast_enabled(device), torch.get_autocast_dtype(device)
        except RuntimeError:
            return False, torch.float32
    if device == "cuda":
        return torch.is_autocast_enabled(), torch.get_autocast_gpu_dtype()
    return torch.is_autocast_cpu_enabled(), torch.get_autocast_cpu_dtype()


def _narrow(x: Tensor, dtype: Optional[torch.dtype]) -> Tuple[Tensor, Optional[Tensor]]:
    """``x`` as kept for backward, and the scale to multiply it by when widening it again."""
    if dtype is None or not x.is_floating_point() or x.itemsize <= dtype.itemsize:
        return x, None
    if dtype.itemsize > 1:
        return x.to(dtype), None
    # Scaled in float32: under float16 autocast x is float16, where the scale (amax / 448)
    # rounds below amax 0.03 and is 0 below 3e-5 (then x / scale is inf, and NaN in float8).
    scale = x.detach().abs().amax().float().clamp(min=1e-30) / torch.finfo(dtype).max
    return (x.float() / scale).to(dtype), scale


def _widen(kept: Tensor, scale: Optional[Tensor], dtype: torch.dtype) -> Tensor:
    return kept.to(dtype) if scale is None else (kept.float() * scale).to(dtype)


def _inputs_of_layers(x: Tensor, layers: Sequence[Layer], gelu_at: int):
    """Each layer's input, and GELU's input, for ``x`` (the last layer's output is not made)."""
    inputs, h, pre_gelu = [], x, None
    for i, (weight, bias) in enumerate(layers):
        if i == gelu_at:
            pre_gelu, h = h, F.gelu(h)
        inputs.append(h)
        if i + 1 < len(layers):
            h = F.linear(h, weight, bias)
    return inputs, pre_gelu


class _RecomputedBottleneck(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, saved_dtype, gelu_at, *flat):
        layers = list(zip(flat[0::2], flat[1::2]))
        inputs, _ = _inputs_of_layers(x, layers, gelu_at)
        weight, bias = layers[-1]
        out = F.linear(inputs[-1], weight, bias)
        device = x.device.type
        ctx.autocast = (device, *_autocast_state(device))
        ctx.x_dtype, ctx.gelu_at = x.dtype, gelu_at
        kept, ctx.scale = _narrow(x, saved_dtype)
        ctx.save_for_backward(kept, *flat)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, *flat = ctx.saved_tensors
        layers = list(zip(flat[0::2], flat[1::2]))
        device, enabled, dtype = ctx.autocast
        # The recomputation and the gradient products run under the forward's autocast, so
        # they round as the forward did; gradients are returned in their parameter's dtype.
        with torch.autocast(device, dtype=dtype) if enabled else contextlib.nullcontext():
            widened = _widen(x, ctx.scale, ctx.x_dtype)
            inputs, pre_gelu = _inputs_of_layers(widened, layers, ctx.gelu_at)
            grads: List[Optional[Tensor]] = [None] * (2 * len(layers))
            grad = grad_out
            for i in reversed(range(len(layers))):
                weight, bias = layers[i]
                rows = grad.reshape(-1, grad.shape[-1])
                cols = inputs[i].reshape(-1, inputs[i].shape[-1])
                grads[2 * i] = (rows.t() @ cols).to(weight.dtype)
                if bias is not None:
                    grads[2 * i + 1] = rows.sum(0).to(bias.dtype)
                if i == 0 and not ctx.needs_input_grad[0]:
                    break
                grad = grad @ weight.to(grad.dtype)
                if i == ctx.gelu_at:
                    grad = torch.ops.aten.gelu_backward(grad, pre_gelu.to(grad.dtype))
        grad_x = grad.to(ctx.x_dtype) if ctx.needs_input_grad[0] else None
        return (grad_x, None, None, *grads)


def recomputed_bottleneck(x: Tensor, layers: Sequence[Layer], gelu_at: int,
                          saved_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``linear_n(... GELU(... linear_1(x)))``, GELU applied to the input of ``layers[gelu_at]``.

    Same values as the plain chain; backward keeps only ``x`` (as ``saved_dtype`` if that is
    narrower) and the weights, and recomputes the inputs of the layers from it.
    """
    if not 0 < gelu_at < len(layers):
        raise ValueError(f"gelu_at={gelu_at} must name one of layers 1..{len(layers) - 1}")
    flat = [t for layer in layers for t in layer]
    return _RecomputedBottleneck.apply(x, saved_dtype, gelu_at, *flat)


class _Recomputed(torch.autograd.Function):
    """``fn(x)`` keeping only ``x`` (possibly narrowed) and ``fn``'s parameters for backward."""

    @staticmethod
    def forward(ctx, fn, saved_dtype, x, *params):
        device = x.device.type
        ctx.fn, ctx.autocast, ctx.x_dtype = fn, (device, *_autocast_state(device)), x.dtype
        kept, ctx.scale = _narrow(x, saved_dtype)
        ctx.save_for_backward(kept, *params)
        return fn(x)

    @staticmethod
    def backward(ctx, grad_out):
        kept, *params = ctx.saved_tensors
        x = _widen(kept, ctx.scale, ctx.x_dtype).detach().requires_grad_(ctx.needs_input_grad[2])
        device, enabled, dtype = ctx.autocast
        with torch.enable_grad(), (torch.autocast(device, dtype=dtype) if enabled
                                   else contextlib.nullcontext()):
            out = ctx.fn(x)
        wanted = [t for t, need in zip([x, *params], ctx.needs_input_grad[2:]) if need]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, allow_unused=True))
        filled = [next(grads) if need else None for need in ctx.needs_input_grad[2:]]
        return (None, None, *filled)


def recomputed(fn, x: Tensor, params: Sequence[Tensor],
               saved_dtype: Optional[torch.dtype] = None) -> Tensor:
    """``fn(x)`` whose backward keeps only ``x`` (as ``saved_dtype`` if narrower) and reruns
    ``fn`` to differentiate it: for branches that ``recomputed_bottleneck`` cannot express (a
    convolution between the linear layers). ``params``: every tensor ``fn`` reads that may need
    a gradient (its module's parameters)."""
    return _Recomputed.apply(fn, saved_dtype, x, *params)
