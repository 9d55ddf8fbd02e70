"""Who trains: a per-group table of trainable parameters and the first-step gradient check."""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Iterable, List, Tuple

from tabulate import tabulate
from torch import nn

from ..modeling.backbone import tuned_swins
from ..utils.state import parameter_group, strip_ddp_prefix

__all__ = ["trainable_parameter_table", "parameters_without_grad"]


def _backbone_size(model: nn.Module) -> int:
    tuned = tuned_swins(model)
    return sum(p.numel() for m in tuned for p in m.trunk.parameters())


def trainable_parameter_table(model: nn.Module) -> Tuple[str, Dict[str, int]]:
    """Markdown-ish table (group, trainable, frozen, % of the pre-trained backbone) and totals.

    The percentage is relative to the Swin trunk's size, as in the paper's tables.
    """
    groups: OrderedDict[str, List[int]] = OrderedDict()
    for name, param in model.named_parameters():
        row = groups.setdefault(parameter_group(name), [0, 0])
        row[0 if param.requires_grad else 1] += param.numel()
    backbone = _backbone_size(model)
    rows = []
    for group, (trainable, frozen) in groups.items():
        in_backbone = backbone and group.startswith("backbone")
        share = f"{100.0 * trainable / backbone:.2f}%" if in_backbone else ""
        rows.append([group, f"{trainable:,}", f"{frozen:,}", share])
    trainable_total = sum(t for t, _ in groups.values())
    frozen_total = sum(f for _, f in groups.values())
    in_backbone = sum(t for g, (t, _) in groups.items() if g.startswith("backbone"))
    rows.append(
        ["total", f"{trainable_total:,}", f"{frozen_total:,}",
         f"{100.0 * in_backbone / backbone:.2f}%" if backbone else ""]
    )
    table = tabulate(
        rows,
        headers=["parameters", "trainable", "frozen", "trainable in backbone / Swin"],
        tablefmt="pipe",
        colalign=("left", "right", "right", "right"),
    )
    totals = dict(trainable=trainable_total, frozen=frozen_total, trainable_in_backbone=in_backbone,
                  swin=backbone)
    return table, totals


def parameters_without_grad(named_parameters: Iterable[Tuple[str, nn.Parameter]]) -> List[str]:
    """Trainable parameters whose ``.grad`` is still None after a backward."""
    return [strip_ddp_prefix(n) for n, p in named_parameters if p.requires_grad and p.grad is None]
