"""The accuracy study's held-out tables and figures, from its committed run records alone.

The regimes' tables, their held-out curves, the gap against the seeds' spread, the variants,
the detail and the README's summary, and the figures of the held-out runs, from
``docs/records/accuracy`` and the cost benchmark's record of the study's step, never from a
run folder; also the arithmetic (recovery, means) that :mod:`.study_validation` and
:mod:`.study_selection` build on.
:mod:`.study_render` writes them with the validation blocks into the documents.
"""
from __future__ import annotations

import json
import os
import statistics
from typing import Dict, List, Optional

from e3va_d2.modeling.tuning.spec import read_method_spec
from projects import tables
from projects.benchmark.peak_report import MIB, peak_share
from projects.tables import table_head, table_row
from projects.transfer.study_records import REGIMES, ROOT, group

SUMMARY = "accuracy-summary"  # the README: every regime in one table
VARIANTS = "accuracy-variants"  # docs/ACCURACY.md: methods with options, against their method
DETAIL = "accuracy-detail"  # docs/ACCURACY.md: box AP by threshold, size and class
CURVES = "accuracy-curves"  # docs/ACCURACY.md: held-out box AP at every evaluation
GAP = "accuracy-gap"  # docs/ACCURACY.md: the fixed-to-full gap against the seeds' spread
RECOVERY_CURVES = "accuracy-recovery-curves"  # docs/ACCURACY.md: recovery at every evaluation
# The paper's COCO Table 1 (Cascade Mask R-CNN, Swin-B): box AP of the rows the study repeats.
PAPER_BOX_AP = {"full": 51.9, "fixed": 43.5, "lora": 51.2, "e3va": 50.5}
PAPER_GAP = PAPER_BOX_AP["full"] - PAPER_BOX_AP["fixed"]
PAPER_RECOVERY = {row: (ap - PAPER_BOX_AP["fixed"]) / PAPER_GAP for row, ap in PAPER_BOX_AP.items()}
# The cost benchmark's record of the study's training step (projects/tables.py "peak-accuracy").
PEAK_RECORD = tables.record_path("peak-accuracy")


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


def share_of_gap(value: float, fixed: float, full: float) -> Optional[float]:
    """Recovery: (value - fixed) / (full - fixed); None where full and fixed are equal."""
    return (value - fixed) / (full - fixed) if full != fixed else None


def recovery(rows: Dict[str, List[dict]], row: str, metric: str = "bbox/AP") -> Optional[float]:
    """The row's recovery on the means over seeds."""
    if not {"full", "fixed", row} <= set(rows):
        return None
    mean = {r: statistics.fmean(rec["final"][metric] for rec in rows[r])
            for r in ("full", "fixed", row)}
    return share_of_gap(mean[row], mean["fixed"], mean["full"])


def by_seed(recs: List[dict], metric: str = "bbox/AP") -> Dict[int, float]:
    """Seed -> the run's final ``metric``: runs of the same seed share their data order and
    initial heads, so rows pair seed by seed."""
    return {r["seed"]: r["final"][metric] for r in recs}


def paired_recoveries(rows: Dict[str, List[dict]], row: str,
                      metric: str = "bbox/AP") -> List[float]:
    """The row's recovery seed by seed, each against full's and fixed's run of the same seed:
    how far one seed's recovery can stray from the means'. Seeds without both baselines are
    left out."""
    full, fixed = (by_seed(rows.get(base, []), metric) for base in ("full", "fixed"))
    values = (share_of_gap(value, fixed[seed], full[seed])
              for seed, value in sorted(by_seed(rows.get(row, []), metric).items())
              if seed in full and seed in fixed)
    return [v for v in values if v is not None]


ROW_ORDER = ("full", "fixed", "lora", "e3va")  # the paper's rows first, in its order


def ordered(rows) -> List[str]:
    return sorted(rows, key=lambda r: (ROW_ORDER.index(r) if r in ROW_ORDER else len(ROW_ORDER),
                                       r))


def is_variant(row: str) -> bool:
    """A method with options (``e3va:trunk_dtype=bfloat16``): compared with its base, seed by
    seed, in the variants table rather than among the methods."""
    return bool(read_method_spec(row)[1])


def base_row(row: str) -> str:
    """The row a variant changes by one option: itself without its last option
    (``e3va_spatial:stage_mixer=False:conv_kernels=()`` -> ``e3va_spatial:stage_mixer=False``,
    ``e3va:trunk_dtype=bfloat16`` -> ``e3va``)."""
    return row.rsplit(":", 1)[0]


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


