"""Table 2, ADE20K, FIXED: Swin-L frozen (output norms included); only the UPerNet head
trains (0 trainable backbone parameters)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import FixedTuning

from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning = L(FixedTuning)()
train.output_dir = "./output/ade20k/upernet_swin_l_fixed"
