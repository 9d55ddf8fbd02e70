"""Semantic-segmentation loaders for the embedded synthetic shapes (background + 3 shapes,
generated on first use, see e3va_d2.data.shapes): a CPU trains UPerNet on it in minutes."""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.evaluation import SemSegEvaluator
from omegaconf import OmegaConf

from e3va_d2.data import build_resumable_train_loader, load_sem_seg_dicts

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(load_sem_seg_dicts)(names="shapes_sem_seg_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[L(T.RandomFlip)(horizontal=True)],
        image_format="RGB",
    ),
    total_batch_size=4,
    num_workers=1,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(load_sem_seg_dicts)(names="shapes_sem_seg_val"),
    mapper=L(DatasetMapper)(is_train=False, augmentations=[], image_format="RGB"),
    num_workers=1,
)

dataloader.evaluator = L(SemSegEvaluator)(
    dataset_name="${..test.dataset.names}", distributed=True, output_dir=None
)