def summary_rows(records: Dict[str, Dict[str, List[dict]]],
                 chosen: Optional[str] = None) -> List[str]:
    """The methods, then ``chosen`` once it has a held-out record: the summary's rows, in the
    table and in its figure."""
    rows = methods_only({row for recs in records.values() for row in recs})
    if chosen is not None and any(chosen in recs for recs in records.values()):
        rows.append(chosen)
    return rows


def summary_table(records: Dict[str, Dict[str, List[dict]]], peaks: Dict[str, dict],
                  chosen: Optional[str] = None) -> str:
    """Every regime in one table, for the README: box AP, recovery, and peak memory of the
    methods, and of ``chosen`` (the row chosen on validation, options and all) once it has a
    held-out record."""
    regimes = [r for r in REGIMES if records.get(r)]
    head = ["method"]
    for regime in regimes:
        head += [f"{regime}: box AP", f"{regime}: recovery"]
    head += ["paper's recovery", "peak above fixed (study trunk)"]
    lines = table_head(head)
    for row in summary_rows(records, chosen):
        cells = [f"`{row}`" + (" (chosen on validation)" if row == chosen else "")]
        for regime in regimes:
            recs = records[regime].get(row)
            rec = recovery(records[regime], row) if recs else None
            cells += [box_ap(recs) if recs else "not run yet",
                      cell(rec, ".2f")]
        paper = PAPER_RECOVERY.get(row)
        cells += [cell(paper, ".2f"), peak_columns(row, peaks)[1]]
        lines.append(table_row(cells))
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
    lines = table_head(head)
    for row in methods_only(rows):
        recs = rows[row]
        box = [r["final"]["bbox/AP"] for r in recs]
        mask = [r["final"]["segm/AP"] for r in recs]
        rec = recovery(rows, row)
        paper = PAPER_RECOVERY.get(row)
        iters = recs[0]["eval_curve"][-1]["iter"] if recs[0]["eval_curve"] else ""
        loss = final_training_loss(recs)
        lines.append(table_row([
            f"`{row}`", mean_std(box), ", ".join(f"{v:.1f}" for v in box), mean_std(mask),
            cell(rec, ".2f"), cell(paper, ".2f"),
            *peak_columns(row, peaks),
            cell(loss, ".3f"), str(iters),
            f"{recs[0]['trainable_in_backbone'] / 1e6:.3f}M"]))
    return "\n".join(lines)


def paired_difference(recs: List[dict], base: List[dict], metric: str = "bbox/AP") -> str:
    """The variant's AP minus its method's, seed by seed (the same seed is the same data order
    and the same initial heads), as mean ± spread over the seeds both have."""
    base_by_seed = by_seed(base, metric)
    diffs = [r["final"][metric] - base_by_seed[r["seed"]] for r in recs
             if r["seed"] in base_by_seed]
    if not diffs:
        return "no common seed yet"
    # + 0.0 turns a difference that rounds to -0.0 into +0.0: no sign where there is none.
    mean = round(statistics.fmean(diffs), 1) + 0.0
    if len(diffs) == 1:
        return f"{mean:+.1f} (1 seed)"
    return f"{mean:+.1f} ± {statistics.stdev(diffs):.1f} ({len(diffs)} seeds)"


def variants_table(records: Dict[str, Dict[str, List[dict]]],
                   peaks: Optional[Dict[str, dict]] = None) -> str:
    """Every method-with-options row beside its base (:func:`base_row`): the parts of
    ``e3va_spatial`` (issue 20's ablation) and E3VA's lossy memory options (issue 22), per
    regime."""
    peaks = {} if peaks is None else peaks
    head = ["variant", "regime", "box AP", "its base", "minus its base's (paired seeds)",
            "mask AP", "recovery (box)", "its base's recovery", "peak above fixed",
            "training loss (last 500 it.)"]
    lines = table_head(head)
    variants = sorted({row for rows in records.values() for row in rows if is_variant(row)})
    for row in variants:
        base = base_row(row)
        for regime in (r for r in REGIMES if row in records.get(r, {})):
            rows, recs = records[regime], records[regime][row]
            rec, base_rec = recovery(rows, row), recovery(rows, base)
            loss = final_training_loss(recs)
            lines.append(table_row([
                f"`{row}`", regime, box_ap(recs), f"`{base}`",
                paired_difference(recs, rows[base]) if base in rows else "not run yet",
                mean_std([r["final"]["segm/AP"] for r in recs]),
                cell(rec, ".2f"), cell(base_rec, ".2f"), peak_columns(row, peaks)[1],
                cell(loss, ".3f")]))
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
    lines = table_head(head)
    for regime in REGIMES:
        for row in ordered(row for r, row in kept if r == regime):
            details = kept[regime, row]
            cells = [regime, f"`{row}`", str(len(details))]
            for key in keys:
                values = [d[key] for d in details if key in d]
                cells.append(f"{statistics.fmean(values):.1f}" if values else "")
            lines.append(table_row(cells))
    return "\n".join(lines)


