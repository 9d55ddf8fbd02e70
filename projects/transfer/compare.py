#!/usr/bin/env python
"""Tables 1-2 in miniature: every tuning method fine-tuned from the same pre-trained trunk.

Each method of the paper (and a "random trunk, E3VA" floor) trains with one shared recipe (the
config's: same iterations, data order per seed, learning rate and schedule; the paper's appendix
uses one learning rate for all methods of a task) for every seed, and is evaluated on the
held-out split. The cost columns (trainable parameters, bytes saved for backward, step time)
come from the cost benchmark (``projects/benchmark/tuning_cost.py``) on the same model and image
size, run alone before any training so that its times are not disturbed.

    python -m projects.transfer.compare            # every method, seeds 0-2 (make compare)
    python -m projects.transfer.compare --methods full,e3va --seeds 0 train.max_iter=20

Every run trains in its own process into ``<output>/runs/<row>/seed<k>/`` and ends by writing
``result.json`` (:mod:`projects.transfer.run_executor`, which the accuracy study's runs go through
too); a restarted comparison skips the runs that have one and resumes a stopped run from its
last checkpoint. A row may carry options: ``e3va:zero_init=True``. Writes
``<output>/results.json``, ``results.md`` (the table), ``accuracy_vs_memory.png`` (the
paper's Figure 1: accuracy against training memory) and ``curves.png`` (every row's training
curves, first seed); ``--record NAME`` also writes the table into the docs (projects/tables.py).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import sys
from typing import Dict, List, Optional

from projects.tables import table_head, table_row
from projects.transfer.run_executor import FLOOR, METRICS, run_folder, train_all

DEFAULT_CONFIG = "configs/Shapes/transfer_mask_rcnn_swin_e3va.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--methods", default="all",
                   help="comma-separated registered tuning methods, or 'all'")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    p.add_argument("--no-floor", action="store_true",
                   help=f"skip the '{FLOOR}' row (E3VA on a random trunk)")
    p.add_argument("--output", default="output/transfer")
    p.add_argument("--jobs", type=int, default=2,
                   help="runs at once, each with cores/jobs threads (results do not depend on "
                        "it, up to float rounding)")
    p.add_argument("--threads", type=int, default=None,
                   help="threads per run (default: cores / jobs); lower it when other jobs share "
                        "the cores, where oversubscribed threads slow a run many times over")
    p.add_argument("--cost-steps", type=int, default=3, help="timed benchmark steps per method")
    p.add_argument("--no-cost", action="store_true", help="skip the cost benchmark")
    p.add_argument("--record", default="",
                   help="also publish the table as this docs table (projects/tables.py)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides for every run")
    args = p.parse_args(argv)
    try:
        rows(args)
    except ValueError as e:
        p.error(f"--methods: {e}")
    return args


def rows(args) -> List[str]:
    from projects.benchmark.bench import method_names

    methods = method_names(args.methods)
    return methods + ([] if args.no_floor else [FLOOR])


def measure_cost(args) -> Optional[Dict[str, dict]]:
    """The cost benchmark's results per method on the comparison's model and image size."""
    if args.no_cost:
        return None
    from projects.benchmark.tuning_cost import main as benchmark

    folder = os.path.join(args.output, "cost")
    path = os.path.join(folder, "cost.json")
    if not os.path.isfile(path):
        methods = [r for r in rows(args) if r != FLOOR]
        benchmark(["--config-file", args.config_file, "--methods", ",".join(methods),
                   "--size", "112", "--batch", "4", "--fit-batches", "4", "--steps",
                   str(args.cost_steps), "--warmup", "1", "--device", "cpu", "--output", folder,
                   *args.opts])
    with open(path) as f:
        return json.load(f)["results"]


def summarise(runs: Dict[str, List[dict]], cost: Optional[Dict[str, dict]]) -> Dict[str, dict]:
    """Per row: every seed's metrics, their mean, sample standard deviation, min and max."""
    summary = {}
    for row, results in runs.items():
        names = sorted({m for r in results for m in r["metrics"]})
        stats = {}
        for name in names:
            # detectron2 reports NaN for an empty size range (APl: no large objects here).
            values = [r["metrics"][name] for r in results
                      if name in r["metrics"] and math.isfinite(r["metrics"][name])]
            if not values:
                continue
            stats[name] = dict(values=values, mean=statistics.fmean(values),
                               std=statistics.stdev(values) if len(values) > 1 else 0.0,
                               min=min(values), max=max(values))
        method = results[0]["method"] if results else row
        entry = dict(method=method, trunk=results[0]["trunk"] if results else "",
                     seeds=[r["seed"] for r in results], metrics=stats,
                     trainable_in_backbone=results[0]["trainable_in_backbone"] if results else 0)
        if cost and method in cost:
            c = cost[method]
            entry.update(saved_bytes=c["saved_bytes"], step_seconds=c["step_seconds"])
        summary[row] = entry
    return summary


