"""Table 2, LoRA: rank-64 linear pairs parallel to MSA and MLP in every block (4.63M; the
paper reports 4.57M, see README)."""

from detectron2.config import LazyCall as L

from e3va_d2.modeling.tuning import LoRATuning

from ..common.voc_detection import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning = L(LoRATuning)(rank=64)
train.output_dir = "./output/voc/retinanet_swin_l_lora"
