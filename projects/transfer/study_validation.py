"""What the accuracy study chooses on its validation split, and by which rule (issue 37).

Three blocks of docs/ACCURACY.md, rendered from the run records of the ``val`` split
(:data:`study_records.VALIDATION`) and the cost benchmark's record :data:`COST` alone, each
pending until its records exist:

- ``accuracy-lr``: E3VA, ``e3va_spatial`` and LoRA at multiples of the recipe's learning rate:
  does their ranking hold?
- ``accuracy-feedback``: recovery in every regime against peak memory and step time, for the
  highway fed back into the trunk's last K blocks (``e3va_spatial:feedback_depth=K``) beside
  the methods it sits between;
- ``accuracy-selection``: :func:`select`'s rule applied, then the chosen row's held-out test;
- ``accuracy-budget`` (the README): what to pick for a memory budget, from the same evidence.

Recovery at any learning rate is measured against full's and fixed's at the recipe's rate.
"""
from __future__ import annotations

import dataclasses
import json
import os
import statistics
from typing import Dict, List, Optional, Sequence, Set, Tuple

from e3va_d2.modeling.tuning.spec import read_method_spec
from projects import tables
from projects.benchmark.peak_report import peak_share
from projects.transfer import study_report as report
from projects.transfer.study_records import REGIMES, group

LR = "accuracy-lr"
FEEDBACK = "accuracy-feedback"
SELECTION = "accuracy-selection"
BUDGET = "accuracy-budget"  # in the README
BLOCKS = (LR, FEEDBACK, SELECTION, BUDGET)

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
# The selection's budget and goal (issue 37): no more than 15% of full fine-tuning's extra peak
# memory and 1.3x E3VA's step; at least 0.9 of the gap and LoRA's recovery in every regime.
HIGHWAY_METHODS = ("e3va", "e3va_spatial")
MAX_PEAK_SHARE = 0.15
MAX_STEP_RATIO = 1.3
GOAL_RECOVERY = 0.9
# Every candidate the plan names (docs/ACCURACY.md), run or not: the choice stands only once
# none of them can still pass it. Rows run outside the plan join when recorded.
PLANNED_CANDIDATES = (
    *((method, scale) for method in HIGHWAY_METHODS for scale in LR_SCALES),
    *((row, 1.0) for row in FEEDBACK_ROWS),
    *((row, 1.0) for rows in OPTION_COSTS.values() for row in rows))
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


def val_recovery(runs: List[dict], regime: str, row: str,
                 lr_scale: float = 1.0) -> Optional[float]:
    """``row``'s recovery on ``regime``'s validation split at ``lr_scale``, against full's and
    fixed's at the recipe's rate (means over seeds); None until all three are recorded."""
    base = val_rows(runs).get(regime, {})
    own = val_rows(runs, lr_scale).get(regime, {}).get(row)
    if not own or not {"full", "fixed"} <= set(base):
        return None
    return report.recovery({**base, row: own}, row)


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
              "multiple of the recipe's learning rate; (#k): the method's rank among these "
              "three at that rate. The ranking at 1x holds at every other rate recorded in: "
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


# ------------------------------------------------------------------------------------------
# The selection rule
# ------------------------------------------------------------------------------------------

RULE = (f"Among the rows of {' and '.join(f'`{m}`' for m in HIGHWAY_METHODS)} (any options, any "
        "learning-rate multiple) with a validation record in every regime, keep those whose "
        f"peak above fixed is at most {100 * MAX_PEAK_SHARE:.0f}% of full fine-tuning's and "
        f"whose step is at most {MAX_STEP_RATIO}x E3VA's (Swin-B, `{COST}`, or {OFF_THE_CURVE} "
        "for the rows off its curve); choose the one "
        "whose lowest validation recovery over the regimes is highest (a tie: the lower peak). "
        "The choice stands once every candidate the plan names has run, or can no longer pass "
        "it (a row's lowest recovery is at most that of the regimes it has run). "
        "Only validation records enter; the held-out test is run for the chosen row alone, "
        "three seeds.")


