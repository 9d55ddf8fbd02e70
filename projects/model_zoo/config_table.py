"""The model-zoo table of docs/CONFIGS.md: every shipped row config, its trainable backbone
parameters as built here, and the paper's figures for that row next to them (this project's
own methods' rows last, without).

Why a script: the parameter counts are measured on the instantiated models (shapes only, no
weights, no download), so the table cannot drift from the configs; ``tests/test_configs.py``
checks the committed record against every config it builds. Paper figures come from
:mod:`projects.paper`.

    python -m projects.model_zoo.config_table                        # print the table
    python -m projects.model_zoo.config_table --record config-table  # and update the docs
"""
from __future__ import annotations

import argparse
import glob
import os
from typing import Any, Dict, List, Optional, Tuple

import torch
from detectron2.config import instantiate

from e3va_d2.config import load_config
from e3va_d2.engine.params import trainable_parameter_table
from projects.paper import METRIC, ROWS
from projects.tables import command_line, publish, table_head, table_row

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))


def _row_key(path: str) -> Tuple[str, str]:
    folder = path.split("/")[1]
    stem = os.path.splitext(os.path.basename(path))[0]
    return folder, stem.split("_swin_", 1)[-1]


# This project's own methods (not the paper's): their rows follow the paper's, without paper
# figures.
EXTENSIONS = ("e3va_spatial",)


def row_configs() -> List[str]:
    """The paper-row configs, in the paper's order (Table 1 COCO, then VOC, then ADE20K), then
    the rows of this project's extensions."""
    paths = glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))
    order = {key: i for i, key in enumerate(ROWS)}
    rows = [os.path.relpath(p, ROOT).replace(os.sep, "/") for p in paths]
    paper = sorted((p for p in rows if _row_key(p) in order), key=lambda p: order[_row_key(p)])
    folders = list(dict.fromkeys(folder for folder, _ in ROWS))  # COCO, VOC, ADE20K
    ours = sorted((p for p in rows if _row_key(p)[1].split("_", 1)[-1] in EXTENSIONS),
                  key=lambda p: (folders.index(_row_key(p)[0]), p))
    return paper + ours


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


def measure(paths: List[str]) -> Dict[str, Any]:
    """The record: each config's trainable backbone parameters, as built."""
    return {"rows": [{"config": p, "trainable_backbone": trainable_backbone(p)} for p in paths]}


def render(data: Dict[str, Any]) -> str:
    """The Markdown table of a record; the paper's columns from :mod:`projects.paper`."""
    lines = table_head(
        ["config", "trainable backbone params (built)", "paper: params", "paper: metric"])
    for row in data["rows"]:
        path = row["config"]
        folder = path.split("/")[1]
        paper = paper_row(path)
        params, metric = paper or ("", "this project's, not in the paper")
        if paper and metric and folder in METRIC and "Table" not in metric:
            metric = f"{metric} ({METRIC[folder]})"
        count = f"{row['trainable_backbone'] / 1e6:.2f}M"
        lines.append(table_row([f"[`{path}`](../{path})", count, params, metric]))
    return "\n".join(lines)


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="*", help="configs (default: every paper row)")
    parser.add_argument("--record", default="", help="publish as this table (config-table)")
    args = parser.parse_args(argv)
    data = measure(args.configs or row_configs())
    text = render(data)
    print(text)
    if args.record:
        publish(args.record, data, "projects.model_zoo.config_table:render",
                command_line("projects.model_zoo.config_table", argv))
    return text


if __name__ == "__main__":
    main()
