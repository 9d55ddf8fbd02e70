"""Peak memory of one training step, and what the bytes at the peak are.

The number a user needs is the *peak* a device must hold during a step (forward, backward,
optimizer update), not only the activations saved for backward: parameters, their gradients,
AdamW's moments, the temporaries of backward and the inputs are all resident at once.

- On any device, :func:`step_peak_memory` runs the step under ``torch.profiler`` with memory
  profiling and reads its memory timeline, in which PyTorch labels every allocation by what it
  is (parameter, gradient, optimizer state, activation, temporary, input, autograd detail; what
  it cannot place is "unknown"). The peak is the largest total over the timeline, and its
  breakdown the per-category bytes at that instant. This is how the peak is measured on CPU,
  where no allocator keeps a peak.
- On CUDA, the caching allocator's ``max_memory_allocated`` over the same step is recorded as
  well and is the peak reported: it is what decides whether a step fits.

Tensors alive before the step count only if the step touches them (so other models held in the
same process do not count), and memory freed and reallocated within one microsecond is merged.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch

__all__ = ["CATEGORIES", "PeakMemory", "category_timeline", "step_peak_memory"]

# Report order: model state first, then what the step creates.
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "temporaries",
              "inputs", "autograd_detail", "unknown")


@dataclass
class PeakMemory:
    """The peak of one step.

    peak_bytes: the peak (CUDA: the allocator's; otherwise the profiler timeline's).
    by_category: bytes per :data:`CATEGORIES` entry at the profiler timeline's peak; they sum
        to ``profiler_peak_bytes``.
    profiler_peak_bytes: the peak of the profiler's timeline.
    allocator_peak_bytes: CUDA only, ``torch.cuda.max_memory_allocated`` over the step.
    peak_at: when the profiler's peak happened, as a fraction of the step's duration (0: its
        start, 1: its end), to tell a forward peak from a backward or optimizer one.
    """

    peak_bytes: int
    by_category: Dict[str, int] = field(default_factory=dict)
    profiler_peak_bytes: int = 0
    allocator_peak_bytes: Optional[int] = None
    peak_at: float = float("nan")

    def to_dict(self) -> dict:
        return dict(peak_bytes=self.peak_bytes, by_category=dict(self.by_category),
                    profiler_peak_bytes=self.profiler_peak_bytes,
                    allocator_peak_bytes=self.allocator_peak_bytes, peak_at=self.peak_at)


def category_timeline(prof, device: str) -> Tuple[List[int], List[Dict[str, int]]]:
    """``(times_us, rows)``: the memory held on ``device`` after every event of a finished
    ``torch.profiler.profile(profile_memory=True, record_shapes=True, with_stack=True)``, one
    row (category -> bytes) per timestamp.

    The timeline is private PyTorch API (``torch.profiler._memory_profiler``); this is the only
    place that reads it, so a PyTorch release that changes it fails here, by name.
    """
    try:
        from torch.profiler import _memory_profiler as mp

        columns = {index + 1: _category_name(category)
                   for category, index in mp._CATEGORY_TO_INDEX.items()}
        times, sizes = mp.MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(device)
    except (ImportError, AttributeError, TypeError) as e:
        raise RuntimeError(
            f"torch {torch.__version__} changed the profiler's private memory timeline "
            "(torch.profiler._memory_profiler: MemoryProfileTimeline._coalesce_timeline, "
            f"_CATEGORY_TO_INDEX) that projects.benchmark.peak_memory reads: {e}") from e
    if sizes and len(sizes[0]) != len(columns) + 1:
        raise RuntimeError(f"torch {torch.__version__}: the memory timeline has "
                           f"{len(sizes[0])} columns, expected {len(columns) + 1}")
    rows = [{name: 0 for name in CATEGORIES} for _ in sizes]
    for row, values in zip(rows, sizes):
        for index, name in columns.items():
            row[name] += int(values[index])
    return list(times), rows


def _category_name(category) -> str:
    if category is None:
        return "unknown"
    name = category.name.lower()
    plural = {"parameter": "parameters", "gradient": "gradients", "activation": "activations",
              "temporary": "temporaries", "input": "inputs"}
    name = plural.get(name, name)
    if name not in CATEGORIES:
        raise RuntimeError(f"torch {torch.__version__}: unknown memory category {category!r}")
    return name


def step_peak_memory(step: Callable[[], object], device="cpu") -> PeakMemory:
    """Run ``step()`` once under the memory profiler and return its peak on ``device``.

    Run a warm-up step first, so that the optimizer's state exists (AdamW allocates its moments
    on the first step) and the measured step is a steady-state one.
    """
    from torch.profiler import ProfilerActivity, profile

    device = torch.device(device)
    activities = [ProfilerActivity.CPU]
    on_cuda = device.type == "cuda"
    if on_cuda:
        activities.append(ProfilerActivity.CUDA)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    with profile(activities=activities, profile_memory=True, record_shapes=True,
                 with_stack=True) as prof:
        step()
        if on_cuda:
            torch.cuda.synchronize(device)
    allocator_peak = torch.cuda.max_memory_allocated(device) if on_cuda else None
    name = f"cuda:{device.index if device.index is not None else torch.cuda.current_device()}" \
        if on_cuda else device.type
    times, rows = category_timeline(prof, name)
    if not rows:
        raise RuntimeError(f"the profiler recorded no memory on {name}: did the step run there?")
    totals = [sum(row.values()) for row in rows]
    peak = max(range(len(rows)), key=totals.__getitem__)
    span = times[-1] - times[0]
    return PeakMemory(
        peak_bytes=allocator_peak if allocator_peak is not None else totals[peak],
        by_category=dict(rows[peak]),
        profiler_peak_bytes=totals[peak],
        allocator_peak_bytes=allocator_peak,
        peak_at=(times[peak] - times[0]) / span if span > 0 else 0.0,
    )