def mean_curve(recs: List[dict]) -> Dict[int, float]:
    """Held-out box AP after each number of iterations, mean over the seeds that reached it."""
    at: Dict[int, List[float]] = {}
    for rec in recs:
        for point in rec["eval_curve"]:
            at.setdefault(point["iter"], []).append(point["bbox/AP"])
    return {i: statistics.fmean(at[i]) for i in sorted(at)}


def curve_table(regime: str, rows: Dict[str, List[dict]]) -> str:
    """Held-out box AP at every evaluation, mean over seeds: whether full fine-tuning's curve
    has flattened before each learning-rate drop (the plateau the schedule was chosen for)."""
    methods = methods_only(rows)
    curves = {row: mean_curve(rows[row]) for row in methods}
    iters = sorted({i for curve in curves.values() for i in curve})
    drops = lr_drops(regime)
    head = ["method", "seeds", *(f"{i:,}" for i in iters)]
    lines = table_head(head)
    for row, curve in curves.items():
        lines.append(table_row([f"`{row}`", str(len(rows[row])),
                                *(cell(curve.get(i), ".1f") for i in iters)]))
    lines.append("")
    lines.append(f"Held-out box AP after each number of iterations, mean over seeds; the learning "
                 f"rate drops x0.1 at {' and '.join(f'{d:,}' for d in drops)}.")
    return "\n".join(lines)


def recovery_curve_table(records: Dict[str, Dict[str, List[dict]]]) -> str:
    """Each adapter's recovery, (row - fixed) / (full - fixed), at every evaluation, on the mean
    curves: where along the schedule a method keeps up with full fine-tuning and where it
    falls behind (before or after the learning-rate drops)."""
    regimes = [r for r in REGIMES if {"full", "fixed"} <= set(records.get(r, {}))]
    curves = {r: {row: mean_curve(records[r][row]) for row in methods_only(records[r])}
              for r in regimes}
    iters = sorted({i for r in regimes for c in curves[r].values() for i in c})
    lines = table_head(["regime", "method", *(f"{i:,}" for i in iters)])
    for regime in regimes:
        full, fixed = curves[regime]["full"], curves[regime]["fixed"]
        both = [i if i in full and i in fixed else None for i in iters]
        lines.append(table_row([regime, "full - fixed (box AP)", *(
            cell(None if i is None else full[i] - fixed[i], ".1f") for i in both)]))
        for row, curve in curves[regime].items():
            if row not in ("full", "fixed"):
                lines.append(table_row([regime, f"`{row}`", *(
                    cell(share_of_gap(curve[i], fixed[i], full[i])
                         if i is not None and i in curve else None, ".2f") for i in both)]))
    drops = sorted({d for r in regimes for d in lr_drops(r)})
    lines.append("")
    lines.append(f"Recovery at each evaluation from the mean curves above (where full and fixed "
                 f"are a point or two apart, it swings with noise); the learning rate drops x0.1 "
                 f"at {' and '.join(f'{d:,}' for d in drops)}.")
    return "\n".join(lines)


