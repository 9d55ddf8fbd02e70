"""What the accuracy study chooses on its validation split, and whether the choice meets the goal.

Issue 37's rule picks among the highway rows on validation records alone; its goal is judged
on the held-out test, for the chosen row only.

Two blocks, rendered from the committed run and cost records alone:

- ``accuracy-selection`` (docs/ACCURACY.md): :func:`select`'s rule applied to every candidate,
  pending while a planned one could still pass the leader; then the chosen row against the
  goal on each regime's held-out test (:func:`held_out`);
- ``accuracy-budget`` (the README): what to pick for a memory budget, from the same evidence,
  and what the README may recommend (:func:`advice`): nothing until the choice stands, then
  the chosen row as the held-out test judges it, with the command that trains it.
"""
from __future__ import annotations

import dataclasses
import os
import shlex
from typing import Dict, List, Optional, Sequence, Set, Tuple

from e3va_d2.modeling.tuning.spec import read_method_spec
from projects import tables
from projects.transfer import study_report as report
from projects.transfer.study_records import REGIMES
from projects.transfer.study_validation import (
    COST,
    FEEDBACK_ROWS,
    GOAL_RECOVERY,
    LR_SCALES,
    MAX_PEAK_SHARE,
    MAX_STEP_RATIO,
    OFF_THE_CURVE,
    OPTION_COSTS,
    PENDING,
    RENDER,
    Cost,
    peak_cell,
    peak_share_cell,
    pending_or,
    rows_at_rate,
    step_cell,
    step_ratio,
    val_recovery,
)

SELECTION = "accuracy-selection"
BUDGET = "accuracy-budget"  # in the README
BLOCKS = (SELECTION, BUDGET)
SELECTION_LINK = "[docs/ACCURACY.md](docs/ACCURACY.md#choosing-on-a-validation-split-issue-37)"

HIGHWAY_METHODS = ("e3va", "e3va_spatial")
# Every candidate the plan names (docs/ACCURACY.md), run or not: the choice stands only once
# none of them can still pass it. Rows run outside the plan join when recorded.
PLANNED_CANDIDATES = (
    *((method, scale) for method in HIGHWAY_METHODS for scale in LR_SCALES),
    *((row, 1.0) for row in FEEDBACK_ROWS),
    *((row, 1.0) for rows in OPTION_COSTS.values() for row in rows))

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


def standing_choice(found: Sequence[Candidate]) -> Optional[Candidate]:
    """The rule's choice once it stands (no candidate left that could pass it), else None."""
    chosen = select(found)
    return chosen if chosen is not None and not still_open(found, chosen) else None


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


def meets_goal(recovery: float, lora: float) -> bool:
    """Issue 37's goal in one regime: at least :data:`GOAL_RECOVERY` of the gap and LoRA's."""
    return recovery >= GOAL_RECOVERY and recovery >= lora


HELD_OUT_SEEDS = 3
HELD_OUT_BASES = ("full", "fixed", "lora")  # the gap's two ends and the goal's other bar


def held_out_commands(chosen: Candidate, missing: Dict[str, List[str]],
                      seeds: int = HELD_OUT_SEEDS) -> List[str]:
    """The study's commands that run ``missing`` ({row: regimes short of seeds}) with
    ``seeds`` seeds: the baselines at the recipe's rate, the chosen row at its own."""
    by_rate: Dict[float, Dict[str, List[str]]] = {}
    for row, regimes in missing.items():
        scale = chosen.lr_scale if row == chosen.row else 1.0
        by_rate.setdefault(scale, {})[row] = regimes
    commands = []
    for scale, rows in sorted(by_rate.items(), key=lambda item: item[0] != 1.0):
        regimes = [r for r in REGIMES if any(r in found for found in rows.values())]
        rate = "" if scale == 1 else f" --lr-scale {scale:g}"
        commands.append(f"python -m projects.transfer.study --split test --regimes "
                        f'{",".join(regimes)} --rows "{",".join(rows)}" '
                        f"--seeds {','.join(map(str, range(seeds)))}{rate}")
    return commands


@dataclasses.dataclass(frozen=True)
class HeldOutRegime:
    """The chosen row against the goal on one regime's held-out test."""
    regime: str
    box: List[float]  # the chosen row's box AP, one per seed run
    recovery: Optional[float]  # on the means over the seeds run
    per_seed: List[float]  # recovery seed by seed, against the same seed's full and fixed
    lora: Optional[float]
    short: List[str]  # the rows with fewer seeds than the goal needs
    met: Optional[bool]  # None while a row is short


