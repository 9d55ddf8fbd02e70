#!/usr/bin/env python
"""Draw a config's predictions on images, like detectron2's ``demo/demo.py``.

    python -m projects.demo.demo --config-file configs/Shapes/mask_rcnn_swin_demo_e3va.py \\
        --input "photos/*.jpg" --output out/ \\
        --opts train.init_checkpoint=output/shapes_demo_e3va/model_final.pth
    python -m projects.demo.demo --config-file configs/Shapes/mask_rcnn_swin_demo_e3va.py --trained

Writes one PNG per image: detectron2 ``Visualizer`` overlays of instances (boxes, masks) or of
the semantic segmentation, named after the image (``x.jpg`` -> ``x.png``; inputs with one base
name get distinct names, see :func:`picture_names`); a picture never replaces an input.
Without ``--input``, draws the first ``--num-images`` images of ``--dataset`` (default: the
config's test dataset). ``--trained`` loads
``<train.output_dir>/model_final.pth`` and also draws that run's training curves
(``curves.png``, see :mod:`.curves`); ``--output`` defaults to
``<train.output_dir>/predictions``.

A model with untrained adapters or heads is refused, as ``--eval-only`` refuses it
(``train.eval_untrained=True`` draws it anyway). Inputs are read by :mod:`.inputs` (folders
expanded, 16-bit images scaled, each scaled down to the config's test size); a file that cannot
be read is skipped and named in a summary, and the demo then exits with status 1.
"""
from __future__ import annotations

import argparse
import collections
import os
import sys
from typing import List, Optional

import numpy as np
import tqdm
from detectron2.data import DatasetCatalog
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from e3va_d2.config import ConfigError, load_config
from e3va_d2.engine.multitask import MultiTaskPredictor
from e3va_d2.engine.predictor import Predictor
from e3va_d2.engine.trainer import test_dataset_names

from . import curves
from .inputs import (
    DEFAULT_MAX_PIXELS,
    DEFAULT_MAX_SIZE,
    InputError,
    config_test_max_size,
    expand_inputs,
    read_rgb,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config-file", required=True)
    p.add_argument("--input", nargs="+", default=[],
                   help="image files, folders of images or glob patterns")
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
    p.add_argument("--max-size", type=int, help="scale inputs down to this longer side "
                   f"(default: the config's test max_size, else {DEFAULT_MAX_SIZE})")
    p.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS,
                   help="skip larger images without decoding them")
    p.add_argument("--trust-checkpoint-code", action="store_true",
                   help="read checkpoints that need full unpickling (can run code they hold)")
    p.add_argument("--opts", nargs=argparse.REMAINDER, default=[], help="config overrides")
    return p.parse_args(argv)


def input_paths(args, cfg) -> List[str]:
    paths = expand_inputs(args.input)
    if args.dataset or not args.input:
        dataset = args.dataset or test_dataset_names(cfg)[0]
        paths += [d["file_name"] for d in DatasetCatalog.get(dataset)[: args.num_images]]
    if not paths:
        raise ConfigError(f"no images to draw in {args.input}: give image files, folders of "
                          "images or --dataset")
    return paths


def distinct_inputs(paths: List[str]) -> List[str]:
    """``paths`` without repeats of one file (a file matched by two patterns is drawn once)."""
    seen, kept = set(), []
    for path in paths:
        key = os.path.realpath(path)
        if key in seen:
            print(f"{path} is given twice: drawn once")
            continue
        seen.add(key)
        kept.append(path)
    return kept


def picture_names(paths: List[str]) -> List[str]:
    """One distinct PNG name per input: its base name (``photos/x.jpg`` -> ``x.png``); where
    base names collide (``a/x.png``, ``b/x.jpg``), the path below the inputs' common folder,
    ``/`` written ``__`` (``a__x.png``, ``b__x.png``), and the extension too where that is what
    differs (``x.jpg.png``, ``x.png.png``)."""
    if not paths:
        return []
    common = os.path.commonpath([os.path.dirname(os.path.abspath(p)) for p in paths])

    def below(path: str, keep_extension: bool) -> str:
        relative = os.path.relpath(os.path.abspath(path), common)
        relative = relative if keep_extension else os.path.splitext(relative)[0]
        return relative.replace(os.sep, "__")

    rules = (lambda p: os.path.splitext(os.path.basename(p))[0],
             lambda p: below(p, keep_extension=False), lambda p: below(p, keep_extension=True))
    names = [rules[0](p) for p in paths]
    for rule in rules[1:]:
        counts = collections.Counter(names)
        names = [rule(p) if counts[n] > 1 else n for p, n in zip(paths, names)]
    taken, unique = collections.Counter(), []
    for name in names:  # whatever still collides gets a number
        taken[name] += 1
        unique.append(name if taken[name] == 1 else f"{name}-{taken[name]}")
    return [f"{name}.png" for name in unique]


