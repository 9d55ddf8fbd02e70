"""The accuracy study's regimes and its run records: what a finished run leaves behind.

A run's record (``docs/records/accuracy/<regime>/<row>/seed<k>.json``, committed) holds its
final metrics, its held-out and training-loss curves and its time, read from detectron2's
``metrics.json``. Its presence marks the run as done on every checkout, so it is written whole
or not at all. The study (:mod:`projects.transfer.study`) writes records, the report
(:mod:`projects.transfer.study_report`) reads them.
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
REGIMES = {
    "near": "configs/Shapes/accuracy_near_mask_rcnn_swin.py",
    "far": "configs/Shapes/accuracy_far_mask_rcnn_swin.py",
}
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


def record_path(regime: str, row: str, seed: int, root: str = RECORDS) -> str:
    return os.path.join(root, regime, row_folder(row), f"seed{seed}.json")


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


def make_record(regime: str, result: dict, folder: str, max_iter: int) -> dict:
    metrics_file = os.path.join(folder, "metrics.json")
    return {"regime": regime, "row": result["row"], "seed": result["seed"],
            "trunk": result["trunk"],
            "final": {k: round(result["metrics"][k], 2) for k, _ in METRICS},
            "final_detail": final_detail(result["metrics"]),
            "eval_curve": eval_curve(metrics_file, max_iter),
            "loss_curve": loss_curve(metrics_file),
            "trainable_in_backbone": result["trainable_in_backbone"],
            "minutes": round(result["minutes"], 1)}


def write_record(regime: str, result: dict, folder: str, max_iter: int, records: str) -> None:
    path = record_path(regime, result["row"], result["seed"], records)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(make_record(regime, result, folder, max_iter), indent=1) + "\n"
    # Whole or not at all: a record's presence marks its run as done on every checkout.
    atomic_write(path, lambda f: f.write(text.encode()))


def load_records(root: str = RECORDS) -> Dict[str, Dict[str, List[dict]]]:
    """{regime: {row: [record per seed, by seed]}} from the committed records."""
    out: Dict[str, Dict[str, List[dict]]] = {}
    for path in sorted(glob.glob(os.path.join(root, "*", "*", "seed*.json"))):
        with open(path) as f:
            rec = json.load(f)
        out.setdefault(rec["regime"], {}).setdefault(rec["row"], []).append(rec)
    for rows in out.values():
        for recs in rows.values():
            recs.sort(key=lambda r: r["seed"])
    return out
