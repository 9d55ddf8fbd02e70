#!/usr/bin/env python
"""What each tuning method costs to train, measured side by side in one process.

For every method, on the same detector, input and process: trainable parameters (and their
share of the Swin trunk), bytes autograd saves for backward (each storage once), the peak
memory of a full training step by category (profiler timeline; on CUDA also the allocator's
peak), the median time of a full training step (forward, backward, AdamW update) and of the
backbone alone. Methods run interleaved, so machine noise hits all alike.

Every method starts from the same function (zero-initialised adapters, and one shared copy of
every tensor the models have in common: trunk, neck, heads) and steps with lr=0, so the heads
sample the same proposals everywhere and costs differ by method only. Sharing also keeps eleven
Swin-B detectors within a 24 GB machine.

Writes cost.md (Table 1-style costs, peak memory by category, where the saved activations
come from, and Table 4-style "which GPU fits"), cost.png, peak.png and cost.json to --output,
and prints the tables (``--steps 0``: memory only, no timing); ``--record NAME`` also writes
them into the docs (see projects/tables.py):

    python -m projects.benchmark.tuning_cost \
        --config-file configs/COCO/cascade_mask_rcnn_swin_b_e3va.py --methods all

A method may carry options, ``e3va:saved_input_dtype=bfloat16``, to compare variants side by
side; ``--amp`` runs every method under the trainer's autocast.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
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
from e3va_d2.engine.step import resolve_amp_dtype
from e3va_d2.layers import adapt_sync_batchnorm
from e3va_d2.modeling import TUNING_METHODS, build_tuning
from e3va_d2.modeling.tuning.spec import parse_method_spec, parse_method_specs
from projects.tables import command_line, publish

from .measure import (
    MeasuredStep,
    median,
    release_freed_memory,
    saved_kind,
    synthetic_detection_batch,
)
from .peak_memory import step_peak_memory
from .peak_report import PEAK_NOTE, peak_table, plot_peak
from .report import breakdown_table, cost_table, fit_table, plot

logger = logging.getLogger("e3va_d2.benchmark")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")
    parser.add_argument("--methods", default="full,fixed,e3va",
                        help="comma-separated registered tuning methods, or 'all'; options as "
                             "name:key=value[:key=value], e.g. e3va:saved_input_dtype=bfloat16")
    parser.add_argument("--size", type=int, default=512, help="square input side, pixels")
    parser.add_argument("--batch", type=int, default=1, help="images per timed step")
    parser.add_argument("--fit-batches", default="1,2", help="batches for the GPU-fit table")
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method (0: none)")
    parser.add_argument("--no-peak", action="store_true",
                        help="skip the profiled step that measures each method's peak memory")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per method")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--amp", action="store_true",
                        help="autocast as train.amp.enabled=True does: fp16 + grad scaler on "
                             "CUDA, bf16 on CPU")
    parser.add_argument("--output", default="output/benchmark", help="folder for the results")
    parser.add_argument("--record", default="",
                        help="also publish the tables as this docs table (projects/tables.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    check_methods(parser, args.methods)
    return args


# Rows in the order of the paper's tables; methods registered elsewhere come last.
PAPER_ORDER = ["full", "fixed", "bitfit", "norm", "partial1", "adapter", "lora", "adaptformer",
               "e3va", "e3va_plus", "e3va_plusplus"]


def method_names(spec: str) -> List[str]:
    """The method specs of ``--methods`` (:mod:`e3va_d2.modeling.tuning.spec`, checked: a bad
    one is a ``ValueError``); ``all``: every registered method, the paper's in its order."""
    if spec == "all":
        return [m for m in PAPER_ORDER if m in TUNING_METHODS] + sorted(
            m for m in TUNING_METHODS if m not in PAPER_ORDER)
    return parse_method_specs(spec)


