"""The accuracy study's regimes and its run records: what a finished run leaves behind.

A run's record (``docs/records/accuracy/<regime>/<row>/seed<k>.json``, committed) holds its
final metrics, its held-out and training-loss curves and its time, read from detectron2's
``metrics.json``. Its presence marks the run as done on every checkout, so it is written whole
or not at all. The study (:mod:`projects.transfer.study`) writes records, the report
(:mod:`projects.transfer.study_report`) reads them.

A run is evaluated on one split (:data:`SPLITS`): ``test``, the regime config's held-out split,
or ``val``, new images of the regime's training distribution (:data:`VALIDATION`) on which
options are chosen; and it trains at a multiple of the recipe's learning rate (``lr_scale``,
1 by default). Both are in its record and, where not the default, in its file's name
(:func:`run_tag`: ``val-lr2x-seed0.json``); records written before either existed are test
runs at the recipe's rate.
"""
from __future__ import annotations

import glob
import json
import math
import os
from typing import Dict, List

from e3va_d2.checkpoint.files import atomic_write
from projects.transfer.run_executor import row_folder

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
# Fixed before any E3VA result of the study was looked at (c5884da); one recipe for every row.
# "dense" was added on 2026-12-06, before any of its runs (its config says why).
REGIMES = {
    "near": "configs/Shapes/accuracy_near_mask_rcnn_swin.py",
    "far": "configs/Shapes/accuracy_far_mask_rcnn_swin.py",
    "dense": "configs/Shapes/accuracy_dense_mask_rcnn_swin.py",
}
# Each regime's validation split (e3va_d2/data/shapes.py: a seed of its own, the training
# split's distribution); "test" is what the regime's config evaluates on.
VALIDATION = {regime: f"shapes_{regime}_select" for regime in REGIMES}
SPLITS = ("test", "val")
RECORDS = os.path.join(ROOT, "docs", "records", "accuracy")
METRICS = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"))


def parse_regimes(spec: str) -> List[str]:
    """``"near,far"`` -> ``["near", "far"]``; ValueError naming any regime the study lacks."""
    regimes = [r.strip() for r in spec.split(",")]
    unknown = [r for r in regimes if r not in REGIMES]
    if unknown:
        raise ValueError(f"--regimes: unknown {unknown}; the study's regimes are "
                         f"{', '.join(REGIMES)}")
    return regimes


def parse_lr_scales(spec: str) -> List[float]:
    """``"0.5,1,2"`` -> ``[0.5, 1.0, 2.0]``; ValueError unless each is a positive number."""
    try:
        scales = [float(s) for s in spec.split(",")]
    except ValueError:
        scales = []
    if not scales or not all(0 < s < math.inf for s in scales):
        raise ValueError(f"--lr-scale: expected positive multiples of the recipe's learning "
                         f"rate, e.g. 0.5,1,2; got {spec!r}")
    return scales


def run_tag(split: str = "test", lr_scale: float = 1.0) -> str:
    """What sets a run apart beyond its regime, row and seed: ``""`` for a test run at the
    recipe's rate (the study's first runs), else e.g. ``"val"``, ``"lr2x"``, ``"val-lr0.5x"``."""
    if split not in SPLITS:
        raise ValueError(f"--split: unknown {split!r}; the study's splits are "
                         f"{', '.join(SPLITS)}")
    parts = [split] if split != "test" else []
    if lr_scale != 1:
        parts.append(f"lr{lr_scale:g}x")
    return "-".join(parts)


def split_overrides(regime: str, split: str) -> List[str]:
    """Config overrides that make a run of ``regime`` evaluate on ``split``."""
    run_tag(split)  # refuses an unknown split
    return [] if split == "test" else [f"dataloader.test.dataset.names={VALIDATION[regime]}"]


def record_path(regime: str, row: str, seed: int, root: str = RECORDS, split: str = "test",
                lr_scale: float = 1.0) -> str:
    tag = run_tag(split, lr_scale)
    return os.path.join(root, regime, row_folder(row),
                        f"{tag}-seed{seed}.json" if tag else f"seed{seed}.json")


