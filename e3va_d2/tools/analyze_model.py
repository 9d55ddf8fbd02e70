"""Parameter, flop and activation counts of a config's model, as detectron2's
``tools/analyze_model.py`` gives them, for ``.py`` and ``.yaml`` e3va-d2 configs.

    python -m e3va_d2.tools.analyze_model --tasks parameter flop activation --num-inputs 10 \\
        --config-file configs/Shapes/mask_rcnn_swin_demo_e3va.py

Flops and activations are counted by detectron2's ``FlopCountAnalysis`` /
``activation_count_operators`` (fvcore, one multiply-add = one flop) on ``--num-inputs`` images
of the config's test set; Swin's fused attention is counted (``e3va_d2.utils.flops``).
``parameter`` adds the trainable-parameter table of the tuning method.
"""
from __future__ import annotations

import argparse
import logging
from collections import Counter
from typing import Dict, List, Optional

import numpy as np
from detectron2.utils.analysis import (
    FlopCountAnalysis,
    activation_count_operators,
    parameter_count_table,
)
from detectron2.utils.logger import setup_logger
from fvcore.nn import flop_count_table

from ..engine.params import trainable_parameter_table
from ..utils.flops import SDPA
from .common import load_any_config, model_with_weights, test_loader

logger = logging.getLogger("e3va_d2.tools")

ATTENTION = SDPA.split("::")[-1]


def count_flops(model, loader, num_inputs: int) -> Dict[str, object]:
    """Per-image flops (mean, std) and their mean split by operator; logs the first image's
    table by module."""
    totals: List[float] = []
    by_op: Counter = Counter()
    for i, batch in zip(range(num_inputs), loader):
        flops = FlopCountAnalysis(model, batch)
        if i:
            flops.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
        else:
            logger.info("Flops of the first image, by module:\n%s", flop_count_table(flops))
        by_op.update(flops.by_operator())
        totals.append(flops.total())
    n = len(totals)
    mean_by_op = {k: v / n for k, v in by_op.items()}
    result = {"images": n, "gflops": float(np.mean(totals)) / 1e9,
              "gflops_std": float(np.std(totals)) / 1e9,
              "by_operator_gflops": {k: v / 1e9 for k, v in mean_by_op.items()}}
    logger.info("GFlops per operator (mean of %d images): %s", n,
                {k: round(v, 4) for k, v in result["by_operator_gflops"].items()})
    logger.info("Attention (%s): %.4f GFlops per image", ATTENTION,
                result["by_operator_gflops"].get(ATTENTION, 0.0))
    logger.info("Total GFlops: %.4f±%.4f", result["gflops"], result["gflops_std"])
    return result


def count_activations(model, loader, num_inputs: int) -> Dict[str, float]:
    """Per-image activations in millions (mean, std), as detectron2's tool counts them."""
    totals: List[float] = []
    for _, batch in zip(range(num_inputs), loader):
        totals.append(sum(activation_count_operators(model, batch).values()))
    result = {"mactivations": float(np.mean(totals)), "mactivations_std": float(np.std(totals))}
    logger.info("Total (Million) Activations: %.4f±%.4f", result["mactivations"],
                result["mactivations_std"])
    return result


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--tasks", nargs="+", required=True,
                   choices=["flop", "activation", "parameter", "structure"])
    p.add_argument("-n", "--num-inputs", type=int, default=100,
                   help="test images to count flops and activations on (they depend on the data)")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> Dict[str, object]:
    args = parse_args(argv)
    setup_logger(name="fvcore")
    setup_logger(name="e3va_d2")
    cfg = load_any_config(args.config_file, args.opts)
    counts_data = {"flop", "activation"} & set(args.tasks)
    # Flops and activations depend on the weights (how many boxes pass); parameters do not.
    model = model_with_weights(cfg, load=bool(counts_data))
    results: Dict[str, object] = {}
    for task in args.tasks:
        if task == "parameter":
            logger.info("Parameter Count:\n%s", parameter_count_table(model, max_depth=5))
            table, totals = trainable_parameter_table(model)
            logger.info("Trainable parameters:\n%s", table)
            results["parameters"] = totals
        elif task == "structure":
            logger.info("Model Structure:\n%s", model)
        elif task == "flop":
            results["flop"] = count_flops(model, test_loader(cfg), args.num_inputs)
        else:
            results["activation"] = count_activations(model, test_loader(cfg), args.num_inputs)
    return results


if __name__ == "__main__":
    main()
