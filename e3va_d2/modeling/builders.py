"""Registry builders for yacs configs: ``MODEL.BACKBONE.NAME`` values (keys added by
:func:`e3va_d2.config.add_e3va_config`).

- ``build_tuned_swin_backbone``: the tuned Swin alone (``SemanticSegmentor`` + UPerNet).
- ``build_tuned_swin_fpn_backbone``: under detectron2's FPN with a max-pooled P6 (R-CNNs).
- ``build_retinanet_tuned_swin_fpn_backbone``: under FPN with P6/P7 from the trunk's last
  output (RetinaNet).

They build the same modules, with the same names, as the LazyConfig files do; channel counts
come from the trunk.
"""
from __future__ import annotations

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone import FPN
from detectron2.modeling.backbone.fpn import LastLevelMaxPool, LastLevelP6P7

from ..errors import ConfigError
from .backbone import TunedSwin
from .swin import SwinTransformer
from .tuning import TUNING_METHODS, OptionError, TuningMethod, build_tuning

__all__ = [
    "build_retinanet_tuned_swin_fpn_backbone",
    "build_tuned_swin_backbone",
    "build_tuned_swin_fpn_backbone",
    "tuning_from_cfg",
]


def tuning_from_cfg(cfg) -> TuningMethod:
    """``MODEL.TUNING``: the method's name and the options set (not None) for it, passed to
    the method as they are; its error names the yacs key."""
    method = cfg.MODEL.TUNING.METHOD
    if method not in TUNING_METHODS:
        raise ConfigError(f"MODEL.TUNING.METHOD={method!r}; registered methods: "
                          f"{sorted(TUNING_METHODS)}")
    given = {k.lower(): v for k, v in cfg.MODEL.TUNING.items() if k != "METHOD" and v is not None}
    try:
        return build_tuning(method, **{k: tuple(v) if isinstance(v, list) else v
                                       for k, v in given.items()})
    except OptionError as e:
        hint = "; leave it unset (None)" if " is not an option of " in e.problem else ""
        raise ConfigError(e.named(f"MODEL.TUNING.{e.option.upper()}") + hint) from e


def _tuned_swin(cfg, input_shape: ShapeSpec) -> TunedSwin:
    swin = cfg.MODEL.SWIN
    trunk = SwinTransformer(
        embed_dim=swin.EMBED_DIM,
        depths=tuple(swin.DEPTHS),
        num_heads=tuple(swin.NUM_HEADS),
        window_size=swin.WINDOW_SIZE,
        mlp_ratio=swin.MLP_RATIO,
        qkv_bias=swin.QKV_BIAS,
        drop_path_rate=swin.DROP_PATH_RATE,
        patch_size=swin.PATCH_SIZE,
        in_chans=input_shape.channels,
        out_features=tuple(swin.OUT_FEATURES),
    )
    return TunedSwin(trunk=trunk, tuning=tuning_from_cfg(cfg), weights=swin.WEIGHTS)


@BACKBONE_REGISTRY.register()
def build_tuned_swin_backbone(cfg, input_shape: ShapeSpec) -> TunedSwin:
    return _tuned_swin(cfg, input_shape)


def _fpn(cfg, bottom_up: TunedSwin, top_block) -> FPN:
    return FPN(
        bottom_up=bottom_up,
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=top_block,
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )


@BACKBONE_REGISTRY.register()
def build_tuned_swin_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    return _fpn(cfg, _tuned_swin(cfg, input_shape), LastLevelMaxPool())


@BACKBONE_REGISTRY.register()
def build_retinanet_tuned_swin_fpn_backbone(cfg, input_shape: ShapeSpec) -> FPN:
    bottom_up = _tuned_swin(cfg, input_shape)
    last = cfg.MODEL.FPN.IN_FEATURES[-1]  # C5: P6/P7 come from the trunk, as in RetinaNet
    top = LastLevelP6P7(bottom_up.output_shape()[last].channels, cfg.MODEL.FPN.OUT_CHANNELS,
                        in_feature=last)
    return _fpn(cfg, bottom_up, top)
