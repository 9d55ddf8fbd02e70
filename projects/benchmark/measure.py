"""Measuring what training costs: activations kept for backward, step time, CUDA peak.

Used by the benchmarks (projects/benchmark/) and their tests. There is one training step, the
trainer's own :class:`~e3va_d2.engine.step.TrainStep`; :class:`MeasuredStep` runs it on a fixed
batch and times and measures it (it is no step of its own). Saved activations are
counted with ``torch.autograd.graph.saved_tensors_hooks``: every tensor autograd keeps for the
backward pass, each storage counted once, parameters and buffers excluded (they are model state,
not activations).
"""
from __future__ import annotations

import ctypes
import gc
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from detectron2.structures import BitMasks, Boxes, ImageList, Instances
from detectron2.utils.events import EventStorage
from torch import nn

from e3va_d2.engine.step import TrainStep

__all__ = [
    "SAVED_KINDS",
    "saved_kind",
    "saved_bytes_by_module",
    "saved_activation_bytes",
    "synthetic_detection_batch",
    "MeasuredStep",
    "median",
    "release_freed_memory",
]


def _state_storages(model: nn.Module) -> set:
    tensors = list(model.parameters()) + list(model.buffers())
    return {t.untyped_storage().data_ptr() for t in tensors}


# Where saved activations come from, for the benchmark's breakdown: the first fragment found in
# the name of the innermost module that saved a tensor names its kind (LoRA's and the
# adapter baselines' modules live inside trunk blocks, so they count as trunk blocks).
SAVED_KINDS = (
    ("_adapter", "highway adapters' inputs"),
    ("highway.", "highway, other"),
    ("downsample", "patch merging"),
    ("trunk.norm", "output norms"),
    ("patch_embed", "patch embedding"),
    ("trunk.", "trunk blocks"),
    ("backbone", "neck (FPN)"),
    ("proposal_generator", "RPN"),
    ("roi_heads", "ROI heads"),
    ("sem_seg_head", "segmentation head"),
    ("head", "heads"),
)


def saved_kind(module_name: str) -> str:
    """The :data:`SAVED_KINDS` label of a module name ("other" when none matches)."""
    return next((kind for fragment, kind in SAVED_KINDS if fragment in module_name), "other")


