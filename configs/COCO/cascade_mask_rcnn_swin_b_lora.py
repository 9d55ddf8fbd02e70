"""Table 1, LoRA: rank-64 linear pairs parallel to MSA and MLP in every block (3.08M; the
paper reports 3.03M, see README)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import LoRATuning

from ..common.coco_instance_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(LoRATuning)(rank=64)
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_b_lora"
