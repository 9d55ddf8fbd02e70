#!/usr/bin/env python
"""Will it fit? Predict a config's peak training memory per tuning method over image sizes and
batches, from a few small measured steps, and the largest batch that fits on a given GPU.

Each method's peak is measured (as ``tuning_cost.py`` does: after a warm-up step, profiler
timeline on CPU, allocator peak on CUDA) at a few small sizes and batches, and fitted as

    peak = per_pixel * pixels * batch + per_image * batch + constant

(pixels after padding to the model's size divisibility). The backbone and neck cost per pixel,
a detector's ROI heads per image (a fixed number of sampled proposals), and weights, gradients
and optimizer state are the constant; the fit is ``sweep.py``'s with a constant term.
``--check-sizes`` measures further sizes, not used in the fit, and reports the prediction's error
there.

    python -m projects.benchmark.plan --config-file configs/COCO/cascade_mask_rcnn_swin_l_e3va.py \\
        --gpu-memory 11GiB --methods full,fixed,lora,e3va

Writes plan.md and plan.json to --output; ``--from-json`` plans again from an earlier plan.json
(another GPU, other sizes) without measuring.

What the prediction is: the peak of the tensors a step allocates (CUDA's ``max_memory_allocated``),
measured where the tool runs. A GPU also holds the CUDA context and the caching allocator's slack;
``--reserve`` sets how much of the card they take (default 1 GiB). Measured on CPU, the
prediction stands for a GPU's up to the kernels' workspaces, which differ.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
from dataclasses import asdict, dataclass
from typing import Dict, List, Sequence, Tuple

import torch

from e3va_d2.config import load_config
from projects.tables import command_line, publish, table_head, table_row

from .measure import release_freed_memory, synthetic_detection_batch
from .peak_memory import step_peak_memory
from .report import GPUS
from .sweep import per_pixel_image_and_constant
from .tuning_cost import Bench, method_names, num_classes

logger = logging.getLogger("e3va_d2.benchmark")

GIB = 2**30
_UNITS = {"": None, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


def parse_bytes(text: str) -> int:
    """``"11GB"`` -> 11e9 bytes, ``"11GiB"`` -> 11 * 2**30 (GB, MB are powers of 10, GiB, MiB
    of 2; case ignored). A unit is required: "11" could mean either."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or _UNITS[unit] is None:
        raise ValueError(f"Cannot read {text!r} as an amount of memory; write e.g. 11GB (10^9 "
                         "bytes), 11GiB (2^30 bytes) or 11264MiB")
    return int(round(float(match.group(1)) * _UNITS[unit]))


def parse_size(text: str) -> Tuple[int, int]:
    """``"1333x800"`` -> (1333, 800) (width x height); ``"512"`` -> (512, 512)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"Cannot read {text!r} as an image size; write WIDTHxHEIGHT or SIDE")
    width, height = int(parts[0]), int(parts[-1])
    return width, height


def padded_pixels(width: int, height: int, divisibility: int) -> int:
    """Pixels of the padded image the backbone sees (detectron2 pads to the divisibility)."""
    step = max(divisibility, 1)
    return math.ceil(width / step) * step * math.ceil(height / step) * step


@dataclass
class PeakModel:
    """``peak = per_pixel * pixels * batch + per_image * batch + constant`` (bytes)."""

    per_pixel: float
    per_image: float
    constant: float

    @classmethod
    def fit(cls, points: Sequence[dict], key: str = "peak_bytes") -> PeakModel:
        """Least squares over ``points``, dicts with ``pixels`` (padded pixels of the whole
        batch, as ``sweep.py`` counts them), ``batch`` and ``key``; relative errors."""
        sizes, batches = {p["pixels"] / p["batch"] for p in points}, {p["batch"] for p in points}
        if len(sizes) < 2 or len(batches) < 2:
            raise ValueError("the fit needs at least two image sizes and two batch sizes")
        return cls(*per_pixel_image_and_constant(list(points), key))

    def predict(self, pixels: int, batch: int) -> float:
        """Peak bytes for ``batch`` images of ``pixels`` (padded) pixels each."""
        return self.per_pixel * pixels * batch + self.per_image * batch + self.constant

    def largest_batch(self, pixels: int, budget: float, max_batch: int = 64) -> int:
        """The largest batch (<= ``max_batch``) whose predicted peak is within ``budget`` bytes;
        0 when not even one image fits."""
        per_batch = self.per_pixel * pixels + self.per_image
        if per_batch <= 0:
            return max_batch if self.constant <= budget else 0
        return int(max(0, min(max_batch, math.floor((budget - self.constant) / per_batch))))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/COCO/cascade_mask_rcnn_swin_l_e3va.py")
    parser.add_argument("--methods", default="full,fixed,e3va",
                        help="as tuning_cost.py's --methods")
    parser.add_argument("--gpu-memory", default="11GiB",
                        help="the card's memory, e.g. 11GiB (a GTX 1080Ti), 16GB, 24GiB")
    parser.add_argument("--reserve", default="1GiB",
                        help="what the CUDA context and the allocator's slack take of the card")
    parser.add_argument("--sizes", default="1333x800,1024x1024,800x800,512x512",
                        help="WIDTHxHEIGHT (or SIDE) sizes to plan for")
    parser.add_argument("--max-batch", type=int, default=64)
    # 224 and 448 leave no window padding in a window-7 Swin (224 / 32 = 7).
    parser.add_argument("--fit-sizes", default="224,288,352",
                        help="square sides measured for the fit")
    parser.add_argument("--fit-batches", default="1,2", help="batches measured for the fit")
    parser.add_argument("--check-sizes", default="",
                        help="square sides measured to check the prediction (not fitted)")
    parser.add_argument("--check-batches", default="1,2", help="batches of the check sizes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output", default="output/plan", help="folder for the results")
    parser.add_argument("--from-json", default="",
                        help="plan from this plan.json, measuring nothing")
    parser.add_argument("--record", default="",
                        help="also write the plan as this docs table's record (projects/tables.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    try:
        method_names(args.methods)
    except ValueError as e:
        parser.error(f"--methods: {e}")
    return args


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def measure_peak(step, device: torch.device) -> int:
    """One step's peak: the allocator's on CUDA (cheap), the profiler timeline's otherwise."""
    if device.type == "cuda":
        return step.cuda_peak_bytes()
    return step_peak_memory(lambda: step.run(seed=0, record=False), device).peak_bytes


