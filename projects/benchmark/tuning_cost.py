#!/usr/bin/env python
"""What each tuning method costs to train, measured side by side in one process.

For every method, on the same detector, input and process: trainable parameters (and their
share of the Swin trunk), bytes autograd saves for backward (each storage once), the peak
memory of a full training step by category (profiler timeline; on CUDA also the allocator's
peak), the median time of a full training step (forward, backward, AdamW update) and of the
backbone alone. Methods run interleaved, so machine noise hits all alike.

Every method's model starts from the same function and steps with lr=0, so costs differ by
method only (``bench.py``: the models and what measures each). This module is the command:
its options, the order of the measurements, and the files and record it writes; the tables
and charts are ``cost_report.py``'s, drawn from the record alone.

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
import json
import logging
import os
from typing import Dict

from e3va_d2.config import load_config
from e3va_d2.engine.step import resolve_amp_dtype
from projects.tables import command_line, publish

from .bench import Bench, check_methods, method_names, num_classes, pick_device
from .cost_report import RECORDED, describe, device_words, plot, render
from .measure import synthetic_detection_batch
from .peak_report import peak_table, plot_peak

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


def run(args) -> Dict[str, dict]:
    """Every method's memory (one model on the device at a time, after its warm-up), then its
    step times, methods interleaved; the results per method."""
    device = pick_device(args.device)
    cfg = load_config(args.config_file, args.opts)
    classes = num_classes(cfg)
    fit_batches = sorted({int(b) for b in args.fit_batches.split(",")} | {args.batch})
    batches = {b: synthetic_detection_batch(b, args.size, classes, seed=0) for b in fit_batches}
    amp_dtype = resolve_amp_dtype(args.amp, device.type)
    bench = Bench(cfg, method_names(args.methods), device, batches, amp_dtype=amp_dtype)
    for method in bench.methods:
        bench.measure_memory(method, args.batch, args.warmup, profile_peak=not args.no_peak)
    timed, timed_backbone = f"model{args.batch}", f"backbone{args.batch}"
    bench.time_interleaved([timed, timed_backbone], args.steps)
    bench.record_times({timed: "step", timed_backbone: "backbone_step"})
    return bench.results


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    results = run(args)
    device = device_words(pick_device(args.device))
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
        publish(args.record, data, "projects.benchmark.cost_report:render",
                command_line("projects.benchmark.tuning_cost", argv))
    return results


if __name__ == "__main__":
    main()
