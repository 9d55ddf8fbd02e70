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
``result.json``; a restarted comparison skips the runs that have one and resumes a stopped run
from its last checkpoint. A row may carry options: ``e3va:zero_init=True``. Writes
``<output>/results.json``, ``results.md`` (the table), ``accuracy_vs_memory.png`` (the
paper's Figure 1: accuracy against training memory) and ``curves.png`` (every row's training
curves, first seed); ``--record NAME`` also writes the table into the docs (projects/tables.py).
"""
from __future__ import annotations

import argparse
import concurrent.futures as futures
import json
import logging
import math
import multiprocessing as mp
import os
import signal
import statistics
import sys
import time
from typing import Dict, List, Optional

from projects.tables import table_head, table_row

FLOOR = "e3va_random"  # E3VA on a random, frozen trunk: what the pre-training adds
DEFAULT_CONFIG = "configs/Shapes/transfer_mask_rcnn_swin_e3va.py"
# (result key, column label): detectron2's COCOEvaluator results, or others' first metric.
METRICS = {"bbox/AP": "box AP", "segm/AP": "mask AP"}

logger = logging.getLogger("e3va_d2.transfer")


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
    return p.parse_args(argv)


def rows(args) -> List[str]:
    from projects.benchmark.tuning_cost import method_names

    methods = method_names(args.methods)
    return methods + ([] if args.no_floor else [FLOOR])


def row_folder(row: str) -> str:
    """A row's folder name: ``e3va:zero_init=True`` as ``e3va__zero_init=True`` (a ':' is
    refused by some file systems, and run folders are committed when parked)."""
    return row.replace(":", "__")


def run_folder(output: str, row: str, seed: int) -> str:
    return os.path.join(output, "runs", row_folder(row), f"seed{seed}")


def flat_metrics(results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """detectron2's ``{task: {metric: value}}`` as ``{"task/metric": value}``."""
    return {f"{task}/{name}": float(v) for task, metrics in results.items()
            for name, v in metrics.items()}


def run_config(config_file: str, opts: List[str], row: str, seed: int, folder: str):
    """The config of one (row, seed) run: the shared recipe with this row's tuning method."""
    from e3va_d2.config import apply_overrides, load_config, set_tuning_method, tuned_swin_node
    from e3va_d2.modeling import build_tuning
    from projects.benchmark.tuning_cost import method_options

    cfg = load_config(config_file)
    # Set, not passed as overrides: a row's folder may hold '=' or brackets
    # (e3va_spatial:conv_kernels=()), which the override grammar refuses.
    cfg.train.output_dir, cfg.train.seed = folder, seed
    name, options = method_options("e3va" if row == FLOOR else row)
    set_tuning_method(cfg.model, build_tuning(name, **options))
    # After the swap, so that options of the method (tuning.zero_init=True) apply to it.
    cfg = apply_overrides(cfg, list(opts))
    if row == FLOOR:
        tuned_swin_node(cfg.model).weights = ""
        cfg.train.init_checkpoint = ""
    return cfg


def trunk_source(cfg) -> str:
    """Where a run's trunk comes from: the model's ``weights``, else ``train.init_checkpoint``."""
    from e3va_d2.config import tuned_swin_node

    return str(tuned_swin_node(cfg.model).get("weights", "") or cfg.train.init_checkpoint
               or "random")


ELAPSED_FILE = "elapsed_minutes.json"  # minutes a stopped run trained before it was resumed


def minutes_before(folder: str) -> float:
    """Minutes the run in ``folder`` spent in earlier sessions that stopped (0 for a new run)."""
    path = os.path.join(folder, ELAPSED_FILE)
    if not os.path.isfile(path):
        return 0.0
    with open(path) as f:
        return float(json.load(f)["minutes"])