def check_methods(parser: argparse.ArgumentParser, spec: str) -> None:
    """A bad ``--methods`` is a usage error of ``parser`` (exit 2 naming it), before any model
    is built."""
    try:
        method_names(spec)
    except ValueError as e:
        parser.error(f"--methods: {e}")


def num_classes(cfg) -> int:
    for key in ("roi_heads.num_classes", "num_classes", "sem_seg_head.num_classes"):
        value = OmegaConf.select(cfg.model, key, default=None)
        if value is not None:
            return int(value)
    raise SystemExit("Cannot find num_classes in the config's model")


def build_model(cfg, method: str, seed: int):
    """The config's model with its tuning method (a ``method_names`` spec) replaced, adapters
    zero-initialised so that it computes the frozen model's function. Methods draw different
    random numbers while building, so weights match across methods only once
    ``share_common_tensors`` has run (``Bench``)."""
    name, options = parse_method_spec(method)
    tuning = build_tuning(name, **options)
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
    """The models of all methods, each measured with one model on the device at a time.

    ``batches``: label -> model input; ``steps[method][f"{kind}{label}"]`` is a training step
    of each of ``kinds`` ("model": the whole detector, "backbone": the backbone alone).

    ``build(cfg, method, seed)`` makes a method's model (default :func:`build_model`; the
    PEFT comparison builds a model this project has no tuning method for).
    """

    def __init__(self, cfg, methods: List[str], device: torch.device, batches: Dict[str, list],
                 amp_dtype=None, kinds=("model", "backbone"), build=None):
        self.device, self.methods = device, methods
        self.steps: Dict[str, Dict[str, MeasuredStep]] = {}
        self.results: Dict[str, dict] = {}
        reference = None
        for method in methods:
            model = (build or build_model)(cfg, method, seed=0)
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
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=0.0)
            self.steps[method] = {
                f"{kind}{b}": MeasuredStep(model, batches[b], device, optimizer=optimizer,
                                           backbone_only=kind == "backbone", amp_dtype=amp_dtype)
                for b in batches for kind in kinds
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
            # AdamW's "step" counters stay CPU scalars (torch reads them on the host each
            # step) unless the optimizer is capturable or fused, which keeps them on the device.
            on_device_steps = any(step.optimizer.defaults.get(k) for k in ("capturable", "fused"))
            for state in step.optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and (key != "step" or on_device_steps):
                        state[key] = value.to(where)


def run(args) -> Dict[str, dict]:
    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    cfg = load_config(args.config_file, args.opts)
    classes = num_classes(cfg)
    fit_batches = sorted({int(b) for b in args.fit_batches.split(",")} | {args.batch})
    batches = {b: synthetic_detection_batch(b, args.size, classes, seed=0) for b in fit_batches}
    amp_dtype = resolve_amp_dtype(args.amp, device.type)
    bench = Bench(cfg, method_names(args.methods), device, batches, amp_dtype=amp_dtype)
    timed, timed_backbone = f"model{args.batch}", f"backbone{args.batch}"

    for method in bench.methods:  # warm up and measure memory, one model on the device
        bench.on_device(method, device)
        steps, r = bench.steps[method], bench.results[method]
        for i in range(args.warmup):
            steps[timed].run(seed=i, record=False)
            steps[timed_backbone].run(seed=i, record=False)
        r["saved_bytes_by_batch"] = {str(b): steps[f"model{b}"].saved_bytes() for b in batches
                                     if b != args.batch}
        r["saved_bytes_by_module"] = steps[timed].saved_bytes_by_module()
        r["saved_bytes"] = sum(r["saved_bytes_by_module"].values())
        r["saved_bytes_by_batch"][str(args.batch)] = r["saved_bytes"]
        r["saved_bytes_by_kind"] = kinds = {}
        for module, nbytes in r["saved_bytes_by_module"].items():
            kinds[saved_kind(module)] = kinds.get(saved_kind(module), 0) + nbytes
        if device.type == "cuda":
            r["cuda_peak_by_batch"] = {str(b): steps[f"model{b}"].cuda_peak_bytes()
                                       for b in batches}
            r["cuda_peak_bytes"] = r["cuda_peak_by_batch"][str(args.batch)]
        if not args.no_peak:  # after a warm-up: AdamW's moments exist, as in training
            step = steps[timed]
            if not args.warmup:
                step.run(seed=0, record=False)
            run_step = functools.partial(step.run, seed=0, record=False)
            r["peak"] = step_peak_memory(run_step, device).to_dict()
        bench.on_device(method, torch.device("cpu"))
        release_freed_memory()
        logger.info("%s: %.1f MiB saved for backward%s", method, r["saved_bytes"] / 2**20,
                    f", peak {r['peak']['peak_bytes'] / 2**20:.1f} MiB" if "peak" in r else "")

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
    precision = "AMP (" + str(resolve_amp_dtype(True, device[:4])).replace("torch.", "") + ")" \
        if args.amp else "fp32"
    return (
        f"{os.path.basename(args.config_file)}, {args.batch} image(s) of {args.size}x{args.size}, "
        f"{precision}, "
        + (f"median of {args.steps} interleaved steps after {args.warmup} warm-up"
           if args.steps else f"memory only, after {args.warmup} warm-up step(s)")
        + f", on {device} "
        f"({platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__})"
    )


# What render() reads of each method's results (the record leaves out the per-module bytes).
RECORDED = ("trainable_backbone", "swin_parameters", "trainable_total", "total_parameters",
            "saved_bytes", "saved_bytes_by_batch", "saved_bytes_by_kind", "cuda_peak_bytes",
            "cuda_peak_by_batch", "step_seconds", "backbone_step_seconds", "peak")


def render(data: dict) -> str:
    """The benchmark's tables from its record: ``setup`` (what ran where), ``fit_batches`` and
    per-method ``results``."""
    results = data["results"]
    peaks = peak_table(results)
    return "\n\n".join([
        cost_table(results),
        data["setup"] + ". 'above fixed': saved bytes beyond the frozen-backbone model, as a "
        "share of full fine-tuning's. 'backbone step': the loss on the backbone's outputs only "
        "(FPN included, heads excluded).",
        *([f"Peak memory of a training step ({data['batch']} image(s) of "
           f"{data['size']}x{data['size']}):", peaks, PEAK_NOTE] if peaks else []),
        "Where the saved activations come from (MiB, by the innermost module that saved them):",
        breakdown_table(results),
        # With a measured peak, "which GPU fits" is the planner's (plan.py), not an estimate.
        *([] if peaks else [fit_table(results, data["fit_batches"])]),
    ])


def plot_record(data: dict, path: str) -> None:
    """The peak chart from the benchmark's record (what ``projects.tables`` draws into docs/)."""
    plot_peak(data["results"], path, data["setup"])


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    results = run(args)
    on_gpu = torch.cuda.is_available() and args.device != "cpu"
    device = f"cuda ({torch.cuda.get_device_name()})" if on_gpu else "cpu"
    data = dict(setup=describe(args, device), batch=args.batch, size=args.size,
                fit_batches=[int(b) for b in args.fit_batches.split(",")],
                results={m: {k: r[k] for k in RECORDED if k in r} for m, r in results.items()})
    text = render(data)
    print(text)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "cost.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.output, "cost.json"), "w") as f:
        json.dump(dict(args=vars(args), device=device, results=results), f, indent=2)
    plot(results, os.path.join(args.output, "cost.png"), data["setup"])
    if peak_table(results):
        plot_peak(results, os.path.join(args.output, "peak.png"), data["setup"])
    if args.record:
        publish(args.record, data, "projects.benchmark.tuning_cost:render",
                command_line("projects.benchmark.tuning_cost", argv))
    return results


if __name__ == "__main__":
    main()
