"""The training step: forward, backward and update, with mixed precision on CUDA *and* CPU.

detectron2 0.6's ``AMPTrainer`` refuses CPU models; this step runs fp16 + GradScaler (or bf16)
on CUDA and bf16 autocast on CPU, counts the steps the scaler skipped for overflow, and checks
once, after the first backward, that every trainable parameter received a gradient.
"""
from __future__ import annotations

import logging
import time
from typing import Optional

import torch
from detectron2.engine import SimpleTrainer
from detectron2.utils.events import get_event_storage

from .params import parameters_without_grad

__all__ = ["TrainStep", "make_grad_scaler", "resolve_amp_dtype"]

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16}


def resolve_amp_dtype(enabled: bool, device_type: str, dtype: Optional[str] = None):
    """The autocast dtype for ``train.amp`` (None when AMP is off).

    Default: float16 on CUDA (with a grad scaler), bfloat16 on CPU (CPU autocast has no fp16).
    """
    if not enabled:
        return None
    if dtype is None:
        return torch.float16 if device_type == "cuda" else torch.bfloat16
    if dtype not in _DTYPES:
        raise ValueError(f"train.amp.dtype={dtype!r}; expected one of {sorted(_DTYPES)} or None")
    resolved = _DTYPES[dtype]
    if device_type == "cpu" and resolved == torch.float16:
        raise ValueError("train.amp.dtype='float16' is not supported on CPU; use 'bfloat16'")
    return resolved


def make_grad_scaler(device_type: str):
    """A dynamic loss scaler for fp16 autocast on ``device_type``."""
    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device_type)
    return torch.cuda.amp.GradScaler()


class TrainStep(SimpleTrainer):
    """``SimpleTrainer`` with autocast, a grad scaler for fp16 and a first-step gradient check.

    Args:
        device_type: "cuda" or "cpu", where the model runs.
        amp_dtype: autocast dtype, or None for full precision.
        check_gradients: raise after the first backward if a trainable parameter got no
            gradient (it could never learn, and DDP would need ``find_unused_parameters``).
    """

    def __init__(self, model, data_loader, optimizer, *, device_type: str = "cpu",
                 amp_dtype: Optional[torch.dtype] = None, check_gradients: bool = True):
        super().__init__(model, data_loader, optimizer)
        self.device_type = device_type
        self.amp_dtype = amp_dtype
        self.grad_scaler = make_grad_scaler(device_type) if amp_dtype == torch.float16 else None
        self.skipped_steps = 0
        self._gradients_checked = not check_gradients
        if amp_dtype is None:
            logger.info("AMP off: training in float32 on %s.", device_type)
        else:
            logger.info(
                "AMP on: %s autocast on %s%s.", str(amp_dtype).replace("torch.", ""), device_type,
                " with a dynamic grad scaler" if self.grad_scaler else "",
            )

    def run_step(self):
        assert self.model.training, "[TrainStep] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        with torch.autocast(self.device_type, dtype=self.amp_dtype or torch.float32,
                            enabled=self.amp_dtype is not None):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                loss_dict = {"total_loss": loss_dict}
            losses = sum(loss_dict.values())

        self.optimizer.zero_grad()
        if self.grad_scaler is not None:
            self.grad_scaler.scale(losses).backward()
        else:
            losses.backward()
        if not self._gradients_checked:
            self._check_gradients()
        self._write_metrics(loss_dict, data_time)

        if self.grad_scaler is None:
            self.optimizer.step()
            return
        scale = self.grad_scaler.get_scale()
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
        if self.grad_scaler.get_scale() < scale:  # inf/NaN gradients: the update was skipped
            self.skipped_steps += 1
        get_event_storage().put_scalar("amp_skipped_steps", self.skipped_steps,
                                       smoothing_hint=False)

    def _check_gradients(self) -> None:
        missing = parameters_without_grad(self.model.named_parameters())
        self._gradients_checked = True
        if missing:
            shown = ", ".join(missing[:10]) + (f" (+{len(missing) - 10} more)" if len(missing) > 10 else "")
            raise RuntimeError(
                f"{len(missing)} trainable parameters received no gradient in the first step: "
                f"{shown}. They can never learn (and DDP would need find_unused_parameters): "
                "freeze them (requires_grad=False) or make the loss depend on them."
            )

    def state_dict(self):
        ret = super().state_dict()
        if self.grad_scaler is not None:
            ret["grad_scaler"] = self.grad_scaler.state_dict()
        ret["amp_skipped_steps"] = self.skipped_steps
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.grad_scaler is not None and "grad_scaler" in state_dict:
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        self.skipped_steps = state_dict.get("amp_skipped_steps", 0)
