"""Draw the predictions a COCO evaluation wrote (``coco_instances_results.json``) beside the
ground truth, as detectron2's ``tools/visualize_json_results.py`` does, for the test set of an
e3va-d2 config (the shapes, one's own COCO json: datasets detectron2's tool cannot find).

    python train_net.py --config-file CONFIG --eval-only train.init_checkpoint=... \\
        dataloader.evaluator.output_dir=output/eval
    python -m e3va_d2.tools.visualize_json_results --config-file CONFIG \\
        --input output/eval/coco_instances_results.json --output vis/
"""
from __future__ import annotations

import argparse
import collections
import json
import os
from typing import List, Optional

import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.structures import Boxes, BoxMode, Instances
from detectron2.utils.visualizer import Visualizer
from PIL import Image

from .common import dataset_names, load_any_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", required=True, help="the json of predictions a COCO evaluation wrote")
    p.add_argument("--output", required=True, help="folder for the pictures")
    p.add_argument("--dataset", help="a registered dataset (default: the config's test set)")
    p.add_argument("--conf-threshold", type=float, default=0.5)
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p.parse_args(argv)


def to_instances(predictions: List[dict], image_size, id_map, threshold: float) -> Instances:
    """COCO-format predictions of one image -> detectron2 ``Instances`` above ``threshold``."""
    kept = [p for p in predictions if p["score"] > threshold]
    instances = Instances(image_size)
    instances.scores = np.asarray([p["score"] for p in kept])
    boxes = np.asarray([p["bbox"] for p in kept], dtype=np.float64).reshape(-1, 4)
    instances.pred_boxes = Boxes(BoxMode.convert(boxes, BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
    instances.pred_classes = np.asarray([id_map[p["category_id"]] for p in kept], dtype=int)
    if kept and "segmentation" in kept[0]:
        instances.pred_masks = [p["segmentation"] for p in kept]
    return instances


def main(argv: Optional[List[str]] = None) -> List[str]:
    args = parse_args(argv)
    cfg = load_any_config(args.config_file, args.opts)
    name = args.dataset or dataset_names(cfg, "test")[0]
    with open(args.input) as f:
        by_image = collections.defaultdict(list)
        for p in json.load(f):
            by_image[p["image_id"]].append(p)
    dicts = DatasetCatalog.get(name)
    metadata = MetadataCatalog.get(name)
    # The evaluator writes the json's category ids; detectron2's loader mapped them to indices.
    id_map = metadata.get("thing_dataset_id_to_contiguous_id", None)
    if id_map is None:
        id_map = {i: i for i in range(len(metadata.thing_classes))}
    os.makedirs(args.output, exist_ok=True)
    written = []
    for d in dicts:
        image = utils.read_image(d["file_name"], "RGB")
        predicted = to_instances(by_image[d["image_id"]], image.shape[:2], id_map,
                                 args.conf_threshold)
        left = Visualizer(image, metadata).draw_instance_predictions(predicted).get_image()
        right = Visualizer(image, metadata).draw_dataset_dict(d).get_image()
        written.append(os.path.join(args.output, os.path.basename(d["file_name"])))
        Image.fromarray(np.concatenate([left, right], axis=1)).save(written[-1])
    print(f"Wrote {len(written)} pictures (predictions left, ground truth right) to {args.output}")
    return written


if __name__ == "__main__":
    main()
