"""One frozen trunk, many tasks: each E3VA task's highway, norms, neck and head run on one pass
of the shared trunk.

E3VA never changes the pre-trained Swin, so every task trained from the same base is that
frozen trunk plus a delta (``model_final_delta.pth``). :class:`MultiTaskPredictor` keeps one
copy of the trunk's weights (the tasks' frozen trunk tensors are tied to the first task's) and
walks the trunk once per image with every task's highway beside it (:class:`SharedTrunkPass`);
the outputs equal each task's model run alone, bit for bit, because every task computes exactly
what it computes alone, on the same tensors.
"""
from __future__ import annotations

from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from ..modeling.backbone import TunedSwin, tuned_swins
from ..modeling.highway import E3VAHighway
from ..modeling.highway_walk import Lane, walk_highways
from ..modeling.swin_weights import trunk_architecture
from .predictor import Predictor

__all__ = ["MultiTaskPredictor", "SharedTrunkPass", "TaskMismatchError"]


class TaskMismatchError(ValueError):
    """Tasks that cannot share one trunk (another method, architecture or base)."""


class SharedTrunkPass:
    """One walk of the frozen trunk for every task: the first highway that asks for images
    walks the trunk with every registered task's highway beside it (``lanes``); the others'
    outputs wait here until their task asks with the same (normalised, padded) images. Other
    images walk the trunk again. The walk recomputes branches as the highway that starts it
    asks (``recompute_branches``, while gradients flow)."""

    def __init__(self):
        self.lanes: List[Lane] = []  # (highway, its trunk) of every task
        self.images: Optional[Tensor] = None
        self.outputs: Dict[int, Dict[str, Tensor]] = {}  # id(highway) -> its features
        self.runs = 0  # trunk passes since the last clear()

    def clear(self) -> None:
        self.images, self.outputs, self.runs = None, {}, 0

    def __call__(self, trunk: nn.Module, images: Tensor, highway: E3VAHighway
                 ) -> Dict[str, Tensor]:
        cached = self.images
        if (id(highway) not in self.outputs or cached is None or cached.shape != images.shape
                or not torch.equal(cached, images)):
            lanes = self.lanes if any(h is highway for h, _ in self.lanes) else [(highway, trunk)]
            found = walk_highways(trunk, images, lanes, highway.branch_recompute)
            self.images, self.outputs = images, {id(h): out for (h, _), out in zip(lanes, found)}
            self.runs += 1
        return self.outputs.pop(id(highway))


def _tuned_swin(model: nn.Module, task: str) -> TunedSwin:
    found = tuned_swins(model)
    if len(found) != 1 or not isinstance(found[0].highway, E3VAHighway):
        raise TaskMismatchError(
            f"task {task!r}: only models with one E3VA-tuned Swin can share a frozen trunk "
            "(other methods change the trunk's computation)")
    return found[0]


def _frozen_trunk_tensors(trunk: nn.Module) -> Dict[str, Tensor]:
    return {n: p for n, p in trunk.named_parameters() if not p.requires_grad}


class MultiTaskPredictor:
    """``{task: (config, delta)}`` trained from the same base -> ``{task: outputs}`` per image.

    Args:
        tasks: task name -> (LazyConfig, delta path or None). Each config's model starts from
            its ``train.init_checkpoint`` / backbone ``weights`` (the base), then its delta.
        base: a checkpoint loaded into every task before its delta (overrides the configs').
    """

    def __init__(self, tasks: Mapping[str, Tuple[object, Optional[str]]],
                 base: Optional[str] = None):
        if not tasks:
            raise ValueError("no tasks given")
        self.predictors: OrderedDict[str, Predictor] = OrderedDict(
            # each task's delta is checked below, against the shared base
            (name, Predictor(cfg, checkpoint=base, delta=delta or "", allow_untrained=True))
            for name, (cfg, delta) in tasks.items())
        self.trunk_pass = SharedTrunkPass()
        swins = {name: _tuned_swin(p.model, name) for name, p in self.predictors.items()}
        first_name, first = next(iter(swins.items()))
        shared = _frozen_trunk_tensors(first.trunk)
        for name, swin in swins.items():
            self._check_same_trunk(first_name, first, name, swin, shared)
            self._tie(swin.trunk, shared)
            self.trunk_pass.lanes.append((swin.highway, swin.trunk))
            swin.highway.trunk_pass = self.trunk_pass

    @staticmethod
    def _check_same_trunk(first_name, first, name, swin, shared) -> None:
        ours, theirs = trunk_architecture(first.trunk), trunk_architecture(swin.trunk)
        if ours != theirs or first.trunk.num_stages != swin.trunk.num_stages:
            raise TaskMismatchError(f"task {name!r} has another trunk ({theirs}) than "
                                    f"{first_name!r} ({ours})")
        depth, first_depth = swin.highway.feedback_depth, first.highway.feedback_depth
        if depth != first_depth:
            raise TaskMismatchError(
                f"task {name!r} has feedback_depth={depth}, {first_name!r} {first_depth}: the "
                "trunk stops where the feedback starts, so tasks share its walk only at one "
                f"feedback_depth; predict {name!r} with its own Predictor, or train the tasks "
                "at the same depth")
        frozen = _frozen_trunk_tensors(swin.trunk)
        differ = sorted(k for k in shared if k not in frozen or not torch.equal(frozen[k],
                                                                                shared[k]))
        if differ or set(frozen) != set(shared):
            raise TaskMismatchError(
                f"task {name!r} was built on another base than {first_name!r}: frozen trunk "
                f"tensors differ ({(differ or sorted(set(frozen) ^ set(shared)))[:3]}...); "
                "load the same base checkpoint for every task")

    @staticmethod
    def _tie(trunk: nn.Module, shared: Dict[str, Tensor]) -> None:
        """Point the trunk's frozen parameters at the shared tensors (one copy in memory)."""
        for name, tensor in shared.items():
            module_name, _, attr = name.rpartition(".")
            module = trunk.get_submodule(module_name) if module_name else trunk
            if getattr(module, attr) is not tensor:
                setattr(module, attr, tensor)

    def __call__(self, image: np.ndarray, image_format: str = "BGR") -> Dict[str, dict]:
        """Every task's detectron2 outputs for one image; the trunk runs once."""
        self.trunk_pass.clear()
        try:
            return OrderedDict((name, predictor(image, image_format))
                               for name, predictor in self.predictors.items())
        finally:
            self.trunk_pass.images, self.trunk_pass.outputs = None, {}  # free the activations
