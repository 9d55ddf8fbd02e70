"""Table 2, PARTIAL-1: only the last Swin-L block trains (28.34M)."""

from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import PartialTuning

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(PartialTuning)(last_blocks=1)
train.output_dir = "./output/voc/retinanet_swin_l_partial1"
