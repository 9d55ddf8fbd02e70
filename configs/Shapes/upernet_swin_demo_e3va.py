"""The semantic segmentation demo: E3VA on a small pre-trained Swin with UPerNet,
trained and evaluated (mIoU) on the synthetic shapes on CPU in a few minutes.

The frozen trunk is the small Swin shipped with the project, pre-trained on the scenes
pre-text task (e3va_d2.model_zoo), loaded as a user's ImageNet checkpoint would be.
"""
from e3va_d2.model_zoo import SCENES_SWIN

from ..common.data.shapes_sem_seg import dataloader
from ..common.models.upernet_swin import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import poly_schedule
from ..common.train import train

model.backbone.trunk.update(**SCENES_SWIN.trunk_kwargs(), drop_path_rate=0.0)
# The shipped pre-trained trunk, loaded as the model is built (so detectron2's stock tools
# start from it too); model.backbone.weights="" trains on a random one instead.
model.backbone.weights = SCENES_SWIN.url
model.sem_seg_head.update(num_classes=4, channels=64, aux_channels=32)

train.max_iter = 800
lr_multiplier = poly_schedule(power=1.0, warmup_fraction=0.05)
optimizer.lr = 2e-3
optimizer.weight_decay = 0.01
train.checkpointer.period = 200
train.eval_period = 0  # evaluate once, at the end
train.log_period = 20
train.seed = 0  # make demo reproduces the README's numbers; train.seed=-1 draws a new seed
train.output_dir = "./output/shapes_upernet_demo_e3va"
