"""Make SyncBN in configs fit the process layout the model actually runs in.

Configs written for 8 GPUs ask for ``SyncBN`` in the heads (as the official Swin detectors do).
In one process there is nothing to sync with and SyncBN is plain BN; across several CPU
processes torch's SyncBatchNorm refuses CPU tensors, while detectron2's NaiveSyncBatchNorm
works over gloo.
"""
from __future__ import annotations

import logging

import torch
from detectron2.layers import NaiveSyncBatchNorm
from torch import nn

__all__ = ["adapt_sync_batchnorm"]

logger = logging.getLogger(__name__)


def _replace_norm(norm: nn.SyncBatchNorm, cls: type) -> nn.Module:
    # Built where the old one lives (a model moved to the GPU before the swap must stay there).
    first = next((t for t in (*norm.parameters(), *norm.buffers()) if t.is_floating_point()),
                 None)
    where = {} if first is None else dict(device=first.device, dtype=first.dtype)
    new = cls(norm.num_features, norm.eps, norm.momentum, norm.affine, norm.track_running_stats,
              **where)
    new.load_state_dict(norm.state_dict())
    new.train(norm.training)
    if norm.affine:
        new.weight.requires_grad_(norm.weight.requires_grad)
        new.bias.requires_grad_(norm.bias.requires_grad)
    return new


def adapt_sync_batchnorm(model: nn.Module, world_size: int, device: torch.device | str) -> int:
    """Swap ``nn.SyncBatchNorm`` in place: BN for one process, NaiveSyncBatchNorm for several
    CPU processes; unchanged for several CUDA processes. Returns how many were swapped."""
    device = torch.device(device)
    if world_size > 1 and device.type == "cuda":
        return 0
    cls = nn.BatchNorm2d if world_size == 1 else NaiveSyncBatchNorm
    swapped = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.SyncBatchNorm):
                setattr(parent, name, _replace_norm(child, cls))
                swapped += 1
    if swapped:
        logger.info(
            "Replaced %d SyncBatchNorm layers with %s (world size %d, %s).",
            swapped, cls.__name__, world_size, device.type,
        )
    return swapped
