"""Table 2, BITFIT: only the backbone's biases train (0.30M, relative position bias tables
included as the paper counts them)."""

from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import BitFitTuning

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(BitFitTuning)()
train.output_dir = "./output/voc/retinanet_swin_l_bitfit"
