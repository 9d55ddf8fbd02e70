"""Table 2, ADE20K, PARTIAL-1: only the last Swin-L block trains (28.34M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import PartialTuning

from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning = L(PartialTuning)(last_blocks=1)
train.output_dir = "./output/ade20k/upernet_swin_l_partial1"
