"""Base of every ADE20K row: UPerNet, Swin-L + E3VA, the paper's recipe.

Paper appendix A: AdamW, lr 6e-5, batch 2 per GPU on 8 GPUs, 160k iterations; the rest follows
the Swin UPerNet recipe it builds on: weight decay 0.01 (none on norms, biases and position
bias tables), poly LR decay (power 1) after a 1,500-iteration linear warmup, ImageNet-22K init.
"""
from ..common.data.ade20k import dataloader
from ..common.models.upernet_swin import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import poly_schedule
from ..common.train import train

train.max_iter = 160000
# Relative to training length, so train.max_iter=... scales the warmup too.
lr_multiplier = poly_schedule(power=1.0, warmup_fraction=1500 / train.max_iter)
optimizer.lr = 6e-5
optimizer.weight_decay = 0.01

train.init_checkpoint = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_large_patch4_window7_224_22k.pth"
)
train.checkpointer.period = 16000
train.eval_period = 16000
train.output_dir = "./output/ade20k"
