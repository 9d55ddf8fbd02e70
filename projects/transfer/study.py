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
``docs/records/accuracy/<regime>/<row>/seed<k>.json``: small JSON files that are committed. The
tables and figures of docs/ACCURACY.md are rendered from the committed records alone
(``--render``), and ``tests/test_accuracy_study.py`` checks that they match. A run with a record
is not run again.

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
import math
import os
import shutil
import statistics
import sys
from typing import Dict, List, Optional

from e3va_d2.checkpoint.files import atomic_write
from projects import tables
from projects.benchmark.peak_report import MIB, peak_share
from projects.benchmark.tuning_cost import method_names, method_options
from projects.tables import replace_block
from projects.transfer import compare

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REGIMES = {
    "near": "configs/Shapes/accuracy_near_mask_rcnn_swin.py",
    "far": "configs/Shapes/accuracy_far_mask_rcnn_swin.py",
}
RECORDS = os.path.join(ROOT, "docs", "records", "accuracy")
PARKED = os.path.join(ROOT, "projects", "transfer", "runs")  # unfinished runs' state, committed
# Copied after the checkpoint last_checkpoint names, last_checkpoint last.
RESUME_FILES = ("metrics.json", compare.ELAPSED_FILE, "last_checkpoint")
DOC = os.path.join(ROOT, "docs", "ACCURACY.md")
README = os.path.join(ROOT, "README.md")  # holds the summary of both regimes
SUMMARY = "accuracy-summary"
VARIANTS = "accuracy-variants"  # docs/ACCURACY.md: methods with options, against their method
DETAIL = "accuracy-detail"  # docs/ACCURACY.md: box AP by threshold, size and class
# The paper's COCO Table 1 (Cascade Mask R-CNN, Swin-B, box AP): fixed 43.5, full 51.9.
PAPER_RECOVERY = {"full": 1.0, "fixed": 0.0, "lora": (51.2 - 43.5) / (51.9 - 43.5),
                  "e3va": (50.5 - 43.5) / (51.9 - 43.5)}
METRICS = (("bbox/AP", "box AP"), ("segm/AP", "mask AP"))
# The cost benchmark's record of the study's training step (projects/tables.py "peak-accuracy").
PEAK_RECORD = tables.record_path("peak-accuracy")

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
    return p.parse_args(argv)


def record_path(regime: str, row: str, seed: int, root: str = RECORDS) -> str:
    return os.path.join(root, regime, row.replace(":", "__"), f"seed{seed}.json")


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


def write_record(regime: str, result: dict, folder: str, max_iter: int, records: str) -> None:
    path = record_path(regime, result["row"], result["seed"], records)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = json.dumps(make_record(regime, result, folder, max_iter), indent=1) + "\n"
    # Whole or not at all: a record's presence marks its run as done on every checkout.
    atomic_write(path, lambda f: f.write(text.encode()))


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
    for regime in [r.strip() for r in args.regimes.split(",")]:
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


def mean_std(values: List[float]) -> str:
    """Mean ± sample std over seeds; one seed has no spread to show."""
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def load_peaks(path: str = PEAK_RECORD) -> Dict[str, dict]:
    """The cost benchmark's results for the study's step, of the methods whose peak it measured
    (empty before it is measured)."""
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        results = json.load(f)["data"]["results"]
    return {m: r for m, r in results.items() if r.get("peak")}


def peak_mib(peaks: Dict[str, dict], row: str) -> float:
    return peaks[row]["peak"]["peak_bytes"] / MIB


def peak_columns(row: str, peaks: Dict[str, dict]) -> List[str]:
    """A row's peak training memory and its share of the way from fixed's peak to full's."""
    if row not in peaks:
        return ["", ""]
    share = peak_share(peaks, row)
    return [f"{peak_mib(peaks, row):.0f} MiB", "" if share is None else f"{100 * share:.1f}%"]


def recovery(rows: Dict[str, List[dict]], row: str, metric: str = "bbox/AP") -> Optional[float]:
    """(row - fixed) / (full - fixed), on the means over seeds."""
    if not {"full", "fixed", row} <= set(rows):
        return None
    mean = {r: statistics.fmean(rec["final"][metric] for rec in rows[r])
            for r in ("full", "fixed", row)}
    gap = mean["full"] - mean["fixed"]
    return (mean[row] - mean["fixed"]) / gap if gap else None


ROW_ORDER = ("full", "fixed", "lora", "e3va")  # the paper's rows first, in its order


def ordered(rows) -> List[str]:
    return sorted(rows, key=lambda r: (ROW_ORDER.index(r) if r in ROW_ORDER else len(ROW_ORDER),
                                       r))


def is_variant(row: str) -> bool:
    """A method with options (``e3va:trunk_dtype=bfloat16``): compared with its own method,
    seed by seed, in the variants table rather than among the methods."""
    return bool(method_options(row)[1])


def methods_only(rows) -> List[str]:
    return ordered(r for r in rows if not is_variant(r))


def cell(value: Optional[float], spec: str) -> str:
    """A table cell: ``value`` formatted, or blank where there is nothing to show."""
    return "" if value is None else format(value, spec)


