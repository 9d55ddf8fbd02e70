"""Table 2, ADE20K, NORM-TUNING: only the backbone's LayerNorms train (0.09M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import NormTuning

from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning = L(NormTuning)()
train.output_dir = "./output/ade20k/upernet_swin_l_norm"
