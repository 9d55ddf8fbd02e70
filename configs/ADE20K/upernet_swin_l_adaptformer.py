"""Table 2, ADE20K, AdaptFormer: scaled bottlenecks (width 64) parallel to MSA and MLP
(4.67M; the paper reports 4.66M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import AdaptFormerTuning

from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning = L(AdaptFormerTuning)(width=64)
train.output_dir = "./output/ade20k/upernet_swin_l_adaptformer"
