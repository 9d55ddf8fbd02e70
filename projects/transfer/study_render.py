"""Every generated block and figure of the accuracy study, written into its document.

The held-out test's blocks (:mod:`.study_report`), the validation split's
(:mod:`.study_validation`) and the choice made on it (:mod:`.study_selection`), between their
``<!-- begin: accuracy-* -->`` markers in docs/ACCURACY.md and the README, and the figures
``docs/accuracy_*.png``: all from the committed run records and cost records alone, never
from a run folder.
``python -m projects.transfer.study --render`` calls :func:`render`;
``tests/test_accuracy_study.py`` checks that the committed blocks are what it renders.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional

from projects.tables import replace_block
from projects.transfer import study_report, study_selection, study_validation
from projects.transfer.study_records import RECORDS, ROOT, load_runs

DOC = os.path.join(ROOT, "docs", "ACCURACY.md")
README = os.path.join(ROOT, "README.md")
README_BLOCKS = (study_report.SUMMARY, study_selection.BUDGET)  # every other is in DOC


def block_path(name: str, doc: str = DOC, readme: str = README) -> str:
    """The file holding block ``name``."""
    return readme if name in README_BLOCKS else doc


def chosen_at_recipe_rate(runs: List[dict],
                          costs: Dict[str, study_validation.Cost]) -> Optional[str]:
    """The row chosen on validation, for the held-out summary and its figure; these are at the
    recipe's rate, so a row chosen at another joins neither."""
    choice = study_selection.standing_choice(study_selection.candidates(runs, costs))
    return choice.row if choice is not None and choice.lr_scale == 1 else None


def render_tables(runs: List[dict], peaks: Optional[Dict[str, dict]] = None,
                  costs: Optional[Dict[str, study_validation.Cost]] = None) -> Dict[str, str]:
    """Marker name -> Markdown of every block, from the runs' records
    (:func:`~.study_records.load_runs`), the study step's peaks and the cost records (the
    committed ones where not given)."""
    peaks = study_report.load_peaks() if peaks is None else peaks
    costs = study_validation.load_costs() if costs is None else costs
    chosen = chosen_at_recipe_rate(runs, costs)
    return {**study_report.held_out_blocks(runs, peaks, chosen),
            **study_validation.blocks(runs, costs), **study_selection.blocks(runs, costs)}


def render(root: str = RECORDS, doc: str = DOC, figures: str = os.path.join(ROOT, "docs"),
           readme: str = README, peaks: Optional[Dict[str, dict]] = None,
           costs: Optional[Dict[str, study_validation.Cost]] = None) -> None:
    """Rewrite every block in ``doc`` and ``readme`` and the figures in ``figures`` from the
    records under ``root`` (the committed ones by default)."""
    runs = load_runs(root)
    peaks = study_report.load_peaks() if peaks is None else peaks
    costs = study_validation.load_costs() if costs is None else costs
    for name, body in render_tables(runs, peaks, costs).items():
        path = block_path(name, doc, readme)
        with open(path) as f:
            text = f.read()
        with open(path, "w") as f:
            f.write(replace_block(text, name, body))
    study_report.plot_held_out(runs, peaks, figures, chosen_at_recipe_rate(runs, costs))
    study_validation.plot_feedback(runs, costs, os.path.join(figures, "accuracy_feedback.png"))
