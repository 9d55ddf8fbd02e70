"""The planner's checks: every argument before a minute is spent measuring, every fit before
it is printed. Each refusal names the option or file and what to do instead.

Why these: a fit over sides too small for the trunk's windows is not linear in pixels (the
last stage pads its grid up to one window whatever the image), and gave negative bytes per
pixel, peaks that fall with size and negative GiB at large sizes; a reserve above the card, a
zero batch bound or one fit size make every answer meaningless.

The planning arguments (amounts of memory, image sizes, the card's terms) are read here too,
by ``planning_inputs``, which both the command line and a record re-rendered by
``projects.tables`` (``plan_report.py``) pass through.
"""
from __future__ import annotations

import json
import os
import re
from typing import List, Optional, Tuple

from omegaconf import OmegaConf

from .gpu_terms import GpuTerms

__all__ = ["PlanError", "check_fit", "check_output", "ints", "load_measured", "min_fit_side",
           "parse_bytes", "parse_size", "planning_inputs"]

GIB = 2**30
_UNITS = {"": None, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}


class PlanError(SystemExit):
    """A planning request that cannot give a physical answer (exits with its message)."""

    def __init__(self, message: str):
        super().__init__(f"plan: {message}")


def ints(text: str, option: str, minimum: int = 1) -> List[int]:
    """``"224,288"`` -> [224, 288]; anything else names ``option``."""
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise PlanError(f"{option} {text!r}: write whole numbers separated by commas") from None
    if any(v < minimum for v in values):
        raise PlanError(f"{option} {text!r}: every value must be at least {minimum}")
    return values


