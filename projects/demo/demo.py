#!/usr/bin/env python
"""Draw a config's predictions on images, like detectron2's ``demo/demo.py``.

    python -m projects.demo.demo --config-file configs/Shapes/mask_rcnn_swin_demo_e3va.py \\
        --input "photos/*.jpg" --output out/ \\
        --opts train.init_checkpoint=output/shapes_demo_e3va/model_final.pth
    python -m projects.demo.demo --config-file configs/Shapes/mask_rcnn_swin_demo_e3va.py --trained

Writes one PNG per image: detectron2 ``Visualizer`` overlays of instances (boxes, masks) or of
the semantic segmentation. Without ``--input``, draws the first ``--num-images`` images of
``--dataset`` (default: the config's test dataset). ``--trained`` loads
``<train.output_dir>/model_final.pth`` and also draws that run's training curves
(``curves.png``, see :mod:`.curves`); ``--output`` defaults to
``<train.output_dir>/predictions``.
"""
from __future__ import annotations

import argparse
import glob
import os
from typing import List

import numpy as np
import tqdm
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from e3va_d2.config import ConfigError, load_config
from e3va_d2.engine.multitask import MultiTaskPredictor
from e3va_d2.engine.predictor import Predictor
from e3va_d2.engine.trainer import test_dataset_names

from . import curves


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", default=[], help="image files or glob patterns")
    p.add_argument("--dataset", help="without --input: draw the first --num-images images of this "
                   "registered dataset (default: the config's test dataset)")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--output", help="folder for the PNG files (default: "
                   "<train.output_dir>/predictions)")
    p.add_argument("--trained", action="store_true",
                   help="load <train.output_dir>/model_final.pth (the config's training run)")
    p.add_argument("--tasks", nargs="+", default=[], metavar="CONFIG[=DELTA]",
                   help="more trained E3VA configs on the same trunk: their deltas (default "
                   "<train.output_dir>/model_final_delta.pth) and --config-file's run on one "
                   "trunk pass (MultiTaskPredictor); one picture per image, a panel per task")
    p.add_argument("--delta", help="with --tasks: --config-file's delta (default: its run's)")
    p.add_argument("--confidence-threshold", type=float, default=0.5)
    p.add_argument("--scale", type=float, default=2.0, help="drawing scale (small images)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p.parse_args(argv)


def input_paths(args, cfg) -> List[str]:
    paths = sorted(p for pattern in args.input for p in (glob.glob(pattern) or [pattern]))
    if args.dataset or not args.input:
        dataset = args.dataset or test_dataset_names(cfg)[0]
        paths += [d["file_name"] for d in DatasetCatalog.get(dataset)[: args.num_images]]
    missing = [p for p in paths if not os.path.isfile(p)]
    if not paths or missing:
        raise ConfigError(f"no images to draw: {missing or 'give --input or --dataset'}")
    return paths


def draw(image_rgb: np.ndarray, outputs: dict, metadata, threshold: float, scale: float):
    visualizer = Visualizer(image_rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    if "instances" in outputs:
        instances = outputs["instances"].to("cpu")
        drawn = visualizer.draw_instance_predictions(instances[instances.scores >= threshold])
    else:
        drawn = visualizer.draw_sem_seg(outputs["sem_seg"].argmax(0).to("cpu"), alpha=0.5)
    return drawn.get_image()


def trained_file(cfg, name: str) -> str:
    path = os.path.join(cfg.train.output_dir, name)
    if not os.path.isfile(path):
        raise ConfigError(f"{path} does not exist; train the config first")
    return path


def multi_task_predictor(args, cfg) -> MultiTaskPredictor:
    """--config-file and --tasks, each from its own training run's delta, on one trunk."""
    tasks = {}
    entries = [(args.config_file, args.delta)] + [
        (t.split("=", 1)[0], t.split("=", 1)[1] if "=" in t else None) for t in args.tasks]
    for i, (config, delta) in enumerate(entries):
        task_cfg = cfg if i == 0 else load_config(config, args.opts)
        tasks[os.path.splitext(os.path.basename(config))[0]] = (
            task_cfg, delta or trained_file(task_cfg, "model_final_delta.pth"))
    return MultiTaskPredictor(tasks)


def main(argv=None) -> List[str]:
    args = parse_args(argv)
    cfg = load_config(args.config_file, args.opts)
    if args.tasks:
        multi = multi_task_predictor(args, cfg)

        def predict(image):
            outputs = multi(image, image_format="RGB")
            panels = [draw(image, outputs[name], p.metadata, args.confidence_threshold,
                           args.scale) for name, p in multi.predictors.items()]
            return np.concatenate(panels, axis=1)
    else:
        checkpoint = trained_file(cfg, "model_final.pth") if args.trained else None
        predictor = Predictor(cfg, checkpoint=checkpoint)

        def predict(image):
            outputs = predictor(image, image_format="RGB")
            return draw(image, outputs, predictor.metadata, args.confidence_threshold,
                        args.scale)
    output = args.output or os.path.join(cfg.train.output_dir, "predictions")
    os.makedirs(output, exist_ok=True)
    written = []
    for path in tqdm.tqdm(input_paths(args, cfg), desc="drawing", unit="image"):
        picture = predict(read_image(path, format="RGB"))
        target = os.path.join(output, os.path.splitext(os.path.basename(path))[0] + ".png")
        Image.fromarray(picture).save(target)
        written.append(target)
    print(f"Wrote {len(written)} pictures of predictions to {output}")
    if args.trained and os.path.isfile(os.path.join(cfg.train.output_dir, "metrics.json")):
        curves.main([cfg.train.output_dir])  # the training run's losses and metrics
    return written


if __name__ == "__main__":
    main()
