"""The accuracy study on its validation split (issue 37): the evidence the choice rests on.

Two blocks of docs/ACCURACY.md, rendered from the run records of the ``val`` split
(:data:`study_records.VALIDATION`) and the cost benchmark's records :data:`COST_RECORDS` alone,
each pending until its records exist, and the curve's plot:

- ``accuracy-lr``: E3VA, ``e3va_spatial`` and LoRA at multiples of the recipe's learning rate:
  does their ranking hold?
- ``accuracy-feedback``: recovery in every regime against peak memory and step time, for the
  highway fed back into the trunk's last K blocks (``e3va_spatial:feedback_depth=K``) beside
  the methods it sits between.

Also what :mod:`.study_selection` builds on: each row's validation recovery, measured at any
learning rate against full's and fixed's at the recipe's rate, and each row's costs.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Dict, List, Optional, Sequence

from e3va_d2.modeling.tuning.spec import read_method_spec
from projects import tables
from projects.benchmark.peak_report import peak_share
from projects.transfer import study_report as report
from projects.transfer.study_records import REGIMES, group

LR = "accuracy-lr"
FEEDBACK = "accuracy-feedback"
BLOCKS = (LR, FEEDBACK)

LR_METHODS = ("lora", "e3va", "e3va_spatial")
LR_SCALES = (0.5, 1.0, 2.0)
FEEDBACK_DEPTHS = (1, 2, 4, 8)  # blocks from the trunk's end; the study's trunk has 2-2-6-2
FEEDBACK_ROWS = tuple(f"e3va_spatial:feedback_depth={k}" for k in FEEDBACK_DEPTHS)
CURVE_ROWS = ("full", "lora", "partial1", "e3va", "e3va_spatial", *FEEDBACK_ROWS)
COST = "cost-feedback"  # projects/tables.py: Swin-B Cascade, 512x512, batch 2, peak and step
# Candidates off the curve, each cost record beside its own fixed, full and E3VA. Rank 32 on the
# spatial highway was added after partial1:last_blocks=8 put the gap in the early stages, before
# any of its runs: the highway's capacity there is what it can still change. After its near and
# far, and before any of their runs, the rank curve's two other points: E3VA at rank 32 (the
# paper's E3VA++: does the gain need the spatial highway?) and the spatial highway at rank 64.
OPTION_COSTS = {
    "cost-feedback-options": ("e3va_spatial:stage_mixer=False",
                              "e3va_spatial:feedback_depth=2:feedback_lora=True"),
    "cost-rank": ("e3va:rank=32", "e3va_spatial:rank=32", "e3va_spatial:rank=64"),
}
COST_RECORDS = (COST, *OPTION_COSTS)
OFF_THE_CURVE = ", ".join(f"`{name}`" for name in OPTION_COSTS)
# Issue 37's budget and goal, drawn on the curve and applied by the selection: no more than 15%
# of full fine-tuning's extra peak memory and 1.3x E3VA's step; at least 0.9 of the gap and
# LoRA's recovery in every regime.
MAX_PEAK_SHARE = 0.15
MAX_STEP_RATIO = 1.3
GOAL_RECOVERY = 0.9
PENDING = "pending"
NOT_MEASURED = "—"
RENDER = "python -m projects.transfer.study --render"


@dataclasses.dataclass(frozen=True)
class Cost:
    """A row's cost on Swin-B, relative to what the same process measured for the others."""

    peak: Optional[float]  # peak above fixed, as a share of full's (None: not measured)
    step: Optional[float]  # step against E3VA's (None: not timed)


def record_costs(results: Dict[str, dict]) -> Dict[str, Cost]:
    """Each method of one cost record against that record's own fixed, full and E3VA: ratios
    are only taken between methods measured side by side in one process."""
    def seconds(row):
        value = results.get(row, {}).get("step_seconds")
        return value if value and value == value else None  # NaN: not timed

    e3va = seconds("e3va")
    costs = {}
    for row, result in results.items():
        own = seconds(row)
        costs[row] = Cost(peak_share(results, row) if result.get("peak") else None,
                          own / e3va if own and e3va else None)
    return costs


def load_costs(names: Sequence[str] = COST_RECORDS) -> Dict[str, Cost]:
    """Every row's cost from the records ``names`` (the first that has a row gives it; none
    before they are measured)."""
    costs: Dict[str, Cost] = {}
    for name in names:
        path = tables.record_path(name)
        if os.path.isfile(path):
            with open(path) as f:
                for row, cost in record_costs(json.load(f)["data"]["results"]).items():
                    costs.setdefault(row, cost)
    return costs


def peak_cell(costs: Dict[str, Cost], row: str) -> Optional[float]:
    """``row``'s peak above fixed as a share of full's, or None where not measured."""
    return costs[row].peak if row in costs else None


def step_ratio(costs: Dict[str, Cost], row: str) -> Optional[float]:
    """``row``'s training step against E3VA's, or None where either is not timed."""
    return costs[row].step if row in costs else None


def pending_or(value: Optional[float], spec: str) -> str:
    return PENDING if value is None else format(value, spec)


