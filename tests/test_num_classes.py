"""Classes against the data: a dataset whose number of categories differs from the model's
number of classes is refused when training or evaluation starts, naming both numbers and the
key to set. Four categories and a three-class model used to train with exit 0 (the fourth
class silently background); five failed at iteration 0 with "IndexError: Target 4 is out of
bounds", never naming num_classes."""
import os

import pytest
from detectron2.config import get_cfg, instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from torch import nn

from e3va_d2.config import ConfigError, add_e3va_config, load_config
from e3va_d2.engine import E3VATrainer, YacsTrainer
from e3va_d2.engine import trainer as trainer_module
from e3va_d2.engine.checks import check_num_classes

from .helpers import short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHAPES = os.path.join(ROOT, "configs/Shapes")
MASK_RCNN = os.path.join(SHAPES, "mask_rcnn_swin_demo_e3va.py")


@pytest.fixture
def categories():
    """``categories(n, like)``: a dataset name with the images of ``like`` and ``n`` categories
    in its metadata (``thing_classes`` or ``stuff_classes``, as ``like`` has)."""
    made = []

    def make(count, like="shapes_mini_train"):
        name = f"{like}_{count}_categories"
        meta = MetadataCatalog.get(like)
        field = "stuff_classes" if meta.get("stuff_classes", None) else "thing_classes"
        DatasetCatalog.register(name, lambda: DatasetCatalog.get(like))
        MetadataCatalog.get(name).set(**{field: [f"class {i}" for i in range(count)]},
                                      generated_on_demand=True,
                                      evaluator_type=meta.evaluator_type)
        made.append(name)
        return name

    yield make
    for name in made:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def cascade_roi_heads_model():
    """The paper's Cascade Mask R-CNN heads (80 classes), without the Swin-B under them."""
    model = nn.Module()
    model.roi_heads = instantiate(
        load_config(os.path.join(ROOT, "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py"))
        .model.roi_heads)
    return model


@pytest.mark.parametrize("build, classes, like, key", [
    (lambda: instantiate(load_config(MASK_RCNN).model), 3, "shapes_mini_train",
     "model.roi_heads.num_classes"),
    (cascade_roi_heads_model, 80, "coco_2017_train", "model.roi_heads.num_classes"),
    (lambda: instantiate(load_config(os.path.join(SHAPES, "retinanet_swin_demo_e3va.py")).model),
     3, "shapes_voc_train", "model.num_classes"),
    (lambda: instantiate(load_config(os.path.join(SHAPES, "upernet_swin_demo_e3va.py"),
                                     ["model.backbone.weights="]).model),
     4, "shapes_sem_seg_mini_train", "model.sem_seg_head.num_classes"),
])
def test_every_class_head_is_checked_against_the_data(build, classes, like, key, categories):
    model = build()
    check_num_classes(model, [like])  # the shipped configs fit their data
    other = categories(classes + 1, like)
    with pytest.raises(ConfigError, match=f"'{other}' has {classes + 1} categories .* the model "
                       f"has {classes} classes \\({key}={classes}\\). Set {key}={classes + 1}"):
        check_num_classes(model, [other])


@pytest.mark.parametrize("count", [4, 5])
def test_training_refuses_a_dataset_with_other_categories(count, categories, tmp_path):
    cfg = short_run_config(MASK_RCNN, tmp_path, categories(count), "shapes_mini_val", 1)
    with pytest.raises(ConfigError, match=f"{count} categories .* Set "
                       f"model.roi_heads.num_classes={count}"):
        E3VATrainer(cfg)


class Evaluated(Exception):
    """Inference started: the check did not refuse the dataset."""


def test_evaluation_refuses_a_dataset_with_other_categories(categories, tmp_path, monkeypatch):
    def evaluate(*args, **kwargs):
        raise Evaluated()

    monkeypatch.setattr(trainer_module, "inference_on_dataset", evaluate)
    test_set = categories(4, like="shapes_mini_val")
    cfg = short_run_config(MASK_RCNN, tmp_path, "shapes_mini_train", test_set, 1)
    with pytest.raises(ConfigError, match="Set model.roi_heads.num_classes=4"):
        E3VATrainer.test(cfg, E3VATrainer.build_model(cfg))


def test_yacs_training_refuses_a_dataset_with_other_categories(categories, tmp_path):
    cfg = get_cfg()
    add_e3va_config(cfg)
    cfg.merge_from_file(MASK_RCNN.replace(".py", ".yaml"))
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path), "SOLVER.MAX_ITER",
                         "1", "DATASETS.TRAIN", f"('{categories(4)}',)",
                         "DATALOADER.NUM_WORKERS", "0"])
    with pytest.raises(ConfigError, match="Set MODEL.ROI_HEADS.NUM_CLASSES 4"):
        YacsTrainer(cfg)
