#!/usr/bin/env python
"""Data-parallel cost per tuning method: step time and bytes all-reduced per step with several
gloo processes on this machine (DDP all-reduces the gradients of trainable parameters only).

Every process builds the same model (the shapes Mask R-CNN demo, or ``--config-file``) once
per method, trains ``--steps`` timed steps (after one warm-up) on its own synthetic batch, and
counts the bytes of every gradient bucket DDP all-reduces (a communication hook). Methods run
in turn, in every process at once. Writes ``ddp.md`` / ``ddp.json`` on the main process (and
with ``--record NAME`` the table into the docs, see projects/tables.py).

    python -m projects.benchmark.ddp --processes 2 --methods full,lora,e3va
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from typing import Dict

import torch
import torch.distributed as dist
from detectron2.config import instantiate
from detectron2.engine import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from e3va_d2.config import load_config, set_tuning_method
from e3va_d2.engine import launch
from e3va_d2.layers import adapt_sync_batchnorm
from e3va_d2.modeling import build_tuning
from projects.tables import command_line, publish, table_head, table_row

from .measure import synthetic_detection_batch

DEFAULT_CONFIG = "configs/Shapes/mask_rcnn_swin_demo_e3va.py"


class AllReducedBytes:
    """DDP communication hook state: bytes of the gradient buckets all-reduced."""

    def __init__(self):
        self.bytes = 0


def counting_allreduce(state: AllReducedBytes, bucket):
    buffer = bucket.buffer()
    state.bytes += buffer.numel() * buffer.element_size()
    buffer.div_(dist.get_world_size())
    work = dist.all_reduce(buffer, async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def measure(config: str, method: str, steps: int, size: int) -> Dict[str, float]:
    cfg = load_config(config, ["train.device=cpu"])
    set_tuning_method(cfg.model, build_tuning(method))
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    adapt_sync_batchnorm(model, comm.get_world_size(), "cpu")  # as the trainer does
    trainable = [p for p in model.parameters() if p.requires_grad]
    ddp = create_ddp_model(model, device_ids=None, broadcast_buffers=False,
                           gradient_as_bucket_view=True)  # as the trainer does
    counter = AllReducedBytes()
    ddp.register_comm_hook(counter, counting_allreduce)
    optimizer = torch.optim.SGD(trainable, lr=0.0)  # lr 0: every step sees the same model
    batch = synthetic_detection_batch(2, size, 3, seed=comm.get_rank())
    times = []
    model.train()
    with EventStorage():
        for i in range(steps + 1):
            comm.synchronize()
            start = time.perf_counter()
            loss = sum(ddp(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            comm.synchronize()
            if i:
                times.append(time.perf_counter() - start)
            else:
                counter.bytes = 0  # count the timed steps only
    return dict(method=method, trainable=sum(p.numel() for p in trainable),
                bytes_per_step=counter.bytes / steps,
                step_s=statistics.median(times))


def render(data: dict) -> str:
    """The table from a record: ``rows`` (one per method) and ``setup``."""
    rows = data["rows"]
    full = next((r for r in rows if r["method"] == "full"), rows[0])
    lines = table_head(["method", "trainable", "all-reduced per step", "/ full", "step (s)",
                        "/ full"])
    for r in rows:
        lines.append(table_row([
            r["method"], f"{r['trainable'] / 1e6:.3f}M",
            f"{r['bytes_per_step'] / 2**20:.2f} MiB",
            f"{r['bytes_per_step'] / full['bytes_per_step']:.1%}", f"{r['step_s']:.3f}",
            f"{r['step_s'] / full['step_s']:.2f}x"]))
    return "\n".join(lines) + "\n\n" + data["setup"]


def worker(args) -> None:
    torch.set_num_threads(1)
    rows = [measure(args.config_file, m, args.steps, args.size) for m in args.methods.split(",")]
    if not comm.is_main_process():
        return
    setup = (f"{comm.get_world_size()} gloo processes, 1 thread each, 2 images of {args.size} px "
             f"per process, median of {args.steps} steps; {os.path.basename(args.config_file)}")
    data = dict(setup=setup, rows=rows)
    text = render(data)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "ddp.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.output, "ddp.json"), "w") as f:
        json.dump(data, f, indent=2)
    if args.record:
        publish(args.record, data, "projects.benchmark.ddp:render", args.command)
    print(text)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--methods", default="full,lora,e3va")
    p.add_argument("--processes", type=int, default=2)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--size", type=int, default=128)
    p.add_argument("--output", default="output/ddp")
    p.add_argument("--record", default="",
                   help="also publish the table as this docs table (projects/tables.py)")
    args = p.parse_args(argv)
    args.command = command_line("projects.benchmark.ddp", argv)
    launch(worker, args.processes, backend="gloo", dist_url="auto", args=(args,))


if __name__ == "__main__":
    main()