def judge_held_out(runs: List[dict], chosen: Candidate,
                   seeds: int = HELD_OUT_SEEDS) -> List[HeldOutRegime]:
    """The goal on each regime's held-out test: the chosen row's recovery (means over ``seeds``
    seeds) against :data:`GOAL_RECOVERY` and against LoRA's there, judged once the chosen row,
    full, fixed and LoRA have ``seeds`` seeds each; the chosen row's runs at its own rate."""
    judged = []
    for regime in REGIMES:
        rows = rows_at_rate(runs, "test", regime, chosen.row, chosen.lr_scale)
        short = [r for r in (*HELD_OUT_BASES, chosen.row) if len(rows.get(r, [])) < seeds]
        value, lora = report.recovery(rows, chosen.row), report.recovery(rows, "lora")
        judged.append(HeldOutRegime(
            regime, [r["final"]["bbox/AP"] for r in rows.get(chosen.row, [])], value,
            report.paired_recoveries(rows, chosen.row), lora, short,
            None if short else meets_goal(value, lora)))
    return judged


def goal_verdict(judged: Sequence[HeldOutRegime]) -> Optional[bool]:
    """Not met (False) once a regime with all its seeds misses the goal, since no run still to
    come can change that; met (True) once every regime has its seeds and meets it; pending
    (None) otherwise."""
    if any(j.met is False for j in judged):
        return False
    if any(j.met is None for j in judged):
        return None
    return True


def failed_regimes(judged: Sequence[HeldOutRegime]) -> List[str]:
    return [j.regime for j in judged if j.met is False]


def pending_regimes(judged: Sequence[HeldOutRegime]) -> List[str]:
    return [j.regime for j in judged if j.met is None]


def held_out(runs: List[dict], chosen: Candidate, seeds: int = HELD_OUT_SEEDS) -> str:
    """:func:`judge_held_out` as a table, one row per regime (what has run, with its count),
    then the verdict and the commands that run what is still missing."""
    judged = judge_held_out(runs, chosen, seeds)
    lines = tables.table_head(["regime", "seeds", "box AP", "recovery", "recovery per seed",
                               "on validation", "LoRA's recovery", "the goal"])
    for j in judged:
        lines.append(tables.table_row([
            j.regime, f"{len(j.box)} of {seeds}",
            report.mean_std(j.box) if j.box else PENDING,
            pending_or(j.recovery, ".2f"),
            ", ".join(f"{v:.2f}" for v in j.per_seed) or PENDING,
            pending_or(chosen.recovery.get(j.regime), ".2f"), pending_or(j.lora, ".2f"),
            PENDING if j.met is None else ("met" if j.met else "not met")]))
    verdict = goal_verdict(judged)
    missing: Dict[str, List[str]] = {}
    for j in judged:
        for row in j.short:
            missing.setdefault(row, []).append(j.regime)
    commands = " and ".join(f"`{c}`" for c in held_out_commands(chosen, missing, seeds))
    if verdict is None:
        text = (f"**The goal on the held-out test**: pending until every regime has "
                f"{seeds} seeds of the chosen row, full, fixed and LoRA: {commands}.")
    elif verdict:
        text = (f"**The goal on the held-out test**: met in every regime, at "
                f"{peak_share_cell(chosen.peak)} of full fine-tuning's extra peak and "
                f"{step_cell(chosen.step)} E3VA's step.")
    else:
        text = (f"**The goal on the held-out test**: not met in "
                f"{', '.join(failed_regimes(judged))}.")
        if missing:
            text += (f" Still to run, for {', '.join(pending_regimes(judged))} in the table "
                     f"(no run can change the verdict): {commands}.")
    head = (f"Held-out test of the chosen row ({seeds} seeds; recovery on the means over "
            f"seeds; per seed, each against full's and fixed's run of the same seed; on "
            f"validation, the selection's; the goal: at least {GOAL_RECOVERY} of the gap and "
            f"LoRA's recovery, on the means):")
    return "\n".join([head, "", *lines, "", text])


def goal_line(runs: List[dict], chosen: Candidate) -> str:
    """Where the chosen row meets the goal on validation: at least 0.9 of the gap and at least
    LoRA's recovery, regime by regime."""
    parts = []
    for regime, value in chosen.recovery.items():
        lora = val_recovery(runs, regime, "lora")
        if lora is None:
            parts.append(f"{regime} pending ({value:.2f}; LoRA not run)")
            continue
        ok = meets_goal(value, lora)
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
              f"{SELECTION_LINK}."]
    if partial:
        lines[-1] += (" Not in it until they have run in every regime: "
                      f"{', '.join(f'`{row}`' for row in partial)}.")
    return "\n".join([*lines, "", advice(runs, costs)])


