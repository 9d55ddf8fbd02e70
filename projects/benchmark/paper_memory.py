"""The planner held against the paper, the arithmetic: predicted against published peak
training memory (Tables 1 and 2, batch 2) and every cell of Table 4, from the planner's
measured points (``plan_paper.py`` measures them and writes the record).

The planner predicts each model's step peak at the size the paper's code trains at
(:func:`size_of`: 1333x800 for COCO, 1000x600 for VOC, mmdetection 2.x's recipes). To compare
with what the paper printed, the named terms of ``gpu_terms.py`` are added as the paper's setup
has them: eight GPUs under DDP without ``gradient_as_bucket_view`` (a second copy of the
trainable gradients), cuBLAS's workspace, and the mask-target transient of mmdetection (the
paper's code base, read from its setup); a card must also hold the allocator's slack and the
CUDA context. The published figure is read as ``max_memory_allocated`` in MiB (what
mmdetection's logs print as "memory"), so it is compared with the allocated peak.
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Tuple

from projects.paper import METHODS, TABLE4_CARDS, TABLE4_FITS, TRAINING_MEMORY_MB
from projects.tables import RECORDS, ROOT, table_head, table_row

from .gpu_terms import GpuTerms
from .plan_fit import fits, padded_pixels

GIB, MIB = 2**30, 2**20
# The image each table's runs trained at, read as mmdetection 2.x's recipes (the paper's code
# base, below): COCO resizes to 1333x800 (as this project's COCO recipe), VOC to 1000x600
# (configs/_base_/datasets/voc0712.py there; this project's VOC recipe keeps COCO's 1333x800,
# with 1.8 times the pixels).
COCO_SIZE, VOC_SIZE = (1333, 800), (1000, 600)
RECORD = "plan-paper"

# run -> (config, methods in the order they are measured, the paper's table and row prefix in
# projects.paper). The frozen model and E3VA first: a run stopped early still tells how the
# paper's frozen detector compares with ours. Swin-L Cascade is docs/MEMORY.md's plan
# (plan-swin-l) with Table 4's methods and its check size: one state serves both.
_ALL = ["fixed", "e3va", "full", "lora", "bitfit", "norm", "partial1", "adapter", "adaptformer",
        "e3va_plus", "e3va_plusplus"]
RUNS: Dict[str, Tuple[str, List[str], str, str]] = {
    "swin-l-cascade": ("configs/COCO/cascade_mask_rcnn_swin_l_e3va.py",
                       ["full", "fixed", "lora", "e3va", "bitfit", "adapter"], "COCO", "l"),
    "swin-l-retinanet": ("configs/PascalVOC/retinanet_swin_l_e3va.py", _ALL, "PascalVOC", "l"),
    "swin-b-cascade": ("configs/COCO/cascade_mask_rcnn_swin_b_e3va.py", _ALL, "COCO", "b"),
}
# Each run's planner options beyond its config and methods: Swin-L Cascade's check size; the
# frozen Swin-L RetinaNet's peak at 224-288 is set by the trunk's transients, not by what
# grows with the image (its fit is refused there: measured, 224x1 to 288x1 +10 MiB, then 288x2
# +55 MiB), so it is fitted where its activations have taken over (448x1 has more pixels
# than 288x2).
CHECKS = {"swin-l-cascade": ["--check-sizes", "416", "--check-batches", "1"],
          "swin-l-retinanet": ["--fit-sizes", "448,576"]}
TITLES = {"swin-b-cascade": "Table 1: Swin-B Cascade Mask R-CNN (COCO)",
          "swin-l-cascade": "Table 1: Swin-L Cascade Mask R-CNN (COCO)",
          "swin-l-retinanet": "Table 2: Swin-L RetinaNet (VOC)"}
# The paper's code is not named in it; its numbers are read as mmdetection 2.x's (Swin's own
# detection code), whose Mask R-CNN heads make each image's mask targets by copying the
# full-image ground-truth mask of every positive RoI to the GPU and converting it to float32
# (BitmapMasks.crop_and_resize): up to 128 positives (512 sampled RoIs, a quarter positive) x
# padded pixels x (1 + 4) bytes, one image at a time, in the forward pass of each cascade
# stage. detectron2 crops polygons on the CPU instead. An upper bound of what it adds to the
# peak (it is transient), counted for the Cascade rows only.
MMDET_MASK_POSITIVES = 128


def mmdet_mask_targets(run: str, pixels: int) -> int:
    """Bytes of mmdetection's mask-target transient for one image of ``pixels`` (padded)."""
    return MMDET_MASK_POSITIVES * pixels * 5 if "cascade" in run else 0


