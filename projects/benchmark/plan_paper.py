#!/usr/bin/env python
"""The planner held against the paper: measures the paper's three models with the planner
(Swin-B Cascade Mask R-CNN, Table 1; Swin-L Cascade, Table 1's last row and Table 4; Swin-L
RetinaNet, Table 2), then writes the comparison (``paper_memory.py``).

    python -m projects.benchmark.plan_paper           # measures (resumable), then the tables

Each model is one planner run, with its state in ``output/plan-paper/<run>/measured.json``:
stop it at any time and start it again, it goes on where it stopped; ``--no-measure`` writes
the tables from what the states hold. A run neither measured now nor in ``--output`` keeps its
points from the committed record (``--keep-from``), with the commits it was measured at: one
model can be measured again without measuring the others, and the table says which code
measured each.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
from typing import Optional

from projects.tables import command_line, publish, record_path

from . import plan
from .paper_memory import CHECKS, PAPER_TERMS, RECORD, RUNS, render
from .plan_checks import load_measured
from .plan_measure import STATE_FILE, measure, measurement_points

logger = logging.getLogger("e3va_d2.benchmark")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", default=",".join(RUNS), help="which models to measure")
    parser.add_argument("--output", default="output/plan-paper",
                        help="folder of the runs' states (one subfolder per run)")
    parser.add_argument("--methods", default="",
                        help="measure only these of each run's methods (default: all of them)")
    parser.add_argument("--no-measure", action="store_true",
                        help="measure nothing: the tables from what the runs' states hold "
                             "(methods with every fit point)")
    parser.add_argument("--record", default="",
                        help="also write the tables as this docs record (plan-paper)")
    parser.add_argument("--keep-from", default=record_path(RECORD),
                        help="a run neither measured now nor found in --output keeps its "
                             "points from this record, with the commits it was measured at "
                             "('' keeps none)")
    return parser.parse_args(argv)


def complete_methods(measured: dict, run_args) -> Optional[dict]:
    """``measured`` (a run's state, or its entry in a record) with only the methods that have
    every fit point of ``run_args`` (roles as ``run_args`` gives them); None if none has."""
    roles = measurement_points(run_args)
    points = {}
    for method, pts in measured["points"].items():
        kept = [dict(p, role=roles[p["size"], p["batch"]]) for p in pts
                if (p["size"], p["batch"]) in roles]
        fitted = {(p["size"], p["batch"]) for p in kept if p["role"] == "fit"}
        if fitted == {sb for sb, role in roles.items() if role == "fit"} \
                and method in measured.get("trainable", {}):
            points[method] = kept
    return dict(measured, points=points) if points else None


def measured_so_far(run_args) -> Optional[dict]:
    """A run's state as it stands (methods with every fit point), without measuring."""
    path = os.path.join(run_args.output, STATE_FILE)
    if not os.path.exists(path):
        return None
    found = complete_methods(load_measured(path), run_args)
    return found and dict({"measured_at": ["unknown"]}, **found)  # a state before commits


def read_record(path: str) -> Optional[dict]:
    """The earlier record runs are kept from; None without one."""
    if not path or not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def kept_from_record(run: str, run_args, record: Optional[dict]) -> Optional[dict]:
    """``run`` as an earlier record holds it, if it measured the same model (config and
    overrides), with the commits it was measured at: its own, or for a record from before runs
    kept theirs, the record's."""
    saved = (record or {}).get("data", {}).get("runs", {}).get(run)
    if not saved or {k: saved.get("key", {}).get(k) for k in ("config_file", "opts")} != dict(
            config_file=run_args.config_file, opts=list(run_args.opts)):
        return None
    found = complete_methods(saved, run_args)
    return found and dict(found, measured_at=saved.get("measured_at", [record["commit"]]))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    runs = [r.strip() for r in args.runs.split(",") if r.strip()]
    unknown = sorted(set(runs) - set(RUNS))
    if unknown:
        raise SystemExit(f"--runs: unknown {unknown}; known: {sorted(RUNS)}")
    fit_sizes = plan.parse_args([]).fit_sizes
    earlier = read_record(args.keep_from)
    measured = {}
    for run in RUNS:
        config, methods, _, _ = RUNS[run]
        if args.methods:
            methods = [m for m in methods if m in args.methods.split(",")]
        run_args = plan.parse_args(["--config-file", config, "--methods", ",".join(methods),
                                    "--output", os.path.join(args.output, run),
                                    *CHECKS.get(run, [])])
        if run in runs and not args.no_measure:
            logger.info("%s: %s", run, config)
            plan.check_arguments(run_args)
            measured[run] = dict(measure(run_args), fit_sizes=run_args.fit_sizes)
        else:  # what an earlier (perhaps stopped) run of it measured, or the record keeps
            found = measured_so_far(run_args)
            if found is None:
                found = kept_from_record(run, run_args, earlier)
                if found:
                    logger.info("%s: kept from %s (measured at %s)", run, args.keep_from,
                                ", ".join(found["measured_at"]))
            if found:
                measured[run] = dict(found, fit_sizes=run_args.fit_sizes)
    if "swin-l-cascade" not in measured:
        raise SystemExit("Table 4 needs the swin-l-cascade run: measure it first "
                         "(--runs swin-l-cascade)")
    data = dict(runs=measured, terms=PAPER_TERMS.to_dict(), device=measured["swin-l-cascade"][
        "device"], fit_sizes=fit_sizes)
    text = render(data)
    print(text)
    if args.record:
        publish(args.record, data, "projects.benchmark.paper_memory:render",
                command_line("projects.benchmark.plan_paper", argv))
    return data


if __name__ == "__main__":
    main()
