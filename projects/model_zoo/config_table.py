"""The README's model-zoo table: every shipped row config, its trainable backbone parameters as
built here, and the paper's figures for that row next to them.

Why a script: the parameter counts are measured on the instantiated models (random weights, no
download), so the table cannot drift from the configs. Paper figures come from
:mod:`e3va_d2.paper`.

    python -m projects.model_zoo.config_table > /tmp/configs.md
"""
from __future__ import annotations

import argparse
import glob
import os
from typing import List, Optional, Tuple

import torch
from detectron2.config import instantiate

from e3va_d2.config import load_config
from e3va_d2.engine.params import trainable_parameter_table
from e3va_d2.paper import METRIC, ROWS

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))

def _row_key(path: str) -> Tuple[str, str]:
    folder = path.split(os.sep)[1]
    stem = os.path.splitext(os.path.basename(path))[0]
    return folder, stem.split("_swin_", 1)[-1]


def row_configs() -> List[str]:
    """The paper-row configs, in the paper's order (Table 1 COCO, then VOC, then ADE20K)."""
    paths = glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))
    order = {key: i for i, key in enumerate(ROWS)}
    rows = [os.path.relpath(p, ROOT) for p in paths]
    return sorted((p for p in rows if _row_key(p) in order), key=lambda p: order[_row_key(p)])


def paper_row(path: str) -> Optional[Tuple[str, str]]:
    """(params as printed, metric) of the paper row a config reproduces, if any."""
    found = ROWS.get(_row_key(path))
    if found is None:
        return None
    params, metric = found
    return (f"{params:.2f}M" if params is not None else "", metric)


def trainable_backbone(path: str) -> int:
    with torch.device("meta"):  # shapes only: no 200M random weights to fill
        model = instantiate(load_config(os.path.join(ROOT, path)).model)
    return trainable_parameter_table(model)[1]["trainable_in_backbone"]


def table(paths: List[str]) -> str:
    lines = [
        "| config | trainable backbone params (built) | paper: params | paper: metric |",
        "|---|---|---|---|",
    ]
    for path in paths:
        folder = path.split(os.sep)[1]
        paper = paper_row(path)
        params, metric = paper if paper else ("", "")
        if metric and folder in METRIC:
            metric = f"{metric} ({METRIC[folder]})" if "Table" not in metric else metric
        count = f"{trainable_backbone(path) / 1e6:.2f}M"
        lines.append(f"| [`{path}`]({path}) | {count} | {params} | {metric} |")
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="configs (default: every paper row)")
    args = parser.parse_args(argv)
    text = table(args.configs or row_configs())
    print(text)
    return text


if __name__ == "__main__":
    main()
