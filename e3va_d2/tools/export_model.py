"""Export a trained config's model for inference at any image size (TorchScript, traced), and
check it against the eager model on one test image.

    python -m e3va_d2.tools.export_model --config-file configs/Shapes/mask_rcnn_swin_demo_e3va.py \\
        --output output/shapes_demo_e3va/model.ts \\
        train.init_checkpoint=output/shapes_demo_e3va/model_final.pth

The file loads with ``e3va_d2.engine.export.ExportedModel.load`` (docs/INFERENCE.md).
"""
from __future__ import annotations

import argparse
import os
from typing import List, Optional

import torch

from ..engine.export import ExportedModel, export_model
from .common import load_any_config, model_with_weights, test_loader


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--output", required=True, help="the TorchScript file to write")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> str:
    args = parse_args(argv)
    cfg = load_any_config(args.config_file, args.opts)
    model = model_with_weights(cfg)
    (sample,) = next(iter(test_loader(cfg)))
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    export_model(model, sample["image"]).save(args.output)
    exported = ExportedModel.load(args.output)
    inputs = {"image": sample["image"], "height": sample["height"], "width": sample["width"]}
    with torch.no_grad():
        eager = model([inputs])[0]
    out = exported(sample["image"], sample["height"], sample["width"])
    name = "instances" if "instances" in eager else "sem_seg"
    a, b = eager[name], out[name]
    same = (len(a) == len(b) and torch.allclose(a.pred_boxes.tensor, b.pred_boxes.tensor,
                                                atol=1e-3) if name == "instances"
            else torch.allclose(a, b, atol=1e-4))
    print(f"Wrote {args.output}; on {os.path.basename(sample['file_name'])} it "
          f"{'matches' if same else 'DIFFERS FROM'} the eager model")
    if not same:
        raise SystemExit(1)
    return args.output


if __name__ == "__main__":
    main()
