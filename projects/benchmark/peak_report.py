"""The benchmark's peak-memory table and its stacked bar chart by category.

Reads what ``bench.Bench.measure_memory`` stores per method under ``"peak"`` (an
:class:`projects.benchmark.peak_memory.PeakMemory` as a dict). The paper's way of comparing training
memory is a share: how far a method's peak lies from the frozen backbone's ("fixed") towards
full fine-tuning's, ``(peak - fixed) / (full - fixed)``; 0 is the floor no tuning method can go
below with the same neck and heads, 1 is full fine-tuning.
"""
from __future__ import annotations

import textwrap
from typing import Dict, List, Optional

from projects.tables import table_head, table_row

from .peak_memory import CATEGORIES

MIB = 2**20

# Chart colours: model state in solid colours, what the step creates in lighter ones.
COLORS = {"parameters": "tab:green", "gradients": "tab:blue", "optimizer_state": "goldenrod",
          "activations": "tab:red", "temporaries": "mediumpurple", "inputs": "black",
          "autograd_detail": "lightsteelblue", "unknown": "silver"}


def peak_share(results: Dict[str, dict], method: str) -> Optional[float]:
    """``(peak - fixed's) / (full's - fixed's)``, or None without both ends measured."""
    full, fixed = results.get("full", {}).get("peak"), results.get("fixed", {}).get("peak")
    if not full or not fixed or full["peak_bytes"] <= fixed["peak_bytes"]:
        return None
    own = results[method]["peak"]["peak_bytes"]
    return (own - fixed["peak_bytes"]) / (full["peak_bytes"] - fixed["peak_bytes"])


def peak_table(results: Dict[str, dict]) -> str:
    """Per method: peak, its share above fixed, its ratio to full's, and the bytes per category
    at the peak (MiB)."""
    methods = [m for m, r in results.items() if r.get("peak")]
    if not methods:
        return ""
    full = results.get("full", {}).get("peak")
    shown = [c for c in CATEGORIES
             if any(results[m]["peak"]["by_category"].get(c) for m in methods)]
    header = ["method", "peak", "above fixed", "peak / full", "peak at"] + [
        c.replace("_", " ") for c in shown]
    lines = table_head(header)
    for method in methods:
        peak = results[method]["peak"]
        share = peak_share(results, method)
        row = [
            method,
            f"{peak['peak_bytes'] / MIB:,.0f} MiB",
            "" if share is None else f"{100 * share:.1f}% of full's",
            f"{peak['peak_bytes'] / full['peak_bytes']:.2f}" if full else "",
            f"{peak.get('peak_at', float('nan')):.2f}",
        ]
        row += [f"{peak['by_category'].get(c, 0) / MIB:,.0f}" for c in shown]
        lines.append(table_row(row))
    return "\n".join(lines)


PEAK_NOTE = (
    "Peak: the most memory held at once during one training step (forward, backward, AdamW "
    "update) after a warm-up step; on CPU from torch.profiler's memory timeline, on CUDA the "
    "allocator's max_memory_allocated. 'above fixed': (peak - fixed's) / (full's - fixed's). "
    "'peak at': when the peak happened, as a fraction of the step. Category columns (MiB): "
    "what the profiler says the bytes held at its peak are; 'unknown' is what it could not "
    "place (mostly the heads' proposal and target bookkeeping)."
)


def plot_peak(results: Dict[str, dict], path: str, title: str) -> None:
    """Stacked bars: each method's peak split by category, fixed's peak as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: List[str] = [m for m, r in results.items() if r.get("peak")]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) + 3), 4.8))
    bottoms = [0.0] * len(methods)
    for category in CATEGORIES:
        values = [results[m]["peak"]["by_category"].get(category, 0) / MIB for m in methods]
        if not any(values):
            continue
        ax.bar(methods, values, bottom=bottoms, color=COLORS[category],
               label=category.replace("_", " "))
        bottoms = [b + v for b, v in zip(bottoms, values)]
    for x, method in enumerate(methods):
        share = peak_share(results, method)
        label = f"{results[method]['peak']['peak_bytes'] / MIB:,.0f}"
        label += "" if share is None else f"\n{100 * share:.1f}%"
        ax.annotate(label, (x, bottoms[x]), ha="center", va="bottom", fontsize=7)
    if "fixed" in methods:
        ax.axhline(results["fixed"]["peak"]["peak_bytes"] / MIB, color="grey", ls="--", lw=0.8)
    ax.set_ylabel("peak memory of a training step (MiB)")
    ax.set_ylim(0, max(bottoms) * 1.15)
    ax.tick_params(axis="x", rotation=45)
    for tick in ax.get_xticklabels():
        tick.set_horizontalalignment("right")
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.suptitle(textwrap.fill(title + " (labels: peak MiB, share above fixed of full's)", 120),
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