@dataclasses.dataclass(frozen=True)
class Candidate:
    row: str
    lr_scale: float
    recovery: Dict[str, Optional[float]]  # regime -> validation recovery (None: not run)
    peak: Optional[float]  # peak above fixed, share of full's (None: not measured)
    step: Optional[float]  # step against E3VA's (None: not timed)

    def lowest(self) -> Optional[float]:
        values = list(self.recovery.values())
        return None if None in values else min(values)

    def within_budget(self) -> Optional[bool]:
        if self.peak is None or self.step is None:
            return None
        return self.peak <= MAX_PEAK_SHARE and self.step <= MAX_STEP_RATIO


def candidate(runs: List[dict], costs: Dict[str, Cost], row: str,
              lr_scale: float = 1.0) -> Candidate:
    """``row`` at ``lr_scale``: its validation recovery in every regime and its costs."""
    return Candidate(row, lr_scale, {regime: val_recovery(runs, regime, row, lr_scale)
                                     for regime in REGIMES},
                     peak_cell(costs, row), step_ratio(costs, row))


def recorded_candidates(runs: List[dict]) -> Set[Tuple[str, float]]:
    """(row, learning-rate multiple) of every highway row run on the validation split."""
    return {(r["row"], r["lr_scale"]) for r in runs if r["split"] == "val"
            and read_method_spec(r["row"])[0] in HIGHWAY_METHODS}


def candidates(runs: List[dict], costs: Dict[str, Cost]) -> List[Candidate]:
    """Every planned candidate (:data:`PLANNED_CANDIDATES`) and every other highway row on the
    validation split, at every learning rate it ran at."""
    keys = sorted(recorded_candidates(runs) | set(PLANNED_CANDIDATES))
    return [candidate(runs, costs, row, scale) for row, scale in keys]


def select(found: Sequence[Candidate]) -> Optional[Candidate]:
    """The rule (:data:`RULE`): within the budget, the highest lowest recovery; None until a
    candidate has every regime's validation record and its costs. The leader so far until
    :func:`still_open` finds no candidate left that could pass it."""
    eligible = [c for c in found if c.lowest() is not None and c.within_budget()]
    if not eligible:
        return None
    return max(eligible, key=lambda c: (c.lowest(), -c.peak))


def still_open(found: Sequence[Candidate], leader: Candidate) -> List[Candidate]:
    """The candidates that could still pass ``leader`` once their missing regimes have run.

    A candidate's lowest recovery is at most the lowest of the regimes it has run, so one
    already below the leader's there, or over the budget, is out of the running (and one
    with no regime run is in it)."""
    def could_pass(c: Candidate) -> bool:
        known = [v for v in c.recovery.values() if v is not None]
        bound = min(known) if known else float("inf")
        if bound != leader.lowest():
            return bound > leader.lowest()
        return c.peak is None or c.peak < leader.peak  # a tie goes to the lower peak

    return [c for c in found if c.lowest() is None and c.within_budget() is not False
            and could_pass(c)]


def missing_cell(c: Candidate) -> str:
    """``row`` at its rate and the regimes it has yet to run, for the list of open candidates."""
    missing = ", ".join(regime for regime, value in c.recovery.items() if value is None)
    return f"`{c.row}` at {c.lr_scale:g}x ({missing})"


HELD_OUT_SEEDS = 3
HELD_OUT_BASES = ("full", "fixed", "lora")  # the gap's two ends and the goal's other bar


def held_out_commands(chosen: Candidate, missing: Dict[str, List[str]]) -> List[str]:
    """The study's commands that run ``missing`` ({row: regimes short of seeds}): the
    baselines at the recipe's rate, the chosen row at its own."""
    by_rate: Dict[float, Dict[str, List[str]]] = {}
    for row, regimes in missing.items():
        scale = chosen.lr_scale if row == chosen.row else 1.0
        by_rate.setdefault(scale, {})[row] = regimes
    commands = []
    for scale, rows in sorted(by_rate.items(), key=lambda item: item[0] != 1.0):
        regimes = [r for r in REGIMES if any(r in found for found in rows.values())]
        rate = "" if scale == 1 else f" --lr-scale {scale:g}"
        commands.append(f"python -m projects.transfer.study --split test --regimes "
                        f'{",".join(regimes)} --rows "{",".join(rows)}" --seeds 0,1,2{rate}')
    return commands


