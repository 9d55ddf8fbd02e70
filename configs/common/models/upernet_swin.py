"""UPerNet on a tuned Swin (no FPN: the head fuses p0-p3 itself), as in the Swin and E3VA
semantic segmentation recipes: Swin-L, E3VA rank 8, 512-channel head with SyncBN, auxiliary FCN
head on stage 3 (loss x0.4), 150 ADE20K classes. Row configs change the tuning method.
"""
from detectron2.config import LazyCall as L
from detectron2.modeling import SemanticSegmentor

from e3va_d2.modeling import (
    E3VATuning,
    SwinTransformer,
    TunedSwin,
    UPerNetHead,
    swin_output_shapes,
    swin_size,
)

from .swin_fpn import pixel_normalization

model = L(SemanticSegmentor)(
    backbone=L(TunedSwin)(
        trunk=L(SwinTransformer)(**swin_size("L"), window_size=7, drop_path_rate=0.3),
        tuning=L(E3VATuning)(rank=8),
    ),
    sem_seg_head=L(UPerNetHead)(
        # Derived from the trunk: a config that changes the trunk changes nothing here.
        input_shape=L(swin_output_shapes)(embed_dim="${...backbone.trunk.embed_dim}"),
        in_features=["p0", "p1", "p2", "p3"],
        num_classes=150,
        channels=512,
        pool_scales=[1, 2, 3, 6],
        norm="SyncBN",  # BN in one process, see e3va_d2.layers.adapt_sync_batchnorm
        ignore_value=255,
        loss_weight=1.0,
        aux_in_feature="p2",
        aux_channels=256,
        aux_weight=0.4,
        dropout=0.1,
    ),
    # SemanticSegmentor has no input_format: the mappers' image_format="RGB" sets the order.
    pixel_mean=pixel_normalization["pixel_mean"],
    pixel_std=pixel_normalization["pixel_std"],
)