def refuse_overwriting_inputs(paths: List[str], targets: List[str], output: str) -> None:
    """``--output`` may be the inputs' own folder, but no picture may replace an input."""
    inputs = {os.path.realpath(p): p for p in paths}
    for path, target in zip(paths, targets):
        hit = inputs.get(os.path.realpath(target))
        if hit is not None:
            raise ConfigError(
                f"The picture of {path} would be written to {target}, which is the input "
                f"{hit}: the demo never writes over its inputs. Pass another --output folder "
                f"than {output}.")


def refuse_untrained(cfg, predictor: Predictor) -> None:
    """What --eval-only refuses, the demo refuses too: drawing adapters and heads that never
    trained shows an untrained model's boxes as if they were the method's."""
    if predictor.untrained and not cfg.train.get("eval_untrained", False):
        raise ConfigError(
            f"The model has {len(predictor.untrained)} trainable tensors that were never trained "
            f"(e.g. {predictor.untrained[:3]}): no trained checkpoint was given. Pass --trained "
            f"(the config's run, {cfg.train.output_dir}/model_final.pth), --opts "
            "train.init_checkpoint=<a trained model_final.pth>, or --opts "
            "train.eval_untrained=True to draw the untrained model anyway.")


def draw(image_rgb: np.ndarray, outputs: dict, metadata, threshold: float, scale: float):
    visualizer = Visualizer(image_rgb, metadata, scale=scale, instance_mode=ColorMode.IMAGE)
    if "instances" in outputs:
        instances = outputs["instances"].to("cpu")
        drawn = visualizer.draw_instance_predictions(instances[instances.scores >= threshold])
    else:
        drawn = visualizer.draw_sem_seg(outputs["sem_seg"].argmax(0).to("cpu"), alpha=0.5)
    return drawn.get_image()


def nothing_shown(outputs: dict, threshold: float) -> Optional[str]:
    """What to say when no instance scores ``threshold``: the picture is then the bare image,
    which reads as a broken demo unless it says why."""
    if "instances" not in outputs:
        return None
    scores = outputs["instances"].scores
    if len(scores) and float(scores.max()) >= threshold:
        return None
    best = (f"the best scores {float(scores.max()):.2f}" if len(scores)
            else "the model predicted nothing")
    return (f"no prediction scores at least --confidence-threshold={threshold} ({best}); "
            "the picture shows none. A lower threshold shows the weaker ones.")


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
    if args.trust_checkpoint_code:
        cfg.train.trust_checkpoint_code = True
    output = args.output or os.path.join(cfg.train.output_dir, "predictions")
    paths = distinct_inputs(input_paths(args, cfg))
    targets = [os.path.join(output, name) for name in picture_names(paths)]
    refuse_overwriting_inputs(paths, targets, output)  # before minutes of building a model
    if args.tasks:
        multi = multi_task_predictor(args, cfg)

        def predict(image):
            outputs = multi(image, image_format="RGB")
            panels = [draw(image, outputs[name], p.metadata, args.confidence_threshold,
                           args.scale) for name, p in multi.predictors.items()]
            notes = [f"{name}: {note}" for name in multi.predictors
                     if (note := nothing_shown(outputs[name], args.confidence_threshold))]
            return np.concatenate(panels, axis=1), notes
    else:
        checkpoint = trained_file(cfg, "model_final.pth") if args.trained else None
        predictor = Predictor(cfg, checkpoint=checkpoint, allow_untrained=True)
        refuse_untrained(cfg, predictor)  # with the demo's own options in its message

        def predict(image):
            outputs = predictor(image, image_format="RGB")
            note = nothing_shown(outputs, args.confidence_threshold)
            return draw(image, outputs, predictor.metadata, args.confidence_threshold,
                        args.scale), [note] if note else []
    os.makedirs(output, exist_ok=True)
    max_size = args.max_size or config_test_max_size(cfg) or DEFAULT_MAX_SIZE
    written, failed = [], []
    for path, target in tqdm.tqdm(list(zip(paths, targets)), desc="drawing", unit="image"):
        try:
            image = read_rgb(path, max_size=max_size, max_pixels=args.max_pixels)
        except InputError as e:  # one bad file must not cost the others their pictures
            failed.append(str(e))
            continue
        picture, notes = predict(image)
        for note in notes:
            tqdm.tqdm.write(f"{os.path.basename(path)}: {note}")
        Image.fromarray(picture).save(target)
        written.append(target)
    print(f"Wrote {len(written)} pictures of predictions to {output}")
    if args.trained and os.path.isfile(os.path.join(cfg.train.output_dir, "metrics.json")):
        curves.main([cfg.train.output_dir])  # the training run's losses and metrics
    if failed:
        sys.exit(f"Skipped {len(failed)} of {len(failed) + len(written)} inputs:\n  "
                 + "\n  ".join(failed))
    return written

if __name__ == "__main__":
    main()
