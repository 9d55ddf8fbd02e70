"""Table 1, ADAPTER: Houlsby adapters (width 64) after MSA and MLP in every block (3.11M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import HoulsbyAdapterTuning

from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(HoulsbyAdapterTuning)(width=64)
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_adapter"
