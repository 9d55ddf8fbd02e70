"""Data layer: checked dataset loading, a resumable training loader and the synthetic "shapes"
dataset.

Importing this package registers ``shapes_{train,val}``, ``shapes_sem_seg_{train,val}`` and
``shapes_voc_{train,val}`` (Pascal VOC layout), plus ``*_mini_*`` splits for smoke tests (cheap:
the files are only generated when a dataset is first loaded).
"""

from .coco_json import read_coco_json, register_coco_json
from .datasets import (
    DatasetError,
    check_sem_seg_labels,
    load_dataset_dicts,
    load_sem_seg_dicts,
    validate_dataset_dicts,
)
from .loader import ResumableTrainLoader, build_resumable_train_loader
from .shapes import ShapesPaths, ShapesSpec, ensure_shapes_split, register_shapes
from .shapes_voc import ensure_shapes_voc_split, load_voc_dicts, register_shapes_voc

__all__ = [
    "DatasetError",
    "ResumableTrainLoader",
    "ShapesPaths",
    "ShapesSpec",
    "build_resumable_train_loader",
    "check_sem_seg_labels",
    "ensure_shapes_split",
    "ensure_shapes_voc_split",
    "load_dataset_dicts",
    "load_sem_seg_dicts",
    "load_voc_dicts",
    "read_coco_json",
    "register_coco_json",
    "register_shapes",
    "register_shapes_voc",
    "validate_dataset_dicts",
]

register_shapes()
register_shapes_voc()
