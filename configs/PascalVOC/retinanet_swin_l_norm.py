"""Table 2, NORM-TUNING: only the backbone's LayerNorms train (0.09M)."""

from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import NormTuning

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(NormTuning)()
train.output_dir = "./output/voc/retinanet_swin_l_norm"
