"""ADE20K (SceneParsing, 150 classes) loaders: detectron2's builtin ``ade20k_sem_seg_{train,val}``
under $DETECTRON2_DATASETS/ADEChallengeData2016, with the label maps prepared by detectron2's
datasets/prepare_ade20k_sem_seg.py (annotations_detectron2/: 0 = unlabelled -> 255, classes
shifted to 0..149). ``load_sem_seg_dicts`` checks the folders and that sampled label maps hold
only 0..149 and 255.

Augmentation of the Swin UPerNet recipe (mmseg): short side 512 x [0.5, 2.0] (long side <=
2048), 512x512 crops where no class covers more than 75%, flips; test at short side 512. mmseg's
photometric distortion is not reproduced (detectron2 has no equivalent in both 0.6 and main).
"""
import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import DatasetMapper, build_detection_test_loader
from detectron2.evaluation import SemSegEvaluator
from omegaconf import OmegaConf

from e3va_d2.data import build_resumable_train_loader, load_sem_seg_dicts

dataloader = OmegaConf.create()

dataloader.train = L(build_resumable_train_loader)(
    dataset=L(load_sem_seg_dicts)(names="ade20k_sem_seg_train", max_check_files=32),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            L(T.ResizeShortestEdge)(
                short_edge_length=[int(512 * r / 10) for r in range(5, 21)],  # 256 ... 1024
                max_size=2048,
                sample_style="choice",
            ),
            L(T.RandomCrop_CategoryAreaConstraint)(
                crop_type="absolute",
                crop_size=(512, 512),
                single_category_max_area=0.75,
                ignored_category=255,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="RGB",
    ),
    total_batch_size=16,  # 2 images per GPU on 8 GPUs, as in the paper
    num_workers=4,
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(load_sem_seg_dicts)(names="ade20k_sem_seg_val"),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=512, max_size=2048)],
        image_format="${...train.mapper.image_format}",
    ),
    num_workers=4,
)

# mIoU over the 150 classes (predictions are resized back to the original image size).
dataloader.evaluator = L(SemSegEvaluator)(
    dataset_name="${..test.dataset.names}", distributed=True, output_dir=None
)
