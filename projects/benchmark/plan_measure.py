"""The planner's measurements: every method's peak at every fit and check point (``measure``),
one step's peak from the profiler's allocation events, and the points measured so far, kept on
disk so that a stopped run resumes where it stopped.

Why not ``peak_memory.step_peak_memory``: its memory timeline labels every byte by
category, an analysis of the whole op graph that takes minutes per step on a Swin-L detector.
The planner needs the peak's total only: the bytes the step's tensors hold before it starts
(parameters, buffers, AdamW's moments, the batch) plus the largest running sum of the
allocations and frees the profiler records during the step (``profile_memory=True``, nothing
else recorded, nothing parsed). Both counts see every allocation the CPU allocator makes, so
the two agree (``tests/test_memory.py`` checks it); the categories stay the cost benchmark's.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch

from e3va_d2.checkpoint.files import atomic_write
from e3va_d2.config import load_config
from projects.tables import current_commit

from .bench import Bench, method_names, num_classes, pick_device
from .measure import release_freed_memory, synthetic_detection_batch
from .plan_checks import ints
from .plan_fit import padded_pixels

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


def measure_peak(step, device: torch.device) -> Dict[str, int]:
    """One step's peak (``peak_bytes``): the allocator's on CUDA; on CPU from the profiler's
    allocation events, with the forward-backward and update phases' peaks."""
    if device.type == "cuda":
        return dict(peak_bytes=step.cuda_peak_bytes())
    return cpu_step_peak(step)


@contextlib.contextmanager
def quiet_model_builds():
    """Each training step logs its precision once (ten steps per model: ten lines); the
    planner says it once itself."""
    step_logger = logging.getLogger("e3va_d2.engine.step")
    level = step_logger.level
    step_logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        step_logger.setLevel(level)


def measurement_points(args) -> Dict[Tuple[int, int], str]:
    """(side, batch) -> "fit" or "check", in the order they are measured (cheapest first)."""
    roles = {(s, b): "fit" for s in ints(args.fit_sizes, "--fit-sizes")
             for b in ints(args.fit_batches, "--fit-batches")}
    for point in ((s, b) for s in ints(args.check_sizes, "--check-sizes")
                  for b in ints(args.check_batches, "--check-batches")):
        roles.setdefault(point, "check")
    return dict(sorted(roles.items(), key=lambda kv: (kv[0][0] ** 2 * kv[0][1], kv[0][1])))


def measure(args) -> dict:
    """Every method's peak at every fit and check point: ``{"points": {method: [point]},
    "size_divisibility": int, "device": str, "trainable": {method: parameters},
    "key": the job (config, overrides, device), "measured_at": [commit]}``; a point is a dict
    of size, batch, pixels, peak_bytes, role.

    Each point is saved to ``--output``/measured.json as soon as it is measured; a run started
    again with the same config resumes there (``--fresh`` starts over), and builds only the
    methods that still have points to measure.
    """
    device = pick_device(args.device)
    roles = measurement_points(args)
    methods = method_names(args.methods)
    state = MeasuredPoints(args.output, dict(config_file=args.config_file, opts=list(args.opts),
                                             device=device.type), fresh=args.fresh)
    todo = {m: [sb for sb in roles if not state.done(m, *sb)] for m in methods}
    progress = Progress(sum(len(roles) for _ in methods),
                        done=sum(len(roles) - len(t) for t in todo.values()))
    if progress.done:
        logger.info("Resuming from %s: %d of %d points measured", state.path, progress.done,
                    progress.total)
    building = [m for m in methods if todo[m] or m not in state.trainable]
    if building:
        cfg = load_config(args.config_file, args.opts)
        classes = num_classes(cfg)
        batches = {f"{s}x{b}": synthetic_detection_batch(b, s, classes, seed=0) for s, b in roles}
        logger.info("Building %d model(s): %s (fp32, AMP off)", len(building),
                    ", ".join(building))
        with quiet_model_builds():
            bench = Bench(cfg, building, device, batches, kinds=("model",))
        first = next(iter(roles))
        some_step = next(iter(bench.steps.values()))[f"model{first[0]}x{first[1]}"]
        state.size_divisibility = some_step.model.backbone.size_divisibility
    progress.restart()  # the pace of measuring, not of building
    for method in building:
        state.trainable[method] = bench.results[method]["trainable_total"]
        if not todo[method]:
            continue
        bench.on_device(method, device)
        steps = bench.steps[method]
        if not prefill_optimizer_state(steps[f"model{first[0]}x{first[1]}"].optimizer):
            steps[f"model{first[0]}x{first[1]}"].run(seed=0, record=False)  # AdamW's state
        for size, batch in todo[method]:
            peaks = measure_peak(steps[f"model{size}x{batch}"], device)
            state.add(method, dict(
                size=size, batch=batch, role=roles[size, batch], **peaks,
                pixels=padded_pixels(size, size, state.size_divisibility) * batch))
            progress.step(f"{method} at {size}x{size} x {batch}: peak "
                          f"{peaks['peak_bytes'] / 2**20:.1f} MiB")
        bench.on_device(method, torch.device("cpu"))
        bench.steps.pop(method)  # its model is measured: let it go
        release_freed_memory()
    state.save()
    order = list(roles)  # this run's points only (the state may hold another run's too)
    ordered = {m: sorted((p for p in state.points[m] if (p["size"], p["batch"]) in roles),
                         key=lambda p: order.index((p["size"], p["batch"]))) for m in methods}
    return dict(points=ordered, size_divisibility=state.size_divisibility, device=device.type,
                trainable={m: state.trainable[m] for m in methods},
                key=state.key, measured_at=state.measured_at)