def peak_share_cell(peak: Optional[float]) -> str:
    """A peak above fixed as a share of full's, as ``12.3%``, or pending."""
    return PENDING if peak is None else f"{100 * peak:.1f}%"


def step_cell(step: Optional[float]) -> str:
    """A step against E3VA's, as ``1.06x``, or pending."""
    return PENDING if step is None else f"{step:.2f}x"


def val_rows(runs: List[dict], lr_scale: float = 1.0) -> Dict[str, Dict[str, List[dict]]]:
    return group(runs, "val", lr_scale)


def rows_at_rate(runs: List[dict], split: str, regime: str, row: str,
                 lr_scale: float = 1.0) -> Dict[str, List[dict]]:
    """``regime``'s rows on ``split`` at the recipe's rate, with ``row``'s own runs at
    ``lr_scale`` in its place (absent where it has none there): recovery at any rate is
    measured against full's and fixed's at the recipe's."""
    rows = {r: recs for r, recs in group(runs, split).get(regime, {}).items() if r != row}
    own = group(runs, split, lr_scale).get(regime, {}).get(row)
    return {**rows, row: own} if own else rows


def val_recovery(runs: List[dict], regime: str, row: str,
                 lr_scale: float = 1.0) -> Optional[float]:
    """``row``'s recovery on ``regime``'s validation split at ``lr_scale``, against full's and
    fixed's at the recipe's rate (means over seeds); None until all three are recorded."""
    return report.recovery(rows_at_rate(runs, "val", regime, row, lr_scale), row)


# ------------------------------------------------------------------------------------------
# Learning-rate sensitivity
# ------------------------------------------------------------------------------------------


def lr_table(runs: List[dict]) -> str:
    """Validation box AP of :data:`LR_METHODS` at each learning-rate multiple, per regime, with
    each method's rank among them at that rate; pending until a run at another rate exists."""
    ap: Dict[tuple, List[float]] = {}
    for rec in runs:
        if rec["split"] == "val" and rec["row"] in LR_METHODS:
            ap.setdefault((rec["regime"], rec["row"], rec["lr_scale"]), []).append(
                rec["final"]["bbox/AP"])
    if not any(scale != 1 for _, _, scale in ap):
        return (f"_Pending: no validation run at another learning rate is recorded yet "
                f"({', '.join(f'`{m}`' for m in LR_METHODS)} at "
                f"{', '.join(f'{s:g}x' for s in LR_SCALES)}; the commands above, then "
                f"`{RENDER}`)._")
    mean = {key: statistics.fmean(values) for key, values in ap.items()}
    scales = sorted({s for *_, s in mean} | set(LR_SCALES))
    lines = tables.table_head(["regime", "method", *(f"{s:g}x" for s in scales),
                               "best rate"])
    changed, held = [], []
    # the regimes where some method ran at another rate (a 1x run alone compares nothing)
    for regime in (r for r in REGIMES if any(k[0] == r and k[2] != 1 for k in mean)):
        order = {s: sorted((m for m in LR_METHODS if (regime, m, s) in mean),
                           key=lambda m, s=s: -mean[regime, m, s]) for s in scales}
        for method in LR_METHODS:
            cells = [f"{mean[regime, method, s]:.1f} (#{order[s].index(method) + 1})"
                     if (regime, method, s) in mean else PENDING for s in scales]
            recorded = [s for s in scales if (regime, method, s) in mean]
            best = max(recorded, key=lambda s: mean[regime, method, s]) if recorded else None
            lines.append(tables.table_row([regime, f"`{method}`", *cells,
                                           pending_or(best, "g") + ("x" if best else "")]))
        base = order.get(1.0, [])
        others = [s for s in scales if s != 1 and len(order[s]) > 1]
        if len(base) > 1 and others:
            same = all([m for m in base if m in order[s]] == [m for m in order[s] if m in base]
                       for s in others)
            (held if same else changed).append(regime)
    lines += ["", "Box AP on each regime's validation split (mean over the seeds run), at each "
              "multiple of the recipe's learning rate; (#k): the method's rank at that rate "
              "among those recorded there. The ranking at 1x holds at every other rate "
              "recorded in: "
              f"{', '.join(held) or 'none'}; it changes in: {', '.join(changed) or 'none'}."]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# The feedback curve
# ------------------------------------------------------------------------------------------


def feedback_depth(row: str) -> Optional[int]:
    """K of a row that feeds the highway into the trunk's last K blocks, else None."""
    return read_method_spec(row)[1].get("feedback_depth")


def last_blocks_on_the_gradient_path(row: str) -> Optional[int]:
    """How many of the trunk's last blocks ``row`` backpropagates through: its feedback depth,
    or the blocks a partial fine-tuning trains (its own weights); None for other rows."""
    method, options = read_method_spec(row)
    if method == "partial1":
        return options.get("last_blocks", 1)
    return options.get("feedback_depth") or None


def diagnostic(row: str) -> bool:
    """A row off the plan that trains the trunk's own last blocks: it tells where the gap lies
    and is no candidate, so nothing waits on its cost."""
    return read_method_spec(row)[0] == "partial1" and row not in CURVE_ROWS


