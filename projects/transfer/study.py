#!/usr/bin/env python
"""The accuracy study: when does E3VA match full fine-tuning? (docs/ACCURACY.md)

Two downstream regimes, fixed before any E3VA result of the study was looked at, each a config
with one recipe for every method:

- ``near`` (``configs/Shapes/accuracy_near_mask_rcnn_swin.py``): solid objects, whose features
  the pre-trained trunk already holds;
- ``far`` (``configs/Shapes/accuracy_far_mask_rcnn_swin.py``): objects set apart only by fine
  stripes or checks, which the pre-text never taught.

Every (regime, row, seed) run trains with :mod:`projects.transfer.compare` (one process per
run, resumed from its last checkpoint after a stop, skipped once finished) and evaluates every
``train.eval_period`` iterations, so each run's held-out curve shows whether it plateaued. Its
record (final metrics, the curves, time) is written to
``docs/records/accuracy/<regime>/<row>/seed<k>.json`` (:mod:`projects.transfer.study_records`):
small JSON files that are committed. The tables and figures of docs/ACCURACY.md are rendered
from the committed records alone (:mod:`projects.transfer.study_report`, ``--render``), and
``tests/test_accuracy_study.py`` checks that they match. A run with a record is not run again.

Runs take about an hour each on 2 cores, more than a working session holds for all of them.
``--park`` writes the record of each finished run and copies each unfinished run's resumable
state (its last checkpoint, ``last_checkpoint`` and ``metrics.json``) to
``projects/transfer/runs/`` (committed; one checkpoint per run, overwritten); the next study
on any checkout copies it back into its run folder first, and the run continues exactly from
there.

    python -m projects.transfer.study --regimes near,far --rows full,fixed --seeds 0,1,2
    python -m projects.transfer.study --rows lora,e3va          # after full's curve plateaued
    python -m projects.transfer.study --render                  # tables and plots only
    python -m projects.transfer.study --park                    # before a stop: keep progress

``kill <pid>`` (SIGTERM) stops the study and every run it trains, each at a checkpoint; the same
command continues them.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import shutil
import sys
from typing import Dict, List

from e3va_d2.checkpoint.files import atomic_write
from projects.benchmark.tuning_cost import method_names
from projects.transfer import compare
from projects.transfer.study_records import (
    RECORDS,
    REGIMES,
    ROOT,
    load_records,
    parse_regimes,
    record_path,
    write_record,
)
from projects.transfer.study_report import DOC, render

PARKED = os.path.join(ROOT, "projects", "transfer", "runs")  # unfinished runs' state, committed
# Copied after the checkpoint last_checkpoint names, last_checkpoint last.
RESUME_FILES = ("metrics.json", compare.ELAPSED_FILE, "last_checkpoint")
logger = logging.getLogger("e3va_d2.study")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regimes", default="near,far")
    p.add_argument("--rows", default="full,fixed,lora,e3va",
                   help="tuning methods, with options as 'e3va:zero_init=True' or "
                        "'e3va_spatial:conv_kernels=(3,5,7)'")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--output", default="output/accuracy", help="run folders (not committed)")
    p.add_argument("--records", default=RECORDS, help="where run records are written")
    p.add_argument("--doc", default=DOC, help="the document whose tables are rendered")
    p.add_argument("--parked", default=PARKED, help="where unfinished runs' state is kept")
    p.add_argument("--render", action="store_true",
                   help="only render docs/ACCURACY.md's tables and figures from the records")
    p.add_argument("--park", action="store_true",
                   help="only copy unfinished runs' resumable state to --parked (to commit)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = p.parse_args(argv)
    try:
        args.regimes = parse_regimes(args.regimes)
    except ValueError as e:
        p.error(str(e))
    if not all(s.strip().isdigit() for s in args.seeds.split(",")):
        p.error(f"--seeds: expected seeds as integers, e.g. 0,1,2; got {args.seeds!r}")
    return args


def _copy_run_state(source: str, target: str) -> None:
    """``source``'s last checkpoint and ``RESUME_FILES`` into ``target``, replacing what
    ``target`` held; each file is written whole (copy, then rename) before ``last_checkpoint``,
    which names the checkpoint, so a stop midway leaves ``target`` resumable or unchanged."""
    with open(os.path.join(source, "last_checkpoint")) as f:
        checkpoint = f.read().strip()
    os.makedirs(target, exist_ok=True)
    for name in (checkpoint, *RESUME_FILES):
        if os.path.isfile(os.path.join(source, name)):
            with open(os.path.join(source, name), "rb") as src:
                atomic_write(os.path.join(target, name), lambda dst: shutil.copyfileobj(src, dst))
    for name in os.listdir(target):  # older checkpoints of the run
        if name.endswith(".pth") and name != checkpoint:
            os.remove(os.path.join(target, name))


def _run_folders(root: str) -> List[str]:
    """The run folders under ``root`` (``<regime>/runs/<row>/seed<k>``), sorted."""
    return sorted(glob.glob(os.path.join(root, "*", "runs", "*", "seed*")))


def park(output: str, parked: str, records: str = RECORDS, opts=()) -> List[str]:
    """Copy every unfinished run's resumable state from ``output`` to ``parked``; a finished
    run gets its record (if the study has not written it yet) and its parked state goes.
    Returns the runs parked."""
    from e3va_d2.config import load_config

    done = []
    for folder in _run_folders(output):
        target = os.path.join(parked, os.path.relpath(folder, output))
        result_file = os.path.join(folder, "result.json")
        if os.path.isfile(result_file):
            with open(result_file) as f:
                result = json.load(f)
            regime = os.path.relpath(folder, output).split(os.sep)[0]
            if not os.path.isfile(record_path(regime, result["row"], result["seed"], records)):
                max_iter = load_config(os.path.join(ROOT, REGIMES[regime]),
                                       list(opts)).train.max_iter
                write_record(regime, result, folder, max_iter, records)
            shutil.rmtree(target, ignore_errors=True)
        elif os.path.isfile(os.path.join(folder, "last_checkpoint")):
            _copy_run_state(folder, target)
            done.append(os.path.relpath(folder, output))
    return done


def unpark(parked: str, output: str) -> List[str]:
    """Copy parked state into run folders that have no checkpoint of their own yet."""
    done = []
    for source in _run_folders(parked):
        target = os.path.join(output, os.path.relpath(source, parked))
        if os.path.isfile(os.path.join(source, "last_checkpoint")) and not os.path.isfile(
                os.path.join(target, "last_checkpoint")):
            _copy_run_state(source, target)
            done.append(os.path.relpath(source, parked))
    return done


def run(args) -> None:
    from e3va_d2.config import load_config

    rows = method_names(args.rows)  # a bracketed option value may hold commas
    seeds = [int(s) for s in args.seeds.split(",")]
    for name in unpark(args.parked, args.output):
        logger.info("continuing %s from its parked state (%s)", name, args.parked)
    for regime in args.regimes:
        config = os.path.join(ROOT, REGIMES[regime])
        output = os.path.join(args.output, regime)
        # A run with a committed record is done, on any checkout. Rows that still need the
        # same seeds train together (args.jobs at a time).
        todo: Dict[str, List[str]] = {}
        for row in rows:
            missing = ",".join(str(s) for s in seeds
                               if not os.path.isfile(record_path(regime, row, s, args.records)))
            if missing:
                todo.setdefault(missing, []).append(row)
        results = {}
        for missing, group in todo.items():
            compare_args = compare.parse_args(
                ["--config-file", config, "--methods", ",".join(group), "--seeds", missing,
                 "--no-floor", "--no-cost", "--jobs", str(args.jobs),
                 "--threads", str(args.threads), "--output", output, *args.opts])
            results.update(compare.train_all(compare_args, args.threads))
        max_iter = load_config(config, list(args.opts)).train.max_iter
        for row, per_seed in results.items():
            for result in per_seed:
                write_record(regime, result, compare.run_folder(output, row, result["seed"]),
                             max_iter, args.records)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    if args.park:
        for name in park(args.output, args.parked, args.records, args.opts):
            logger.info("parked %s in %s", name, args.parked)
        return
    if not args.render:
        run(args)
    render(load_records(args.records), args.doc, os.path.dirname(os.path.abspath(args.doc)))


if __name__ == "__main__":
    main()
