"""Table 2, FIXED: Swin-L frozen (output norms included); only FPN and head train (0M)."""

from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import FixedTuning

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(FixedTuning)()
train.output_dir = "./output/voc/retinanet_swin_l_fixed"
