"""The semantic segmentation demo: E3VA on a small, randomly initialised Swin with UPerNet,
trained and evaluated (mIoU) on the synthetic shapes on CPU in a few minutes.

No checkpoint can be downloaded here, so the frozen trunk is random: the highway adapters, output
norms and the head learn on top of random (but fixed) Swin features.
"""
from ..common.data.shapes_sem_seg import dataloader
from ..common.models.upernet_swin import model, swin_feature_shapes
from ..common.optim import AdamW as optimizer
from ..common.schedule import poly_schedule
from ..common.train import train

model.backbone.trunk.update(
    embed_dim=32, depths=[2, 2, 2, 2], num_heads=[1, 2, 4, 8], drop_path_rate=0.0
)
model.sem_seg_head.update(
    input_shape=swin_feature_shapes(32), num_classes=4, channels=64, aux_channels=32
)

train.max_iter = 800
lr_multiplier = poly_schedule(power=1.0, warmup_fraction=0.05)
optimizer.lr = 2e-3
optimizer.weight_decay = 0.01
train.checkpointer.period = 200
train.eval_period = 0  # evaluate once, at the end
train.log_period = 20
train.output_dir = "./output/shapes_upernet_demo_e3va"
