"""Base of every Pascal VOC row: RetinaNet, Swin-L + E3VA, the paper's recipe.

Paper appendix A: AdamW, lr 1e-4, batch 2 per GPU on 8 GPUs, 12 epochs, LR x0.1 at epochs 8 and
11; backbone initialised from ImageNet-22K. One epoch of VOC07+12 trainval (16,551 images) at
batch 16 is 1,035 iterations, so 12 epochs = 12,420 iterations. Reported metric ("AP_box" in
Tables 2, 5-7): VOC2007 11-point AP50 on voc_2007_test.
"""

from ..common.data.voc import dataloader
from ..common.models.retinanet_swin import model
from ..common.optim import AdamW as optimizer
from ..common.schedule import iterations_per_epoch, step_schedule
from ..common.train import train

EPOCH = iterations_per_epoch(16551, dataloader.train.total_batch_size)
train.max_iter = 12 * EPOCH
# In epochs; 500 warmup iterations as in the Swin detectors.
lr_multiplier = step_schedule(milestones=[8, 11], total=12, warmup_fraction=500 / train.max_iter)
optimizer.lr = 1e-4

train.init_checkpoint = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_large_patch4_window7_224_22k.pth"
)
train.checkpointer.period = EPOCH
train.eval_period = 4 * EPOCH
train.output_dir = "./output/voc"