# The paper's setup: 8 GPUs under DDP (gradient_as_bucket_view off: torch's and mmdetection's
# default). Precision: fp32, as the planner measures; the paper does not say (Swin's own
# detection recipe trains with apex mixed precision), see MEMORY.md's reading of the table.
PAPER_TERMS = GpuTerms(ddp_gradient_copy=True)


def _predictions(data: dict):
    """run -> (fits, trainable, size_divisibility, refused): each method's fit, or in
    ``refused`` why the planner refuses it (a fit that is not physical)."""
    out = {}
    for run in [r for r in TITLES if r in data["runs"]]:  # the paper's table order
        measured = data["runs"][run]
        models, refused = {}, {}
        for method, points in measured["points"].items():
            try:
                models[method] = fits({method: points})[method]
            except SystemExit as e:  # PlanError: the planner would not print it either
                refused[method] = str(e.code)
        out[run] = (models, measured["trainable"], measured["size_divisibility"], refused)
    return out


def size_of(run: str) -> Tuple[int, int]:
    """The image ``run``'s published figures were measured at (its table's dataset)."""
    return VOC_SIZE if RUNS[run][2] == "PascalVOC" else COCO_SIZE


def _allocated(run: str, models, trainable, divisibility, method: str, batch: int,
               terms: GpuTerms):
    """(step peak, the paper's recipe's transient, allocated) at ``run``'s size and ``batch``."""
    pixels = padded_pixels(*size_of(run), divisibility)
    step, recipe = models[method].predict(pixels, batch), mmdet_mask_targets(run, pixels)
    return step, recipe, terms.allocated(step + recipe, trainable[method])


def published_rows(data: dict) -> List[dict]:
    """One row per published figure we have a prediction for: step peak, allocated, ratio,
    and the part above the frozen model (FIXED) against the paper's, where it has FIXED."""
    terms, rows = GpuTerms(**data["terms"]), []
    for run, (models, trainable, divisibility, _) in _predictions(data).items():
        _, _, folder, prefix = RUNS[run]
        run_rows = []
        for method in METHODS:  # the paper's row order
            published = TRAINING_MEMORY_MB.get((folder, f"{prefix}_{method}"))
            if published is None or method not in models:
                continue
            step, recipe, allocated = _allocated(run, models, trainable, divisibility, method,
                                                 2, terms)
            run_rows.append(dict(run=run, method=method, published=published * MIB, step=step,
                                 recipe=recipe, ddp=terms.ddp_copy_bytes(trainable[method]),
                                 allocated=allocated))
        fixed = next((r for r in run_rows if r["method"] == "fixed"), None)
        for row in run_rows:
            # A share above FIXED only where the paper's figure is above its FIXED: at or
            # below it (Table 2's partial-1) the published part is noise, its ratio meaningless.
            if fixed and row is not fixed:
                above = row["published"] - fixed["published"]
                row["above_fixed"] = ((row["allocated"] - fixed["allocated"]) / above
                                      if above > 0 else None)
        rows += run_rows
    return rows


def _share_cell(row: dict) -> str:
    """The last column: blank without the paper's FIXED, else the share or why there is none."""
    if "above_fixed" not in row:
        return ""
    share = row["above_fixed"]
    return "paper's not above FIXED" if share is None else f"{share:.2f}"


def _side(size: Tuple[int, int]) -> str:
    return "x".join(map(str, size))


def published_table(rows: List[dict]) -> str:
    lines = table_head(["model (paper's table)", "method", "published", "step peak",
                        "+ mmdet mask targets", "+ DDP copy", "allocated (predicted)",
                        "predicted / published", "above FIXED: predicted / published"])
    for r in rows:
        lines.append(table_row([
            TITLES[r["run"]], r["method"], f"{r['published'] / MIB:,.0f} MiB",
            f"{r['step'] / MIB:,.0f} MiB", f"{r['recipe'] / MIB:,.0f} MiB",
            f"{r['ddp'] / MIB:,.0f} MiB",
            f"{r['allocated'] / MIB:,.0f} MiB", f"{r['allocated'] / r['published']:.2f}",
            _share_cell(r)]))
    return "\n".join(lines)


def excesses(rows: List[dict]) -> Dict[Tuple[str, str], float]:
    """(run, method) -> published minus predicted allocated peak of each Tables 1-2 row
    (bytes): what the paper's run held beyond ours, by its own figure (negative: less)."""
    return {(r["run"], r["method"]): r["published"] - r["allocated"] for r in rows}


