"""Underfitting or overfitting? The accuracy study's trained models on images they trained on.

Each finished run of the study (``projects/transfer/study.py``; its ``model_final.pth`` in the
run folder) is evaluated, COCO AP, on the first ``--images`` of its regime's *training* split
(the generator draws every image from its own seed, so these are exactly the images the run
trained on) and again on the held-out split. A method whose training AP is as high as full
fine-tuning's but whose held-out AP is lower generalises worse; one whose training AP is lower
as well cannot fit the task (docs/ACCURACY.md, "Where `e3va_spatial` stops").

    python -m projects.transfer.fit_check --record accuracy-fit
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import os
from typing import List

from projects.tables import command_line, publish, table_head, table_row
from projects.transfer import run_executor
from projects.transfer.study_records import REGIMES, ROOT, parse_regimes
from projects.transfer.study_report import ordered

SUBSET = "{regime}_train_first{images}"  # the registered split: shapes_<regime>_train_first<N>


def finished_runs(output: str, regimes: List[str]) -> List[dict]:
    """Every run under ``output`` that finished (its ``result.json`` and final model are
    there): regime, row and seed as the run wrote them, and its folder."""
    found = []
    for regime in regimes:
        for path in glob.glob(os.path.join(output, regime, "runs", "*", "seed*", "result.json")):
            folder = os.path.dirname(path)
            if not os.path.isfile(os.path.join(folder, "model_final.pth")):
                continue
            with open(path) as f:
                result = json.load(f)
            found.append(dict(regime=regime, row=result["row"], seed=result["seed"],
                              folder=folder))
    rank = {row: i for i, row in enumerate(ordered({r["row"] for r in found}))}
    return sorted(found, key=lambda r: (regimes.index(r["regime"]), rank[r["row"]], r["seed"]))


def register_training_subset(regime: str, images: int) -> str:
    """Register the first ``images`` of ``regime``'s training split as their own dataset."""
    from e3va_d2.data.shapes import DEFAULT_SPLITS, register_shapes

    spec = dataclasses.replace(DEFAULT_SPLITS[f"{regime}_train"], num_images=images)
    split = SUBSET.format(regime=regime, images=images)
    register_shapes(splits={split: spec})
    return f"shapes_{split}"


def evaluate(run: dict, images: int) -> dict:
    """COCO AP of the run's final model on its training subset and its held-out split."""
    from detectron2.checkpoint import DetectionCheckpointer

    from e3va_d2.engine import E3VATrainer

    config = os.path.join(ROOT, REGIMES[run["regime"]])
    cfg = run_executor.run_config(config, [], run["row"], run["seed"], run["folder"])
    held_out = cfg.dataloader.test.dataset.names
    training = register_training_subset(run["regime"], images)
    cfg.dataloader.test.dataset.names = [training, held_out]
    cfg.dataloader.evaluator.output_dir = os.path.join(run["folder"], "fit_check")
    model = E3VATrainer.build_model(cfg)
    DetectionCheckpointer(model).load(os.path.join(run["folder"], "model_final.pth"))
    results = E3VATrainer.test(cfg, model)
    return dict({k: run[k] for k in ("regime", "row", "seed")},
                train_box_ap=round(results[training]["bbox"]["AP"], 2),
                train_mask_ap=round(results[training]["segm"]["AP"], 2),
                held_out_box_ap=round(results[held_out]["bbox"]["AP"], 2),
                held_out_mask_ap=round(results[held_out]["segm"]["AP"], 2))


def render(data: dict) -> str:
    """One row per run: box and mask AP on the training images and held out, and the gap."""
    lines = table_head(["regime", "method", "seed", "box AP, training images",
                        "box AP, held out", "training - held out", "mask AP, training images",
                        "mask AP, held out"])
    for r in data["rows"]:
        lines.append(table_row([
            r["regime"], f"`{r['row']}`", str(r["seed"]), f"{r['train_box_ap']:.1f}",
            f"{r['held_out_box_ap']:.1f}", f"{r['train_box_ap'] - r['held_out_box_ap']:+.1f}",
            f"{r['train_mask_ap']:.1f}", f"{r['held_out_mask_ap']:.1f}"]))
    return "\n".join(lines) + "\n\n" + data["setup"]


def main(argv=None) -> List[dict]:
    import torch

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default=os.path.join(ROOT, "output", "accuracy"),
                   help="the study's run folders (its --output)")
    p.add_argument("--regimes", default=",".join(REGIMES))
    p.add_argument("--images", type=int, default=512, help="training images evaluated")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--record", default="",
                   help="also publish the table as this docs table (projects/tables.py)")
    args = p.parse_args(argv)
    try:
        regimes = parse_regimes(args.regimes)
    except ValueError as e:
        p.error(str(e))
    torch.set_num_threads(args.threads)
    runs = finished_runs(args.output, regimes)
    if not runs:
        raise SystemExit(f"No finished run (runs/<row>/seed<k>/model_final.pth) under "
                         f"{args.output}: run projects.transfer.study first")
    rows = [evaluate(run, args.images) for run in runs]
    setup = (f"Each run's final model on the first {args.images} images of its regime's "
             f"training split (images it trained on) and on its held-out split; every run "
             f"whose folder was on the measuring machine (torch {torch.__version__}).")
    data = dict(setup=setup, rows=rows)
    if args.record:
        publish(args.record, data, "projects.transfer.fit_check:render",
                command_line("projects.transfer.fit_check", argv))
    print(render(data))
    return rows


if __name__ == "__main__":
    main()
