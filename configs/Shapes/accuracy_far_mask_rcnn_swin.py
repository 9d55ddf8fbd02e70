"""The accuracy study's "far" regime (``projects/transfer/study.py``, docs/ACCURACY.md): the
Mask R-CNN demo on 8,192 training images whose objects are set apart only by fine stripes or
checks (texture the pre-text never taught), 512 held out; one recipe for every tuning method,
from the scenes trunk (``e3va_d2.model_zoo.SCENES_SWIN``, pre-trained to its plateau).

The schedule is long enough for full fine-tuning's held-out AP to plateau (its curve, evaluated
every ``train.eval_period`` iterations, is in docs/ACCURACY.md); checkpoints every 500
iterations let a stopped run resume exactly.
"""
from e3va_d2.model_zoo import SCENES_SWIN

from .transfer_mask_rcnn_swin_e3va import dataloader, lr_multiplier, model, optimizer, train  # noqa

model.backbone.bottom_up.trunk.update(**SCENES_SWIN.trunk_kwargs())
model.backbone.bottom_up.weights = SCENES_SWIN.url

dataloader.train.dataset.names = "shapes_far_train"
dataloader.test.dataset.names = "shapes_far_val"
train.max_iter = 4000
train.eval_period = 500
train.checkpointer.period = 500
train.checkpointer.max_to_keep = 1
train.output_dir = "./output/accuracy/far"
