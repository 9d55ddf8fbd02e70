#!/usr/bin/env python
"""Inference latency per image of the frozen model ("fixed") against E3VA and ``e3va_spatial``:
what the highway adds at deployment.

Each method's model is the config's with its tuning method replaced, adapters zero-initialised
and every tensor the methods share pointed at one copy (projects/benchmark/bench.py's
``build_model`` and ``share_common_tensors``), so all compute the frozen model's function and
keep the same boxes: only the backbone's work differs. Images are random, of one size; the
methods run in turn on each image (so a slower moment of the machine hits all alike), after
``--warmup`` images; the median per method is reported with its difference to ``fixed``.

    python -m projects.benchmark.inference_latency --images 20
    python -m projects.benchmark.inference_latency --config Shapes/mask_rcnn_swin_demo_e3va.py \\
        --size 128 128 --images 50

Run it on a quiet machine: the numbers are wall-clock times.
"""
from __future__ import annotations

import argparse
import time
from typing import Dict, List

import torch

from e3va_d2.config import get_config
from projects.tables import command_line, publish, table_head, table_row

from .bench import build_model, share_common_tensors
from .measure import median

METHODS = ("fixed", "e3va", "e3va_spatial")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="COCO/cascade_mask_rcnn_swin_b_e3va.py",
                   help="a shipped config (e3va_d2.config.get_config) or a file")
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--size", nargs=2, type=int, default=(800, 1216), metavar=("H", "W"),
                   help="image size as the model takes it (after the mapper's resizing)")
    p.add_argument("--images", type=int, default=20, help="timed images per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed images per method first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's)")
    p.add_argument("--record", default="",
                   help="also publish the table as this docs table (projects/tables.py)")
    return p.parse_args(argv)


def build_models(args) -> Dict[str, torch.nn.Module]:
    models: Dict[str, torch.nn.Module] = {}
    reference = None
    for method in args.methods:
        cfg = get_config(args.config)
        model = build_model(cfg, method, seed=0)
        if reference is None:
            reference = model.state_dict()
        else:
            share_common_tensors(model, reference)
        models[method] = model.to(args.device).eval()
    return models


def time_one(model, image: torch.Tensor, device: str) -> float:
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    start = time.perf_counter()
    model([{"image": image}])
    if device.startswith("cuda"):
        torch.cuda.synchronize()
    return time.perf_counter() - start


@torch.no_grad()
def measure(args) -> Dict[str, List[float]]:
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args)
    generator = torch.Generator().manual_seed(0)
    times: Dict[str, List[float]] = {m: [] for m in models}
    for i in range(args.warmup + args.images):
        image = torch.randint(0, 256, (3, *args.size), generator=generator).float()
        image = image.to(args.device)
        for method, model in models.items():
            seconds = time_one(model, image, args.device)
            if i >= args.warmup:
                times[method].append(seconds)
    return times


def record_data(times: Dict[str, List[float]], args) -> dict:
    """What a record keeps: every timed image's seconds per method, and how they were taken."""
    setup = (f"{args.config}, {args.size[0]}x{args.size[1]}, {args.images} images after "
             f"{args.warmup} untimed, {args.device}, {torch.get_num_threads()} threads, "
             f"torch {torch.__version__}")
    return dict(setup=setup, seconds=times)


def render(data: dict) -> str:
    """The table from a record: the median time per image of each method, and what it adds to
    the first method's (the frozen model's)."""
    times = data["seconds"]
    methods = list(times)
    base = median(times[methods[0]]) * 1e3
    lines = table_head(["method", "ms / image (median)", f"extra over `{methods[0]}`"])
    for method in methods:
        ms = median(times[method]) * 1e3
        lines.append(table_row([f"`{method}`", f"{ms:.1f}",
                                f"{ms - base:+.1f} ms ({ms / base - 1:+.1%})"]))
    return "\n".join(lines + ["", data["setup"] + "."])


def main(argv=None) -> Dict[str, List[float]]:
    args = parse_args(argv)
    times = measure(args)
    data = record_data(times, args)
    print(render(data))
    if args.record:
        publish(args.record, data, "projects.benchmark.inference_latency:render",
                command_line("projects.benchmark.inference_latency", argv))
    return times


if __name__ == "__main__":
    main()
