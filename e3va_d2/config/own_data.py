"""One's own COCO-format data in one config: its json, its image folder and a shipped config.

    from e3va_d2.config import coco_json_config

    cfg = coco_json_config(
        json="mydata/train.json", image_root="mydata/images",
        config="Shapes/mask_rcnn_swin_demo_e3va.py")

registers the dataset (detectron2's ``register_coco_instances``), points the config's train
and test loaders and a COCO evaluator at it and sets the model's class count to the number of
categories in the json. ``configs/Custom/own_coco_data.py`` is such a config; docs/DATA.md
walks through it.
"""
from __future__ import annotations

import os
from typing import Optional

from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator
from omegaconf import DictConfig

from ..compat import HAS_COMPILED_OPS
from ..data.coco_json import register_coco_json
from ..data.datasets import DatasetError, load_dataset_dicts
from ..errors import ConfigError
from .lazy import load_config
from .shipped import get_config

__all__ = ["coco_json_config", "set_num_classes"]


def coco_json_config(
    json: str,
    image_root: str,
    config: str,
    *,
    test_json: Optional[str] = None,
    test_image_root: Optional[str] = None,
    name: Optional[str] = None,
) -> DictConfig:
    """``config`` (a shipped config's name, e.g. ``"COCO/cascade_mask_rcnn_swin_b_e3va.py"``,
    or a LazyConfig file) trained on the COCO json ``json`` whose images are under
    ``image_root``, and evaluated on ``test_json`` (default: the training set itself).

    Datasets are registered as ``name`` (default: the json's file stem) and the test json's
    stem; the model's ``num_classes`` is the json's category count; the run writes to
    ``./output/<name>/<config's stem>``. Masks stored as RLE switch the mapper to bitmasks.
    """
    cfg = load_config(config) if os.path.isfile(config) else get_config(config)
    name = name or _stem(json)
    test_name = name
    if test_json is not None:
        test_name = _stem(test_json) if _stem(test_json) != name else f"{name}_test"
    try:
        train = register_coco_json(name, json, image_root)
        test = train if test_json is None else register_coco_json(
            test_name, test_json, test_image_root or image_root)
    except DatasetError as e:
        raise ConfigError(f"coco_json_config: {e}") from e
    if test.thing_classes != train.thing_classes:
        raise ConfigError(f"coco_json_config: the categories of {test_json} "
                          f"({test.thing_classes}) differ from those of {json} "
                          f"({train.thing_classes}); a model evaluates only the classes it "
                          "trained on.")

    set_num_classes(cfg.model, len(train.thing_classes), config)
    loaders = cfg.dataloader
    loaders.train.dataset = L(load_dataset_dicts)(names=name)
    loaders.test.dataset = L(load_dataset_dicts)(names=test_name, filter_empty=False)
    loaders.evaluator = L(COCOEvaluator)(dataset_name="${..test.dataset.names}",
                                         output_dir=None, use_fast_impl=HAS_COMPILED_OPS)
    mapper = loaders.train.mapper
    if mapper.get("use_instance_mask", False) and (train.has_rle_masks or test.has_rle_masks):
        mapper.instance_mask_format = "bitmask"  # polygons convert too; RLE only to bitmasks
    cfg.train.output_dir = os.path.join(".", "output", name, _stem(config))
    return cfg


def set_num_classes(model: DictConfig, num_classes: int, config: str = "the config") -> None:
    """Set a detector config's class count: ``roi_heads.num_classes`` (R-CNN; the box and
    mask predictors interpolate it) or ``num_classes`` (RetinaNet)."""
    roi_heads = model.get("roi_heads")
    if isinstance(roi_heads, DictConfig) and "num_classes" in roi_heads:
        roi_heads.num_classes = num_classes
    elif "num_classes" in model:
        model.num_classes = num_classes
    else:
        raise ConfigError(f"{config} is no detector (its model has neither roi_heads.num_classes "
                          "nor num_classes): COCO instance annotations train a Mask R-CNN, "
                          "Cascade Mask R-CNN or RetinaNet config.")


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(path))[0]
