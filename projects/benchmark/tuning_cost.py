#!/usr/bin/env python
"""What each tuning method costs to train, measured side by side in one process.

For every method, on the same detector, input and process: trainable parameters (and their
share of the Swin trunk), bytes autograd saves for backward (each storage once), the median
time of a full training step (forward, backward, AdamW update) and of the backbone alone, and
on CUDA the peak memory of a step. Methods run interleaved, so machine noise hits all alike.

Every method starts from the same function (zero-initialised adapters, and one shared copy of
every tensor the models have in common: trunk, neck, heads) and steps with lr=0, so the heads
sample the same proposals everywhere and costs differ by method only. Sharing also keeps eleven
Swin-B detectors within a 24 GB machine.

Writes cost.md (Table 1-style costs + Table 4-style "which GPU fits"), cost.png and cost.json
to --output, and prints the tables:

    python -m projects.benchmark.tuning_cost \
        --config-file configs/COCO/cascade_mask_rcnn_swin_b_e3va.py --methods all
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
from typing import Dict, List

import torch
from detectron2.config import instantiate
from omegaconf import OmegaConf

from e3va_d2.config import load_config, set_tuning_method
from e3va_d2.engine.params import trainable_parameter_table
from e3va_d2.layers import adapt_sync_batchnorm
from e3va_d2.modeling import TUNING_METHODS, build_tuning
from e3va_d2.utils.cost import (
    TrainingStep,
    median,
    release_freed_memory,
    synthetic_detection_batch,
)

from .report import cost_table, fit_table, plot

logger = logging.getLogger("e3va_d2.benchmark")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")
    parser.add_argument("--methods", default="full,fixed,e3va",
                        help="comma-separated registered tuning methods, or 'all'")
    parser.add_argument("--size", type=int, default=512, help="square input side, pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per timed step")
    parser.add_argument("--fit-batches", default="1,2", help="batches for the GPU-fit table")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output", default="output/benchmark", help="folder for the results")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser.parse_args(argv)


# Rows in the order of the paper's tables; methods registered elsewhere come last.
PAPER_ORDER = ["full", "fixed", "bitfit", "norm", "partial1", "adapter", "lora", "adaptformer",
               "e3va", "e3va_plus", "e3va_plusplus"]


def method_names(spec: str) -> List[str]:
    if spec == "all":
        return [m for m in PAPER_ORDER if m in TUNING_METHODS] + sorted(
            m for m in TUNING_METHODS if m not in PAPER_ORDER)
    names = [m.strip() for m in spec.split(",") if m.strip()]
    unknown = [m for m in names if m not in TUNING_METHODS]
    if unknown:
        raise SystemExit(f"Unknown methods {unknown}; registered: {sorted(TUNING_METHODS)}")
    return names


def num_classes(cfg) -> int:
    for key in ("roi_heads.num_classes", "num_classes", "sem_seg_head.num_classes"):
        value = OmegaConf.select(cfg.model, key, default=None)
        if value is not None:
            return int(value)
    raise SystemExit("Cannot find num_classes in the config's model")


def build_model(cfg, method: str, seed: int):
    """The config's model with its tuning method replaced, adapters zero-initialised so that it
    computes the frozen model's function. Methods draw different random numbers while building,
    so weights match across methods only once ``share_common_tensors`` has run (``Bench``)."""
    tuning = build_tuning(method)
    if getattr(tuning, "zero_init", None) is False:
        tuning = dataclasses.replace(tuning, zero_init=True)
    set_tuning_method(cfg.model, tuning)
    torch.manual_seed(seed)
    model = instantiate(cfg.model)
    adapt_sync_batchnorm(model, world_size=1, device="cpu")
    return model


def share_common_tensors(model: torch.nn.Module, reference: Dict[str, torch.Tensor]) -> int:
    """Point every parameter and buffer of ``model`` that ``reference`` (another method's
    state dict) has under the same name, shape and dtype at the reference's storage; own
    ``requires_grad`` flags are kept. Returns how many tensors are now shared.

    Safe because nothing changes the weights (lr=0). Different methods draw different random
    numbers while building (adapters come before the heads), so without it their heads would
    differ too.
    """
    own = model.state_dict()
    common = {
        k: v for k, v in reference.items()
        if k in own and own[k].shape == v.shape and own[k].dtype == v.dtype
    }
    model.load_state_dict(common, strict=False, assign=True)
    return len(common)


class Bench:
    """The models of all methods, each measured with one model on the device at a time."""

    def __init__(self, cfg, methods: List[str], device: torch.device, batches: Dict[int, list]):
        self.device, self.methods = device, methods
        self.steps: Dict[str, Dict[str, TrainingStep]] = {}
        self.results: Dict[str, dict] = {}
        reference = None
        for method in methods:
            model = build_model(cfg, method, seed=0)
            if reference is None:
                reference = model.state_dict()
            else:
                share_common_tensors(model, reference)
            _, totals = trainable_parameter_table(model)
            self.results[method] = dict(
                trainable_backbone=totals["trainable_in_backbone"],
                swin_parameters=totals["swin"],
                trainable_total=totals["trainable"],
                total_parameters=totals["trainable"] + totals["frozen"],
            )
            # One optimizer per model: its AdamW state is allocated once, whatever the step.
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.0)
            self.steps[method] = {
                f"{kind}{b}": TrainingStep(model, batches[b], device, optimizer=optimizer,
                                           backbone_only=kind == "backbone")
                for b in batches for kind in ("model", "backbone")
            }
            logger.info("built %s: %s trainable in the backbone", method,
                        f"{totals['trainable_in_backbone']:,}")

    def on_device(self, method: str, where: torch.device) -> None:
        if self.device.type != "cuda":
            return
        for step in self.steps[method].values():
            step.model.to(where)
            step.batch = [{k: v.to(where) if hasattr(v, "to") else v for k, v in d.items()}
                          for d in step.batch]
            for state in step.optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value):
                        state[key] = value.to(where)


def run(args) -> Dict[str, dict]:
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cfg = load_config(args.config_file, args.opts)
    classes = num_classes(cfg)
    fit_batches = sorted({int(b) for b in args.fit_batches.split(",")} | {args.batch})
    batches = {b: synthetic_detection_batch(b, args.size, classes, seed=0) for b in fit_batches}
    bench = Bench(cfg, method_names(args.methods), device, batches)
    timed, timed_backbone = f"model{args.batch}", f"backbone{args.batch}"

    for method in bench.methods:  # warm up and measure memory, one model on the device
        bench.on_device(method, device)
        steps, r = bench.steps[method], bench.results[method]
        for i in range(args.warmup):
            steps[timed].run(seed=i, record=False)
            steps[timed_backbone].run(seed=i, record=False)
        r["saved_bytes_by_batch"] = {str(b): steps[f"model{b}"].saved_bytes() for b in batches}
        r["saved_bytes"] = r["saved_bytes_by_batch"][str(args.batch)]
        if device.type == "cuda":
            r["cuda_peak_by_batch"] = {str(b): steps[f"model{b}"].cuda_peak_bytes() for b in batches}
            r["cuda_peak_bytes"] = r["cuda_peak_by_batch"][str(args.batch)]
        bench.on_device(method, torch.device("cpu"))
        release_freed_memory()
        logger.info("%s: %.1f MiB saved for backward", method, r["saved_bytes"] / 2**20)

    for i in range(args.steps):  # interleaved timing
        for method in bench.methods:
            bench.on_device(method, device)
            bench.steps[method][timed].run(seed=100 + i)
            bench.steps[method][timed_backbone].run(seed=100 + i)
            bench.on_device(method, torch.device("cpu"))
    for method in bench.methods:
        r, steps = bench.results[method], bench.steps[method]
        r["step_times"], r["backbone_step_times"] = steps[timed].times, steps[timed_backbone].times
        r["step_seconds"] = median(steps[timed].times)
        r["backbone_step_seconds"] = median(steps[timed_backbone].times)
    return bench.results


def describe(args, device: str) -> str:
    return (
        f"{os.path.basename(args.config_file)}, {args.batch} image(s) of {args.size}x{args.size}, "
        f"median of {args.steps} interleaved steps after {args.warmup} warm-up, on {device} "
        f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})"
    )


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    results = run(args)
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    device = f"cuda ({torch.cuda.get_device_name()})" if on_gpu else "cpu"
    setup = describe(args, device)
    text = "\n\n".join([
        cost_table(results),
        setup + ". 'above fixed': saved bytes beyond the frozen-backbone model, as a share of "
        "full fine-tuning's. 'backbone step': the loss on the backbone's outputs only (FPN included, "
        "heads excluded).",
        fit_table(results, [int(b) for b in args.fit_batches.split(",")]),
    ])
    print(text)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "cost.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.output, "cost.json"), "w") as f:
        json.dump(dict(args=vars(args), device=device, results=results), f, indent=2)
    plot(results, os.path.join(args.output, "cost.png"), setup)
    return results


if __name__ == "__main__":
    main()
