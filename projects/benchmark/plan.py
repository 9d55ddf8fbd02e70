#!/usr/bin/env python
"""Will it fit? Predict a config's peak training memory per tuning method over image sizes and
batches, from a few small measured steps, and the largest batch that fits on a given GPU.

Each method's peak is measured (after a warm-up step: on CPU from the profiler's allocation
events, ``plan_measure.py``; on CUDA the allocator's peak) at a few small sizes and batches,
one model build per method, and fitted as

    peak = per_pixel * pixels * batch + per_image * batch + constant

(pixels after padding to the model's size divisibility). The backbone and neck cost per pixel,
a detector's ROI heads per image (a fixed number of sampled proposals), and weights, gradients
and optimizer state are the constant; the fit is ``sweep.py``'s with a constant term.
``--check-sizes`` measures further sizes, not used in the fit, and reports the prediction's error
there.

    python -m projects.benchmark.plan --config-file configs/COCO/cascade_mask_rcnn_swin_l_e3va.py \\
        --gpu-memory 11GiB --methods full,fixed,lora,e3va

Writes plan.md and plan.json to --output, and measured.json after every measured point: a run
stopped and started again resumes there. ``--from-json`` plans again without measuring, from a
plan.json, a measured.json or a docs record (``docs/records/plan-swin-l.json``).

What the prediction is: the peak of the tensors a step allocates, measured where the tool runs.
What a GPU holds beyond it (cuBLAS's workspace, DDP's gradient copy, the allocator's slack, the
CUDA context) are the named terms of ``gpu_terms.py``, each an option here. Every argument is
checked before anything is measured (``plan_checks.py``); a fit that is not physical (a peak
that falls with size) is refused, never printed.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
from dataclasses import asdict
from typing import Dict, List, Tuple

import torch

from e3va_d2.config import load_config
from projects.tables import command_line, publish, table_head, table_row

from .gpu_terms import GpuTerms
from .measure import release_freed_memory, synthetic_detection_batch
from .paper_memory import error_band
from .plan_checks import (
    PlanError,
    check_fit_points,
    check_fit_sides,
    check_output,
    load_measured,
    min_fit_side,
)
from .plan_fit import PeakModel, fits, padded_pixels  # noqa: F401 (the planner's API)
from .plan_measure import MeasuredPoints, Progress, cpu_step_peak, prefill_optimizer_state
from .report import GPUS
from .tuning_cost import Bench, check_methods, method_names, num_classes

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


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/COCO/cascade_mask_rcnn_swin_l_e3va.py")
    parser.add_argument("--methods", default="full,fixed,e3va",
                        help="as tuning_cost.py's --methods")
    parser.add_argument("--gpu-memory", default="11GiB",
                        help="the card's memory, e.g. 11GiB (a GTX 1080Ti), 16GB, 24GiB")
    parser.add_argument("--cuda-context", default="0.5GiB",
                        help="what the CUDA context takes of the card, outside the allocator "
                             "(0.3-0.5 GB with lazy module loading; more on older CUDA)")
    parser.add_argument("--allocator-slack", type=float, default=GpuTerms.allocator_slack,
                        help="the caching allocator's reserve above the allocated peak, as a "
                             "fraction of it (reserved / allocated - 1)")
    parser.add_argument("--workspace", default="8MiB",
                        help="cuBLAS's workspace, allocated through the caching allocator")
    parser.add_argument("--ddp-gradient-copy", action="store_true",
                        help="count DDP's second copy of the trainable gradients (several GPUs "
                             "with gradient_as_bucket_view=False, as the paper trained)")
    parser.add_argument("--sizes", default="1333x800,1024x1024,800x800,512x512",
                        help="WIDTHxHEIGHT (or SIDE) sizes to plan for")
    parser.add_argument("--max-batch", type=int, default=64)
    # 224 is the smallest side a window-7 Swin has whole windows at (224 / 32 = 7); two sides
    # and two batches are the fewest points that fit per pixel, per image and the constant
    # with one degree of freedom to spare.
    parser.add_argument("--fit-sizes", default="224,288",
                        help="square sides measured for the fit")
    parser.add_argument("--fit-batches", default="1,2", help="batches measured for the fit")
    parser.add_argument("--check-sizes", default="",
                        help="square sides measured to check the prediction (not fitted)")
    parser.add_argument("--check-batches", default="1,2", help="batches of the check sizes")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output", default="output/plan",
                        help="folder for the results and measured.json, the points measured so "
                             "far (a run stopped and started again resumes from it)")
    parser.add_argument("--fresh", action="store_true",
                        help="measure anew, ignoring the --output folder's measured.json")
    parser.add_argument("--from-json", default="",
                        help="plan from this plan.json, measuring nothing")
    parser.add_argument("--record", default="",
                        help="also write the plan as this docs table's record (projects/tables.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    check_methods(parser, args.methods)
    return args


def _ints(text: str) -> List[int]:
    return [int(v) for v in text.split(",") if v.strip()]


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
    roles = {(s, b): "fit" for s in _ints(args.fit_sizes) for b in _ints(args.fit_batches)}
    for point in ((s, b) for s in _ints(args.check_sizes) for b in _ints(args.check_batches)):
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
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
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


def _batches(best: int, max_batch: int) -> str:
    return "none" if best == 0 else (str(best) + ("+" if best == max_batch else ""))


def plan_table(models: Dict[str, PeakModel], sizes: List[Tuple[int, int]], divisibility: int,
               budgets: Dict[str, float], max_batch: int) -> str:
    """Per method and size: predicted step peak at batch 1 and 2, and the largest batch whose
    card need (the step peak and ``gpu_terms``) fits; ``budgets``: the largest step peak per
    method."""
    header = ["method", "size", "step peak, batch 1", "step peak, batch 2",
              "largest batch that fits"]
    lines = table_head(header)
    for method, model in models.items():
        for width, height in sizes:
            pixels = padded_pixels(width, height, divisibility)
            best = model.largest_batch(pixels, budgets[method], max_batch)
            lines.append(table_row([
                method, f"{width}x{height}", f"{model.predict(pixels, 1) / GIB:.2f} GiB",
                f"{model.predict(pixels, 2) / GIB:.2f} GiB", _batches(best, max_batch)]))
    return "\n".join(lines)


def gpu_table(models: Dict[str, PeakModel], size: Tuple[int, int], divisibility: int,
              terms: GpuTerms, trainable: Dict[str, int]) -> str:
    """The paper's Table 4 cards at ``size``: what the card must hold for batch 1 / 2, and
    whether each card has it."""
    header = ["method", "batch", "card needs"] + [f"{name} {gb}GB" for name, gb in GPUS]
    lines = table_head(header)
    pixels = padded_pixels(*size, divisibility)
    for method, model in models.items():
        for batch in (1, 2):
            need = terms.need(model.predict(pixels, batch), trainable.get(method, 0))
            lines.append(table_row([method, str(batch), f"{need / GIB:.2f} GiB", *(
                "yes" if need <= gb * GIB else "no" for _, gb in GPUS)]))
    return "\n".join(lines)


def verdict(models: Dict[str, PeakModel], sizes: List[Tuple[int, int]], divisibility: int,
            budgets: Dict[str, float], gpu: str, max_batch: int) -> str:
    """One sentence per size: which methods train there on the card, with which batch."""
    sentences = []
    for width, height in sizes:
        pixels = padded_pixels(width, height, divisibility)
        best = {m: model.largest_batch(pixels, budgets[m], max_batch)
                for m, model in models.items()}
        fit = [f"{m} (batch <= {b})" for m, b in best.items() if b]
        out = [m for m, b in best.items() if not b]
        sentences.append(f"At {width}x{height} on {gpu}: " + (
            "trains " + ", ".join(fit) if fit else "no method fits") + (
            "; does not fit even one image: " + ", ".join(out) if out else "") + ".")
    return "\n".join(sentences)


def planning_inputs(data: dict) -> Tuple[int, GpuTerms, List[Tuple[int, int]]]:
    """(card bytes, terms, sizes) from the planning arguments, refused where not physical."""
    try:
        capacity = parse_bytes(data["gpu_memory"])
        terms = GpuTerms(**data["terms"])
        sizes = [parse_size(s) for s in data["sizes"].split(",") if s.strip()]
    except ValueError as e:
        raise PlanError(str(e)) from None
    if not sizes:
        raise PlanError("--sizes is empty: name the sizes to plan for, e.g. 1333x800")
    if data["max_batch"] < 1:
        raise PlanError(f"--max-batch {data['max_batch']}: the largest batch to consider must "
                        "be at least 1")
    if not 0 <= terms.allocator_slack < 10:
        raise PlanError(f"--allocator-slack {terms.allocator_slack}: a fraction of the "
                        "allocated peak, at least 0 (e.g. 0.1 for 10%)")
    if terms.largest_step_peak(capacity, 0) <= 0:
        raise PlanError(
            f"--cuda-context {terms.cuda_context / GIB:.2f} GiB and --workspace leave nothing "
            f"of --gpu-memory {data['gpu_memory']} for training: give the card's memory "
            "(e.g. 11GiB) and what the context takes (e.g. 0.5GiB)")
    return capacity, terms, sizes


def render(data: dict) -> str:
    """The plan from its record: the planning arguments (``config_file``, ``gpu_memory``,
    ``terms``, ``sizes``, ``max_batch``) and the ``measured`` points."""
    capacity, terms, sizes = planning_inputs(data)
    measured, max_batch = data["measured"], data["max_batch"]
    models = fits(measured["points"])
    divisibility = measured["size_divisibility"]
    trainable = measured.get("trainable", {})
    budgets = {m: terms.largest_step_peak(capacity, trainable.get(m, 0)) for m in models}
    gpu = f"{data['gpu_memory']} ({capacity / GIB:.2f} GiB)"
    checks, worst = check_table(measured["points"], models)
    return "\n\n".join(filter(None, [
        f"{os.path.basename(data['config_file'])}: predicted peak of one training step "
        f"(fp32, measured on {measured['device']}), and the largest batch whose card need "
        f"fits {gpu}; card need = step peak {terms.describe()} (docs/MEMORY.md):",
        plan_table(models, sizes, divisibility, budgets, max_batch),
        verdict(models, sizes, divisibility, budgets, gpu, max_batch),
        f"The paper's Table 4 cards at {sizes[0][0]}x{sizes[0][1]} (a card's GB are GiB):",
        gpu_table(models, sizes[0], divisibility, terms, trainable),
        "Fits (step peak = the larger of per_pixel * pixels * batch + per_image * batch + "
        "constant, the forward and backward pass's, and the optimizer update's):",
        "\n".join(f"- {m}: {f.per_pixel:.1f} B/pixel, {f.per_image / 2**20:.1f} MiB/image, "
                  f"{f.constant / 2**20:.1f} MiB constant"
                  + (f"; optimizer update {f.update / 2**20:.1f} MiB" if f.update else "")
                  for m, f in models.items()),
        checks and f"Check at sizes not fitted (largest error {100 * worst:.1f}%):\n\n{checks}",
    ]))


def terms_of(args) -> dict:
    try:
        return GpuTerms(workspace=parse_bytes(args.workspace),
                        ddp_gradient_copy=args.ddp_gradient_copy,
                        allocator_slack=args.allocator_slack,
                        cuda_context=parse_bytes(args.cuda_context)).to_dict()
    except ValueError as e:
        raise PlanError(str(e)) from None


def check_arguments(args) -> dict:
    """Everything that can be refused before measuring: the planning arguments, the fit's
    points, the output folder and the ``--from-json`` file (read here). Returns the record's
    data without ``measured``, or with it when read from a file."""
    data = dict(config_file=args.config_file, gpu_memory=args.gpu_memory, terms=terms_of(args),
                sizes=args.sizes, max_batch=args.max_batch)
    planning_inputs(data)
    check_output(args.output)
    if args.from_json:
        data["measured"] = load_measured(args.from_json)
        return data
    check_fit_points(args.fit_sizes, args.fit_batches, args.check_sizes, args.check_batches)
    if not os.path.isfile(args.config_file):
        raise PlanError(f"--config-file {args.config_file!r}: no such file")
    check_fit_sides(args.fit_sizes, min_fit_side(load_config(args.config_file, args.opts)))
    method_names(args.methods)  # names the bad method or option
    return data


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    data = check_arguments(args)
    if "measured" not in data:
        data["measured"] = measure(args)
    text = render(data)
    band = error_band()
    print(text + ("\n\n" + band if band else ""))
    measured = data["measured"]
    models = fits(measured["points"])
    checks, worst = check_table(measured["points"], models)
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
