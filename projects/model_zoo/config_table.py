"""The README's model-zoo table: every shipped row config, its trainable backbone parameters as
built here, and the paper's figures for that row next to them.

Why a script: the parameter counts are measured on the instantiated models (random weights, no
download), so the table cannot drift from the configs. Paper figures are quoted from Tables 1, 2,
5, 6 and 7 of Yin et al. (2023); they are the paper's results on the real datasets, not ours.

    python projects/model_zoo/config_table.py > /tmp/configs.md
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Dict, List, Optional, Tuple

import torch

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, ROOT)

from detectron2.config import instantiate  # noqa: E402

from e3va_d2.config import load_config  # noqa: E402
from e3va_d2.engine.params import trainable_parameter_table  # noqa: E402

# (benchmark folder, row suffix) -> (paper trainable params, paper metric), as printed.
PAPER: Dict[Tuple[str, str], Tuple[str, str]] = {
    ("COCO", "b_full"): ("86.75M", "51.9 / 45.0"),
    ("COCO", "b_fixed"): ("0.00M", "43.5 / 38.6"),
    ("COCO", "b_bitfit"): ("0.20M", "47.9 / 41.9"),
    ("COCO", "b_norm"): ("0.06M", "48.0 / 41.4"),
    ("COCO", "b_partial1"): ("12.60M", "49.2 / 42.8"),
    ("COCO", "b_adapter"): ("3.11M", "50.9 / 43.8"),
    ("COCO", "b_lora"): ("3.03M", "51.2 / 44.3"),
    ("COCO", "b_adaptformer"): ("3.11M", "51.4 / 44.5"),
    ("COCO", "b_e3va"): ("1.20M", "50.5 / 43.8"),
    ("COCO", "b_e3va_plus"): ("2.35M", "51.0 / 44.2"),
    ("COCO", "b_e3va_plusplus"): ("4.66M", "51.6 / 44.5"),
    ("COCO", "l_e3va"): ("1.80M", "52.2 / 45.2"),
    ("COCO", "l_e3va_trainable_reduction"): ("", "51.7 box (Table 7)"),
    ("COCO", "l_e3va_fixed_fpn_norm"): ("", "51.8 box (Table 7)"),
    ("PascalVOC", "l_full"): ("198.58M", "83.5"),
    ("PascalVOC", "l_fixed"): ("0.00M", "83.6"),
    ("PascalVOC", "l_bitfit"): ("0.30M", "85.7"),
    ("PascalVOC", "l_norm"): ("0.09M", "85.8"),
    ("PascalVOC", "l_partial1"): ("28.34M", "85.4"),
    ("PascalVOC", "l_adapter"): ("4.66M", "87.1"),
    ("PascalVOC", "l_lora"): ("4.57M", "87.5"),
    ("PascalVOC", "l_adaptformer"): ("4.66M", "87.3"),
    ("PascalVOC", "l_e3va"): ("1.79M", "86.5"),
    ("PascalVOC", "l_e3va_plus"): ("3.53M", "86.8"),
    ("PascalVOC", "l_e3va_plusplus"): ("7.00M", "87.0"),
    ("PascalVOC", "l_e3va_standard_adapter"): ("2.35M", "85.4 (Table 5)"),
    ("PascalVOC", "l_e3va_stacked"): ("", "85.9 (Table 6)"),
    ("PascalVOC", "l_e3va_trainable_reduction"): ("", "86.7 (Table 7)"),
    ("PascalVOC", "l_e3va_fixed_fpn_norm"): ("", "85.9 (Table 7)"),
    ("ADE20K", "l_full"): ("198.58M", "52.10"),
    ("ADE20K", "l_fixed"): ("0.00M", "46.84"),
    ("ADE20K", "l_bitfit"): ("0.30M", "48.37"),
    ("ADE20K", "l_norm"): ("0.09M", "47.98"),
    ("ADE20K", "l_partial1"): ("28.34M", "47.44"),
    ("ADE20K", "l_adapter"): ("4.66M", "50.78"),
    ("ADE20K", "l_lora"): ("4.57M", "50.34"),
    ("ADE20K", "l_adaptformer"): ("4.66M", "50.83"),
    ("ADE20K", "l_e3va"): ("1.79M", "49.64"),
    ("ADE20K", "l_e3va_plus"): ("3.53M", "50.20"),
    ("ADE20K", "l_e3va_plusplus"): ("7.00M", "51.01"),
    ("ADE20K", "l_e3va_trainable_reduction"): ("", "49.97 (Table 7)"),
    ("ADE20K", "l_e3va_fixed_fpn_norm"): ("", "48.51 (Table 7)"),
}

METRIC = {
    "COCO": "AP box / mask",
    "PascalVOC": "VOC2007 11-point AP50",
    "ADE20K": "mIoU",
}


def _row_key(path: str) -> Tuple[str, str]:
    folder = path.split(os.sep)[1]
    stem = os.path.splitext(os.path.basename(path))[0]
    return folder, stem.split("_swin_", 1)[-1]


def row_configs() -> List[str]:
    """The paper-row configs, in the paper's order (Table 1 COCO, then VOC, then ADE20K)."""
    paths = glob.glob(os.path.join(ROOT, "configs", "*", "*.py"))
    order = {key: i for i, key in enumerate(PAPER)}
    rows = [os.path.relpath(p, ROOT) for p in paths]
    return sorted((p for p in rows if _row_key(p) in order), key=lambda p: order[_row_key(p)])


def paper_row(path: str) -> Optional[Tuple[str, str]]:
    return PAPER.get(_row_key(path))


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
