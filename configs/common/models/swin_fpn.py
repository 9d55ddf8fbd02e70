"""A Swin trunk tuned by one method, under detectron2's FPN (outputs p2-p6, 256 channels).

The trunk defaults to Swin-B; the tuning method to E3VA (rank 8). Row configs change both.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool

from e3va_d2.modeling import E3VATuning, SwinTransformer, TunedSwin, swin_size

backbone = L(FPN)(
    bottom_up=L(TunedSwin)(
        trunk=L(SwinTransformer)(**swin_size("B"), window_size=7, drop_path_rate=0.3),
        tuning=L(E3VATuning)(rank=8),
    ),
    in_features=["p0", "p1", "p2", "p3"],
    out_channels=256,
    top_block=L(LastLevelMaxPool)(),
)

# Swin checkpoints are trained on RGB images normalised with the ImageNet statistics.
pixel_normalization = dict(
    pixel_mean=[123.675, 116.28, 103.53],
    pixel_std=[58.395, 57.12, 57.375],
    input_format="RGB",
)
