"""Pascal VOC 07+12 detection loaders (detectron2's builtin registration: the data lives in
$DETECTRON2_DATASETS/VOC2007 and VOC2012, see detectron2's datasets/README.md).

Train on voc_2007_trainval + voc_2012_trainval (16,551 images), test on voc_2007_test (4,952).
The metric is the paper's VOC "AP_box": PascalVOCDetectionEvaluator's AP50 with the VOC2007
11-point interpolation (year 2007), logged as "VOC2007 11-point AP50"; its "AP" is the mean over
IoU 0.50:0.95 with the same interpolation, not COCO's AP.
"""

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader
from omegaconf import OmegaConf

from e3va_d2.data import build_resumable_train_loader, load_dataset_dicts
from e3va_d2.evaluation import VOCDetectionEvaluator

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(load_dataset_dicts)(names=("voc_2007_trainval", "voc_2012_trainval")),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=[480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800],
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",
    ),
    total_batch_size=16,  # 2 images per GPU on 8 GPUs, as in the paper
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(load_dataset_dicts)(names="voc_2007_test", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

# detectron2's PascalVOCDetectionEvaluator, logging "VOC2007 11-point AP50" by name.
dataloader.evaluator = L(VOCDetectionEvaluator)(dataset_name="${..test.dataset.names}")