def table1_terms(method: str, excess: Dict[Tuple[str, str], float]) -> List[Tuple[str, float]]:
    """What the paper's Table 1 measures beyond our prediction that bears on a Table 4 cell of
    ``method`` (Swin-L Cascade): the method's own excess (its Swin-L row where the paper has
    one, else its Swin-B row: the same detector and recipe), and the frozen detector's (Swin-B
    FIXED: heads, neck and what the paper's code holds that ours does not)."""
    terms = []
    if ("swin-l-cascade", method) in excess:
        terms.append((f"{method}'s excess (Swin-L)", excess["swin-l-cascade", method]))
    elif ("swin-b-cascade", method) in excess:
        terms.append((f"{method}'s excess (Swin-B)", excess["swin-b-cascade", method]))
    if method != "fixed" and ("swin-b-cascade", "fixed") in excess:
        terms.append(("the frozen detector's excess (FIXED, Swin-B)",
                      excess["swin-b-cascade", "fixed"]))
    return terms


def table4_cells(data: dict, excess: Dict[Tuple[str, str], float]) -> List[dict]:
    """Every Table 4 cell we have a prediction for: the paper's verdict and ours; where they
    differ, how much allocated memory would turn ours into the paper's (``to_agree``: above
    ours when the paper says no) and which excess of the paper's Table 1 over ours does."""
    terms = GpuTerms(**data["terms"])
    models, trainable, divisibility, _ = _predictions(data)["swin-l-cascade"]
    cells = []
    for (method, batch), paper_fits in TABLE4_FITS.items():
        if method not in models:
            continue
        step, recipe, allocated = _allocated("swin-l-cascade", models, trainable, divisibility,
                                             method, batch, terms)
        step += recipe
        need = terms.need(step, trainable[method])
        for (card, gb), paper in zip(TABLE4_CARDS, paper_fits):
            ours = need <= gb * GIB
            cell = dict(method=method, batch=batch, card=card, gb=gb, paper=paper, ours=ours,
                        need=need, slack_to_fill=terms.slack_to_fill(gb * GIB, step,
                                                                     trainable[method]))
            if ours != paper:
                cell["to_agree"] = (gb * GIB - terms.cuda_context) / (
                    1 + terms.allocator_slack) - allocated
                cell["terms"] = [
                    (label, extra,
                     (terms.need(step + extra, trainable[method]) <= gb * GIB) == paper)
                    for label, extra in table1_terms(method, excess)]
                published = TRAINING_MEMORY_MB.get(("COCO", f"l_{method}")) \
                    if batch == 2 else None
                if published:  # the paper's own allocated figure on this card
                    cell["published_slack"] = (gb * GIB - terms.cuda_context) / (
                        published * MIB) - 1
            cells.append(cell)
    return cells


def _cell(c: dict) -> str:
    text = f"{'yes' if c['paper'] else 'no'} / {'yes' if c['ours'] else 'no'}"
    return text if c["paper"] == c["ours"] else f"**{text}**"


def _why(c: dict) -> str:
    """Where the paper's verdict and ours differ: by how much, and which of Table 1's
    measured excesses over ours closes it, or that none does."""
    slack = c["slack_to_fill"]
    if c["ours"]:  # the paper says it does not fit: it held more than ours
        margin = f"or an allocator slack above {100 * slack:.0f}%"
    else:
        margin = (f"or an allocator slack below {100 * slack:.0f}%" if slack >= 0
                  else "no allocator slack is small enough")
    closing = [label for label, _, closes in c["terms"] if closes]
    reason = (f"{c['card']}: agrees at {c['to_agree'] / GIB:+.1f} GiB allocated over ours "
              f"({margin}), " + ("closed by " + " and by ".join(closing) if closing
                                 else "no excess Table 1 measures closes it"))
    if "published_slack" in c:
        reason += (f"; the paper's own Table 1 figure for it fits this card too, unless the "
                   f"allocator's slack was above {100 * c['published_slack']:.0f}%")
    return reason


def table4(cells: List[dict]) -> str:
    lines = table_head(["method", "batch", "card needs (predicted)"]
                       + [f"{card} {gb}GB: paper / ours" for card, gb in TABLE4_CARDS]
                       + ["where they differ, why"])
    rows: Dict[Tuple[str, int], List[dict]] = {}
    for c in cells:
        rows.setdefault((c["method"], c["batch"]), []).append(c)
    for (method, batch), row in rows.items():
        differ = [c for c in row if c["paper"] != c["ours"]]
        why = "; ".join(_why(c) for c in differ)
        if differ:  # the excesses are the method's, the same for every card of the row
            why += ". Table 1 measures, over ours: " + (", ".join(
                f"{label} {extra / GIB:+.1f} GiB" for label, extra, _ in differ[0]["terms"])
                or "none measured for it")
        lines.append(table_row([method, str(batch), f"{row[0]['need'] / GIB:.1f} GiB",
                                *(_cell(c) for c in row), why]))
    return "\n".join(lines)


