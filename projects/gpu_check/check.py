"""Validate this machine's GPU(s) for e3va-d2, in at most 10 minutes on one GPU.

Runs, in order, stopping at the first step that fails (projects/gpu_check/steps.py):
environment (every GPU's compute capability against the installed torch's kernels), one-GPU
training of a SyncBN config and the predictor on its checkpoint, float16 and bfloat16 AMP
(finite losses, skipped steps counted), E3VA's lossless memory options against the default's
gradients, with two GPUs NCCL gradient equivalence and a resume, the planner's CPU prediction
against the CUDA allocator's peak, and a CUDA timing of fixed / E3VA / full fine-tuning.

    python -m projects.gpu_check --record gpu-check     # what `make gpu-check` runs

Exit status: 0 every step passed (skips say why), 1 a step failed, 3 no CUDA GPU is visible
(nothing ran, nothing written). Writes gpu-check.json to --output; ``--record NAME`` also
writes the docs table (docs/INSTALL.md, see projects/tables.py).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import logging
import os
import time
from typing import List, Optional

import torch

from projects.tables import command_line, publish

from .runner import (
    EXIT_NO_GPU,
    TIME_BUDGET_SECONDS,
    StepResult,
    exit_code,
    run_steps,
)
from .steps import STEPS, Settings, machine_line

__all__ = ["main", "no_gpu_message", "parse_args"]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", default="all",
                        help=f"comma-separated steps to run (default all): "
                             f"{','.join(name for name, _ in STEPS)}")
    parser.add_argument("--output", default="output/gpu_check",
                        help="folder for the runs' files and gpu-check.json")
    parser.add_argument("--record", default="",
                        help="also write the results as this docs table's record "
                             "(projects/tables.py)")
    args = parser.parse_args(argv)
    known = [name for name, _ in STEPS]
    asked = known if args.steps == "all" else [s.strip() for s in args.steps.split(",")]
    unknown = [s for s in asked if s not in known]
    if unknown:
        parser.error(f"--steps: unknown {unknown}; the steps are {known}")
    args.steps = [name for name in known if name in asked]
    return args


def no_gpu_message() -> str:
    why = ("this torch is a CPU-only build (torch.version.cuda is None)"
           if torch.version.cuda is None else "torch.cuda.is_available() is False")
    return (f"gpu-check: no CUDA GPU is visible ({why}; torch {torch.__version__}): nothing was "
            f"checked and no record written (exit {EXIT_NO_GPU}). Run it on a machine with an "
            "NVIDIA GPU; see docs/INSTALL.md.")


def main(argv=None, started: Optional[float] = None) -> int:
    started = time.perf_counter() if started is None else started
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print(no_gpu_message())
        return EXIT_NO_GPU
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = Settings(output=args.output)
    chosen = [(name, functools.partial(step, settings)) for name, step in STEPS
              if name in args.steps]
    results: List[StepResult] = run_steps(chosen)
    seconds = time.perf_counter() - started
    data = dict(machine=machine_line(), seconds=round(seconds, 1),
                steps=[dataclasses.asdict(r) for r in results])
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "gpu-check.json"), "w") as f:
        json.dump(data, f, indent=1)
    if args.record:
        publish(args.record, data, "projects.gpu_check.runner:render",
                command_line("projects.gpu_check", argv))
    status = {"passed": 0, "skipped": 0, "failed": 0}
    for result in results:
        status[result.status] += 1
    print(f"gpu-check: {status['passed']} passed, {status['skipped']} skipped, "
          f"{status['failed']} failed, in {seconds:.0f} s"
          + (f": OVER the {TIME_BUDGET_SECONDS} s budget" if seconds > TIME_BUDGET_SECONDS
             else f" (budget {TIME_BUDGET_SECONDS} s)"))
    return exit_code(results)
