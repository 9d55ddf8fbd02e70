"""Table 5, "E3VA Standard": 2.35M trainable backbone parameters; standard adapters
(bottleneck width 32) instead of dual low-rank ones on the highway."""

from .retinanet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.update(adapter_kind="standard", hidden_dim=32)
train.output_dir = "./output/voc/retinanet_swin_l_e3va_standard_adapter"
