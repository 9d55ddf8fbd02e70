"""The planner's record turned into its Markdown: predicted peaks and largest batches per
method and size, the paper's Table 4 cards, the fits and the check against sizes not fitted.

Apart from ``plan.py`` (the command that measures) because ``projects.tables`` re-renders the
docs' plan (docs/MEMORY.md) from its committed record, measuring nothing; the record's
planning arguments are checked as the command line's are (``plan_checks.planning_inputs``).
"""
from __future__ import annotations

import os
from typing import Dict, List, Tuple

from projects.tables import table_head, table_row

from .cost_report import GPUS
from .gpu_terms import GpuTerms
from .plan_checks import GIB, planning_inputs
from .plan_fit import PeakModel, fits, padded_pixels


def check_table(points: Dict[str, List[dict]], models: Dict[str, PeakModel]) -> Tuple[str, float]:
    """Measured against predicted peaks at the check points; and the largest |error|."""
    lines = table_head(["method", "size x batch", "measured", "predicted", "error"])
    worst = 0.0
    for method, pts in points.items():
        for p in pts:
            if p["role"] != "check":
                continue
            predicted = models[method].predict(p["pixels"] // p["batch"], p["batch"])
            error = predicted / p["peak_bytes"] - 1
            worst = max(worst, abs(error))
            lines.append(table_row([
                method, f"{p['size']}x{p['size']} x {p['batch']}",
                f"{p['peak_bytes'] / GIB:.3f} GiB", f"{predicted / GIB:.3f} GiB",
                f"{100 * error:+.1f}%"]))
    return ("\n".join(lines) if len(lines) > 2 else ""), worst


def _batches(best: int, max_batch: int) -> str:
    return "none" if best == 0 else (str(best) + ("+" if best == max_batch else ""))


def plan_table(models: Dict[str, PeakModel], sizes: List[Tuple[int, int]], divisibility: int,
               budgets: Dict[str, float], max_batch: int) -> str:
    """Per method and size: predicted step peak at batch 1 and 2, and the largest batch whose
    card need (the step peak and ``gpu_terms``) fits; ``budgets``: the largest step peak per
    method."""
    header = ["method", "size", "step peak, batch 1", "step peak, batch 2",
              "largest batch that fits"]
    lines = table_head(header)
    for method, model in models.items():
        for width, height in sizes:
            pixels = padded_pixels(width, height, divisibility)
            best = model.largest_batch(pixels, budgets[method], max_batch)
            lines.append(table_row([
                method, f"{width}x{height}", f"{model.predict(pixels, 1) / GIB:.2f} GiB",
                f"{model.predict(pixels, 2) / GIB:.2f} GiB", _batches(best, max_batch)]))
    return "\n".join(lines)


def gpu_table(models: Dict[str, PeakModel], size: Tuple[int, int], divisibility: int,
              terms: GpuTerms, trainable: Dict[str, int]) -> str:
    """The paper's Table 4 cards at ``size``: what the card must hold for batch 1 / 2, and
    whether each card has it."""
    header = ["method", "batch", "card needs"] + [f"{name} {gb}GB" for name, gb in GPUS]
    lines = table_head(header)
    pixels = padded_pixels(*size, divisibility)
    for method, model in models.items():
        for batch in (1, 2):
            need = terms.need(model.predict(pixels, batch), trainable.get(method, 0))
            lines.append(table_row([method, str(batch), f"{need / GIB:.2f} GiB", *(
                "yes" if need <= gb * GIB else "no" for _, gb in GPUS)]))
    return "\n".join(lines)


def verdict(models: Dict[str, PeakModel], sizes: List[Tuple[int, int]], divisibility: int,
            budgets: Dict[str, float], gpu: str, max_batch: int) -> str:
    """One sentence per size: which methods train there on the card, with which batch."""
    sentences = []
    for width, height in sizes:
        pixels = padded_pixels(width, height, divisibility)
        best = {m: model.largest_batch(pixels, budgets[m], max_batch)
                for m, model in models.items()}
        fit = [f"{m} (batch <= {b})" for m, b in best.items() if b]
        out = [m for m, b in best.items() if not b]
        sentences.append(f"At {width}x{height} on {gpu}: " + (
            "trains " + ", ".join(fit) if fit else "no method fits") + (
            "; does not fit even one image: " + ", ".join(out) if out else "") + ".")
    return "\n".join(sentences)


def render(data: dict) -> str:
    """The plan from its record: the planning arguments (``config_file``, ``gpu_memory``,
    ``terms``, ``sizes``, ``max_batch``) and the ``measured`` points."""
    capacity, terms, sizes = planning_inputs(data)
    measured, max_batch = data["measured"], data["max_batch"]
    models = fits(measured["points"])
    divisibility = measured["size_divisibility"]
    trainable = measured.get("trainable", {})
    budgets = {m: terms.largest_step_peak(capacity, trainable.get(m, 0)) for m in models}
    gpu = f"{data['gpu_memory']} ({capacity / GIB:.2f} GiB)"
    checks, worst = check_table(measured["points"], models)
    return "\n\n".join(filter(None, [
        f"{os.path.basename(data['config_file'])}: predicted peak of one training step "
        f"(fp32, measured on {measured['device']}), and the largest batch whose card need "
        f"fits {gpu}; card need = step peak {terms.describe()} (docs/MEMORY.md):",
        plan_table(models, sizes, divisibility, budgets, max_batch),
        verdict(models, sizes, divisibility, budgets, gpu, max_batch),
        f"The paper's Table 4 cards at {sizes[0][0]}x{sizes[0][1]} (a card's GB are GiB):",
        gpu_table(models, sizes[0], divisibility, terms, trainable),
        "Fits (step peak = the larger of per_pixel * pixels * batch + per_image * batch + "
        "constant, the forward and backward pass's, and the optimizer update's):",
        "\n".join(f"- {m}: {f.per_pixel:.1f} B/pixel, {f.per_image / 2**20:.1f} MiB/image, "
                  f"{f.constant / 2**20:.1f} MiB constant"
                  + (f"; optimizer update {f.update / 2**20:.1f} MiB" if f.update else "")
                  for m, f in models.items()),
        checks and f"Check at sizes not fitted (largest error {100 * worst:.1f}%):\n\n{checks}",
    ]))