def seeds(recs: List[dict]) -> str:
    return f"{len(recs)} seed{'s' if len(recs) > 1 else ''}"


def box_ap(recs: List[dict]) -> str:
    """Mean box AP over seeds, its spread and how many seeds."""
    return f"{mean_std([r['final']['bbox/AP'] for r in recs])} ({seeds(recs)})"


def summary_table(records: Dict[str, Dict[str, List[dict]]], peaks: Dict[str, dict]) -> str:
    """Both regimes in one table, for the README: box AP, recovery, and peak memory."""
    regimes = [r for r in REGIMES if records.get(r)]
    head = ["method"]
    for regime in regimes:
        head += [f"{regime}: box AP", f"{regime}: recovery"]
    head += ["paper's recovery", "peak memory above fixed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in methods_only({row for r in regimes for row in records[r]}):
        cells = [f"`{row}`"]
        for regime in regimes:
            recs = records[regime].get(row)
            rec = recovery(records[regime], row) if recs else None
            cells += [box_ap(recs) if recs else "not run yet",
                      cell(rec, ".2f")]
        paper = PAPER_RECOVERY.get(row)
        cells += [cell(paper, ".2f"), peak_columns(row, peaks)[1]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def final_training_loss(recs: List[dict], span: int = 500) -> Optional[float]:
    """The logged training loss over a run's last ``span`` iterations, mean over seeds: beside
    held-out AP it tells underfitting (high) from fitting the training images only (low)."""
    per_seed = []
    for rec in recs:
        curve = rec["loss_curve"]
        if curve:
            last = curve[-1]["iter"]
            per_seed.append(statistics.fmean(p["total_loss"] for p in curve
                                             if p["iter"] > last - span))
    return statistics.fmean(per_seed) if per_seed else None


def regime_table(regime: str, rows: Dict[str, List[dict]],
                 peaks: Optional[Dict[str, dict]] = None) -> str:
    peaks = {} if peaks is None else peaks
    head = ["method", "box AP", "box AP per seed", "mask AP", "recovery (box)",
            "paper's recovery (COCO box)", "peak training memory", "peak above fixed",
            "training loss (last 500 it.)", "iterations", "trainable (backbone)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in methods_only(rows):
        recs = rows[row]
        box = [r["final"]["bbox/AP"] for r in recs]
        mask = [r["final"]["segm/AP"] for r in recs]
        rec = recovery(rows, row)
        paper = PAPER_RECOVERY.get(row)
        iters = recs[0]["eval_curve"][-1]["iter"] if recs[0]["eval_curve"] else ""
        loss = final_training_loss(recs)
        lines.append("| " + " | ".join([
            f"`{row}`", mean_std(box), ", ".join(f"{v:.1f}" for v in box), mean_std(mask),
            cell(rec, ".2f"), cell(paper, ".2f"),
            *peak_columns(row, peaks),
            cell(loss, ".3f"), str(iters),
            f"{recs[0]['trainable_in_backbone'] / 1e6:.3f}M"]) + " |")
    return "\n".join(lines)


def paired_difference(recs: List[dict], base: List[dict], metric: str = "bbox/AP") -> str:
    """The variant's AP minus its method's, seed by seed (the same seed is the same data order
    and the same initial heads), as mean ± spread over the seeds both have."""
    base_by_seed = {r["seed"]: r["final"][metric] for r in base}
    diffs = [r["final"][metric] - base_by_seed[r["seed"]] for r in recs
             if r["seed"] in base_by_seed]
    if not diffs:
        return "no common seed yet"
    if len(diffs) == 1:
        return f"{diffs[0]:+.1f} (1 seed)"
    return (f"{statistics.fmean(diffs):+.1f} ± {statistics.stdev(diffs):.1f} "
            f"({len(diffs)} seeds)")


def variants_table(records: Dict[str, Dict[str, List[dict]]],
                   peaks: Optional[Dict[str, dict]] = None) -> str:
    """Every method-with-options row beside its own method: the parts of ``e3va_spatial``
    (issue 20's ablation) and E3VA's lossy memory options (issue 22), per regime."""
    peaks = {} if peaks is None else peaks
    head = ["variant", "regime", "box AP", "minus its method's (paired seeds)", "mask AP",
            "recovery (box)", "its method's recovery", "peak above fixed",
            "training loss (last 500 it.)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    variants = sorted({row for rows in records.values() for row in rows if is_variant(row)})
    for row in variants:
        method = method_options(row)[0]
        for regime in (r for r in REGIMES if row in records.get(r, {})):
            rows, recs = records[regime], records[regime][row]
            rec, base_rec = recovery(rows, row), recovery(rows, method)
            loss = final_training_loss(recs)
            lines.append("| " + " | ".join([
                f"`{row}`", regime, box_ap(recs),
                paired_difference(recs, rows[method]) if method in rows else "not run yet",
                mean_std([r["final"]["segm/AP"] for r in recs]),
                cell(rec, ".2f"), cell(base_rec, ".2f"), peak_columns(row, peaks)[1],
                cell(loss, ".3f")]) + " |")
    if not variants:
        return "_No variant is recorded yet._"
    return "\n".join(lines)


def detail_table(records: Dict[str, Dict[str, List[dict]]]) -> str:
    """Box AP by threshold, object size and class (means over the seeds whose record keeps
    them): whether a method's gain is in recognising objects (AP50) or placing them (AP75),
    and for which shapes."""
    kept = {(regime, row): [r["final_detail"] for r in recs if r.get("final_detail")]
            for regime in REGIMES for row, recs in records.get(regime, {}).items()}
    kept = {key: details for key, details in kept.items() if details}
    if not kept:
        return "_No record keeps its detailed metrics yet._"
    first = ("bbox/AP50", "bbox/AP75", "bbox/APs", "bbox/APm", "bbox/APl")
    keys = sorted({k for details in kept.values() for d in details for k in d
                   if k.startswith("bbox/") and k != "bbox/AP"},
                  key=lambda k: (first.index(k) if k in first else len(first), k))
    head = ["regime", "method", "seeds", *(k.split("/", 1)[1] for k in keys)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for regime in REGIMES:
        for row in ordered(row for r, row in kept if r == regime):
            details = kept[regime, row]
            cells = [regime, f"`{row}`", str(len(details))]
            for key in keys:
                values = [d[key] for d in details if key in d]
                cells.append(f"{statistics.fmean(values):.1f}" if values else "")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def render_tables(records: Dict[str, Dict[str, List[dict]]],
                  peaks: Optional[Dict[str, dict]] = None) -> Dict[str, str]:
    """Marker name -> Markdown: every regime's table, recorded or not yet (docs/ACCURACY.md),
    and their summary (the README)."""
    peaks = load_peaks() if peaks is None else peaks
    blocks = {f"accuracy-{regime}": regime_table(regime, records[regime], peaks)
              if records.get(regime) else "_No run of this regime is recorded yet._"
              for regime in REGIMES}
    blocks[VARIANTS] = variants_table(records, peaks)
    blocks[DETAIL] = detail_table(records)
    blocks[SUMMARY] = summary_table(records, peaks)
    return blocks


def lr_drops(regime: str) -> List[int]:
    """The iterations at which the regime's step schedule lowers the learning rate."""
    from e3va_d2.config import load_config

    cfg = load_config(os.path.join(ROOT, REGIMES[regime]))
    steps = cfg.lr_multiplier.scheduler
    return [round(m / steps.num_updates * cfg.train.max_iter) for m in steps.milestones]


def plot_curves(records, path: str) -> None:
    """Held-out box AP against iterations, every row (mean over seeds), one panel a regime;
    dotted lines where the learning rate drops (a step schedule's curve flattens before each
    drop and jumps after it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted(records)
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 3.8), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for row in methods_only(records[regime]):
            recs = records[regime][row]
            iters = [p["iter"] for p in recs[0]["eval_curve"]]
            means = [statistics.fmean(r["eval_curve"][k]["bbox/AP"] for r in recs
                                      if len(r["eval_curve"]) > k) for k in range(len(iters))]
            ax.plot(iters, means, "o-", label=row, ms=3)
        for i, drop in enumerate(lr_drops(regime)):
            ax.axvline(drop, ls=":", color="grey", label="LR x0.1" if i == 0 else None)
        ax.set(title=f"{regime} regime", xlabel="iteration", ylabel="held-out box AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_memory(records, peaks: Dict[str, dict], path: str) -> None:
    """Held-out box AP (mean over seeds, bars: the seeds' range) against peak training memory,
    one panel a regime: where each method sits between the frozen trunk and full tuning."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in REGIMES if records.get(r)]
    rows = ordered({row for r in regimes for row in records[r]})
    colour = {row: f"C{i}" for i, row in enumerate(rows)}  # one colour a method, every panel
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 3.8), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for row, recs in records[regime].items():
            if row not in peaks:
                continue
            box = [r["final"]["bbox/AP"] for r in recs]
            mean = statistics.fmean(box)
            ax.errorbar(peak_mib(peaks, row), mean, yerr=[[mean - min(box)], [max(box) - mean]],
                        fmt="o", capsize=3, color=colour[row])
            ax.annotate(f"{row} ({seeds(recs)})", (peak_mib(peaks, row), mean),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set(title=f"{regime} regime", xlabel="peak training memory (MiB, one step)",
               ylabel="held-out box AP")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(records=None, doc: str = DOC, figures: str = os.path.join(ROOT, "docs"),
           readme: str = README) -> None:
    """Rewrite the generated blocks (the regimes' in ``doc``, the summary in ``readme``) and the
    figures from ``records``."""
    peaks = load_peaks()
    for name, body in render_tables(records, peaks).items():
        path = readme if name == SUMMARY else doc
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(replace_block(text, name, body))
    if records:
        plot_curves(records, os.path.join(figures, "accuracy_curves.png"))
        if peaks:
            plot_accuracy_memory(records, peaks, os.path.join(figures, "accuracy_memory.png"))


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
