"""Table 2, ADE20K, BITFIT: only the backbone's biases train (0.30M, relative position bias
tables included as the paper counts them)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import BitFitTuning

from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning = L(BitFitTuning)()
train.output_dir = "./output/ade20k/upernet_swin_l_bitfit"
