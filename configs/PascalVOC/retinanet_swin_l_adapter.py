"""Table 2, ADAPTER: Houlsby adapters (width 64) after MSA and MLP in every block (4.66M)."""

from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import HoulsbyAdapterTuning

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(HoulsbyAdapterTuning)(width=64)
train.output_dir = "./output/voc/retinanet_swin_l_adapter"
