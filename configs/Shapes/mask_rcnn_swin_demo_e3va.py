"""The demo: E3VA on a small, randomly initialised Swin with Mask R-CNN, trained and evaluated
on the synthetic shapes dataset on CPU in a few minutes.

No checkpoint can be downloaded here, so the frozen trunk is random: the highway adapters, output
norms, FPN and heads learn on top of random (but fixed) Swin features.
"""
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec

from ..common.data.shapes import dataloader
from ..common.models.mask_rcnn_swin import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import step_schedule
from ..common.train import train

model.backbone.bottom_up.trunk.update(
    embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], drop_path_rate=0.0
)
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
lr_multiplier = step_schedule(milestones=[80, 93], total=100, warmup_fraction=0.07)  # in % of training
optimizer.lr = 1e-3
train.checkpointer.period = 200
train.eval_period = 0  # evaluate once, at the end
train.log_period = 20
train.output_dir = "./output/shapes_demo_e3va"
