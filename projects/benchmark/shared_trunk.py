#!/usr/bin/env python
"""Shared-trunk inference against separate models: time per image and weight memory for 1, 2
and 3 tasks, measured side by side in one process on the same images.

The tasks are the three shapes demos (Mask R-CNN instances, RetinaNet boxes, UPerNet semantic
segmentation) on the shipped trunk, each with its own delta (their random trainable weights:
inference cost does not depend on training). Shared and separate runs alternate, image by
image, with the first task's model alone in the same loop (the ratio's reference), so machine
noise hits all alike. Writes ``shared_trunk.md`` and ``shared_trunk.json`` (and with ``--record
NAME`` the table into the docs, see projects/tables.py).

    python -m projects.benchmark.shared_trunk --output output/shared_trunk
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import statistics
import time
from typing import Dict, List

import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from e3va_d2.checkpoint import export_delta
from e3va_d2.config import load_config
from e3va_d2.engine.multitask import MultiTaskPredictor
from e3va_d2.engine.predictor import Predictor
from projects.tables import command_line, publish, table_head, table_row

TASKS = {
    "instances (Mask R-CNN)": "configs/Shapes/mask_rcnn_swin_demo_e3va.py",
    "boxes (RetinaNet)": "configs/Shapes/retinanet_swin_demo_e3va.py",
    "semantic (UPerNet)": "configs/Shapes/upernet_swin_demo_e3va.py",
}


def weight_bytes(models: List[torch.nn.Module]) -> int:
    """Bytes of every parameter and buffer, each storage counted once."""
    seen: Dict[int, int] = {}
    for model in models:
        for t in list(model.parameters()) + list(model.buffers()):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _each(predictors: List[Predictor], image) -> list:
    return [predictor(image, "RGB") for predictor in predictors]


@torch.no_grad()  # inference only; scoped, so a caller (a test) keeps its autograd
def main(argv=None) -> List[dict]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output", default="output/shared_trunk")
    p.add_argument("--images", type=int, default=16, help="shapes_val images, each timed")
    p.add_argument("--dataset", default="shapes_val")
    p.add_argument("--record", default="",
                   help="also publish the table as this docs table (projects/tables.py)")
    args = p.parse_args(argv)
    os.makedirs(args.output, exist_ok=True)
    tasks = {}
    for i, (name, config) in enumerate(TASKS.items()):
        cfg = load_config(config, ["train.device=cpu"])
        torch.manual_seed(i)
        delta = os.path.join(args.output, f"delta{i}.pth")
        export_delta(instantiate(cfg.model), delta)
        tasks[name] = (cfg, delta)
    images = [read_image(d["file_name"], format="RGB")
              for d in DatasetCatalog.get(args.dataset)[: args.images]]
    first_cfg, first_delta = next(iter(tasks.values()))
    alone = Predictor(first_cfg, checkpoint="", delta=first_delta)
    rows = []
    for k in range(1, len(tasks) + 1):
        chosen = dict(list(tasks.items())[:k])
        shared = MultiTaskPredictor(chosen)
        separate = [Predictor(cfg, checkpoint="", delta=delta) for cfg, delta in chosen.values()]
        runners = {"alone": functools.partial(alone, image_format="RGB"),
                   "shared": functools.partial(shared, image_format="RGB"),
                   "separate": functools.partial(_each, separate)}
        times = {name: [] for name in runners}
        for run in runners.values():  # warm-up
            run(images[0])
        for image in images:  # interleaved: the first task alone, shared, separate
            for name, run in runners.items():
                start = time.perf_counter()
                run(image)
                times[name].append(time.perf_counter() - start)
        medians = {name: 1000 * statistics.median(t) for name, t in times.items()}
        rows.append(dict(
            tasks=k,
            alone_ms=medians["alone"],
            shared_ms=medians["shared"],
            separate_ms=medians["separate"],
            shared_weights_mb=weight_bytes([q.model for q in shared.predictors.values()]) / 2**20,
            separate_weights_mb=weight_bytes([q.model for q in separate]) / 2**20,
        ))
    setup = (f"{len(images)} {args.dataset} images, median per image, {torch.get_num_threads()} "
             f"threads, torch {torch.__version__}; tasks in order: {', '.join(tasks)}")
    data = dict(setup=setup, rows=rows)
    text = render(data)
    with open(os.path.join(args.output, "shared_trunk.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.output, "shared_trunk.json"), "w") as f:
        json.dump(data, f, indent=2)
    if args.record:
        publish(args.record, data, "projects.benchmark.shared_trunk:render",
                command_line("projects.benchmark.shared_trunk", argv))
    print(text)
    return rows



def render(data: dict) -> str:
    """The table from a record: ``rows`` (1, 2, 3 tasks) and ``setup``."""
    lines = table_head(["tasks", "shared trunk: ms / image", "separate models: ms / image",
                        "shared / first task alone", "weights, shared", "weights, separate"])
    for r in data["rows"]:
        lines.append(table_row([
            str(r["tasks"]), f"{r['shared_ms']:.0f}", f"{r['separate_ms']:.0f}",
            f"{r['shared_ms'] / r['alone_ms']:.2f}x", f"{r['shared_weights_mb']:.1f} MB",
            f"{r['separate_weights_mb']:.1f} MB"]))
    return "\n".join(lines) + "\n\n" + data["setup"]


if __name__ == "__main__":
    main()
