"""The cost benchmark's record turned into its tables (docs/COST.md, docs/MEMORY.md) and
charts: apart from ``tuning_cost.py`` (the command that measures) because ``projects.tables``
re-renders every table from its committed record, measuring nothing, and the sweep, the planner
and the PEFT comparison print parts of the same tables."""
from __future__ import annotations

import os
import platform
import textwrap
from typing import Dict, List, Optional, Sequence

import torch

from e3va_d2.engine.step import resolve_amp_dtype
from projects.tables import table_head, table_row

from .peak_report import PEAK_NOTE, peak_table, plot_peak

GPUS = (("GTX 1080Ti", 11), ("Tesla P100", 16), ("RTX 3090", 24), ("Tesla V100", 32))
MIB = 2**20


def _ratio(value: float, base: Optional[float]) -> str:
    # NaN: not timed (``--steps 0``, a memory-only run)
    return f"{value / base:.2f}x" if base and base == base and value == value else ""


def cost_table(results: Dict[str, dict]) -> str:
    """Table 1's shape: parameters, memory and time per method, relative to full tuning (no
    time columns for a memory-only run)."""
    full, fixed = results.get("full"), results.get("fixed")
    has_cuda = any("cuda_peak_bytes" in r for r in results.values())
    header = ["method", "trainable (backbone)", "% of Swin", "saved for backward", "above fixed"]
    header += ["CUDA peak"] if has_cuda else []
    timed = any(r.get("step_seconds") == r.get("step_seconds") for r in results.values())
    header += ["step / full", "step / fixed", "backbone step / full"] if timed else []
    lines = table_head(header)
    for method, r in results.items():
        above = ""
        if full and fixed and full["saved_bytes"] > fixed["saved_bytes"]:
            floor = fixed["saved_bytes"]
            share = (r["saved_bytes"] - floor) / (full["saved_bytes"] - floor)
            above = f"{100 * share:.1f}% of full's"
        row = [
            method,
            f"{r['trainable_backbone'] / 1e6:.2f}M",
            f"{100 * r['trainable_backbone'] / r['swin_parameters']:.2f}%",
            f"{r['saved_bytes'] / MIB:,.0f} MiB",
            above,
        ]
        if has_cuda:
            row.append(f"{r.get('cuda_peak_bytes', 0) / MIB:,.0f} MiB")
        row += [
            _ratio(r["step_seconds"], full and full["step_seconds"]),
            _ratio(r["step_seconds"], fixed and fixed["step_seconds"]),
            _ratio(r["backbone_step_seconds"], full and full["backbone_step_seconds"]),
        ] if timed else []
        lines.append(table_row(row))
    return "\n".join(lines)


def breakdown_table(results: Dict[str, dict]) -> str:
    """Saved activations per tensor kind (rows) and method (columns), in MiB."""
    from .measure import SAVED_KINDS

    methods = [m for m, r in results.items() if "saved_bytes_by_kind" in r]
    order = [kind for _, kind in SAVED_KINDS] + ["other"]
    present = {k for m in methods for k, v in results[m]["saved_bytes_by_kind"].items() if v}
    kinds = [k for k in dict.fromkeys(order) if k in present]
    lines = table_head(["saved by", *methods])
    for kind in kinds:
        cells = [results[m]["saved_bytes_by_kind"].get(kind, 0) / MIB for m in methods]
        lines.append(table_row([kind, *(f"{c:,.1f}" for c in cells)]))
    totals = [results[m]["saved_bytes"] / MIB for m in methods]
    lines.append(table_row(["**total**", *(f"**{t:,.1f}**" for t in totals)]))
    return "\n".join(lines)


def training_memory(r: dict, batch: int) -> tuple:
    """(bytes, measured?) needed to train at ``batch``: the measured CUDA peak when there is
    one, else an estimate: weights + gradients + AdamW's two moments + saved activations."""
    measured = r.get("cuda_peak_by_batch", {}).get(str(batch))
    if measured is not None:
        return measured, True
    static = 4 * (r["total_parameters"] + 3 * r["trainable_total"])
    return static + r["saved_bytes_by_batch"][str(batch)], False


