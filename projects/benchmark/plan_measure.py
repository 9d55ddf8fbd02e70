"""The planner's measurements: one step's peak from the profiler's allocation events, and the
points measured so far, kept on disk so that a stopped run resumes where it stopped.

Why not ``peak_memory.step_peak_memory``: its memory timeline labels every byte by
category, an analysis of the whole op graph that takes minutes per step on a Swin-L detector.
The planner needs the peak's total only: the bytes the step's tensors hold before it starts
(parameters, buffers, AdamW's moments, the batch) plus the largest running sum of the
allocations and frees the profiler records during the step (``profile_memory=True``, nothing
else recorded, nothing parsed). Both counts see every allocation the CPU allocator makes, so
the two agree (``tests/test_memory.py`` checks it); the categories stay the cost benchmark's.
"""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Callable, Dict, Iterable, List, Optional

import torch

from e3va_d2.checkpoint.files import atomic_write
from projects.tables import current_commit

logger = logging.getLogger("e3va_d2.benchmark")

STATE_FILE = "measured.json"  # in --output: the points measured so far


def _storages(tensors: Iterable[torch.Tensor]) -> Dict[int, int]:
    """data_ptr -> bytes of each distinct storage of ``tensors`` (shared ones once)."""
    return {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes() for t in tensors
            if t.device.type == "cpu" and t.untyped_storage().nbytes()}


def _batch_tensors(value) -> List[torch.Tensor]:
    """Every tensor of a model input (dicts, lists, Instances and their Boxes / BitMasks)."""
    if torch.is_tensor(value):
        return [value]
    if isinstance(value, dict):
        return [t for v in value.values() for t in _batch_tensors(v)]
    if isinstance(value, (list, tuple)):
        return [t for v in value for t in _batch_tensors(v)]
    fields = getattr(value, "get_fields", None)  # detectron2 Instances
    if fields is not None:
        return _batch_tensors(list(fields().values()))
    inner = getattr(value, "tensor", None)  # Boxes, BitMasks
    return [inner] if torch.is_tensor(inner) else []


def resident_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer, batch) -> int:
    """What a step's tensors hold before it starts: parameters, buffers, optimizer state and
    the batch, each storage once. Gradients are not among them: the step starts without."""
    tensors = [*model.parameters(), *model.buffers(), *_batch_tensors(batch)]
    tensors += [v for state in optimizer.state.values() for v in state.values()
                if torch.is_tensor(v)]
    return sum(_storages(tensors).values())


def allocation_peaks(step: Callable[[], object]) -> Dict[str, int]:
    """The largest running sum of CPU allocations minus frees during ``step()`` (bytes):
    ``peak`` over the whole step, ``forward_backward`` before the optimizer's update starts
    and ``update`` from then on (the update's own annotation, ``Optimizer.step#...``)."""
    from torch._C._autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    events = prof.profiler.kineto_results.events()
    update_starts = [e.start_ns() for e in events if e.name().startswith("Optimizer.step#")]
    update_start = min(update_starts, default=None)
    memory = sorted((e for e in events
                     if e.name() == "[memory]" and e.device_type() == DeviceType.CPU),
                    key=lambda e: e.start_ns())
    held, peaks = 0, dict(peak=0, forward_backward=0, update=0)
    for event in memory:
        held += event.nbytes()
        phase = "update" if update_start is not None and event.start_ns() >= update_start \
            else "forward_backward"
        peaks[phase] = max(peaks[phase], held)
        peaks["peak"] = max(peaks["peak"], held)
    return peaks


