"""yacs configs: ``add_e3va_config(cfg)`` adds the keys of the tuned Swin and UPerNet, as
detectron2's yacs projects (PointRend's ``add_pointrend_config``) do::

    cfg = get_cfg()
    add_e3va_config(cfg)
    cfg.merge_from_file("configs/Shapes/mask_rcnn_swin_demo_e3va.yaml")

``MODEL.BACKBONE.NAME`` then picks one of the builders of :mod:`e3va_d2.modeling.builders`.
``MODEL.TUNING`` holds the method's name and one key per option of any registered method
(``RANK``, ``ZERO_INIT``, ``WIDTH``...); ``None`` keeps the method's default, and an option the
chosen method does not have is an error when the model is built.
"""
from __future__ import annotations

from detectron2.config import CfgNode as CN

from ..modeling.swin import swin_size
from ..modeling.tuning import TUNING_METHODS
from ..modeling.tuning.base import option_names

__all__ = ["add_e3va_config", "tuning_option_keys"]


def tuning_option_keys():
    """Every option of every registered tuning method, as yacs keys (``zero_init`` ->
    ``ZERO_INIT``), sorted."""
    fields = {name for make in TUNING_METHODS.values() for name in option_names(type(make()))}
    return sorted(name.upper() for name in fields)


def add_e3va_config(cfg: CN) -> CN:
    """Add (in place, and return) the e3va-d2 keys with the defaults of the LazyConfig files:
    Swin-B, window 7, E3VA rank 8; UPerNet as in the Swin segmentation recipe."""
    base = swin_size("B")
    cfg.MODEL.SWIN = CN()
    cfg.MODEL.SWIN.EMBED_DIM = base["embed_dim"]
    cfg.MODEL.SWIN.DEPTHS = list(base["depths"])
    cfg.MODEL.SWIN.NUM_HEADS = list(base["num_heads"])
    cfg.MODEL.SWIN.WINDOW_SIZE = 7
    cfg.MODEL.SWIN.MLP_RATIO = 4.0
    cfg.MODEL.SWIN.QKV_BIAS = True
    cfg.MODEL.SWIN.DROP_PATH_RATE = 0.3
    cfg.MODEL.SWIN.PATCH_SIZE = 4
    cfg.MODEL.SWIN.OUT_FEATURES = ["p0", "p1", "p2", "p3"]
    # A pre-trained Swin loaded into the trunk as the model is built (TunedSwin's ``weights``),
    # so detectron2's plain DetectionCheckpointer (MODEL.WEIGHTS) never has to read Swin layouts.
    cfg.MODEL.SWIN.WEIGHTS = ""
    # Reliability keys of the LazyConfig's train.* (see configs/common/train.py): read files
    # that need full unpickling (can run code: trusted files only); load checkpoints whose
    # trainable tensors do not all fit; how long a process waits for the others.
    cfg.MODEL.TRUST_CHECKPOINT_CODE = False
    cfg.MODEL.ALLOW_SHAPE_MISMATCH = False
    cfg.DIST_TIMEOUT_MINUTES = 30.0  # a float: yacs refuses 0.5 for an int key

    cfg.MODEL.TUNING = CN()
    cfg.MODEL.TUNING.METHOD = "e3va"
    for key in tuning_option_keys():
        cfg.MODEL.TUNING[key] = None  # None: the method's default

    # UPerNet (MODEL.SEM_SEG_HEAD.NAME: "UPerNetHead"); the head's width, norm, classes,
    # ignore value and loss weight are detectron2's MODEL.SEM_SEG_HEAD keys.
    cfg.MODEL.UPERNET = CN()
    cfg.MODEL.UPERNET.POOL_SCALES = [1, 2, 3, 6]
    cfg.MODEL.UPERNET.AUX_IN_FEATURE = "p2"  # "" switches the auxiliary FCN head off
    cfg.MODEL.UPERNET.AUX_CHANNELS = 256
    cfg.MODEL.UPERNET.AUX_WEIGHT = 0.4
    cfg.MODEL.UPERNET.DROPOUT = 0.1
    return cfg