def held_out(runs: List[dict], chosen: Candidate, seeds: int = HELD_OUT_SEEDS) -> str:
    """The goal judged on each regime's held-out test: the chosen row's recovery (means over
    ``seeds`` seeds) against :data:`GOAL_RECOVERY` and against LoRA's there. A regime is judged
    once the chosen row, full, fixed and LoRA have ``seeds`` seeds each; before, what has run
    is shown with its count and the command that runs the rest."""
    lines = tables.table_head(["regime", "seeds", "box AP", "recovery", "LoRA's recovery",
                               "the goal"])
    verdicts: Dict[str, Optional[bool]] = {}
    missing: Dict[str, List[str]] = {}
    for regime in REGIMES:
        bases = group(runs, "test").get(regime, {})
        own = group(runs, "test", chosen.lr_scale).get(regime, {}).get(chosen.row, [])
        rows = {**bases, chosen.row: own} if own else bases
        short = [r for r in (*HELD_OUT_BASES, chosen.row)
                 if len(rows.get(r, [])) < seeds]
        for row in short:
            missing.setdefault(row, []).append(regime)
        value, lora = report.recovery(rows, chosen.row), report.recovery(rows, "lora")
        verdicts[regime] = (None if short else value >= GOAL_RECOVERY and value >= lora)
        box = [r["final"]["bbox/AP"] for r in own]
        lines.append(tables.table_row([
            regime, f"{len(own)} of {seeds}", report.mean_std(box) if box else PENDING,
            pending_or(value, ".2f"), pending_or(lora, ".2f"),
            PENDING if verdicts[regime] is None else ("met" if verdicts[regime] else "not met")]))
    if None in verdicts.values():
        commands = " and ".join(f"`{c}`" for c in held_out_commands(chosen, missing))
        verdict = (f"**The goal on the held-out test**: pending until every regime has "
                   f"{seeds} seeds of the chosen row, full, fixed and LoRA: {commands}.")
    elif all(verdicts.values()):
        verdict = (f"**The goal on the held-out test**: met in every regime, at "
                   f"{peak_share_cell(chosen.peak)} of full fine-tuning's extra peak and "
                   f"{step_cell(chosen.step)} E3VA's step.")
    else:
        failed = ", ".join(regime for regime, ok in verdicts.items() if not ok)
        verdict = f"**The goal on the held-out test**: not met in {failed}."
    head = (f"Held-out test of the chosen row ({seeds} seeds; recovery on the means over "
            f"seeds; the goal: at least {GOAL_RECOVERY} of the gap and LoRA's recovery):")
    return "\n".join([head, "", *lines, "", verdict])


def goal_line(runs: List[dict], chosen: Candidate) -> str:
    """Where the chosen row meets the goal on validation: at least 0.9 of the gap and at least
    LoRA's recovery, regime by regime."""
    parts = []
    for regime, value in chosen.recovery.items():
        lora = val_recovery(runs, regime, "lora")
        if lora is None:
            parts.append(f"{regime} pending ({value:.2f}; LoRA not run)")
            continue
        ok = value >= GOAL_RECOVERY and value >= lora
        parts.append(f"{regime} {'met' if ok else 'not met'} ({value:.2f}; LoRA {lora:.2f})")
    return (f"Against the goal (at least {GOAL_RECOVERY} of the gap and LoRA's recovery in every "
            f"regime), on validation: {'; '.join(parts)}.")


