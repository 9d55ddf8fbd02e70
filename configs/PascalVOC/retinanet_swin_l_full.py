"""Table 2, FULL: every Swin-L parameter trains (195.00M; the paper reports 198.58M)."""

from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import FullTuning

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(FullTuning)()
train.output_dir = "./output/voc/retinanet_swin_l_full"