def _cell(stats: Optional[dict]) -> str:
    if not stats:
        return ""
    return f"{stats['mean']:.1f} ± {stats['std']:.1f}"


def table(summary: Dict[str, dict]) -> str:
    """The Markdown table: accuracy (mean ± std over seeds, then every seed) and cost."""
    full_step = summary.get("full", {}).get("step_seconds")
    head = ["method", "trunk"] + list(METRICS.values()) + [
        "box AP per seed", "trainable (backbone)", "saved for backward", "step / full"]
    lines = table_head(head)
    for row, e in summary.items():
        per_seed = ", ".join(f"{v:.1f}" for v in e["metrics"].get("bbox/AP", {}).get("values", []))
        saved = f"{e['saved_bytes'] / 2**20:,.0f} MiB" if "saved_bytes" in e else ""
        step = (f"{e['step_seconds'] / full_step:.2f}x" if full_step and "step_seconds" in e
                else "")
        lines.append(table_row(
            [e["method"], "random" if row == FLOOR else "pre-trained"]
            + [_cell(e["metrics"].get(m)) for m in METRICS]
            + [per_seed, f"{e['trainable_in_backbone'] / 1e6:.3f}M", saved, step]))
    return "\n".join(lines)


def plot(summary: Dict[str, dict], path: str, title: str, held_out: str) -> None:
    """Box AP against bytes saved for backward (the paper's Figure 1), error bars = std."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    for row, e in summary.items():
        stats = e["metrics"].get("bbox/AP")
        if not stats or "saved_bytes" not in e:
            continue
        x = e["saved_bytes"] / 2**20
        ours = e["method"].startswith("e3va")
        ax.errorbar(x, stats["mean"], yerr=stats["std"], fmt="*" if ours else "o",
                    ms=12 if ours else 7, capsize=3,
                    color="tab:red" if ours else "tab:blue", alpha=0.5 if row == FLOOR else 1)
        ax.annotate(e["method"] + (" (random trunk)" if row == FLOOR else ""),
                    (x, stats["mean"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    ax.set_xlabel("activations saved for backward per step (MiB)")
    ax.set_ylabel(f"box AP on {held_out}")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def usable_cores() -> int:
    """Cores this process may run on (``taskset`` respected), not all of the machine's."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def overlay_curves(args) -> Optional[str]:
    """Every row's training loss (first seed) in one plot: ``<output>/curves.png``."""
    from projects.demo.curves import plot_curves, read_metrics

    seed = int(args.seeds.split(",")[0])
    runs = {row: run_folder(args.output, row, seed) for row in rows(args)}
    runs = {row: read_metrics(folder) for row, folder in runs.items()
            if os.path.isfile(os.path.join(folder, "metrics.json"))}
    return plot_curves(runs, os.path.join(args.output, "curves.png")) if runs else None


def main(argv=None) -> Dict[str, dict]:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout)
    args = parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    threads = args.threads or max(1, usable_cores() // max(args.jobs, 1))
    cost = measure_cost(args)
    runs = train_all(args.config_file, list(args.opts), rows(args),
                     [int(s) for s in args.seeds.split(",")], args.output, args.jobs, threads)
    summary = summarise(runs, cost)
    seeds = args.seeds.replace(",", ", ")
    setup = (f"{os.path.basename(args.config_file)} {' '.join(args.opts)}".strip()
             + f"; seeds {seeds}")
    text = render(dict(setup=setup, rows=summary))
    with open(os.path.join(args.output, "results.json"), "w") as f:
        json.dump(dict(setup=setup, args=vars(args), rows=summary), f, indent=2)
    with open(os.path.join(args.output, "results.md"), "w") as f:
        f.write(text + "\n")
    if args.record:
        from projects.tables import command_line, publish

        publish(args.record, dict(setup=setup, rows=summary), "projects.transfer.compare:render",
                command_line("projects.transfer.compare", argv))
    from e3va_d2.config import load_config

    held_out = load_config(args.config_file, list(args.opts)).dataloader.test.dataset.names
    plot(summary, os.path.join(args.output, "accuracy_vs_memory.png"), setup, held_out)
    overlay_curves(args)
    print(text)
    return summary


def render(data: dict) -> str:
    """The table from a record (``results.json``'s ``rows`` and ``setup``)."""
    return table(data["rows"]) + "\n\n" + data["setup"]


if __name__ == "__main__":
    main()
