"""Table 2, AdaptFormer: scaled bottlenecks (width 64) parallel to MSA and MLP (4.66M)."""

from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import AdaptFormerTuning

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(AdaptFormerTuning)(width=64)
train.output_dir = "./output/voc/retinanet_swin_l_adaptformer"
