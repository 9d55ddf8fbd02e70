"""Table 6, "E3VA-Stacked": 1.79M trainable backbone parameters; the MLP adapter reads the
attention adapter's adaptation instead of running parallel to it."""

from .retinanet_swin_l_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.tuning.structure = "stacked"
train.output_dir = "./output/voc/retinanet_swin_l_e3va_stacked"
