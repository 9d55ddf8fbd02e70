#!/usr/bin/env python
"""E3VA against Hugging Face PEFT's LoRA on the same Swin, measured in one process.

The paper compares E3VA with PETL methods it implemented itself, as ``tuning_cost.py`` does with
this project's. This script adds an outside reference: HF PEFT's LoRA (rank 64, on the
attention's ``qkv``/``proj`` and the MLP's ``fc1``/``fc2`` linears of every block, output norms
trainable as for every method here), injected into the config's Swin trunk, whose gradients
must then travel back through the whole trunk. In one process, on the same detector and input,
every method's models share their common weights, start from the same function (LoRA's B and
E3VA's up projections zero) and step with lr=0, as in ``tuning_cost.py``:

- the backbone step time (loss on the FPN's outputs; median of interleaved steps), E3VA's as a
  ratio of PEFT LoRA's;
- bytes saved for backward by a full detector step, E3VA's above fixed's as a share of full
  fine-tuning's; also the peak of a step (``--no-peak`` skips it).

Both for every E3VA variant given (default: E3VA as the paper has it, and with
``recompute_branches="stage"``, which keeps less for backward and recomputes more).

    python -m projects.benchmark.peft_peer \\
        --config-file configs/COCO/cascade_mask_rcnn_swin_b_e3va.py --size 448 --steps 5

Needs ``pip install peft`` (the ``peft`` extra). Writes peft_peer.md and peft_peer.json.
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
from typing import Dict, List

import torch

from e3va_d2.config import load_config
from e3va_d2.modeling.backbone import tuned_swins
from e3va_d2.modeling.tuning.base import output_norm_parameters
from e3va_d2.modeling.tuning.spec import split_method_specs
from projects.tables import command_line, publish, table_head, table_row

from .bench import Bench, build_model, method_names, num_classes, pick_device
from .cost_report import describe, device_words
from .measure import release_freed_memory, synthetic_detection_batch
from .peak_memory import step_peak_memory

logger = logging.getLogger("e3va_d2.benchmark")

PEFT_LORA = "peft_lora"
# Every block's attention and MLP linears; not patch_embed.proj (a convolution) nor merging.
TARGET_MODULES = r".*blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2))"


def apply_peft_lora(model: torch.nn.Module, rank: int = 64) -> torch.nn.Module:
    """Inject PEFT LoRA into the (fully trainable) Swin trunk of ``model``; afterwards only the
    LoRA factors and the output norms of the trunk train."""
    try:
        from peft import LoraConfig, inject_adapter_in_model
        from peft.tuners.lora import LoraLayer
    except ImportError as e:
        raise SystemExit("The PEFT comparison needs Hugging Face PEFT: pip install peft "
                         f"(or pip install -e .[peft]): {e}") from None
    swins = tuned_swins(model)
    if len(swins) != 1 or swins[0].tuning.trunk_runs_without_grad:
        raise ValueError("apply_peft_lora needs one Swin trunk that runs with autograd (tuning "
                         "'full')")
    trunk = swins[0].trunk
    config = LoraConfig(r=rank, lora_alpha=rank, lora_dropout=0.0, target_modules=TARGET_MODULES)
    inject_adapter_in_model(config, trunk)
    trunk.requires_grad_(False)
    lora_layers = [m for m in trunk.modules() if isinstance(m, LoraLayer)]
    for layer in lora_layers:  # by module type, not by parameter name
        for factor in (layer.lora_A, layer.lora_B):
            factor.requires_grad_(True)
    for _, param in output_norm_parameters(trunk):
        param.requires_grad_(True)
    if not lora_layers:
        raise ValueError(f"PEFT found no linear matching {TARGET_MODULES!r} in the trunk")
    return model


def build(cfg, method: str, seed: int) -> torch.nn.Module:
    """``bench.build_model``, plus ``"peft_lora"``: the "full" model with PEFT LoRA. Its
    wrapped linears keep the same initial weights as every other method's (the same random
    draws), so it computes the same function."""
    if method != PEFT_LORA:
        return build_model(cfg, method, seed)
    return apply_peft_lora(build_model(cfg, "full", seed))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", default="configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")
    parser.add_argument("--methods",
                        default=f"fixed,full,e3va,e3va:recompute_branches=stage,{PEFT_LORA}",
                        help=f"tuning_cost.py's methods and {PEFT_LORA}; fixed, full, e3va and "
                             f"{PEFT_LORA} are needed for the ratios")
    parser.add_argument("--size", type=int, default=448, help="square input side, pixels")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per method")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--no-peak", action="store_true", help="skip the peak-memory step")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--output", default="output/peft_peer")
    parser.add_argument("--record", default="",
                        help="also write the result as this docs table's record "
                             "(projects/tables.py)")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    args = parser.parse_args(argv)
    ours = [m for m in split_method_specs(args.methods) if m != PEFT_LORA]
    try:
        if ours:
            method_names(",".join(ours))
    except ValueError as e:
        parser.error(f"--methods: {e}")
    return args


def run(args) -> Dict[str, dict]:
    device = pick_device(args.device)
    names = split_method_specs(args.methods)
    cfg = load_config(args.config_file, args.opts)
    batches = {args.batch: synthetic_detection_batch(args.batch, args.size, num_classes(cfg))}
    bench = Bench(cfg, names, device, batches, build=build)
    model_key, backbone_key = f"model{args.batch}", f"backbone{args.batch}"
    for method in names:  # warm up and measure memory, one model on the device at a time
        bench.on_device(method, device)
        steps, r = bench.steps[method], bench.results[method]
        for i in range(max(args.warmup, 1)):
            steps[model_key].run(seed=i, record=False)
            steps[backbone_key].run(seed=i, record=False)
        r["saved_bytes"] = steps[model_key].saved_bytes()
        r["backbone_saved_bytes"] = steps[backbone_key].saved_bytes()
        if not args.no_peak:
            step = steps[model_key]
            run_step = functools.partial(step.run, seed=0, record=False)
            r["peak"] = step_peak_memory(run_step, device).to_dict()
        bench.on_device(method, torch.device("cpu"))
        release_freed_memory()
        logger.info("%s: %.1f MiB saved for backward", method, r["saved_bytes"] / 2**20)
    bench.time_interleaved([backbone_key, model_key], args.steps)
    bench.record_times({backbone_key: "backbone_step", model_key: "step"})
    return bench.results


def ratios(results: Dict[str, dict]) -> Dict[str, Dict[str, float]]:
    """For every E3VA variant measured (``e3va``, ``e3va:recompute_branches=stage``, ...): its
    backbone and model step as a ratio of PEFT LoRA's, and its saved bytes (and peak) above
    fixed's as a share of full's; each only when the methods it needs were measured."""
    out: Dict[str, Dict[str, float]] = {}
    peft, full, fixed = (results.get(m) for m in (PEFT_LORA, "full", "fixed"))
    for method, r in results.items():
        if not method.startswith("e3va"):
            continue
        found = out[method] = {}
        if peft:
            for key, seconds in (("backbone_step_ratio", "backbone_step_seconds"),
                                 ("step_ratio", "step_seconds")):
                found[key] = r[seconds] / peft[seconds]
        if full and fixed:
            span = full["saved_bytes"] - fixed["saved_bytes"]
            found["saved_above_fixed"] = (r["saved_bytes"] - fixed["saved_bytes"]) / span
            if all("peak" in x for x in (r, full, fixed)):
                span = full["peak"]["peak_bytes"] - fixed["peak"]["peak_bytes"]
                above = r["peak"]["peak_bytes"] - fixed["peak"]["peak_bytes"]
                found["peak_above_fixed"] = above / span
    return out


def table(results: Dict[str, dict]) -> str:
    peft = results.get(PEFT_LORA)
    fixed, full = results.get("fixed"), results.get("full")
    header = ["method", "trainable (backbone)", "saved for backward", "above fixed",
              "peak", "backbone step / PEFT LoRA", "step / PEFT LoRA"]
    lines = table_head(header)
    for method, r in results.items():
        above = ""
        if fixed and full and full["saved_bytes"] > fixed["saved_bytes"]:
            share = (r["saved_bytes"] - fixed["saved_bytes"]) / (
                full["saved_bytes"] - fixed["saved_bytes"])
            above = f"{100 * share:.1f}% of full's"
        row = [method, f"{r['trainable_backbone'] / 1e6:.2f}M",
               f"{r['saved_bytes'] / 2**20:,.0f} MiB", above,
               f"{r['peak']['peak_bytes'] / 2**20:,.0f} MiB" if "peak" in r else ""]
        for key in ("backbone_step_seconds", "step_seconds"):
            timed = peft and peft[key] == peft[key] and r[key] == r[key]
            row.append(f"{r[key] / peft[key]:.2f}x" if timed else "")
        lines.append(table_row(row))
    return "\n".join(lines)


def ratios_text(found: Dict[str, Dict[str, float]]) -> str:
    """Each E3VA variant's ratios, one line each (what they are, not whether a goal was met)."""
    lines: List[str] = []
    for method, values in found.items():
        value = values.get("backbone_step_ratio", float("nan"))
        if value == value:  # measured and timed
            lines.append(f"- {method}: backbone step {value:.2f}x PEFT LoRA's.")
        if "saved_above_fixed" in values:
            lines.append(f"- {method}: saves {100 * values['saved_above_fixed']:.1f}% of full's "
                         "bytes above fixed's.")
        if "peak_above_fixed" in values:
            lines.append(f"- {method}: peak {100 * values['peak_above_fixed']:.1f}% of the way "
                         "from fixed's to full's.")
    return "\n".join(lines)


# What render() reads of each method's results.
RECORDED = ("trainable_backbone", "saved_bytes", "peak", "backbone_step_seconds", "step_seconds")


def render(data: dict) -> str:
    """The table, what ran where (``setup``) and the ratios, from the record's ``results``."""
    results = data["results"]
    return "\n\n".join(filter(None, [table(results), data["setup"],
                                       ratios_text(ratios(results))]))


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args = parse_args(argv)
    args.amp = False  # fp32 only; describe() reads it
    results = run(args)
    found = ratios(results)
    device = device_words(pick_device(args.device))
    data = dict(setup=describe(args, device),
                results={m: {k: r[k] for k in RECORDED if k in r} for m, r in results.items()})
    text = render(data)
    print(text)
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "peft_peer.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.output, "peft_peer.json"), "w") as f:
        json.dump(dict(args=vars(args), results=results, ratios=found), f, indent=2)
    if args.record:
        publish(args.record, data, "projects.benchmark.peft_peer:render",
                command_line("projects.benchmark.peft_peer", argv))
    return dict(results=results, ratios=found)


if __name__ == "__main__":
    main()