def train_one(config_file: str, opts: List[str], row: str, seed: int, folder: str,
              threads: int) -> dict:
    """One (row, seed) run in this process; writes and returns its ``result.json``. Its
    ``minutes`` count every session of the run, each added to ``ELAPSED_FILE`` as it ends (a
    session killed outright, SIGKILL, adds nothing)."""
    import torch
    from detectron2.utils.env import seed_all_rng
    from detectron2.utils.logger import setup_logger

    from e3va_d2.checkpoint import atomic_write
    from e3va_d2.engine import E3VATrainer
    from e3va_d2.engine.params import trainable_parameter_table

    torch.set_num_threads(threads)
    method = "e3va" if row == FLOOR else row
    cfg = run_config(config_file, opts, row, seed, folder)
    os.makedirs(folder, exist_ok=True)
    setup_logger(folder, name="detectron2")
    setup_logger(folder, name="e3va_d2")
    seed_all_rng(seed)  # as detectron2's default_setup does for train.seed
    start, before = time.time(), minutes_before(folder)

    def minutes() -> float:
        return before + (time.time() - start) / 60

    try:
        trainer = E3VATrainer(cfg)
        # A run stopped midway continues from its last checkpoint (exactly; engine/resume.py).
        trainer.resume_or_load(resume=True)
        _, totals = trainable_parameter_table(trainer._trainer.model)
        metrics = flat_metrics(trainer.train())
    finally:
        spent = json.dumps({"minutes": minutes()}).encode()
        atomic_write(os.path.join(folder, ELAPSED_FILE), lambda f: f.write(spent))
    result = dict(row=row, method=method, seed=seed, metrics=metrics,
                  trunk=trunk_source(cfg),
                  trainable_in_backbone=totals["trainable_in_backbone"],
                  trainable=totals["trainable"], minutes=minutes())
    atomic_write(os.path.join(folder, "result.json"),
                 lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def train_all(args, threads: int) -> Dict[str, List[dict]]:
    """Every (row, seed) run not finished yet, ``args.jobs`` at a time, each in a new process."""
    seeds = [int(s) for s in args.seeds.split(",")]
    todo, done = [], {row: [] for row in rows(args)}
    for row in done:
        for seed in seeds:
            folder = run_folder(args.output, row, seed)
            path = os.path.join(folder, "result.json")
            if os.path.isfile(path):
                with open(path) as f:
                    done[row].append(json.load(f))
            else:
                todo.append((row, seed, folder))
    logger.info("%d runs to do, %d finished before", len(todo),
                sum(len(v) for v in done.values()))
    from e3va_d2.engine.lifeline import die_with_parent
    from e3va_d2.engine.signals import forward_signals_to_children

    context = mp.get_context("spawn")  # a fresh interpreter per run: no state leaks between runs
    # SIGTERM reaches the runs, which save a checkpoint and stop (a restart resumes them); a
    # comparison killed outright takes its runs with it instead of leaving them training. A run
    # is submitted only when a process is free for it: the pool would hand queued runs to new
    # processes after a stop.
    queued, running, finished = list(todo), {}, 0
    with forward_signals_to_children() as forwarded, futures.ProcessPoolExecutor(
            args.jobs, mp_context=context, max_tasks_per_child=1,
            initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            while running or (queued and forwarded.received is None):
                while queued and len(running) < args.jobs and forwarded.received is None:
                    row, seed, folder = queued.pop(0)
                    running[pool.submit(train_one, args.config_file, args.opts, row, seed,
                                        folder, threads)] = (row, seed)
                ready, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in ready:
                    row, seed = running.pop(future)
                    result = future.result()  # a failed run stops the comparison with its error
                    done[row].append(result)
                    finished += 1
                    logger.info("[%d/%d] %s seed %d: %s (%.1f min)", finished, len(todo), row,
                                seed, ", ".join(f"{METRICS.get(m, m)} {v:.1f}" for m, v in
                                                result["metrics"].items() if m in METRICS),
                                result["minutes"])
        except BaseException:
            if forwarded.received is None:
                raise
        if forwarded.received is not None:
            name = signal.Signals(forwarded.received).name
            logger.warning("Stopped by %s; the runs saved where they were: run the same "
                           "command again to continue.", name)
            raise SystemExit(128 + forwarded.received)
    return {row: sorted(v, key=lambda r: r["seed"]) for row, v in done.items()}


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
    runs = train_all(args, threads)
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
