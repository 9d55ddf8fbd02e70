"""RetinaNet with a tuned Swin-L + FPN (P3-P7), detectron2's model-zoo RetinaNet otherwise.

detectron2's RetinaNet builds its FPN over res3-res5 (strides 8-32) and P6/P7 from C5; mapped
onto Swin that is p1-p3. The trunk must only *output* p1-p3: an output norm for p0 that no FPN
level reads would be a trainable parameter without gradient, which TunedSwin refuses.
"""

from detectron2 import model_zoo
from detectron2.config import LazyCall as L
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelP6P7

from e3va_d2.modeling import E3VATuning, SwinTransformer, TunedSwin, swin_size, swin_stage_channels

from .swin_fpn import pixel_normalization

model = model_zoo.get_config("common/models/retinanet.py").model
model.backbone = L(FPN)(
    bottom_up=L(TunedSwin)(
        trunk=L(SwinTransformer)(
            **swin_size("L"), window_size=7, drop_path_rate=0.3, out_features=["p1", "p2", "p3"]
        ),
        tuning=L(E3VATuning)(rank=8),
    ),
    in_features=["p1", "p2", "p3"],
    out_channels=256,
    # FPN names its outputs by stride (p3-p5 here, then p6, p7), but looks top_block's
    # in_feature up among the *bottom-up* features first: "p3" is the trunk's stride-32 output
    # (C5), not FPN's stride-8 P3, so P6/P7 come from C5 as in detectron2's RetinaNet.
    top_block=L(LastLevelP6P7)(
        in_channels=L(swin_stage_channels)(embed_dim="${...bottom_up.trunk.embed_dim}", stage=3),
        out_channels="${..out_channels}",
        in_feature="p3",
    ),
)
model.num_classes = 20
model.head_in_features = ["p3", "p4", "p5", "p6", "p7"]
model.update(pixel_normalization)
