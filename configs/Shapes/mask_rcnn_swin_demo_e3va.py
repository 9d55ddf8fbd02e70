"""The demo: E3VA on a small pre-trained Swin with Mask R-CNN, trained and evaluated
on the synthetic shapes dataset on CPU in a few minutes.

The frozen trunk is the small Swin shipped with the project, pre-trained on the scenes
pre-text task (e3va_d2.model_zoo), loaded as a user's ImageNet checkpoint would be.
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from e3va_d2.model_zoo import SCENES_SWIN

from ..common.data.shapes import dataloader
from ..common.models.mask_rcnn_swin import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import step_schedule
from ..common.train import train

model.backbone.bottom_up.trunk.update(**SCENES_SWIN.trunk_kwargs(), drop_path_rate=0.0)
# The shipped pre-trained trunk, loaded as the model is built (so detectron2's stock tools
# start from it too); model.backbone.bottom_up.weights="" trains on a random one instead.
model.backbone.bottom_up.weights = SCENES_SWIN.url
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.proposal_generator.anchor_generator.sizes = [[16], [32], [64], [128], [256]]
model.proposal_generator.update(pre_nms_topk=(1000, 500), post_nms_topk=(300, 100))
model.roi_heads.update(num_classes=3, batch_size_per_image=128)
model.roi_heads.box_head.update(input_shape=ShapeSpec(channels=64, height=7, width=7),
                                fc_dims=[256, 256])
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.mask_head.update(input_shape=ShapeSpec(channels=64, width=14, height=14),
                                 conv_dims=[64, 64, 64])

train.max_iter = 600
# Milestones in % of training.
lr_multiplier = step_schedule(milestones=[80, 93], total=100, warmup_fraction=0.07)
optimizer.lr = 1e-3
train.checkpointer.period = 200
train.eval_period = 0  # evaluate once, at the end
train.log_period = 20
train.seed = 0  # make demo reproduces the README's numbers; train.seed=-1 draws a new seed
train.output_dir = "./output/shapes_demo_e3va"