def fit_table(results: Dict[str, dict], batches: Sequence[int] = (1, 2)) -> str:
    """Table 4's question: which methods fit on which GPU at batch 1 and 2."""
    header = ["method", "batch", "memory"] + [f"{name} {gb}GB" for name, gb in GPUS]
    lines = table_head(header)
    any_estimate = False
    for method, r in results.items():
        for batch in batches:
            need, measured = training_memory(r, batch)
            any_estimate |= not measured
            cells = ["yes" if need <= gb * 2**30 else "no" for _, gb in GPUS]
            label = f"{need / 2**30:.1f} GiB" + ("" if measured else " (est.)")
            lines.append(table_row([method, str(batch), label] + cells))
    if any_estimate:
        lines.append("")
        lines.append(
            "(est.): no GPU was measured; the estimate is weights + gradients + AdamW moments + "
            "activations saved for backward, a lower bound (no allocator slack, workspaces or "
            "temporaries)."
        )
    return "\n".join(lines)


def plot(results: Dict[str, dict], path: str, title: str) -> None:
    """Memory and step time per method (bars), labelled with trainable parameters."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods: List[str] = list(results)
    has_cuda = all("cuda_peak_bytes" in results[m] for m in methods)
    memory = [results[m]["cuda_peak_bytes" if has_cuda else "saved_bytes"] / MIB for m in methods]
    times = [results[m]["step_seconds"] for m in methods]
    full_time = results["full"]["step_seconds"] if "full" in results else max(times)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = ["tab:orange" if m.startswith("e3va") else "tab:blue" for m in methods]
    for ax, values, label in (
        (axes[0], memory,
         "CUDA peak (MiB)" if has_cuda else "activations saved for backward (MiB)"),
        (axes[1], [t / full_time for t in times], "training step time / full"),
    ):
        bars = ax.bar(methods, values, color=colors)
        ax.set_ylabel(label)
        ax.tick_params(axis="x", rotation=45)
        for bar, m in zip(bars, methods):
            top = (bar.get_x() + bar.get_width() / 2, bar.get_height())
            ax.annotate(f"{results[m]['trainable_backbone'] / 1e6:.2f}M", top, ha="center",
                        va="bottom", fontsize=7)
    wrapped = textwrap.fill(title + " (bar labels: trainable backbone parameters)", 150)
    fig.suptitle(wrapped, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def device_words(device: torch.device) -> str:
    """"cpu", or "cuda (<the card's name>)": where a benchmark ran, for its setup line."""
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """The processor's model name (Linux), else the architecture: CPU timings and bfloat16's
    speed depend on the model (AMX or not), so a record must say which one it ran on."""
    try:
        with open(cpuinfo) as f:
            for line in f:
                if line.lower().startswith("model name") and ":" in line:
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def describe(args, device: str) -> str:
    """The setup line of a benchmark's table: config, input, precision, steps and machine."""
    precision = "AMP (" + str(resolve_amp_dtype(True, device[:4])).replace("torch.", "") + ")" \
        if args.amp else "fp32"
    return (
        f"{os.path.basename(args.config_file)}, {args.batch} image(s) of {args.size}x{args.size}, "
        f"{precision}, "
        + (f"median of {args.steps} interleaved steps after {args.warmup} warm-up"
           if args.steps else f"memory only, after {args.warmup} warm-up step(s)")
        + f", on {device} "
        f"({cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__})"
    )


# What render() reads of each method's results (the record leaves out the per-module bytes).
RECORDED = ("trainable_backbone", "swin_parameters", "trainable_total", "total_parameters",
            "saved_bytes", "saved_bytes_by_batch", "saved_bytes_by_kind", "cuda_peak_bytes",
            "cuda_peak_by_batch", "step_seconds", "backbone_step_seconds", "peak")


def render(data: dict) -> str:
    """The benchmark's tables from its record: ``setup`` (what ran where), ``fit_batches`` and
    per-method ``results``."""
    results = data["results"]
    peaks = peak_table(results)
    return "\n\n".join([
        cost_table(results),
        data["setup"] + ". 'above fixed': saved bytes beyond the frozen-backbone model, as a "
        "share of full fine-tuning's. 'backbone step': the loss on the backbone's outputs only "
        "(FPN included, heads excluded).",
        *([f"Peak memory of a training step ({data['batch']} image(s) of "
           f"{data['size']}x{data['size']}):", peaks, PEAK_NOTE] if peaks else []),
        "Where the saved activations come from (MiB, by the innermost module that saved them):",
        breakdown_table(results),
        # With a measured peak, "which GPU fits" is the planner's (plan.py), not an estimate.
        *([] if peaks else [fit_table(results, data["fit_batches"])]),
    ])


def plot_record(data: dict, path: str) -> None:
    """The peak chart from the benchmark's record (what ``projects.tables`` draws into docs/)."""
    plot_peak(data["results"], path, data["setup"])
