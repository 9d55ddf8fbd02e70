"""Names in state dicts: the one place that knows DDP's ``module.`` prefix and how names group
into the parts of a tuned model (trunk, output norms, highway, neck, heads)."""
from __future__ import annotations

from typing import Any, Dict, Mapping

from torch import nn
from torch.nn.parallel import DataParallel, DistributedDataParallel

__all__ = ["DDP_PREFIX", "parameter_group", "strip_prefix", "strip_ddp_prefix", "unwrap_ddp"]

DDP_PREFIX = "module."


def strip_prefix(state: Mapping[str, Any], prefix: str = DDP_PREFIX) -> Dict[str, Any]:
    """``state`` without ``prefix`` when every key has it (a whole-model save from inside a
    DDP/DataParallel wrapper); otherwise unchanged, so a model with a ``module`` child keeps
    its names."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix):]: v for k, v in state.items()}
    return dict(state)


def strip_ddp_prefix(name: str) -> str:
    """A parameter name of a DDP-wrapped model as the bare model names it."""
    return name[len(DDP_PREFIX):] if name.startswith(DDP_PREFIX) else name


def unwrap_ddp(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, (DistributedDataParallel, DataParallel)) else model


def parameter_group(name: str) -> str:
    """A readable group for a parameter name of a detectron2 model."""
    name = strip_ddp_prefix(name)
    if ".trunk.norm" in name:
        return "backbone: output norms"
    if ".trunk." in name or name.startswith("trunk."):
        return "backbone: Swin trunk"
    if ".highway." in name or name.startswith("highway."):
        return "backbone: highway"
    head = name.split(".")[0]
    if head == "backbone":
        return "neck (FPN)"
    return head
