"""The executor of fine-tuning runs: each (row, seed) trains in its own process, resumes after a
stop and ends with its ``result.json``.

A row is a tuning method spec (:mod:`e3va_d2.modeling.tuning.spec`: ``e3va:zero_init=True``).
The accuracy study (:mod:`projects.transfer.study`) runs its runs here.

Every run trains into ``<output>/runs/<row>/seed<k>/`` (:func:`run_folder`); a run with a
``result.json`` is finished and not run again, a stopped one continues from its last
checkpoint.
"""
from __future__ import annotations

import concurrent.futures as futures
import json
import logging
import multiprocessing as mp
import os
import signal
import time
from typing import Dict, List

# (result key, column label): detectron2's COCOEvaluator results, or others' first metric.
METRICS = {"bbox/AP": "box AP", "segm/AP": "mask AP"}

logger = logging.getLogger("e3va_d2.transfer")


def row_folder(row: str) -> str:
    """A row's folder name: ``e3va:zero_init=True`` as ``e3va__zero_init=True`` (a ':' is
    refused by some file systems) and its records' folder (``study_records``)."""
    return row.replace(":", "__")


def run_folder(output: str, row: str, seed: int) -> str:
    return os.path.join(output, "runs", row_folder(row), f"seed{seed}")


def flat_metrics(results: Dict[str, Dict[str, float]]) -> Dict[str, float]:
    """detectron2's ``{task: {metric: value}}`` as ``{"task/metric": value}``."""
    return {f"{task}/{name}": float(v) for task, metrics in results.items()
            for name, v in metrics.items()}


def run_config(config_file: str, opts: List[str], row: str, seed: int, folder: str):
    """The config of one (row, seed) run: the shared recipe with this row's tuning method."""
    from e3va_d2.config import apply_overrides, load_config, set_tuning_method
    from e3va_d2.modeling import build_tuning
    from e3va_d2.modeling.tuning import parse_method_spec

    cfg = load_config(config_file)
    # Set, not passed as overrides: a row's folder may hold '=' or brackets
    # (e3va_spatial:conv_kernels=()), which the override grammar refuses.
    cfg.train.output_dir, cfg.train.seed = folder, seed
    name, options = parse_method_spec(row)
    set_tuning_method(cfg.model, build_tuning(name, **options))
    # After the swap, so that options of the method (tuning.zero_init=True) apply to it.
    return apply_overrides(cfg, list(opts))


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
    result = dict(row=row, seed=seed, metrics=metrics,
                  trunk=trunk_source(cfg),
                  trainable_in_backbone=totals["trainable_in_backbone"],
                  trainable=totals["trainable"], minutes=minutes())
    atomic_write(os.path.join(folder, "result.json"),
                 lambda f: f.write(json.dumps(result, indent=2).encode()))
    return result


def train_all(config_file: str, opts: List[str], rows: List[str], seeds: List[int],
              output: str, jobs: int, threads: int) -> Dict[str, List[dict]]:
    """Every (row, seed) run of ``config_file`` (with ``opts``) not finished yet under
    ``output``, ``jobs`` at a time, each in a new process with ``threads`` threads; the
    results of every run, finished before or now, per row by seed."""
    todo, done = [], {row: [] for row in rows}
    for row in done:
        for seed in seeds:
            folder = run_folder(output, row, seed)
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
    # study killed outright takes its runs with it instead of leaving them training. A run
    # is submitted only when a process is free for it: the pool would hand queued runs to new
    # processes after a stop.
    queued, running, finished = list(todo), {}, 0
    with forward_signals_to_children() as forwarded, futures.ProcessPoolExecutor(
            jobs, mp_context=context, max_tasks_per_child=1,
            initializer=die_with_parent, initargs=(os.getpid(),)) as pool:
        try:
            while running or (queued and forwarded.received is None):
                while queued and len(running) < jobs and forwarded.received is None:
                    row, seed, folder = queued.pop(0)
                    running[pool.submit(train_one, config_file, opts, row, seed, folder,
                                        threads)] = (row, seed)
                ready, _ = futures.wait(running, return_when=futures.FIRST_COMPLETED)
                for future in ready:
                    row, seed = running.pop(future)
                    result = future.result()  # a failed run stops them all with its error
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
