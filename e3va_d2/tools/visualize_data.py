"""Draw a config's training data as the model will see it, as detectron2's
``tools/visualize_data.py`` does, for ``.py`` and ``.yaml`` e3va-d2 configs.

    python -m e3va_d2.tools.visualize_data --config-file configs/Custom/own_coco_data.py \\
        --source annotation --output-dir vis/ --num-images 8

``--source annotation`` draws each training image's annotations as stored; ``--source
dataloader`` draws the loader's batches (after the mapper's resizing, crops and flips).
"""
from __future__ import annotations

import argparse
import itertools
import os
from typing import List, Optional

from detectron2.config import CfgNode, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog, build_detection_train_loader
from detectron2.data import detection_utils as utils
from detectron2.utils.visualizer import Visualizer

from .common import dataset_names, load_any_config


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--source", choices=["annotation", "dataloader"], required=True)
    p.add_argument("--output-dir", default="./")
    p.add_argument("--num-images", type=int, default=None, help="stop after this many images")
    p.add_argument("opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p.parse_args(argv)


def _loader_images(cfg):
    """(image id, RGB image, instances) of the training loader's batches."""
    if isinstance(cfg, CfgNode):
        loader, image_format = build_detection_train_loader(cfg), cfg.INPUT.FORMAT
    else:
        loader = instantiate(cfg.dataloader.train)
        image_format = cfg.dataloader.train.mapper.get("image_format", "BGR")
    for batch in loader:
        for item in batch:
            image = utils.convert_image_to_rgb(item["image"].permute(1, 2, 0).numpy(),
                                               image_format)
            yield item["image_id"], image, item["instances"]


def main(argv: Optional[List[str]] = None) -> List[str]:
    args = parse_args(argv)
    cfg = load_any_config(args.config_file, args.opts)
    names = dataset_names(cfg, "train")
    metadata = MetadataCatalog.get(names[0])
    os.makedirs(args.output_dir, exist_ok=True)
    written = []
    if args.source == "dataloader":
        for image_id, image, instances in itertools.islice(_loader_images(cfg), args.num_images):
            fields = instances.get_fields()
            labels = [metadata.thing_classes[i] for i in fields["gt_classes"]]
            drawn = Visualizer(image, metadata=metadata).overlay_instances(
                labels=labels, boxes=fields.get("gt_boxes"), masks=fields.get("gt_masks"),
                keypoints=fields.get("gt_keypoints"))
            written.append(os.path.join(args.output_dir, f"{image_id}.jpg"))
            drawn.save(written[-1])
    else:
        dicts = itertools.chain.from_iterable(DatasetCatalog.get(n) for n in names)
        for d in itertools.islice(dicts, args.num_images):
            image = utils.read_image(d["file_name"], "RGB")
            drawn = Visualizer(image, metadata=metadata).draw_dataset_dict(d)
            written.append(os.path.join(args.output_dir, os.path.basename(d["file_name"])))
            drawn.save(written[-1])
    print(f"Wrote {len(written)} pictures to {args.output_dir}")
    return written


if __name__ == "__main__":
    main()