def saved_bytes_by_module(forward: Callable[[], object], model: nn.Module) -> Dict[str, int]:
    """Bytes autograd keeps for backward during ``forward()``, each storage once, attributed to
    the innermost module of ``model`` that was running when autograd saved it (``""``: the
    model itself, or code outside any module)."""
    state = _state_storages(model)
    names = {module: name for name, module in model.named_modules()}
    running: List[str] = [""]
    seen: set = set()
    saved: Dict[str, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in state and ptr not in seen:
            seen.add(ptr)
            saved[running[-1]] = saved.get(running[-1], 0) + storage.nbytes()
        # Detached: a saved output would otherwise point back at its own grad_fn, a reference
        # cycle that keeps the whole graph alive until the garbage collector happens to run.
        return t.detach()

    def enter(module, args) -> None:
        running.append(names.get(module, running[-1]))

    def leave(module, args, output) -> None:
        running.pop()

    handles = [
        torch.nn.modules.module.register_module_forward_pre_hook(enter),
        torch.nn.modules.module.register_module_forward_hook(leave),
    ]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = forward()
        del out
    finally:
        for handle in handles:
            handle.remove()
    return saved


def saved_activation_bytes(forward: Callable[[], object], model: nn.Module) -> int:
    """Bytes autograd keeps for backward during ``forward()`` (each storage once)."""
    return sum(saved_bytes_by_module(forward, model).values())


def synthetic_detection_batch(
    num_images: int, size: int, num_classes: int, seed: int = 0, objects: int = 6
) -> List[dict]:
    """Images with random boxes, masks, classes and a per-pixel class map, in detectron2's model
    input format (detectors ignore ``sem_seg``, semantic segmentors ignore ``instances``)."""
    rng = np.random.default_rng(seed)
    batch = []
    for _ in range(num_images):
        image = torch.from_numpy(rng.uniform(0, 255, (3, size, size)).astype(np.float32))
        xy = rng.uniform(0, size * 0.7, (objects, 2))
        wh = rng.uniform(size * 0.1, size * 0.3, (objects, 2))
        boxes = np.concatenate([xy, np.minimum(xy + wh, size - 1)], axis=1).astype(np.float32)
        masks = torch.zeros(objects, size, size, dtype=torch.bool)
        for k, (x0, y0, x1, y1) in enumerate(boxes.astype(int)):
            masks[k, y0 : y1 + 1, x0 : x1 + 1] = True
        instances = Instances((size, size))
        instances.gt_boxes = Boxes(torch.from_numpy(boxes))
        instances.gt_classes = torch.from_numpy(rng.integers(0, num_classes, objects))
        instances.gt_masks = BitMasks(masks)
        sem_seg = torch.zeros(size, size, dtype=torch.long)
        for k in range(objects):
            sem_seg[masks[k]] = int(instances.gt_classes[k])
        batch.append({"image": image, "height": size, "width": size, "instances": instances,
                      "sem_seg": sem_seg})
    return batch


class MeasuredStep:
    """One optimizer step of a detectron2 model on a fixed batch, timed and measured.

    The cost of a detector step depends on the proposals its heads sample, which depend on the
    features. To compare tuning methods and not their random features, callers start every
    method from the same function (adapters zero-initialised) and step with ``lr=0``: AdamW
    still does all its arithmetic, but the weights, hence the proposals, stay identical from
    step to step and method to method. Randomness is re-seeded before every step.

    ``backbone_only``: the loss is the mean square of the backbone's (FPN's) outputs, which
    measures the tuned backbone alone, without the heads.

    ``amp_dtype``: run the forward under the trainer's autocast (``train.amp``); float16
    steps through a grad scaler: the step is the trainer's :class:`TrainStep`, on a loader
    that repeats ``batch``.

    With one image, BatchNorm layers use their running statistics: batch statistics of a single
    value per channel (UPerNet's 1x1 pyramid pooling, RetinaNet's smallest levels) are refused
    by PyTorch. Same for every method; the compute is that of a training-mode BN.
    """

    def __init__(self, model: nn.Module, batch: Sequence[dict], device: torch.device, lr=0.0,
                 backbone_only: bool = False, optimizer: Optional[torch.optim.Optimizer] = None,
                 amp_dtype: Optional[torch.dtype] = None):
        self.model = model
        self.batch = list(batch)  # replaced when the model moves (the loader reads it anew)
        self.device = torch.device(device)
        self.backbone_only = backbone_only
        params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = optimizer or torch.optim.AdamW(params, lr=lr)
        # A benchmark measures methods whose heads alone may train (no gradient check).
        self.step = TrainStep(model, iter(lambda: self.batch, None), self.optimizer,
                              device_type=self.device.type, amp_dtype=amp_dtype,
                              check_gradients=False,
                              losses=_backbone_losses if backbone_only else None)
        self.times: List[float] = []

    def _loss(self) -> torch.Tensor:
        """The step's loss (forward only), under the step's autocast."""
        with self.step.precision.autocast():
            return sum(self.step.compute_losses(self.batch).values())

    def _sync(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _train_mode(self) -> None:
        """Several steps share a model, so each sets the mode its batch needs."""
        self.model.train()
        if len(self.batch) == 1:
            for module in self.model.modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def run(self, seed: int = 0, record: bool = True) -> float:
        self._train_mode()
        torch.manual_seed(seed)
        with EventStorage():
            self._sync()
            start = time.perf_counter()
            self.optimizer.zero_grad(set_to_none=True)
            self.step.run_step()
            self._sync()
            elapsed = time.perf_counter() - start
            self.optimizer.zero_grad(set_to_none=True)  # gradients need not outlive the step
        if record:
            self.times.append(elapsed)
        return elapsed

    def saved_bytes(self, seed: int = 0) -> int:
        return sum(self.saved_bytes_by_module(seed).values())

    def saved_bytes_by_module(self, seed: int = 0) -> Dict[str, int]:
        """Saved activations of one step's forward, per innermost module (``model``'s names)."""
        self._train_mode()
        torch.manual_seed(seed)
        with EventStorage():
            return saved_bytes_by_module(self._loss, self.model)

    def cuda_peak_bytes(self, seed: int = 0) -> int:
        """Peak CUDA memory of one full step (weights, gradients, optimizer state and
        activations of this model; the caller keeps other models off the GPU)."""
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        self.run(seed, record=False)
        return torch.cuda.max_memory_allocated(self.device)


def _backbone_losses(model: nn.Module, batch: Sequence[dict]) -> Dict[str, torch.Tensor]:
    """The mean square of the backbone's (FPN's) outputs: the tuned backbone's cost alone."""
    images = [(d["image"].to(model.pixel_mean.device) - model.pixel_mean) / model.pixel_std
              for d in batch]  # normalised and padded, as the meta-architecture does
    padded = ImageList.from_tensors(images, model.backbone.size_divisibility).tensor
    features = model.backbone(padded)
    return {"backbone_loss": sum(f.float().square().mean() for f in features.values())}


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def release_freed_memory() -> None:
    """Hand memory freed by torch back to the OS (glibc keeps freed heap pages otherwise), so a
    process that builds many large models in turn does not run out."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