def measure(args) -> dict:
    """Every method's peak at every fit and check point: ``{"points": {method: [point]},
    "size_divisibility": int}``; a point is a dict of size, batch, pixels, peak_bytes, role."""
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    cfg = load_config(args.config_file, args.opts)
    classes = num_classes(cfg)
    roles = {(s, b): "fit" for s in _ints(args.fit_sizes) for b in _ints(args.fit_batches)}
    for point in ((s, b) for s in _ints(args.check_sizes) for b in _ints(args.check_batches)):
        roles.setdefault(point, "check")
    order = sorted(roles, key=lambda sb: (sb[0] ** 2 * sb[1], sb[1]))
    batches = {f"{s}x{b}": synthetic_detection_batch(b, s, classes, seed=0) for s, b in order}
    bench = Bench(cfg, method_names(args.methods), device, batches, kinds=("model",))
    divisibility = next(iter(bench.steps.values()))[f"model{order[0][0]}x{order[0][1]}"].model \
        .backbone.size_divisibility
    points: Dict[str, List[dict]] = {m: [] for m in bench.methods}
    for method in bench.methods:  # one model on the device at a time
        bench.on_device(method, device)
        steps = bench.steps[method]
        steps[f"model{order[0][0]}x{order[0][1]}"].run(seed=0, record=False)  # AdamW's state
        for size, batch in order:
            peak = measure_peak(steps[f"model{size}x{batch}"], device)
            points[method].append(dict(size=size, batch=batch, role=roles[size, batch],
                                       pixels=padded_pixels(size, size, divisibility) * batch,
                                       peak_bytes=peak))
            logger.info("%s at %dx%d x %d: peak %.1f MiB", method, size, size, batch, peak / 2**20)
        bench.on_device(method, torch.device("cpu"))
        release_freed_memory()
    return dict(points=points, size_divisibility=divisibility, device=device.type)


def fits(points: Dict[str, List[dict]]) -> Dict[str, PeakModel]:
    return {m: PeakModel.fit([p for p in pts if p["role"] == "fit"]) for m, pts in points.items()}