def parse_bytes(text: str) -> int:
    """``"11GB"`` -> 11e9 bytes, ``"11GiB"`` -> 11 * 2**30 (GB, MB are powers of 10, GiB, MiB
    of 2; case ignored). A unit is required: "11" could mean either."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    unit = match and match.group(2).lower()
    if not match or unit not in _UNITS or _UNITS[unit] is None:
        raise ValueError(f"Cannot read {text!r} as an amount of memory; write e.g. 11GB (10^9 "
                         "bytes), 11GiB (2^30 bytes) or 11264MiB")
    return int(round(float(match.group(1)) * _UNITS[unit]))


def parse_size(text: str) -> Tuple[int, int]:
    """``"1333x800"`` -> (1333, 800) (width x height); ``"512"`` -> (512, 512)."""
    parts = text.lower().split("x")
    if len(parts) not in (1, 2) or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise ValueError(f"Cannot read {text!r} as an image size; write WIDTHxHEIGHT or SIDE")
    width, height = int(parts[0]), int(parts[-1])
    return width, height


def planning_inputs(data: dict) -> Tuple[int, GpuTerms, List[Tuple[int, int]]]:
    """(card bytes, terms, sizes) from the planning arguments, refused where not physical."""
    try:
        capacity = parse_bytes(data["gpu_memory"])
        terms = GpuTerms(**data["terms"])
        sizes = [parse_size(s) for s in data["sizes"].split(",") if s.strip()]
    except ValueError as e:
        raise PlanError(str(e)) from None
    if not sizes:
        raise PlanError("--sizes is empty: name the sizes to plan for, e.g. 1333x800")
    if data["max_batch"] < 1:
        raise PlanError(f"--max-batch {data['max_batch']}: the largest batch to consider must "
                        "be at least 1")
    if not 0 <= terms.allocator_slack < 10:
        raise PlanError(f"--allocator-slack {terms.allocator_slack}: a fraction of the "
                        "allocated peak, at least 0 (e.g. 0.1 for 10%)")
    if terms.largest_step_peak(capacity, 0) <= 0:
        raise PlanError(
            f"--cuda-context {terms.cuda_context / GIB:.2f} GiB and --workspace leave nothing "
            f"of --gpu-memory {data['gpu_memory']} for training: give the card's memory "
            "(e.g. 11GiB) and what the context takes (e.g. 0.5GiB)")
    return capacity, terms, sizes


def check_fit_points(fit_sizes: str, fit_batches: str, check_sizes: str,
                     check_batches: str) -> None:
    """Two sizes and two batches at least: the fit has three unknowns (per pixel, per image,
    constant) and needs both directions to tell them apart."""
    sizes, batches = ints(fit_sizes, "--fit-sizes"), ints(fit_batches, "--fit-batches")
    if len(set(sizes)) < 2:
        raise PlanError(f"--fit-sizes {fit_sizes!r}: the fit needs at least two different "
                        "sides (e.g. 224,288) to tell the cost per pixel from the constant")
    if len(set(batches)) < 2:
        raise PlanError(f"--fit-batches {fit_batches!r}: the fit needs at least two different "
                        "batches (e.g. 1,2) to tell the cost per image from the constant")
    ints(check_sizes, "--check-sizes")
    ints(check_batches, "--check-batches")


def min_fit_side(cfg) -> Optional[int]:
    """The smallest square side at which every stage of the config's Swin trunk has a whole
    window (patch size x 2^(stages - 1) x window size: 224 for Swin-T/B/L at window 7); None
    when the model has no such trunk."""
    def find(node):
        if OmegaConf.is_dict(node):
            if "window_size" in node and "depths" in node:
                return node
            for key in node:
                found = find(node.get(key))
                if found is not None:
                    return found
        return None

    trunk = find(cfg.model)
    if trunk is None:
        return None
    patch = int(trunk.get("patch_size", 4) or 4)
    return patch * 2 ** (len(trunk.depths) - 1) * int(trunk.window_size)


def check_fit_sides(fit_sizes: str, smallest: Optional[int]) -> None:
    if smallest is None:
        return
    small = [s for s in ints(fit_sizes, "--fit-sizes") if s < smallest]
    if small:
        raise PlanError(
            f"--fit-sizes {fit_sizes!r}: sides {small} are below {smallest}, the smallest at "
            "which the trunk's last stage holds a whole window; below it the peak is not "
            "linear in pixels (the fit would give negative bytes per pixel). Fit at sides "
            f">= {smallest}, e.g. {smallest},{smallest + 64}")


def check_output(folder: str) -> None:
    """``--output`` must be a folder this process can create and write, checked by writing."""
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise PlanError(f"--output {folder!r} is a file, not a folder: name a folder")
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, ".plan-write-check")
        with open(probe, "w") as f:
            f.write("")
        os.unlink(probe)
    except OSError as e:
        raise PlanError(f"--output {folder!r} cannot be written ({e.strerror or e}): name a "
                        "folder you can write") from None


def load_measured(path: str) -> dict:
    """The measured points of a plan.json, a measured.json (the state of a run) or a docs
    record of the planner (``docs/records/plan-*.json``), checked; errors name the file."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except FileNotFoundError:
        raise PlanError(f"--from-json {path!r}: no such file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise PlanError(f"--from-json {path!r} cannot be read: {e}") from None
    except json.JSONDecodeError as e:
        raise PlanError(f"--from-json {path!r} is not JSON (line {e.lineno}, column "
                        f"{e.colno}: {e.msg}); is the file complete?") from None
    what = ("a plan.json, a measured.json or a planner record (docs/records/plan-*.json) "
            "holding measured points")
    if not isinstance(saved, dict):
        raise PlanError(f"--from-json {path!r} is not {what}")
    if "table" in saved and "data" in saved:  # a docs record
        if not str(saved["table"]).startswith("plan"):
            raise PlanError(f"--from-json {path!r} is the record of table {saved['table']!r}, "
                            f"not the planner's: give {what}")
        saved = saved["data"]
    measured = saved.get("measured", saved if "points" in saved else None)
    if not isinstance(measured, dict) or not isinstance(measured.get("points"), dict) \
            or not measured["points"]:
        raise PlanError(f"--from-json {path!r} has no measured points: give {what}")
    for method, points in measured["points"].items():
        keys = {"size", "batch", "pixels", "peak_bytes", "role"}
        bad = [p for p in points if not isinstance(p, dict) or not keys <= set(p)]
        if bad:
            raise PlanError(f"--from-json {path!r}: a point of {method!r} lacks "
                            f"{sorted(keys - set(bad[0]) if isinstance(bad[0], dict) else keys)}")
    if not isinstance(measured.get("size_divisibility"), int):
        raise PlanError(f"--from-json {path!r} has no size_divisibility: is it complete?")
    key = saved.get("key") if isinstance(saved.get("key"), dict) else {}
    measured.setdefault("device", key.get("device", "unknown"))  # a measured.json keeps it there
    measured.setdefault("trainable", {})
    return measured


# The largest distance of a fitted point from the fit, as a share of the fitted peaks' spread,
# beyond which the fit is refused (Swin-L Cascade at 224-288: under 1%; a frozen Swin-L
# RetinaNet there, whose peaks barely grow: 11%).
LINEARITY = 0.05


def check_fit(method: str, model, points: List[dict]) -> None:
    """A fit must be physical wherever it is used: more pixels or one more image never lowers
    the peak, and the constant (weights, optimizer state) is positive."""
    fit = [p for p in points if p["role"] == "fit"]
    sides = sorted({p["size"] for p in fit})
    smallest = min(p["pixels"] // p["batch"] for p in fit)
    problems = []
    if model.per_pixel <= 0:
        problems.append(f"{model.per_pixel:.1f} bytes per pixel (a peak that falls with size)")
    if model.per_pixel * smallest + model.per_image <= 0:
        problems.append("one more image lowers the peak")
    if model.constant <= 0:
        problems.append(f"a constant of {model.constant / 2**20:.1f} MiB (weights cannot be)")
    key = "forward_backward_bytes" if all("forward_backward_bytes" in p for p in fit) \
        else "peak_bytes"
    values = [p[key] for p in fit]
    spread = max(values) - min(values)
    worst = max(abs(p[key] - (model.per_pixel * p["pixels"] + model.per_image * p["batch"]
                               + model.constant)) for p in fit)
    if spread > 0 and worst > LINEARITY * spread:
        problems.append(
            f"its peaks are not linear in pixels there (a point lies {100 * worst / spread:.0f}% "
            "of their spread off the fit: different parts of the step set the peak at "
            "different sizes)")
    if problems:
        raise PlanError(
            f"the fit of {method!r} over sides {sides} is not physical: "
            + "; ".join(problems) + ". Measure at larger --fit-sizes, further apart (e.g. "
            "288,448)")
