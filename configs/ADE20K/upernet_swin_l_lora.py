"""Table 2, ADE20K, LoRA: rank-64 linear pairs parallel to MSA and MLP in every block (4.63M;
the paper reports 4.57M)."""
from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import LoRATuning

from ..common.ade20k_semantic_segmentation import dataloader, lr_multiplier, model, optimizer, train

model.backbone.tuning = L(LoRATuning)(rank=64)
train.output_dir = "./output/ade20k/upernet_swin_l_lora"
