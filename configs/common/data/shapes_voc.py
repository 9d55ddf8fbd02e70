"""Loaders for the synthetic shapes in Pascal VOC layout (exported on first use, see
e3va_d2.data.shapes_voc), evaluated like VOC: "VOC2007 11-point AP50" (the paper's VOC AP_box)."""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader
from omegaconf import OmegaConf

from e3va_d2.data import build_resumable_train_loader, load_dataset_dicts
from e3va_d2.evaluation import VOCDetectionEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(load_dataset_dicts)(names="shapes_voc_train"),
    mapper=L(DatasetMapper)(
        is_train=True, augmentations=[L(T.RandomFlip)(horizontal=True)], image_format="RGB"
    ),
    total_batch_size=4,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(load_dataset_dicts)(names="shapes_voc_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="RGB"),
    num_workers=1,
)

dataloader.evaluator = L(VOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")
