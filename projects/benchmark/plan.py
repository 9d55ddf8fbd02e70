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

This module is the command: its options, their checks, and the files and record it writes.
Measuring is ``plan_measure.py``'s, the model of a peak ``plan_fit.py``'s, and the Markdown
``plan_report.py``'s (from the record alone, as ``projects.tables`` re-renders it).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from dataclasses import asdict

from e3va_d2.config import load_config
from projects.tables import command_line, publish

from .bench import check_methods, method_names
from .gpu_terms import GpuTerms
from .paper_memory import error_band
from .plan_checks import (
    PlanError,
    check_fit_points,
    check_fit_sides,
    check_output,
    load_measured,
    min_fit_side,
    parse_bytes,
    planning_inputs,
)
from .plan_fit import fits
from .plan_measure import measure
from .plan_report import check_table, render


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
        publish(args.record, data, "projects.benchmark.plan_report:render",
                command_line("projects.benchmark.plan", argv))
    return dict(measured=measured, models=models, check_max_error=worst if checks else None)


if __name__ == "__main__":
    main()