def cpu_step_peak(training_step) -> Dict[str, int]:
    """Peak bytes of one step of a :class:`~projects.benchmark.measure.MeasuredStep` on CPU: the
    step's (``peak_bytes``), its forward and backward's (``forward_backward_bytes``: grows with
    the image) and its optimizer update's (``update_bytes``: weights, gradients, moments and the
    update's temporaries, whatever the image). A step's peak is the larger of the last two."""
    base = resident_bytes(training_step.model, training_step.optimizer, training_step.batch)
    peaks = allocation_peaks(lambda: training_step.run(seed=0, record=False))
    return dict(peak_bytes=base + peaks["peak"],
                forward_backward_bytes=base + peaks["forward_backward"],
                update_bytes=base + peaks["update"])


def prefill_optimizer_state(optimizer: torch.optim.Optimizer) -> bool:
    """Give Adam / AdamW the state their first step would allocate (the moments, zeros, and
    the step counter), so that the first measured step is a steady-state one without a
    warm-up step: one step fewer per method. False (nothing done) for other optimizers."""
    if type(optimizer) not in (torch.optim.Adam, torch.optim.AdamW) or any(
            g.get("amsgrad") or g.get("capturable") or g.get("fused")
            for g in optimizer.param_groups):
        return False
    for group in optimizer.param_groups:
        for p in group["params"]:
            if p.requires_grad and not optimizer.state[p]:
                optimizer.state[p] = dict(step=torch.tensor(0.0),
                                          exp_avg=torch.zeros_like(p),
                                          exp_avg_sq=torch.zeros_like(p))
    return True


class MeasuredPoints:
    """The points measured so far for one planning job (``key``: config, overrides, device),
    saved to ``folder/measured.json`` after every point, so that a stopped run resumes.

    A state file of another job is refused, naming both, rather than mixed in. ``measured_at``
    lists the commits its points were measured at (a run resumed after a commit has two), so
    that a record made from it says which code measured it.
    """

    def __init__(self, folder: str, key: dict, fresh: bool = False):
        os.makedirs(folder, exist_ok=True)
        self.path = os.path.join(folder, STATE_FILE)
        self.key = key
        self.points: Dict[str, List[dict]] = {}
        self.size_divisibility: Optional[int] = None
        self.trainable: Dict[str, int] = {}  # method -> trainable parameters (DDP's buckets)
        self.measured_at: List[str] = []
        if os.path.exists(self.path) and not fresh:
            with open(self.path) as f:
                saved = json.load(f)
            if saved.get("key") != key:
                raise SystemExit(
                    f"{self.path} holds measurements of another job ({saved.get('key')}), not "
                    f"of this one ({key}): pass another --output, or --fresh to measure anew")
            self.points = saved["points"]
            self.size_divisibility = saved.get("size_divisibility")
            self.trainable = saved.get("trainable", {})
            # A state from before commits were kept: its points' commit is not known.
            self.measured_at = saved.get("measured_at", ["unknown"] if self.points else [])

    def done(self, method: str, size: int, batch: int) -> Optional[dict]:
        return next((p for p in self.points.get(method, [])
                     if (p["size"], p["batch"]) == (size, batch)), None)

    def add(self, method: str, point: dict) -> None:
        self.points.setdefault(method, []).append(point)
        commit = current_commit()
        if commit not in self.measured_at:
            self.measured_at.append(commit)
        self.save()

    def save(self) -> None:
        text = json.dumps(dict(key=self.key, points=self.points, trainable=self.trainable,
                               size_divisibility=self.size_divisibility,
                               measured_at=self.measured_at), indent=1)
        atomic_write(self.path, lambda f: f.write(text.encode()))


class Progress:
    """``[k/n]`` lines with the time spent and a rough time left (from this run's pace)."""

    def __init__(self, total: int, done: int = 0):
        self.total, self.done, self.start, self.new = total, done, time.monotonic(), 0

    def restart(self) -> None:
        self.start, self.new = time.monotonic(), 0

    def step(self, message: str) -> None:
        self.done += 1
        self.new += 1
        spent = time.monotonic() - self.start
        left = spent / self.new * (self.total - self.done)
        logger.info("[%d/%d] %s (%.0f s so far, about %.0f s left)", self.done, self.total,
                    message, spent, left)
