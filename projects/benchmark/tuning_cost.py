#!/usr/bin/env python
"""What each tuning method costs to train, measured side by side in one process.

For every method, on the same detector, input and process: trainable parameters (and their
share of the Swin trunk), bytes autograd saves for backward (each storage once), the median
time of a full training step (forward, backward, AdamW update) and, on CUDA, the peak memory of
a step. Methods run interleaved, so machine noise hits all of them alike. Prints a Markdown
table (also written to ``--output``/cost.md, with the raw numbers in cost.json).

    python projects/benchmark/tuning_cost.py \
        --config-file configs/COCO/cascade_mask_rcnn_swin_b_e3va.py \
        --methods full,fixed,e3va --size 512 --batch 1 --steps 5
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import sys
from typing import Dict, List

import torch
from detectron2.config import LazyCall as L
from detectron2.config import instantiate

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))

from e3va_d2.config import load_config  # noqa: E402
from e3va_d2.engine.params import trainable_parameter_table  # noqa: E402
from e3va_d2.layers import adapt_sync_batchnorm  # noqa: E402
from e3va_d2.modeling import TUNING_METHODS, build_tuning  # noqa: E402
from e3va_d2.utils.cost import TrainingStep, median, synthetic_detection_batch  # noqa: E402

logger = logging.getLogger("e3va_d2.benchmark")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")
    parser.add_argument("--methods", default="full,fixed,e3va",
                        help="comma-separated registered tuning methods, or 'all'")
    parser.add_argument("--size", type=int, default=512, help="square input side, pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per step")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    parser.add_argument("--output", default="output/benchmark", help="folder for cost.md/json")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser.parse_args(argv)


def method_names(spec: str) -> List[str]:
    if spec == "all":
        return list(TUNING_METHODS)
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in TUNING_METHODS]
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; registered: {sorted(TUNING_METHODS)}")
    return names


def build_model(cfg, method: str, seed: int):
    """The config's model with its tuning method replaced; same seed, hence same weights.

    Methods that add modules start from the frozen model's function (zero-initialised
    adapters), so every method's heads see the same proposals: costs differ by method only.
    """
    tuning = build_tuning(method)
    if getattr(tuning, "zero_init", None) is False:
        tuning = dataclasses.replace(tuning, zero_init=True)
    cfg.model.backbone.bottom_up.tuning = L(type(tuning))(**dataclasses.asdict(tuning))
    torch.manual_seed(seed)
    model = instantiate(cfg.model)
    adapt_sync_batchnorm(model, world_size=1, device="cpu")
    return model


def run(args) -> Dict[str, dict]:
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = load_config(args.config_file, args.opts)
    num_classes = cfg.model.roi_heads.num_classes
    batch = synthetic_detection_batch(args.batch, args.size, num_classes, seed=0)
    methods = method_names(args.methods)

    steps: Dict[str, TrainingStep] = {}
    backbone_steps: Dict[str, TrainingStep] = {}
    results: Dict[str, dict] = {}
    for method in methods:
        model = build_model(cfg, method, seed=0)
        _, totals = trainable_parameter_table(model)
        step = TrainingStep(model, batch, device)
        backbone_steps[method] = TrainingStep(model, batch, device, backbone_only=True)
        results[method] = dict(
            trainable_backbone=totals["trainable_in_backbone"],
            swin_parameters=totals["swin"],
            trainable_total=totals["trainable"],
        )
        steps[method] = step
        logger.info("built %s: %s trainable in the backbone", method,
                    f"{totals['trainable_in_backbone']:,}")

    on_gpu = device.type == "cuda"

    def place(method: str, where: torch.device):
        if on_gpu:
            steps[method].model.to(where)
            for state in steps[method].optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value):
                        state[key] = value.to(where)

    def inputs_to(where: torch.device):
        for step in list(steps.values()) + list(backbone_steps.values()):
            step.batch = [
                {**d, "image": d["image"].to(where), "instances": d["instances"].to(where)}
                for d in batch
            ]

    inputs_to(device)
    for method in methods:  # warm up, measure memory: one model on the device at a time
        place(method, device)
        for i in range(args.warmup):
            steps[method].run(seed=i, record=False)
            backbone_steps[method].run(seed=i, record=False)
        results[method]["saved_bytes"] = steps[method].saved_bytes(seed=0)
        if on_gpu:
            results[method]["cuda_peak_bytes"] = steps[method].cuda_peak_bytes(seed=0)
        place(method, torch.device("cpu"))
        logger.info("%s: %.1f MB saved for backward", method, results[method]["saved_bytes"] / 2**20)

    for i in range(args.steps):  # interleaved timing
        for method in methods:
            place(method, device)
            steps[method].run(seed=100 + i)
            backbone_steps[method].run(seed=100 + i)
            place(method, torch.device("cpu"))
    for method in methods:
        results[method]["step_seconds"] = median(steps[method].times)
        results[method]["step_times"] = steps[method].times
        results[method]["backbone_step_seconds"] = median(backbone_steps[method].times)
        results[method]["backbone_step_times"] = backbone_steps[method].times
    return results


def markdown(results: Dict[str, dict], args, device: str) -> str:
    full, fixed = results.get("full"), results.get("fixed")
    has_cuda = any("cuda_peak_bytes" in r for r in results.values())
    header = ["method", "trainable (backbone)", "% of Swin", "saved for backward"]
    header += ["above fixed", "CUDA peak"] if has_cuda else ["above fixed"]
    header += ["step time / full", "step time / fixed", "backbone step / full"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for method, r in results.items():
        row = [
            method,
            f"{r['trainable_backbone'] / 1e6:.2f}M",
            f"{100 * r['trainable_backbone'] / r['swin_parameters']:.2f}%",
            f"{r['saved_bytes'] / 2**20:,.0f} MiB",
        ]
        if fixed and full and full["saved_bytes"] > fixed["saved_bytes"]:
            above = (r["saved_bytes"] - fixed["saved_bytes"]) / (
                full["saved_bytes"] - fixed["saved_bytes"])
            row.append(f"{100 * above:.1f}% of full's")
        else:
            row.append("")
        if has_cuda:
            row.append(f"{r.get('cuda_peak_bytes', 0) / 2**20:,.0f} MiB")
        row.append(f"{r['step_seconds'] / full['step_seconds']:.2f}x" if full else "")
        row.append(f"{r['step_seconds'] / fixed['step_seconds']:.2f}x" if fixed else "")
        row.append(f"{r['backbone_step_seconds'] / full['backbone_step_seconds']:.2f}x"
                   if full else "")
        lines.append("| " + " | ".join(row) + " |")
    lines.append("")
    lines.append(
        f"{os.path.basename(args.config_file)}, {args.batch} image(s) of {args.size}x{args.size}, "
        f"median of {args.steps} interleaved steps after {args.warmup} warm-up, on {device} "
        f"({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}). 'above fixed': saved bytes beyond the frozen-backbone "
        "model, as a share of full fine-tuning's. 'backbone step': the same step with the loss "
        "on the FPN outputs only (no heads). Adapters start zero-initialised and lr=0, so all "
        "methods' heads see the same proposals."
    )
    return "\n".join(lines)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    results = run(args)
    device = "cuda " + torch.cuda.get_device_name() if torch.cuda.is_available() and \
        args.device != "cpu" else "cpu"
    table = markdown(results, args, device)
    print(table)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "cost.md"), "w") as f:
        f.write(table + "\n")
    with open(os.path.join(args.output, "cost.json"), "w") as f:
        json.dump(dict(args=vars(args), device=device, results=results), f, indent=2)
    return results


if __name__ == "__main__":
    main()
