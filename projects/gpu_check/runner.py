"""Running the GPU check's steps in order: each prints its result as it ends, the first failure
stops the run, and the results become the record that docs/INSTALL.md's table renders.

A step is a function returning an :class:`Outcome` (one line of what it measured, and the
numbers); it raises to fail (any exception: an assertion naming what differs, a CUDA error) and
raises :class:`Skip` when this machine cannot run it (one GPU for a two-GPU step).
"""
from __future__ import annotations

import dataclasses
import time
import traceback
from typing import Callable, Dict, List, Sequence, Tuple

from projects.tables import table_head, table_row

__all__ = ["EXIT_FAILED", "EXIT_NO_GPU", "EXIT_PASSED", "TIME_BUDGET_SECONDS", "Outcome", "Skip",
           "StepResult", "exit_code", "render", "run_steps"]

EXIT_PASSED = 0  # every step passed or was skipped (each skip says why)
EXIT_FAILED = 1  # a step failed: the steps after it did not run
EXIT_NO_GPU = 3  # no CUDA GPU visible: nothing ran (argparse's usage errors are 2)
TIME_BUDGET_SECONDS = 600  # what the whole check must fit in on one GPU, imports included


class Skip(Exception):
    """This machine cannot run the step; the message says why (e.g. "needs 2 GPUs, has 1")."""


@dataclasses.dataclass
class Outcome:
    """What a passed step measured: one line for people, the numbers for the record."""

    summary: str
    details: Dict[str, object] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class StepResult:
    name: str
    status: str  # "passed", "failed" or "skipped"
    summary: str
    seconds: float
    details: Dict[str, object] = dataclasses.field(default_factory=dict)


Step = Tuple[str, Callable[[], Outcome]]


def run_steps(steps: Sequence[Step], log: Callable[[str], None] = print) -> List[StepResult]:
    """Run ``steps`` in order until one fails; one line per step through ``log``. Returns the
    results of the steps that ran (the failed one last)."""
    results: List[StepResult] = []
    for number, (name, step) in enumerate(steps, 1):
        log(f"gpu-check [{number}/{len(steps)}] {name} ...")
        start = time.perf_counter()
        try:
            outcome = step()
            result = StepResult(name, "passed", outcome.summary, 0.0, dict(outcome.details))
        except Skip as skip:
            result = StepResult(name, "skipped", str(skip), 0.0)
        except Exception as error:  # every failure is reported, then the run stops
            log(traceback.format_exc())
            result = StepResult(name, "failed", f"{type(error).__name__}: {error}", 0.0)
        result.seconds = round(time.perf_counter() - start, 1)
        results.append(result)
        log(f"gpu-check [{number}/{len(steps)}] {name}: {result.status.upper()} "
            f"({result.seconds:.0f} s): {result.summary}")
        if result.status == "failed":
            rest = [n for n, _ in steps[number:]]
            if rest:
                log(f"gpu-check: stopped at the first failure; not run: {', '.join(rest)}")
            break
    return results


def exit_code(results: Sequence[StepResult]) -> int:
    return EXIT_FAILED if any(r.status == "failed" for r in results) else EXIT_PASSED


def render(data: dict) -> str:
    """The check's table from its record: ``machine`` (one line), ``seconds`` (the whole run)
    and ``steps`` (:class:`StepResult` fields, in the order they ran)."""
    steps = data["steps"]
    passed = sum(s["status"] == "passed" for s in steps)
    skipped = sum(s["status"] == "skipped" for s in steps)
    failed = [s["name"] for s in steps if s["status"] == "failed"]
    verdict = (f"failed at {failed[0]} (the steps after it did not run)" if failed else
               f"{passed} steps passed" + (f", {skipped} skipped" if skipped else ""))
    lines = table_head(["step", "result", "what it measured", "seconds"])
    lines += [table_row([s["name"], s["status"], s["summary"].replace("|", "/"),
                         f"{s['seconds']:.0f}"]) for s in steps]
    return "\n".join([
        f"`make gpu-check` on {data['machine']}: {verdict}, in {data['seconds']:.0f} s "
        f"(budget {TIME_BUDGET_SECONDS} s).", "", *lines])
