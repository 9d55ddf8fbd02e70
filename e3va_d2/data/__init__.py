"""Data layer: checked dataset loading and the synthetic "shapes" dataset.

Importing this package registers ``shapes_{train,val}`` and ``shapes_sem_seg_{train,val}``
(cheap: the images are only generated when a dataset is first loaded).
"""

from .datasets import (
    DatasetError,
    check_sem_seg_labels,
    load_dataset_dicts,
    load_sem_seg_dicts,
    validate_dataset_dicts,
)
from .shapes import ShapesPaths, ShapesSpec, ensure_shapes_split, register_shapes

__all__ = [
    "DatasetError",
    "ShapesPaths",
    "ShapesSpec",
    "check_sem_seg_labels",
    "ensure_shapes_split",
    "load_dataset_dicts",
    "load_sem_seg_dicts",
    "register_shapes",
    "validate_dataset_dicts",
]

register_shapes()