def check_table(points: Dict[str, List[dict]], models: Dict[str, PeakModel]) -> Tuple[str, float]:
    """Measured against predicted peaks at the check points; and the largest |error|."""
    lines = table_head(["method", "size x batch", "measured", "predicted", "error"])
    worst = 0.0
    for method, pts in points.items():
        for p in pts:
            if p["role"] != "check":
                continue
            predicted = models[method].predict(p["pixels"] // p["batch"], p["batch"])
            error = predicted / p["peak_bytes"] - 1
            worst = max(worst, abs(error))
            lines.append(table_row([
                method, f"{p['size']}x{p['size']} x {p['batch']}",
                f"{p['peak_bytes'] / GIB:.3f} GiB", f"{predicted / GIB:.3f} GiB",
                f"{100 * error:+.1f}%"]))
    return ("\n".join(lines) if len(lines) > 2 else ""), worst


def plan_table(models: Dict[str, PeakModel], sizes: List[Tuple[int, int]], divisibility: int,
               budget: float, max_batch: int) -> str:
    """Per method and size: predicted peak at batch 1 and 2, and the largest batch that fits."""
    header = ["method", "size", "peak, batch 1", "peak, batch 2", "largest batch that fits"]
    lines = table_head(header)
    for method, model in models.items():
        for width, height in sizes:
            pixels = padded_pixels(width, height, divisibility)
            best = model.largest_batch(pixels, budget, max_batch)
            lines.append(
                f"| {method} | {width}x{height} | {model.predict(pixels, 1) / GIB:.2f} GiB | "
                f"{model.predict(pixels, 2) / GIB:.2f} GiB | "
                f"{'none' if best == 0 else (str(best) + ('+' if best == max_batch else ''))} |")
    return "\n".join(lines)


def gpu_table(models: Dict[str, PeakModel], size: Tuple[int, int], divisibility: int,
              reserve: float) -> str:
    """The paper's Table 4 at ``size``: does batch 1 / 2 fit on each of its GPUs?"""
    header = ["method", "batch"] + [f"{name} {gb}GB" for name, gb in GPUS]
    lines = table_head(header)
    pixels = padded_pixels(*size, divisibility)
    for method, model in models.items():
        for batch in (1, 2):
            need = model.predict(pixels, batch) + reserve
            lines.append(table_row([method, str(batch), *(
                "yes" if need <= gb * GIB else "no" for _, gb in GPUS)]))
    return "\n".join(lines)


def verdict(models: Dict[str, PeakModel], sizes: List[Tuple[int, int]], divisibility: int,
            budget: float, gpu: str, max_batch: int) -> str:
    """One sentence per size: which methods train there on the card, with which batch."""
    sentences = []
    for width, height in sizes:
        pixels = padded_pixels(width, height, divisibility)
        best = {m: model.largest_batch(pixels, budget, max_batch) for m, model in models.items()}
        fit = [f"{m} (batch <= {b})" for m, b in best.items() if b]
        out = [m for m, b in best.items() if not b]
        sentences.append(f"At {width}x{height} on {gpu}: " + (
            "trains " + ", ".join(fit) if fit else "no method fits") + (
            "; does not fit even one image: " + ", ".join(out) if out else "") + ".")
    return "\n".join(sentences)


def card_and_sizes(gpu_memory: str, reserve: str, sizes: str):
    """(capacity bytes, reserved bytes, [(width, height)]) from the planning arguments."""
    return (parse_bytes(gpu_memory), parse_bytes(reserve),
            [parse_size(s) for s in sizes.split(",") if s.strip()])


def render(data: dict) -> str:
    """The plan from its record: the planning arguments (``config_file``, ``gpu_memory``,
    ``reserve``, ``sizes``, ``max_batch``) and the ``measured`` points."""
    capacity, reserve, sizes = card_and_sizes(data["gpu_memory"], data["reserve"], data["sizes"])
    measured, max_batch = data["measured"], data["max_batch"]
    models = fits(measured["points"])
    divisibility = measured["size_divisibility"]
    budget = capacity - reserve
    gpu = f"{data['gpu_memory']} ({capacity / GIB:.2f} GiB, {reserve / GIB:.2f} GiB reserved)"
    checks, worst = check_table(measured["points"], models)
    return "\n\n".join(filter(None, [
        f"{os.path.basename(data['config_file'])}: predicted peak training memory "
        f"(fp32, measured on {measured['device']}), largest batch within {gpu}:",
        plan_table(models, sizes, divisibility, budget, max_batch),
        verdict(models, sizes, divisibility, budget, gpu, max_batch),
        f"The paper's Table 4 at {sizes[0][0]}x{sizes[0][1]} (each card less "
        f"{reserve / GIB:.2f} GiB reserved):",
        gpu_table(models, sizes[0], divisibility, reserve),
        "Fits (peak = per_pixel * pixels * batch + per_image * batch + constant):",
        "\n".join(f"- {m}: {f.per_pixel:.1f} B/pixel, {f.per_image / 2**20:.1f} MiB/image, "
                  f"{f.constant / 2**20:.1f} MiB constant" for m, f in models.items()),
        checks and f"Check at sizes not fitted (largest error {100 * worst:.1f}%):\n\n{checks}",
    ]))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    card_and_sizes(args.gpu_memory, args.reserve, args.sizes)  # bad input fails before measuring
    if args.from_json:
        with open(args.from_json) as f:
            measured = json.load(f)["measured"]
    else:
        measured = measure(args)
    data = dict(config_file=args.config_file, gpu_memory=args.gpu_memory, reserve=args.reserve,
                sizes=args.sizes, max_batch=args.max_batch, measured=measured)
    text = render(data)
    print(text)
    models = fits(measured["points"])
    checks, worst = check_table(measured["points"], models)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "plan.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.output, "plan.json"), "w") as f:
        json.dump(dict(args=vars(args), measured=measured,
                       fits={m: asdict(f) for m, f in models.items()},
                       check_max_error=worst if checks else None), f, indent=2)
    if args.record:
        publish(args.record, data, "projects.benchmark.plan:render",
                command_line("projects.benchmark.plan", argv))
    return dict(measured=measured, models=models, check_max_error=worst if checks else None)


if __name__ == "__main__":
    main()