def selection_block(runs: List[dict], costs: Dict[str, Cost]) -> str:
    found = candidates(runs, costs)
    lines = [f"Rule ({os.path.relpath(__file__, report.ROOT)}): {RULE}", ""]
    if not recorded_candidates(runs):
        return "\n".join(lines + [f"_Pending: no `e3va` or `e3va_spatial` row is recorded on "
                                  f"the validation split yet (the commands above, then "
                                  f"`{RENDER}`)._"])
    lines += tables.table_head(["candidate", "learning rate",
                                *(f"{regime} (val)" for regime in REGIMES), "lowest",
                                "peak above fixed", "step / `e3va`'s", "within the budget"])
    for c in found:
        budget = c.within_budget()
        lines.append(tables.table_row([
            f"`{c.row}`", f"{c.lr_scale:g}x",
            *(pending_or(c.recovery[regime], ".2f") for regime in REGIMES),
            pending_or(c.lowest(), ".2f"),
            peak_share_cell(c.peak),
            step_cell(c.step),
            PENDING if budget is None else ("yes" if budget else "no")]))
    chosen = select(found)
    open_ = still_open(found, chosen) if chosen else []
    lines.append("")
    if chosen is None:
        lines.append("**Chosen**: pending, until a candidate within the budget has every "
                     "regime's validation record and its costs.")
    elif open_:
        lines.append(f"**Chosen**: pending. `{chosen.row}` at {chosen.lr_scale:g}x the "
                     f"learning rate leads (lowest validation recovery {chosen.lowest():.2f}); "
                     f"these could still pass it once their missing regimes have run: "
                     f"{'; '.join(missing_cell(c) for c in open_)}.")
    else:
        lines += [f"**Chosen**: `{chosen.row}` at {chosen.lr_scale:g}x the learning rate "
                  f"(lowest validation recovery {chosen.lowest():.2f}).", "",
                  goal_line(runs, chosen), "", held_out(runs, chosen)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# What to pick for a memory budget
# ------------------------------------------------------------------------------------------


ENDS = ("fixed", "full")  # the budget table's two ends: nothing tuned, everything tuned


def at_the_recipe_rate(runs: List[dict], costs: Dict[str, Cost]) -> List[Candidate]:
    """Every row run on the validation split at the recipe's learning rate, any method."""
    rows = sorted({r["row"] for r in runs if r["split"] == "val" and r["lr_scale"] == 1})
    return [candidate(runs, costs, row) for row in rows]


def frontier(found: Sequence[Candidate]) -> List[Candidate]:
    """The rows of ``found`` worth their memory: those with a validation record in every regime
    and a measured peak, ordered by peak, each kept only if its lowest recovery over the
    regimes beats that of every cheaper row."""
    kept: List[Candidate] = []
    for c in sorted((c for c in found if c.lowest() is not None and c.peak is not None),
                    key=lambda c: (c.peak, -c.lowest())):
        if not kept or c.lowest() > kept[-1].lowest():
            kept.append(c)
    return kept


def budget_table(runs: List[dict], costs: Dict[str, Cost]) -> str:
    """For each memory budget, the row that recovers most in its worst regime: the frontier
    from the frozen model to full fine-tuning, on the validation splits."""
    found = at_the_recipe_rate(runs, costs)
    kept = frontier(found)
    if not any(c.row not in ENDS for c in kept):
        return (f"_Pending: no tuning method between {' and '.join(f'`{e}`' for e in ENDS)} has "
                f"a validation record in every regime ({', '.join(REGIMES)}) and a measured "
                f"peak yet (docs/ACCURACY.md, then `{RENDER}`)._")
    partial = [c.row for c in found if c.lowest() is None]
    lines = tables.table_head(["extra memory you can spend (share of full's)", "pick",
                               *(f"{regime}: recovery" for regime in REGIMES),
                               "step / `e3va`'s"])
    for c, nxt in zip(kept, [*kept[1:], None]):
        span = (f"{100 * c.peak:.1f}% to {100 * nxt.peak:.1f}%" if nxt
                else f"{100 * c.peak:.1f}% or more")
        lines.append(tables.table_row([
            span, f"`{c.row}`", *(f"{c.recovery[regime]:.2f}" for regime in REGIMES),
            step_cell(c.step)]))
    lines += ["", "A row is listed when it recovers more of the gap in its worst regime than "
              "every row that needs less memory; the budget is the training step's peak above "
              "the frozen model's on Swin-B Cascade (512x512, batch 2), as a share of full "
              "fine-tuning's. Recovery on each regime's validation split (one seed unless the "
              "study's tables say more); the held-out test of the chosen row is in "
              "[docs/ACCURACY.md](docs/ACCURACY.md#choosing-on-a-validation-split-issue-37)."]
    if partial:
        lines[-1] += (" Not in it until they have run in every regime: "
                      f"{', '.join(f'`{row}`' for row in partial)}.")
    return "\n".join(lines)


def blocks(runs: List[dict], costs: Dict[str, Cost]) -> Dict[str, str]:
    """Marker name -> Markdown of this module's blocks (docs/ACCURACY.md; the budget's in the
    README)."""
    return {LR: lr_table(runs), FEEDBACK: feedback_table(runs, costs),
            SELECTION: selection_block(runs, costs), BUDGET: budget_table(runs, costs)}