def gap_table(records: Dict[str, Dict[str, List[dict]]]) -> str:
    """Per regime, the fixed-to-full gap against the largest seed spread of any row (is the
    gap noise?), and each adapter's recovery as a share of LoRA's, beside the paper's."""
    regimes = [r for r in REGIMES if {"full", "fixed"} <= set(records.get(r, {}))]
    others = [row for row in methods_only({row for r in regimes for row in records[r]})
              if row not in ("full", "fixed", "lora")]
    head = ["regime", "full - fixed (box AP)", "largest seed spread (std)", "gap / spread",
            *(f"`{row}` / `lora` recovery" for row in others)]
    lines = table_head(head)
    for regime in regimes:
        rows = records[regime]
        mean = {row: statistics.fmean(r["final"]["bbox/AP"] for r in rows[row])
                for row in ("full", "fixed")}
        spreads = [statistics.stdev(r["final"]["bbox/AP"] for r in recs)
                   for recs in (rows[row] for row in methods_only(rows)) if len(recs) > 1]
        gap, spread = mean["full"] - mean["fixed"], max(spreads, default=None)
        lora = recovery(rows, "lora") if "lora" in rows else None
        shares = [recovery(rows, row) / lora if lora and row in rows else None
                  for row in others]
        lines.append(table_row([
            regime, f"{gap:.1f}", cell(spread, ".1f"),
            cell(gap / spread if spread else None, ".0f"),
            *(cell(share, ".2f") for share in shares)]))
    paper = [PAPER_RECOVERY[row] / PAPER_RECOVERY["lora"] if row in PAPER_RECOVERY else None
             for row in others]
    lines.append(table_row(["paper (COCO, Swin-B Cascade)", f"{PAPER_GAP:.1f}", "", "",
                            *(cell(share, ".2f") for share in paper)]))
    return "\n".join(lines)


NOT_RUN = "_No run of this regime is recorded yet._"


def held_out_blocks(runs: List[dict], peaks: Dict[str, dict],
                    chosen: Optional[str] = None) -> Dict[str, str]:
    """Marker name -> Markdown of the held-out test at the recipe's learning rate: every
    regime's tables, recorded or not yet (docs/ACCURACY.md), and their summary (the README),
    which shows ``chosen`` beside the methods."""
    records = group(runs)
    blocks = {f"accuracy-{regime}": regime_table(regime, records[regime], peaks)
              if records.get(regime) else NOT_RUN for regime in REGIMES}
    blocks[VARIANTS] = variants_table(records, peaks)
    blocks[DETAIL] = detail_table(records)
    blocks.update({f"{CURVES}-{regime}": curve_table(regime, records[regime])
                   if records.get(regime) else NOT_RUN for regime in REGIMES})
    blocks[GAP] = gap_table(records)
    blocks[RECOVERY_CURVES] = recovery_curve_table(records)
    blocks[SUMMARY] = summary_table(records, peaks, chosen)
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
            curve = mean_curve(records[regime][row])
            ax.plot(list(curve), list(curve.values()), "o-", label=row, ms=3)
        for i, drop in enumerate(lr_drops(regime)):
            ax.axvline(drop, ls=":", color="grey", label="LR x0.1" if i == 0 else None)
        ax.set(title=f"{regime} regime", xlabel="iteration", ylabel="held-out box AP")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy_memory(records, peaks: Dict[str, dict], path: str,
                         chosen: Optional[str] = None) -> None:
    """Held-out box AP (mean over seeds, bars: the seeds' range) against peak training memory,
    one panel a regime: where each method sits between the frozen trunk and full tuning. The
    summary table's rows only (the methods and the row chosen on validation): variants sit on
    their base's memory and would bury its label (their own table compares them seed by
    seed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = [r for r in REGIMES if records.get(r)]
    rows = summary_rows(records, chosen)
    colour = {row: f"C{i}" for i, row in enumerate(rows)}  # one colour a row, every panel
    fig, axes = plt.subplots(1, len(regimes), figsize=(5.5 * len(regimes), 3.8), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        for row in rows:
            recs = records[regime].get(row)
            if not recs or row not in peaks:
                continue
            box = [r["final"]["bbox/AP"] for r in recs]
            mean = statistics.fmean(box)
            ax.errorbar(peak_mib(peaks, row), mean, yerr=[[mean - min(box)], [max(box) - mean]],
                        fmt="o", capsize=3, color=colour[row])
            ax.annotate(f"{row} ({seeds(recs)})", (peak_mib(peaks, row), mean),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
        ax.set(title=f"{regime} regime", ylabel="held-out box AP",
               xlabel="peak training memory (MiB, one step of the study's trunk)")
        ax.margins(y=0.12)  # room for the top point's label inside the panel
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_held_out(runs: List[dict], peaks: Dict[str, dict], figures: str,
                  chosen: Optional[str] = None) -> None:
    """The held-out runs' figures in ``figures``: curves, and AP against peak memory (with
    ``chosen`` beside the methods, as in the summary table)."""
    records = group(runs)
    if records:
        plot_curves(records, os.path.join(figures, "accuracy_curves.png"))
        if peaks:
            plot_accuracy_memory(records, peaks, os.path.join(figures, "accuracy_memory.png"),
                                 chosen)
