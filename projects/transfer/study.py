#!/usr/bin/env python
"""The accuracy study: when does E3VA match full fine-tuning? (docs/ACCURACY.md)

Two downstream regimes, fixed before any E3VA result of the study was looked at, and a third
fixed before any of its runs, each a config with one recipe for every method:

- ``near`` (``configs/Shapes/accuracy_near_mask_rcnn_swin.py``): solid objects, whose features
  the pre-trained trunk already holds;
- ``far`` (``configs/Shapes/accuracy_far_mask_rcnn_swin.py``): objects set apart only by fine
  stripes or checks, which the pre-text never taught;
- ``dense`` (``configs/Shapes/accuracy_dense_mask_rcnn_swin.py``): more, smaller objects filled
  with dots or rings matched to their surroundings.

Every (regime, row, seed) run trains with :mod:`projects.transfer.run_executor` (one process per
run, resumed from its last checkpoint after a stop, skipped once finished) and evaluates every
``train.eval_period`` iterations, so each run's held-out curve shows whether it plateaued. Its
record (final metrics, the curves, time) is written to
``docs/records/accuracy/<regime>/<row>/seed<k>.json`` (:mod:`projects.transfer.study_records`):
small JSON files that are committed. The tables and figures of docs/ACCURACY.md are rendered
from the committed records alone (:mod:`projects.transfer.study_render`, ``--render``), and
``tests/test_accuracy_study.py`` checks that they match. A run with a record is not run again.

A run takes about an hour on 2 cores, two at a time with one thread each (its record keeps
its minutes): run it to its end. Its state (checkpoints, metrics) stays in ``--output``,
which git ignores; only its record is committed. A stopped run continues exactly from its last
checkpoint when the same command runs again on the same checkout.

    python -m projects.transfer.study --regimes near,far --rows full,fixed --seeds 0,1,2
    python -m projects.transfer.study --rows lora,e3va          # after full's curve plateaued
    python -m projects.transfer.study --render                  # tables and plots only

Options are chosen on each regime's validation split, never on the held-out test:
``--split val`` evaluates the runs on new images of the training distribution
(``study_records.VALIDATION``); the chosen configuration alone then runs with ``--split test``
(the default). ``--lr-scale 0.5,1,2`` trains every row at those multiples of the recipe's
learning rate. Both are in each record and in its file's name.

    python -m projects.transfer.study --split val --rows lora,e3va --seeds 0 --lr-scale 0.5,2

``kill <pid>`` (SIGTERM) stops the study and every run it trains, each at a checkpoint; the same
command continues them.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Dict, List

from e3va_d2.modeling.tuning import parse_method_specs
from projects.transfer import run_executor
from projects.transfer.study_records import (
    RECORDS,
    REGIMES,
    ROOT,
    SPLITS,
    parse_lr_scales,
    parse_regimes,
    record_path,
    run_tag,
    split_overrides,
    write_record,
)
from projects.transfer.study_render import DOC, render

logger = logging.getLogger("e3va_d2.study")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--regimes", default=",".join(REGIMES))
    p.add_argument("--split", default="test", choices=SPLITS,
                   help="what the runs are evaluated on: 'val' to choose options, 'test' (the "
                        "held-out split) for the chosen configuration only")
    p.add_argument("--lr-scale", default="1",
                   help="multiples of the recipe's learning rate, each a run per row and seed")
    p.add_argument("--rows", default="full,fixed,lora,e3va",
                   help="tuning methods, with options as 'e3va:zero_init=True' or "
                        "'e3va_spatial:conv_kernels=(3,5,7)'")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="threads per run")
    p.add_argument("--output", default="output/accuracy", help="run folders (not committed)")
    p.add_argument("--records", default=RECORDS, help="where run records are written")
    p.add_argument("--doc", default=DOC, help="the document whose tables are rendered")
    p.add_argument("--render", action="store_true",
                   help="only render docs/ACCURACY.md's tables and figures from the records")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = p.parse_args(argv)
    try:
        args.regimes = parse_regimes(args.regimes)
        args.lr_scales = parse_lr_scales(args.lr_scale)
        parse_method_specs(args.rows)
    except ValueError as e:
        p.error(str(e))
    if not all(s.strip().isdigit() for s in args.seeds.split(",")):
        p.error(f"--seeds: expected seeds as integers, e.g. 0,1,2; got {args.seeds!r}")
    return args


def run(args) -> None:
    rows = parse_method_specs(args.rows)  # a bracketed option value may hold commas
    seeds = [int(s) for s in args.seeds.split(",")]
    for regime in args.regimes:
        for lr_scale in args.lr_scales:
            run_regime(args, regime, rows, seeds, lr_scale)


def run_overrides(config: str, opts: List[str], regime: str, split: str,
                  lr_scale: float) -> List[str]:
    """The user's overrides, then those that make a run evaluate on ``split`` and train at
    ``lr_scale`` times the learning rate those overrides leave (the recipe's by default)."""
    from e3va_d2.config import load_config

    extra = split_overrides(regime, split)
    if lr_scale != 1:
        extra.append(f"optimizer.lr={load_config(config, opts).optimizer.lr * lr_scale!r}")
    return [*opts, *extra]


def run_regime(args, regime: str, rows: List[str], seeds: List[int], lr_scale: float) -> None:
    from e3va_d2.config import load_config

    config = os.path.join(ROOT, REGIMES[regime])
    tag = run_tag(args.split, lr_scale)
    # Runs on another split or at another rate train in folders of their own.
    output = os.path.join(args.output, f"{regime}-{tag}" if tag else regime)
    opts = run_overrides(config, list(args.opts), regime, args.split, lr_scale)

    def recorded(row: str, seed: int) -> bool:
        return os.path.isfile(record_path(regime, row, seed, args.records, args.split, lr_scale))

    # A run with a committed record is done, on any checkout. Rows that still need the same
    # seeds train together (args.jobs at a time).
    todo: Dict[str, List[str]] = {}
    for row in rows:
        missing = ",".join(str(s) for s in seeds if not recorded(row, s))
        if missing:
            todo.setdefault(missing, []).append(row)
    results = {}
    for missing, group in todo.items():
        results.update(run_executor.train_all(
            config, opts, group, [int(s) for s in missing.split(",")], output,
            args.jobs, args.threads))
    max_iter = load_config(config, opts).train.max_iter
    for row, per_seed in results.items():
        for result in per_seed:
            write_record(regime, result, run_executor.run_folder(output, row, result["seed"]),
                         max_iter, args.records, args.split, lr_scale)


def main(argv=None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    if not args.render:
        run(args)
    render(args.records, args.doc, os.path.dirname(os.path.abspath(args.doc)))


if __name__ == "__main__":
    main()
