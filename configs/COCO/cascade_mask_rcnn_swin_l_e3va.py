"""Table 1, last row: E3VA on Swin-L (1.79M trainable backbone parameters), ImageNet-22K init."""
from e3va_d2.modeling import swin_size

from .cascade_mask_rcnn_swin_b_e3va import dataloader, lr_multiplier, model, optimizer, train

model.backbone.bottom_up.trunk.update(swin_size("L"))
train.init_checkpoint = (
    "https://github.com/SwinTransformer/storage/releases/download/v1.0.0/"
    "swin_large_patch4_window7_224_22k.pth"
)
train.output_dir = "./output/coco/cascade_mask_rcnn_swin_l_e3va"
