#!/usr/bin/env python
"""How far each reading of the paper's "Kaiming Norm" puts E3VA's highway from the frozen
model before any training: the answer to "does the default start where it can learn?".

For every reading of ``E3VATuning.init`` (and zero-initialised up projections) it runs the
config's pre-trained trunk (by default the accuracy study's) on held-out images and reports

- per adapter: ``|A(x) - x| / |x|``, the size of the adapter's random term against its input
  (the trunk's branch output it reads), median and range over the highway's adapters;
- per stage: ``|e - l| / |l|``, how far the features the FPN reads (highway ``e``) start from
  the frozen trunk's (``l``), after the output norm.

    python -m projects.transfer.adapter_init [--config-file ...] [--images 16]
"""
from __future__ import annotations

import argparse
import json
import statistics
from typing import Dict, List

import torch

from projects.tables import table_head, table_row

DEFAULT_CONFIG = "configs/Shapes/accuracy_far_mask_rcnn_swin.py"  # the study's trunk and data
READINGS = (("lorand", False), ("kaiming_fan_in", False), ("trunc_normal", False),
            ("lorand", True))


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", default=DEFAULT_CONFIG)
    p.add_argument("--images", type=int, default=16, help="held-out images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=None, help="write the records (JSON) here")
    p.add_argument("--record", default="",
                   help="also publish the table as this docs table (projects/tables.py)")
    return p.parse_args(argv)


def held_out_images(cfg, count: int) -> torch.Tensor:
    """The first ``count`` images of the config's test split, resized to 112 and stacked."""
    from detectron2.data import DatasetCatalog
    from detectron2.data.detection_utils import read_image

    names = cfg.dataloader.test.dataset.names
    dicts = DatasetCatalog.get(names if isinstance(names, str) else names[0])[:count]
    images = [torch.from_numpy(read_image(d["file_name"], "RGB").copy()).permute(2, 0, 1).float()
              for d in dicts]
    return torch.stack([torch.nn.functional.interpolate(i[None], size=(112, 112), mode="bilinear",
                                                         align_corners=False)[0] for i in images])


def measure(cfg, images: torch.Tensor, init: str, zero_init: bool, seed: int) -> Dict[str, object]:
    from detectron2.config import instantiate

    from e3va_d2.config import tuned_swin_node
    from e3va_d2.modeling import E3VATuning
    from e3va_d2.modeling.highway import trace_trunk

    node = tuned_swin_node(cfg.model)
    node.tuning = "fixed"  # the pre-trained trunk alone; each reading's highway is built here
    trunk = instantiate(node).trunk.eval()
    torch.manual_seed(seed)
    highway = E3VATuning(init=init, zero_init=zero_init).attach(trunk)
    pixel_mean = torch.tensor(cfg.model.pixel_mean).view(1, 3, 1, 1)
    pixel_std = torch.tensor(cfg.model.pixel_std).view(1, 3, 1, 1)
    x = (images - pixel_mean) / pixel_std
    with torch.no_grad():
        trace = trace_trunk(trunk, x)
        adapter_ratios: List[float] = []
        for stage_adapters, branches in zip(highway.layers, trace.branches):
            for block, (a1, a2) in zip(stage_adapters["blocks"], branches):
                for adapter, branch in ((block.attn_adapter, a1), (block.mlp_adapter, a2)):
                    adapter_ratios.append(float(adapter.branch(branch).norm() / branch.norm()))
        highway_out = highway.from_trace(trunk, trace_trunk(trunk, x))
        frozen = trunk(x)
    stage_ratios = {k: float((highway_out[k] - frozen[k]).norm() / frozen[k].norm())
                    for k in sorted(frozen)}
    return {"init": init, "zero_init": zero_init,
            "adapter_median": statistics.median(adapter_ratios),
            "adapter_min": min(adapter_ratios), "adapter_max": max(adapter_ratios),
            "stages": stage_ratios}


def render(data: dict) -> str:
    """The docs table from a record: ``records`` as :func:`main` returns them, and its setup."""
    return (table(data["records"]) + f"\n\n{data['images']} held-out images of "
            f"`{data['config']}`'s test split, seed {data['seed']}, trunk "
            f"`{data['trunk']}`.")


def table(records: List[dict]) -> str:
    stages = sorted(records[0]["stages"])
    lines = table_head(["`init`", "`zero_init`",
                        "adapter: \\|A(x) - x\\| / \\|x\\|, median (range)",
                        *(f"{s}: \\|e - l\\| / \\|l\\|" for s in stages)])
    for r in records:
        lines.append(table_row([
            str(r["init"]), str(r["zero_init"]),
            f"{r['adapter_median']:.3g} ({r['adapter_min']:.3g}-{r['adapter_max']:.3g})",
            *(f"{r['stages'][s]:.3g}" for s in stages)]))
    return "\n".join(lines)


def main(argv=None) -> List[dict]:
    args = parse_args(argv)
    from e3va_d2.config import load_config
    from projects.transfer.run_executor import trunk_source

    cfg = load_config(args.config_file)
    images = held_out_images(cfg, args.images)
    records = [measure(cfg, images, init, zero, args.seed) for init, zero in READINGS]
    print(table(records))
    data = {"config": args.config_file, "images": args.images, "seed": args.seed,
            "trunk": trunk_source(cfg), "records": records}
    if args.output:
        with open(args.output, "w") as f:
            json.dump(data, f, indent=1)
    if args.record:
        from projects.tables import command_line, publish

        publish(args.record, data, "projects.transfer.adapter_init:render",
                command_line("projects.transfer.adapter_init", argv))
    return records


if __name__ == "__main__":
    main()