SWIN_B_CONFIG = "configs/COCO/cascade_mask_rcnn_swin_b_{method}.py"  # the budget's model


def train_command(row: str) -> str:
    """The ``train_net.py`` command that trains ``row`` on the model the budget is measured on:
    its method's shipped Swin-B Cascade config, the row's options as overrides."""
    method = read_method_spec(row)[0]
    config = SWIN_B_CONFIG.format(method=method)
    if not os.path.isfile(os.path.join(report.ROOT, config)):
        raise ValueError(f"{row!r}: no shipped config {config}; add one for {method!r}")
    overrides = [shlex.quote(f"model.backbone.bottom_up.tuning.{option}")
                 for option in row.split(":")[1:]]
    return " ".join(["python train_net.py --config-file", config, "--num-gpus 8", *overrides])


def advice(runs: List[dict], costs: Dict[str, Cost]) -> str:
    """What the README may recommend: nothing while the selection is open, the chosen row as a
    candidate while its held-out test is pending, then what that test says of it."""
    chosen = standing_choice(candidates(runs, costs))
    if chosen is None:
        return (f"**Not a recommendation yet.** Until the selection stands ({SELECTION_LINK} "
                f"names what it still waits on), a row between `fixed` and `full` above leads on "
                f"one validation seed; the chosen row's {HELD_OUT_SEEDS} seeds on the held-out "
                f"test judge it, and this advice follows them.")
    rate = "" if chosen.lr_scale == 1 else f", `optimizer.lr` at {chosen.lr_scale:g}x the config's"
    command = f"`{train_command(chosen.row)}`{rate}"
    judged = judge_held_out(runs, chosen)
    verdict = goal_verdict(judged)
    if verdict is None:
        return (f"**Chosen on validation: `{chosen.row}`**, not yet a recommendation: its "
                f"{HELD_OUT_SEEDS} seeds on the held-out test, beside full's, fixed's and LoRA's, "
                f"judge it against issue 37's goal ({SELECTION_LINK}). To try it: {command}.")
    if verdict:
        return (f"**Recommended when memory decides: `{chosen.row}`.** On the held-out test "
                f"({HELD_OUT_SEEDS} seeds in every regime) it recovers at least {GOAL_RECOVERY} "
                f"of the gap between the frozen trunk and full fine-tuning, and at least LoRA's, "
                f"at {peak_share_cell(chosen.peak)} of full fine-tuning's extra peak and "
                f"{step_cell(chosen.step)} E3VA's step ({SELECTION_LINK}). Train it with "
                f"{command}.")
    return (f"**Chosen on validation, short of the goal on the held-out test: `{chosen.row}`.** "
            f"On the held-out test ({HELD_OUT_SEEDS} seeds), {'; '.join(map(standing, judged))} "
            f"({SELECTION_LINK}). It is still the best the rule found within issue 37's budget "
            f"({peak_share_cell(chosen.peak)} of full fine-tuning's extra peak, "
            f"{step_cell(chosen.step)} E3VA's step): pick it when memory decides, full "
            f"fine-tuning when accuracy does and memory allows. To train it: {command}.")


def standing(j: HeldOutRegime) -> str:
    """One regime's held-out verdict in words, saying which bar of the goal a miss is under."""
    if j.met is None:
        return f"{j.regime}'s runs are under way"
    if j.met:
        return f"in {j.regime} it meets the goal"
    below_goal, below_lora = j.recovery < GOAL_RECOVERY, j.recovery < j.lora
    if below_goal and below_lora:
        return f"in {j.regime} it recovers less than {GOAL_RECOVERY} of the gap and less than LoRA"
    if below_goal:
        return (f"in {j.regime} it recovers less than {GOAL_RECOVERY} of the gap between the "
                f"frozen trunk and full fine-tuning, though more than LoRA")
    return f"in {j.regime} it recovers less than LoRA, though at least {GOAL_RECOVERY}"


def blocks(runs: List[dict], costs: Dict[str, Cost]) -> Dict[str, str]:
    """Marker name -> Markdown of this module's blocks (the budget's in the README)."""
    return {SELECTION: selection_block(runs, costs), BUDGET: budget_table(runs, costs)}
