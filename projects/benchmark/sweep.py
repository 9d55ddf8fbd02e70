#!/usr/bin/env python
"""How training cost grows with image size and batch, per tuning method, side by side.

For every (size, batch) point, every method's activations saved for backward and (unless
``--no-time``) the median time of a whole training step, measured as ``tuning_cost.py`` does
(same models sharing every common tensor, lr=0, interleaved). Two fits per method:

- the log-log slope of cost against pixels x batch, per batch (how cost grows with image size);
- ``cost = per_pixel * pixels * batch + per_image * batch``, over all points: a detector's
  backbone costs per pixel, its ROI heads per image (a fixed number of sampled proposals), so
  the log-log slope of a detector is below 1 and no power law extrapolates it. This fit is
  extrapolated to a point the machine cannot run (``--extrapolate``, default the paper's COCO
  resolution 1333x800, padded to 1344x800, batch 2), with the GPUs of the paper's Table 4 it
  would fit.

    python -m projects.benchmark.sweep \\
        --config-file configs/COCO/cascade_mask_rcnn_swin_b_e3va.py \\
        --methods full,fixed,lora,e3va --sizes 384,512,768,1024 --batches 1,2

Writes sweep.md, sweep.json and sweep.png to --output (and with ``--record NAME`` the tables
into the docs, see projects/tables.py); ``--from-json`` redraws them from an earlier
sweep.json without measuring.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Dict, List, Tuple

import numpy as np
import torch

from e3va_d2.config import load_config
from e3va_d2.engine.step import resolve_amp_dtype
from projects.tables import command_line, publish, table_head, table_row

from .bench import Bench, check_methods, method_names, num_classes, pick_device
from .cost_report import GPUS, MIB, training_memory
from .measure import median, release_freed_memory, synthetic_detection_batch

logger = logging.getLogger("e3va_d2.benchmark")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")
    parser.add_argument("--methods", default="full,fixed,lora,e3va",
                        help="as tuning_cost.py's --methods")
    parser.add_argument("--sizes", default="384,512,768,1024", help="square input sides, pixels")
    parser.add_argument("--batches", default="1,2", help="images per step")
    parser.add_argument("--steps", type=int, default=2, help="timed steps per method and point")
    parser.add_argument("--no-time", action="store_true", help="saved activations only")
    parser.add_argument("--amp", action="store_true", help="as tuning_cost.py's --amp")
    parser.add_argument("--max-saved-gib", type=float, default=12.0,
                        help="skip a point where a method's saved activations, predicted from "
                             "its smaller points, would exceed this (the machine's RAM)")
    parser.add_argument("--extrapolate", default="1344x800x2",
                        help="WIDTHxHEIGHTxBATCH to extrapolate the fits to")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output", default="output/benchmark_sweep", help="folder for the results")
    parser.add_argument("--from-json", default="", help="redraw from this sweep.json")
    parser.add_argument("--record", default="",
                        help="also publish the tables as this docs table (projects/tables.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    check_methods(parser, args.methods)
    return args


def power_law(pixels: List[float], values: List[float]) -> Tuple[float, float]:
    """(slope, log-intercept) of ``log(value) = slope * log(pixels) + intercept``."""
    slope, intercept = np.polyfit(np.log(pixels), np.log(values), 1)
    return float(slope), float(intercept)


def predict(fit: Tuple[float, float], pixels: float) -> float:
    return float(np.exp(fit[1]) * pixels ** fit[0])


def slopes(points: Dict[str, List[dict]], key: str) -> Dict[str, Dict[int, Tuple[float, float]]]:
    """Method -> batch -> power-law fit of ``key`` against pixels x batch, over image sizes."""
    out: Dict[str, Dict[int, Tuple[float, float]]] = {}
    for method, pts in points.items():
        for batch in sorted({p["batch"] for p in pts}):
            row = [p for p in pts if p["batch"] == batch and key in p]
            if len(row) >= 2:
                out.setdefault(method, {})[batch] = power_law(
                    [p["pixels"] for p in row], [p[key] for p in row])
    return out


def per_pixel_and_image(points: List[dict], key: str) -> Tuple[float, float]:
    """Least-squares ``(per_pixel, per_image)`` of ``key = per_pixel * pixels * batch +
    per_image * batch``, each point weighted by 1/value (relative errors)."""
    per_pixel, per_image = _relative_least_squares(points, key, constant=False)
    return per_pixel, per_image


def per_pixel_image_and_constant(points: List[dict], key: str) -> Tuple[float, float, float]:
    """As :func:`per_pixel_and_image` plus a constant term, for a cost that also holds what no
    input changes (a step's peak memory: weights, gradients, optimizer state)."""
    per_pixel, per_image, constant = _relative_least_squares(points, key, constant=True)
    return per_pixel, per_image, constant


def _relative_least_squares(points: List[dict], key: str, constant: bool) -> List[float]:
    rows = [p for p in points if key in p]
    a = np.array([[p["pixels"], p["batch"]] + [1.0] * constant for p in rows], dtype=float)
    y = np.array([p[key] for p in rows], dtype=float)
    if len(rows) < a.shape[1]:
        raise ValueError(f"{len(rows)} points cannot fit {a.shape[1]} terms of {key!r}")
    coefficients, *_ = np.linalg.lstsq(a / y[:, None], np.ones(len(y)), rcond=None)
    return [float(c) for c in coefficients]


def run(args) -> dict:
    device = pick_device(args.device)
    cfg = load_config(args.config_file, args.opts)
    classes = num_classes(cfg)
    grid = [(int(s), int(b)) for s in args.sizes.split(",") for b in args.batches.split(",")]
    points = sorted(grid, key=lambda p: (p[0] ** 2 * p[1], p[1]))
    batches = {f"{s}x{b}": synthetic_detection_batch(b, s, classes, seed=0) for s, b in points}
    amp_dtype = resolve_amp_dtype(args.amp, device.type)
    bench = Bench(cfg, method_names(args.methods), device, batches, amp_dtype=amp_dtype,
                  kinds=("model",))
    measured: Dict[str, List[dict]] = {m: [] for m in bench.methods}
    for size, batch in points:
        label, pixels = f"{size}x{batch}", size * size * batch
        running = []
        for method in bench.methods:
            done = measured[method]
            predicted = done[-1]["saved_bytes"] * pixels / done[-1]["pixels"] if done else 0
            if predicted > args.max_saved_gib * 2**30:
                logger.info("%s at %s: skipped, it would save more than %.0f GiB", method, label,
                            args.max_saved_gib)
                continue
            step = bench.steps[method][f"model{label}"]
            bench.on_device(method, device)
            if not args.no_time:
                step.run(seed=0, record=False)
            point = dict(size=size, batch=batch, pixels=pixels, saved_bytes=step.saved_bytes())
            if device.type == "cuda":
                point["cuda_peak_bytes"] = step.cuda_peak_bytes()
            bench.on_device(method, torch.device("cpu"))
            done.append(point)
            running.append(method)
            release_freed_memory()
            logger.info("%s at %s: %.1f MiB saved", method, label, point["saved_bytes"] / MIB)
        if args.no_time:
            continue
        bench.time_interleaved([f"model{label}"], args.steps, running)
        for method in running:
            step = bench.steps[method][f"model{label}"]
            measured[method][-1]["step_seconds"] = median(step.times)
            step.times.clear()
            logger.info("%s at %s: %.2f s per step", method, label,
                        measured[method][-1]["step_seconds"])
        release_freed_memory()
    return dict(points=measured, models=bench.results)


def _timed(points: Dict[str, List[dict]]) -> bool:
    return any("step_seconds" in p for pts in points.values() for p in pts)


def sweep_table(points: Dict[str, List[dict]]) -> str:
    methods = list(points)
    labels = sorted({(p["size"], p["batch"]) for pts in points.values() for p in pts},
                    key=lambda sb: (sb[0] ** 2 * sb[1], sb[1]))
    timed = _timed(points)
    header = ["size x batch", "pixels x batch"] + [f"{m} saved" for m in methods]
    header += [f"{m} step (s)" for m in methods] if timed else []
    lines = table_head(header)
    for size, batch in labels:
        found = {m: next((p for p in points[m] if (p["size"], p["batch"]) == (size, batch)), None)
                 for m in methods}
        row = [f"{size}x{size} x {batch}", f"{size * size * batch / 1e6:.2f}M"]
        row += [f"{p['saved_bytes'] / MIB:,.0f} MiB" if p else "skipped" for p in found.values()]
        if timed:
            row += [f"{p['step_seconds']:.2f}" if p and "step_seconds" in p else ""
                    for p in found.values()]
        lines.append(table_row(row))
    return "\n".join(lines)


def extrapolation_table(result: dict, target: Tuple[int, int, int]) -> str:
    """Per method: the log-log slopes, the per-pixel / per-image fit, and what it predicts at
    ``target`` (saved activations, and the training memory that implies on Table 4's GPUs)."""
    width, height, batch = target
    points, timed = result["points"], _timed(result["points"])
    saved_slopes, time_slopes = slopes(points, "saved_bytes"), slopes(points, "step_seconds")
    header = ["method", "saved-bytes slope (batch 1, 2)"] + (["step-time slope"] if timed else [])
    header += ["saved per megapixel", "saved per image", f"saved at {width}x{height} x {batch}",
               "training memory"] + [f"{name} {gb}GB" for name, gb in GPUS]
    lines = table_head(header)
    for method, pts in points.items():
        if len(pts) < 2:
            continue
        per_pixel, per_image = per_pixel_and_image(pts, "saved_bytes")
        bytes_at = per_pixel * width * height * batch + per_image * batch
        model = dict(result["models"][method], saved_bytes_by_batch={str(batch): bytes_at})
        need, _ = training_memory(model, batch)
        row = [method, ", ".join(f"{f[0]:.2f}" for f in saved_slopes.get(method, {}).values())]
        if timed:
            row.append(", ".join(f"{f[0]:.2f}" for f in time_slopes.get(method, {}).values()))
        row += [f"{per_pixel * 1e6 / MIB:,.0f} MiB", f"{per_image / MIB:,.0f} MiB",
                f"{bytes_at / 2**30:.1f} GiB (extrapolated)", f"{need / 2**30:.1f} GiB (est.)"]
        row += ["yes" if need <= gb * 2**30 else "no" for _, gb in GPUS]
        lines.append(table_row(row))
    return "\n".join(lines)


def plot(result: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("saved_bytes", "activations saved for backward (MiB)", MIB)]
    if _timed(result["points"]):
        keys.append(("step_seconds", "training step (s)", 1.0))
    fig, axes = plt.subplots(1, len(keys), figsize=(6.5 * len(keys), 4.8), squeeze=False)
    for ax, (key, label, unit) in zip(axes[0], keys):
        for k, (method, by_batch) in enumerate(slopes(result["points"], key).items()):
            color = f"C{k}"
            for batch, fit in by_batch.items():
                pts = [p for p in result["points"][method] if p["batch"] == batch and key in p]
                x = np.array([p["pixels"] for p in pts], dtype=float)
                marker, style = ("o", "-") if batch == 1 else ("s", "--")
                ax.loglog(x, [p[key] / unit for p in pts], marker, color=color,
                          label=f"{method}, batch {batch} (slope {fit[0]:.2f})")
                grid = np.geomspace(x.min(), x.max(), 20)
                ax.loglog(grid, [predict(fit, g) / unit for g in grid], style, color=color)
        ax.set_xlabel("pixels x batch")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    if args.from_json:
        with open(args.from_json) as f:
            saved = json.load(f)
        for key in ("config_file", "amp", "steps"):
            setattr(args, key, saved["args"][key])
        result = dict(points=saved["points"], models=saved["models"])
    else:
        result = run(args)
    timing = (f"median of {args.steps} interleaved steps per point, "
              f"{torch.get_num_threads()} threads" if _timed(result["points"])
              else "saved activations only")
    setup = f"{os.path.basename(args.config_file)}, {'AMP' if args.amp else 'fp32'}, {timing}"
    data = dict(setup=setup, extrapolate=args.extrapolate, **result)
    text = render(data)
    print(text)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "sweep.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.output, "sweep.json"), "w") as f:
        json.dump(dict(args=vars(args), **result), f, indent=2)  # over --from-json: the same
    plot(result, os.path.join(args.output, "sweep.png"), setup)
    if args.record:
        publish(args.record, data, "projects.benchmark.sweep:render",
                command_line("projects.benchmark.sweep", argv))
    return result


def render(data: dict) -> str:
    """The sweep's tables from its record: ``points`` and ``models`` as measured, ``setup``
    and the ``extrapolate`` target (WIDTHxHEIGHTxBATCH)."""
    target = tuple(int(v) for v in data["extrapolate"].lower().split("x"))
    result = dict(points=data["points"], models=data["models"])
    return "\n\n".join([sweep_table(result["points"]), data["setup"],
                         extrapolation_table(result, target)])


if __name__ == "__main__":
    main()
