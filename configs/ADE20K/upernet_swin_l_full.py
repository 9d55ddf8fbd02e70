"""Table 2, ADE20K, FULL: every Swin-L parameter trains (195.00M; the paper reports 198.58M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import FullTuning

from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning = L(FullTuning)()
train.output_dir = "./output/ade20k/upernet_swin_l_full"