def curve_rows(runs: List[dict]) -> List[str]:
    """:data:`CURVE_ROWS`, then any other recorded row that backpropagates through the trunk's
    last blocks (another feedback depth or option; partial fine-tuning of more blocks, which
    trains the weights that feedback leaves frozen), by method and depth."""
    recorded = {r["row"] for r in runs
                if r["split"] == "val" and last_blocks_on_the_gradient_path(r["row"])}
    extra = sorted(recorded - set(CURVE_ROWS), key=lambda row: (
        read_method_spec(row)[0], last_blocks_on_the_gradient_path(row), row))
    return [*CURVE_ROWS, *extra]


def recovery_cell(runs: List[dict], regime: str, row: str) -> str:
    value = val_recovery(runs, regime, row)
    if value is None:
        return PENDING
    seeds = len(val_rows(runs)[regime][row])
    return f"{value:.2f}" + (f" ({seeds} seeds)" if seeds > 1 else "")


def feedback_table(runs: List[dict], costs: Dict[str, Cost]) -> str:
    """Recovery on every regime's validation split against Swin-B's peak memory above fixed
    and step time, for the feedback depths beside the methods they sit between."""
    if not val_rows(runs):
        return (f"_Pending: no validation run is recorded yet (the commands above, then "
                f"`{RENDER}`)._")
    lines = tables.table_head(["method", *(f"{regime}: recovery (val)" for regime in REGIMES),
                               "peak above fixed (Swin-B)", "step / `e3va`'s (Swin-B)"])
    for row in curve_rows(runs):
        if diagnostic(row) and row not in costs:
            cost = [NOT_MEASURED] * 2
        else:
            cost = [peak_share_cell(peak_cell(costs, row)), step_cell(step_ratio(costs, row))]
        lines.append(tables.table_row([
            f"`{row}`", *(recovery_cell(runs, regime, row) for regime in REGIMES), *cost]))
    lines += ["", "Recovery: (row - fixed) / (full - fixed) on each regime's validation split, "
              "the study's recipe and trunk, means over the seeds run (one where no count is "
              "shown). Memory and time: Swin-B Cascade Mask R-CNN, 512x512, batch 2, from the "
              f"cost benchmark's record `{COST}` (rows off its curve: {OFF_THE_CURVE}; "
              "[COST.md](COST.md)): the training step's peak "
              "above the frozen model's as a share of full fine-tuning's, and its time against "
              "E3VA's. 'pending': not run or not measured yet. `partial1:last_blocks=K` trains "
              "the trunk's last K blocks' own weights, backpropagating through the same blocks "
              f"as `feedback_depth=K`: where the gap lies, not a candidate ({NOT_MEASURED}: "
              "its cost is not measured)."]
    return "\n".join(lines)


def plot_feedback(runs: List[dict], costs: Dict[str, Cost], path: str) -> bool:
    """Validation recovery against peak above fixed, one panel a regime, the feedback depths
    joined in order from ``e3va_spatial`` (K = 0). Draws nothing (False) without a point."""
    points = {regime: {row: (100 * peak_cell(costs, row), val_recovery(runs, regime, row))
                       for row in curve_rows(runs)
                       if peak_cell(costs, row) is not None
                       and val_recovery(runs, regime, row) is not None}
              for regime in REGIMES}
    regimes = [r for r in REGIMES if points[r]]
    if not regimes:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, axes = plt.subplots(1, len(regimes), figsize=(5 * len(regimes), 3.8), squeeze=False)
    for ax, regime in zip(axes[0], regimes):
        # labels alternate above-left and below-right along the memory axis, so that two
        # neighbours there point their labels away from each other
        for i, (row, (x, y)) in enumerate(sorted(points[regime].items(), key=lambda p: p[1])):
            ax.plot(x, y, "o", color="C0" if feedback_depth(row) else "C1")
            ax.annotate(row.replace("e3va_spatial:feedback_depth=", "K="), (x, y),
                        textcoords="offset points", fontsize=7,
                        **(dict(xytext=(-4, 5), ha="right") if i % 2 == 0
                           else dict(xytext=(4, -10), ha="left")))
        line = [points[regime][row] for row in ("e3va_spatial", *FEEDBACK_ROWS)
                if row in points[regime]]
        ax.plot([x for x, _ in line], [y for _, y in line], "-", color="C0", alpha=0.5)
        ax.axhline(GOAL_RECOVERY, ls=":", color="grey")
        ax.axvline(100 * MAX_PEAK_SHARE, ls=":", color="grey")
        # a log axis: the candidates crowd between 5% and 25%, full alone sits at 100%
        ax.set_xscale("log")
        ax.set_xlim(3, 150)
        ax.set_xticks([5, 10, 15, 25, 50, 100])
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
        ax.set(title=f"{regime} (validation)",
               xlabel="peak above fixed, % of full's (Swin-B, log scale)", ylabel="recovery")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def blocks(runs: List[dict], costs: Dict[str, Cost]) -> Dict[str, str]:
    """Marker name -> Markdown of this module's blocks (docs/ACCURACY.md)."""
    return {LR: lr_table(runs), FEEDBACK: feedback_table(runs, costs)}
