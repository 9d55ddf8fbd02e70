"""COCO 2017 instance segmentation loaders (detectron2's builtin registration: the data lives in
$DETECTRON2_DATASETS/coco, see detectron2's datasets/README.md).

Multi-scale training (short side 480-800, long side <= 1333) with flips; test at 800.
Missing folders or broken annotation files fail at startup with a message that says how to fix
them (e3va_d2.data.load_dataset_dicts).
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from e3va_d2.compat import HAS_COMPILED_OPS
from e3va_d2.data import build_resumable_train_loader, load_dataset_dicts

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(load_dataset_dicts)(names="coco_2017_train"),
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
        use_instance_mask=True,
    ),
    total_batch_size=16,  # 2 images per GPU on 8 GPUs, as in the paper
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(load_dataset_dicts)(names="coco_2017_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

# use_fast_impl needs compiled detectron2 ops; the trainer turns it off without them.
# The fast COCO evaluation needs detectron2's compiled ops; the pure-Python build has none.
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", output_dir=None, use_fast_impl=HAS_COMPILED_OPS
)