def eval_curve(metrics_file: str, max_iter: int) -> List[dict]:
    """The periodic evaluations of a run: [{"iter": iterations done, "bbox/AP", "segm/AP"}].
    (detectron2 logs a periodic evaluation at the iteration it follows, the final one after
    the loop, at ``max_iter``.) A resumed run logs again what followed its checkpoint: the
    last row of an iteration counts."""
    curve: Dict[int, dict] = {}
    with open(metrics_file) as f:
        for line in f:
            row = json.loads(line)
            if "bbox/AP" in row:
                done = min(row["iteration"] + 1, max_iter)
                curve[done] = {"iter": done,
                               **{k: round(row[k], 2) for k, _ in METRICS if k in row}}
    return [curve[k] for k in sorted(curve)]


def final_detail(metrics: Dict[str, float]) -> Dict[str, float]:
    """A run's every final box and mask metric (AP50, AP75, by size, by class): what a method
    gains, and where, beyond its AP. Sizes without objects (NaN) are left out."""
    return {k: round(v, 2) for k, v in metrics.items()
            if k.startswith(("bbox/", "segm/")) and not math.isnan(v)}


def loss_curve(metrics_file: str, every: int = 100) -> List[dict]:
    curve: Dict[int, dict] = {}
    with open(metrics_file) as f:
        for row in map(json.loads, f):
            if "total_loss" in row and (row["iteration"] + 1) % every == 0:
                curve[row["iteration"] + 1] = {"iter": row["iteration"] + 1,
                                               "total_loss": round(row["total_loss"], 4)}
    return [curve[k] for k in sorted(curve)]


def make_record(regime: str, result: dict, folder: str, max_iter: int, split: str = "test",
                lr_scale: float = 1.0) -> dict:
    metrics_file = os.path.join(folder, "metrics.json")
    return {"regime": regime, "row": result["row"], "seed": result["seed"],
            "split": split, "lr_scale": lr_scale, "trunk": result["trunk"],
            "final": {k: round(result["metrics"][k], 2) for k, _ in METRICS},
            "final_detail": final_detail(result["metrics"]),
            "eval_curve": eval_curve(metrics_file, max_iter),
            "loss_curve": loss_curve(metrics_file),
            "trainable_in_backbone": result["trainable_in_backbone"],
            "minutes": round(result["minutes"], 1)}


def write_record(regime: str, result: dict, folder: str, max_iter: int, records: str,
                 split: str = "test", lr_scale: float = 1.0) -> None:
    path = record_path(regime, result["row"], result["seed"], records, split, lr_scale)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    record = make_record(regime, result, folder, max_iter, split, lr_scale)
    text = json.dumps(record, indent=1) + "\n"
    # Whole or not at all: a record's presence marks its run as done on every checkout.
    atomic_write(path, lambda f: f.write(text.encode()))


def load_runs(root: str = RECORDS) -> List[dict]:
    """Every committed record, of any split and learning rate; a record written before runs
    had either is a test run at the recipe's rate (and says so here)."""
    runs = []
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "*seed*.json"))):
        with open(path) as f:
            runs.append({"split": "test", "lr_scale": 1.0, **json.load(f)})
    return runs


def group(runs: List[dict], split: str = "test",
          lr_scale: float = 1.0) -> Dict[str, Dict[str, List[dict]]]:
    """{regime: {row: [record per seed, by seed]}} of the runs on ``split`` at ``lr_scale``."""
    out: Dict[str, Dict[str, List[dict]]] = {}
    for rec in runs:
        if (rec["split"], rec["lr_scale"]) == (split, lr_scale):
            out.setdefault(rec["regime"], {}).setdefault(rec["row"], []).append(rec)
    for rows in out.values():
        for recs in rows.values():
            recs.sort(key=lambda r: r["seed"])
    return out


def load_records(root: str = RECORDS, split: str = "test",
                 lr_scale: float = 1.0) -> Dict[str, Dict[str, List[dict]]]:
    """{regime: {row: [record per seed, by seed]}} from the committed records of ``split`` at
    ``lr_scale`` (by default the held-out test at the recipe's rate: the study's tables)."""
    return group(load_runs(root), split, lr_scale)
