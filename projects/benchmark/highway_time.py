#!/usr/bin/env python
"""Where E3VA's backbone step spends more than the frozen backbone's ("fixed"), measured.

Three backbone steps (loss on the FPN outputs, as tuning_cost.py's "backbone step") on the same
weights, interleaved in one process:

- fixed: frozen trunk, trainable FPN;
- gradient path: E3VA's highway with every adapter removed (``e_{i+1} = e_i + a1 + a2``) and
  gradients still flowing from the FPN through the output norms, the patch merging and the
  highway's additions down to the patch embedding;
- e3va: the same plus the adapters.

So "gradient path - fixed" is what any method pays to send gradients below the FPN (the FPN's
input gradients, the merges' and norms' backward), and "e3va - gradient path" is the adapters'
own cost. Each step's matmul/conv FLOPs (forward and backward, ``FlopCounterMode``) are counted
alongside its time (``--record NAME`` also writes the table into the docs, projects/tables.py):

    python -m projects.benchmark.highway_time --steps 10 [--amp]
"""
from __future__ import annotations

import argparse
import os
import types

import torch
from torch.utils.flop_counter import FlopCounterMode

from e3va_d2.config import load_config
from e3va_d2.engine.step import resolve_amp_dtype
from e3va_d2.modeling.adapters import BlockAdapters
from e3va_d2.modeling.highway import E3VAHighway
from projects.tables import command_line, publish, table_head, table_row

from .bench import build_model, num_classes, share_common_tensors
from .measure import MeasuredStep, median, synthetic_detection_batch

VARIANTS = ("fixed", "gradient path", "e3va")


def _without_adapters(model: torch.nn.Module) -> None:
    """Remove every adapter of ``model``'s highway; keep gradients flowing through it."""
    def plain_step(self, e, a1, a2, stream=None, hw=None):
        return e + a1 + a2

    def trainable_embedding(self, embedding):
        return embedding.requires_grad_(True)

    for module in model.modules():
        if isinstance(module, BlockAdapters):
            module.forward = types.MethodType(plain_step, module)
        if isinstance(module, E3VAHighway):
            module.begin = types.MethodType(trainable_embedding, module)


def build_steps(cfg, batch, device, amp_dtype=None):
    """The three variants' steps, models and batch on ``device``; the variants share every
    tensor they have in common there (one copy of the weights on the GPU)."""
    batch = [{k: v.to(device) if hasattr(v, "to") else v for k, v in d.items()} for d in batch]
    steps, reference = {}, None
    for variant in VARIANTS:
        model = build_model(cfg, "fixed" if variant == "fixed" else "e3va", seed=0)
        if reference is None:
            reference = model.to(device).state_dict()
        else:
            share_common_tensors(model, reference)  # the shared ones are on the device already
            model.to(device)
        if variant == "gradient path":
            _without_adapters(model)
        steps[variant] = MeasuredStep(model, batch, device, backbone_only=True, amp_dtype=amp_dtype)
    return steps


def flops(step: MeasuredStep) -> int:
    with FlopCounterMode(display=False) as counter:
        step.run(seed=0, record=False)
    return counter.get_total_flops()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--amp", action="store_true", help="as tuning_cost.py's --amp")
    parser.add_argument("--output", default="output/benchmark_highway_time")
    parser.add_argument("--record", default="",
                        help="also publish the table as this docs table (projects/tables.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    batch = synthetic_detection_batch(1, args.size, num_classes(cfg), seed=0)
    steps = build_steps(cfg, batch, device, resolve_amp_dtype(args.amp, device.type))
    counted = {v: flops(s) for v, s in steps.items()}  # also the warm-up step
    for i in range(args.steps):
        for step in steps.values():
            step.run(seed=100 + i)
    seconds = {v: median(s.times) for v, s in steps.items()}
    setup = (f"{os.path.basename(args.config_file)}, 1 image of {args.size}x{args.size}, "
             f"{'AMP' if args.amp else 'fp32'}, median of {args.steps} interleaved steps, "
             f"{torch.get_num_threads()} threads on {device.type}")
    data = dict(setup=setup, seconds=seconds, flops=counted)
    text = render(data)
    print(text)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "highway_time.md"), "w") as f:
        f.write(text + "\n")
    if args.record:
        publish(args.record, data, "projects.benchmark.highway_time:render",
                command_line("projects.benchmark.highway_time", argv))
    return dict(seconds=seconds, flops=counted)


def render(data: dict) -> str:
    """The table from a record: ``seconds`` and ``flops`` per variant, and ``setup``."""
    seconds, counted = data["seconds"], data["flops"]
    base_s, base_f = seconds["fixed"], counted["fixed"]
    lines = table_head(["backbone step", "time (s)", "/ fixed", "GFLOPs", "/ fixed"])
    for v in VARIANTS:
        lines.append(table_row([v, f"{seconds[v]:.3f}", f"{seconds[v] / base_s:.3f}x",
                                f"{counted[v] / 1e9:.1f}", f"{counted[v] / base_f:.3f}x"]))
    path, e3va = seconds["gradient path"] - base_s, seconds["e3va"] - seconds["gradient path"]
    path_flops = counted["gradient path"] - base_f
    e3va_flops = counted["e3va"] - counted["gradient path"]
    lines += ["", f"{data['setup']}. Extra time over fixed: gradient path "
              f"{100 * path / base_s:+.1f}% of fixed's step, adapters {100 * e3va / base_s:+.1f}%; "
              f"extra FLOPs: gradient path {100 * path_flops / base_f:+.1f}%, adapters "
              f"{100 * e3va_flops / base_f:+.1f}%."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
