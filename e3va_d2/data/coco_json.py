"""A COCO-format dataset of one's own: registered from its json and image folder, its classes
read from the json's ``categories``.

Why: the class count of a model must be the data's (a model with fewer classes trains to AP 0
without an error), and the names must be known before the data is first loaded (the predictor
and the demo draw them). detectron2's ``register_coco_instances`` learns both only when the
dataset is loaded; this reads them at registration, with the values detectron2 then sets.
"""
from __future__ import annotations

import json
import os
from typing import List

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances

from .datasets import DatasetError

__all__ = ["CocoJson", "read_coco_json", "register_coco_json"]


class CocoJson:
    """What a COCO json says about its classes and masks (its images are not read)."""

    def __init__(self, path: str, categories: List[dict], has_rle_masks: bool):
        self.path = path
        self.categories = sorted(categories, key=lambda c: c["id"])
        self.has_rle_masks = has_rle_masks

    @property
    def thing_classes(self) -> List[str]:
        return [c["name"] for c in self.categories]

    @property
    def id_map(self):
        """json category id -> contiguous class index, as detectron2's load_coco_json maps."""
        return {c["id"]: i for i, c in enumerate(self.categories)}


def read_coco_json(path: str) -> CocoJson:
    """Read a COCO instances json's categories; ``DatasetError`` naming the file and the fix."""
    if not os.path.isfile(path):
        raise DatasetError(f"COCO json '{path}' does not exist (resolved from the working "
                           f"directory '{os.getcwd()}' to '{os.path.abspath(path)}').")
    try:
        with open(path) as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError) as err:
        raise DatasetError(f"COCO json '{path}' is not valid JSON ({err}).") from err
    categories = data.get("categories") if isinstance(data, dict) else None
    if not categories or not all(isinstance(c, dict) and isinstance(c.get("id"), int)
                                 and "name" in c for c in categories):
        raise DatasetError(
            f"COCO json '{path}' has no usable 'categories': a COCO instances file lists its "
            "classes as \"categories\": [{\"id\": 1, \"name\": \"cat\"}, ...].")
    ids = [c["id"] for c in categories]
    if len(set(ids)) != len(ids):
        raise DatasetError(f"COCO json '{path}': category ids {sorted(ids)} repeat; each class "
                           "needs its own id.")
    rle = any(isinstance(a.get("segmentation"), dict) for a in data.get("annotations") or ())
    return CocoJson(path, categories, rle)


def register_coco_json(name: str, json_file: str, image_root: str) -> CocoJson:
    """Register ``name`` (detectron2's ``register_coco_instances``) with its class names set
    now. Registering the same files again under the same name is a no-op; other files under a
    taken name are refused."""
    json_file, image_root = os.path.abspath(json_file), os.path.abspath(image_root)
    info = read_coco_json(json_file)
    if not os.path.isdir(image_root):
        raise DatasetError(f"Image folder '{image_root}' of dataset '{name}' does not exist.")
    if name in DatasetCatalog:
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file", None), meta.get("image_root", None)) != (json_file, image_root):
            raise DatasetError(
                f"Dataset name '{name}' is taken (by {meta.get('json_file', 'another loader')}); "
                f"give {json_file} another name.")
        return info
    register_coco_instances(name, {}, json_file, image_root)
    MetadataCatalog.get(name).set(thing_classes=info.thing_classes,
                                  thing_dataset_id_to_contiguous_id=info.id_map)
    return info
