"""Loaders for the embedded synthetic shapes dataset (generated on first use, see
e3va_d2.data.shapes): small images, so a CPU trains a detector on it in minutes."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.evaluation import COCOEvaluator
from omegaconf import OmegaConf

from e3va_d2.compat import HAS_COMPILED_OPS
from e3va_d2.data import build_resumable_train_loader, load_dataset_dicts

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(load_dataset_dicts)(names="shapes_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[L(T.RandomFlip)(horizontal=True)],
        image_format="RGB",
        use_instance_mask=True,
        # Shapes masks are RLE (occlusion makes holes polygons cannot express).
        instance_mask_format="bitmask",
    ),
    total_batch_size=4,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(load_dataset_dicts)(names="shapes_val", filter_empty=False),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="RGB"),
    num_workers=1,
)

# The fast COCO evaluation needs detectron2's compiled ops; the pure-Python build has none.
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", output_dir=None, use_fast_impl=HAS_COMPILED_OPS
)