def summary(data: dict) -> dict:
    rows = published_rows(data)
    cells = table4_cells(data, excesses(rows))
    ratios = [r["allocated"] / r["published"] for r in rows]
    above = [r["above_fixed"] for r in rows if r.get("above_fixed") is not None] or [
        float("nan")]
    return dict(rows=rows, cells=cells, low=min(ratios), high=max(ratios),
                above_low=min(above), above_high=max(above),
                agree=sum(c["paper"] == c["ours"] for c in cells),
                explained=sum(any(closes for _, _, closes in c.get("terms", ()))
                              for c in cells))


def band_sentence(s: dict) -> str:
    above = (f", the part above the frozen model {s['above_low']:.2f}-{s['above_high']:.2f}x"
             if s["above_low"] == s["above_low"] else "")
    return (f"Against the paper (docs/MEMORY.md, {RECORD}): the predicted allocated peak is "
            f"{s['low']:.2f}-{s['high']:.2f}x the published one over Tables 1-2 "
            f"({len(s['rows'])} rows){above}; Table 4: {s['agree']} of {len(s['cells'])} "
            "cells agree" + (f", {s['explained']} more with an excess over ours that the "
                             "paper's Table 1 measures" if s["explained"] else "") + ".")


def _measured_at(run: dict) -> str:
    """"measured at <commits>, " for a run's points (those carried from an earlier
    measurement say their own, below); "" for a record from before runs kept their commits."""
    own = [m for m, pts in run["points"].items() if not any("source" in p for p in pts)]
    if not run.get("measured_at") or not own:
        return ""
    return ("" if len(own) == len(run["points"]) else f"{', '.join(own)} ") + (
        f"measured at {', '.join(run['measured_at'])}, ")


def provenance(data: dict) -> str:
    """Which runs are not measured yet, which fits the planner refuses, and points carried
    over from an earlier measurement."""
    lines = [f"{TITLES[run]}, {method}: no prediction, {reason.removeprefix('plan: ')}"
             for run, (_, _, _, refused) in _predictions(data).items()
             for method, reason in refused.items()]
    for run, (_, methods, folder, prefix) in RUNS.items():
        measured = data["runs"].get(run, {}).get("points", {})
        left = [m for m in methods if m not in measured
                and ((folder, f"{prefix}_{m}") in TRAINING_MEMORY_MB or run == "swin-l-cascade")]
        if left:
            lines.append(f"{TITLES[run]}: not measured yet, {', '.join(left)} "
                         f"(`python -m projects.benchmark.plan_paper --runs {run} --record "
                         f"{RECORD}` measures all of the run's methods at one commit, "
                         "resumable).")
        if run in data["runs"]:
            lines.append(f"{TITLES[run]}: {_measured_at(data['runs'][run])}fitted at sides "
                         f"{data['runs'][run].get('fit_sizes', data['fit_sizes'])}.")
    for run, measured in data["runs"].items():
        sources: Dict[str, List[str]] = {}
        for method, pts in measured["points"].items():
            for source in {p["source"] for p in pts if "source" in p}:
                sources.setdefault(source, []).append(method)
        lines += [f"{TITLES[run]}: the points of {', '.join(methods)} were {source}."
                  for source, methods in sources.items()]
    return "\n".join(f"- {line}" for line in lines)


def _sizes_text() -> str:
    return f"Table 1, COCO, {_side(COCO_SIZE)}; Table 2, VOC, {_side(VOC_SIZE)}"


def render(data: dict) -> str:
    """The comparison from its record: ``runs`` (each a planner's measured points) and the
    ``terms`` of the paper's setup."""
    s = summary(data)
    terms = GpuTerms(**data["terms"])
    return "\n\n".join(filter(None, [
        "Predicted against published training memory per GPU, batch 2, at the paper's "
        f"recipe's size ({_sizes_text()}; allocated = step peak "
        f"{terms.describe().split(';')[0]}; fp32; step peaks measured on {data['device']} "
        "at small sizes, below):",
        published_table(s["rows"]),
        f"Table 4, Swin-L Cascade Mask R-CNN at {_side(COCO_SIZE)}, each cell the "
        f"paper's verdict / ours (card need = allocated x {1 + terms.allocator_slack:.2f} "
        f"allocator slack + {terms.cuda_context / GIB:.2f} GiB CUDA context; bold where they "
        "differ):",
        table4(s["cells"]),
        band_sentence(s),
        provenance(data),
    ]))


def error_band(path: str = os.path.join(ROOT, RECORDS, f"{RECORD}.json")) -> str:
    """The sentence above, from the committed record; "" when there is none yet."""
    try:
        with open(path) as f:
            return band_sentence(summary(json.load(f)["data"]))
    except (OSError, KeyError, ValueError):
        return ""


