"""The training step: forward, backward and update, with mixed precision on CUDA *and* CPU.

The one training step: every trainer (:class:`~e3va_d2.engine.trainer.E3VATrainer`) takes it,
and so do the benchmarks (``projects/benchmark/measure.py`` times and measures this very step),
so that what is measured is what trains. detectron2 0.6's ``AMPTrainer`` refuses CPU models;
:class:`MixedPrecision` runs bfloat16, or float16 with a dynamic grad scaler, on CUDA and on the
CPU alike (CPU autocast has float16 too, so the scaler's path runs in the CPU tests), and is the
only place that touches the grad scaler. :class:`TrainStep` calls every detectron2 hook method
(``after_backward`` too, which detectron2 0.6's hooks lack and main's have; it sees unscaled
gradients), counts the steps the scaler skipped for overflow, and checks once, after the first
backward, that every trainable parameter received a gradient.
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable, Dict, Iterable, Optional

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage

from .params import parameters_without_grad

__all__ = [
    "MixedPrecision",
    "TrainStep",
    "call_after_backward",
    "make_grad_scaler",
    "resolve_amp_dtype",
]

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16}

Losses = Callable[[torch.nn.Module, Any], Dict[str, torch.Tensor]]


def resolve_amp_dtype(enabled: bool, device_type: str, dtype: Optional[str] = None):
    """The autocast dtype for ``train.amp`` (None when AMP is off).

    Default: bfloat16 (float32's range: no grad scaler, no overflow), except on a GPU without
    bfloat16 (before Ampere: V100, P100, 1080Ti), which gets float16 with a grad scaler.
    ``dtype="float16"`` runs float16 and the scaler anywhere, the CPU included.
    """
    if not enabled:
        return None
    if dtype is None:
        old_gpu = device_type == "cuda" and not _native_cuda_bf16()
        return torch.float16 if old_gpu else torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"train.amp.dtype={dtype!r}; expected one of {sorted(_DTYPES)} or None")
    return _DTYPES[dtype]


def _native_cuda_bf16() -> bool:
    """Whether the current GPU computes bfloat16 natively (compute capability 8.0+); torch's
    default also answers True for the slow emulation older cards have."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:  # torch < 2.3: no emulation to exclude
        return torch.cuda.is_bf16_supported()


def make_grad_scaler(device_type: str):
    """A dynamic loss scaler for fp16 autocast on ``device_type``."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type)
    return torch.cuda.amp.GradScaler()


class MixedPrecision:
    """Autocast for the forward pass and, for float16, a dynamic grad scaler for backward and
    the update; ``dtype=None`` is full precision (every call a plain one)."""

    def __init__(self, device_type: str, dtype: Optional[torch.dtype] = None):
        self.device_type = device_type
        self.dtype = dtype
        self.grad_scaler = make_grad_scaler(device_type) if dtype == torch.float16 else None
        self.skipped_steps = 0  # updates the scaler skipped for inf/NaN gradients

    def autocast(self):
        return torch.autocast(self.device_type, dtype=self.dtype or torch.float32,
                              enabled=self.dtype is not None)

    def backward(self, loss: torch.Tensor) -> bool:
        """Backward of ``loss`` (scaled for float16). False, and nothing done, when the loss
        depends on nothing that trains (a frozen backbone without a trainable neck)."""
        if not loss.requires_grad:
            return False
        (loss if self.grad_scaler is None else self.grad_scaler.scale(loss)).backward()
        return True

    def unscale(self, optimizer: torch.optim.Optimizer, had_gradients: bool = True) -> None:
        """Divide the gradients by the loss scale in place, so that what reads them before the
        update (a clipping or logging hook) sees true gradients; :meth:`step` then does not
        unscale again. Nothing to do without a scaler or without gradients."""
        if self.grad_scaler is not None and had_gradients:
            self.grad_scaler.unscale_(optimizer)

    def step(self, optimizer: torch.optim.Optimizer, had_gradients: bool = True) -> None:
        """The optimizer's update. A step without gradients skips the scaler, which refuses an
        optimizer step with nothing unscaled."""
        if self.grad_scaler is None or not had_gradients:
            optimizer.step()
            return
        scale = self.grad_scaler.get_scale()
        self.grad_scaler.step(optimizer)
        self.grad_scaler.update()
        if self.grad_scaler.get_scale() < scale:  # inf/NaN gradients: the update was skipped
            self.skipped_steps += 1

    def describe(self) -> str:
        if self.dtype is None:
            return f"AMP off: training in float32 on {self.device_type}."
        scaler = " with a dynamic grad scaler" if self.grad_scaler else ""
        dtype = str(self.dtype).replace("torch.", "")
        return f"AMP on: {dtype} autocast on {self.device_type}{scaler}."


def call_after_backward(hooks: Iterable[object]) -> None:
    """``after_backward()`` of every hook that has one: detectron2 main's ``HookBase`` defines
    it, detectron2 0.6's does not (a hook written for main must still see it there)."""
    for hook in hooks:
        method = getattr(hook, "after_backward", None)
        if method is not None:
            method()


def _model_losses(model: torch.nn.Module, data: Any) -> Dict[str, torch.Tensor]:
    losses = model(data)
    return {"total_loss": losses} if isinstance(losses, torch.Tensor) else losses


class TrainStep(SimpleTrainer):
    """``SimpleTrainer`` with :class:`MixedPrecision`, ``after_backward`` hooks and a
    first-step gradient check.

    Args:
        device_type: "cuda" or "cpu", where the model runs.
        amp_dtype: autocast dtype, or None for full precision.
        check_gradients: raise after the first backward if a trainable parameter got no
            gradient (it could never learn, and DDP would need ``find_unused_parameters``).
        after_backward: called after every backward, before the update (gradient clipping,
            logging), with the gradients unscaled (float16; unlike detectron2 main's
            AMPTrainer, so a hook must not call the scaler's ``unscale_``). Default:
            ``after_backward`` of the hooks registered on this trainer; a trainer that owns
            this step (``DefaultTrainer._trainer``) passes its own hooks'.
        losses: ``(model, data) -> {name: loss}``; default ``model(data)``.
    """

    def __init__(self, model, data_loader, optimizer, *, device_type: str = "cpu",
                 amp_dtype: Optional[torch.dtype] = None, check_gradients: bool = True,
                 after_backward: Optional[Callable[[], None]] = None,
                 losses: Optional[Losses] = None):
        super().__init__(model, data_loader, optimizer)
        self.precision = MixedPrecision(device_type, amp_dtype)
        self._after_backward = after_backward
        self._losses = losses or _model_losses
        self._gradients_checked = not check_gradients
        logger.info(self.precision.describe())

    @property
    def amp_dtype(self) -> Optional[torch.dtype]:
        return self.precision.dtype

    @property
    def grad_scaler(self):
        return self.precision.grad_scaler

    def compute_losses(self, data: Any) -> Dict[str, torch.Tensor]:
        """The losses of one batch (call it under ``self.precision.autocast()``)."""
        return self._losses(self.model, data)

    def after_backward(self) -> None:
        if self._after_backward is not None:
            self._after_backward()
        else:
            call_after_backward(self._hooks)

    def run_step(self):
        assert self.model.training, "[TrainStep] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with self.precision.autocast():
            loss_dict = self.compute_losses(data)
            losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        had_gradients = self.precision.backward(losses)
        self.precision.unscale(self.optimizer, had_gradients)
        self.after_backward()
        if not self._gradients_checked:
            self._check_gradients()
        self._write_metrics(loss_dict, data_time)
        self.precision.step(self.optimizer, had_gradients)
        if self.precision.grad_scaler is not None:
            get_event_storage().put_scalar("amp_skipped_steps", self.precision.skipped_steps,
                                           smoothing_hint=False)

    def _check_gradients(self) -> None:
        missing = parameters_without_grad(self.model.named_parameters())
        self._gradients_checked = True
        if missing:
            more = f" (+{len(missing) - 10} more)" if len(missing) > 10 else ""
            shown = ", ".join(missing[:10]) + more
            raise RuntimeError(
                f"{len(missing)} trainable parameters received no gradient in the first step: "
                f"{shown}. They can never learn (and DDP would need find_unused_parameters): "
                "freeze them (requires_grad=False) or make the loss depend on them."
            )

    def state_dict(self):
        ret = super().state_dict()
        if self.precision.grad_scaler is not None:
            ret["grad_scaler"] = self.precision.grad_scaler.state_dict()
        ret["amp_skipped_steps"] = self.precision.skipped_steps
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.precision.grad_scaler is not None and "grad_scaler" in state_dict:
            self.precision.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        self.precision.skipped_steps = state_dict.get("amp_skipped_steps", 0)
