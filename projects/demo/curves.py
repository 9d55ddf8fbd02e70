#!/usr/bin/env python
"""Training curves from detectron2's ``metrics.json``: losses and evaluation metrics over
iterations, one line per run (so a comparison's methods overlay).

    python -m projects.demo.curves output/shapes_demo_e3va                 # one run
    python -m projects.demo.curves output/accuracy/far/runs/*/seed0 --output curves.png

Each argument is a run folder (or its ``metrics.json``); the label is the folder's name, or
its parent's for ``seed<k>`` folders of the accuracy study. Writes ``<first run>/curves.png`` by
default.
"""
from __future__ import annotations

import argparse
import json
import math
import os
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

LOSS = "total_loss"
METRICS = ("bbox/AP", "segm/AP", "bbox/AP50", "sem_seg/mIoU")  # the first the run has is drawn


def read_metrics(path: str) -> List[dict]:
    """detectron2's metrics.json: one JSON object per line (a resumed run appends)."""
    path = os.path.join(path, "metrics.json") if os.path.isdir(path) else path
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def label(path: str) -> str:
    folder = os.path.dirname(path) if path.endswith(".json") else path.rstrip(os.sep)
    name = os.path.basename(folder)
    return os.path.basename(os.path.dirname(folder)) if name.startswith("seed") else name


def series(rows: List[dict], key: str):
    points = sorted({r["iteration"]: r[key] for r in rows if key in r
                     and isinstance(r[key], (int, float)) and not math.isnan(r[key])}.items())
    return [p[0] for p in points], [p[1] for p in points]


def plot_curves(runs: Dict[str, List[dict]], path: str) -> str:
    metric = next((m for m in METRICS if any(series(rows, m)[0] for rows in runs.values())), None)
    fig, axes = plt.subplots(1, 2 if metric else 1, figsize=(11 if metric else 6, 4),
                             squeeze=False)
    colors = plt.cm.tab20.colors if len(runs) > 10 else plt.cm.tab10.colors
    for (name, rows), color in zip(runs.items(), colors * (len(runs) // len(colors) + 1)):
        axes[0, 0].plot(*series(rows, LOSS), label=name, linewidth=1, color=color)
        if metric:
            axes[0, 1].plot(*series(rows, metric), marker="o", label=name, color=color)
    axes[0, 0].set(xlabel="iteration", ylabel=LOSS, title="training loss")
    if metric:
        axes[0, 1].set(xlabel="iteration", ylabel=metric, title=f"evaluation: {metric}")
    for ax in axes[0]:
        ax.grid(alpha=0.3)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders or metrics.json files")
    p.add_argument("--output", help="PNG path (default: <first run>/curves.png)")
    args = p.parse_args(argv)
    runs = {label(r): read_metrics(r) for r in args.runs}
    first = args.runs[0] if os.path.isdir(args.runs[0]) else os.path.dirname(args.runs[0])
    path = plot_curves(runs, args.output or os.path.join(first, "curves.png"))
    print(f"Wrote training curves to {path}")
    return path


if __name__ == "__main__":
    main()
