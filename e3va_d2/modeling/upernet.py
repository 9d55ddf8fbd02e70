"""UPerNet decode head (Xiao et al., ECCV 2018) for detectron2's ``SemanticSegmentor``.

The Swin and E3VA ADE20K recipes use mmsegmentation's ``UPerHead`` with an auxiliary
``FCNHead`` on stage 3; this is the same design with detectron2 layers, so ``norm="SyncBN"``
follows :func:`e3va_d2.layers.adapt_sync_batchnorm` (BN in one process, NaiveSyncBN across CPU
processes)::

    last level ──► PPM (pool 1,2,3,6 + 1x1 convs, upsampled, concat) ──► 3x3 conv ──┐
    other levels ─► 1x1 lateral convs ◄── top-down: add the upsampled coarser level ◄┘
                    ──► 3x3 fpn convs (the PPM output is used as is)
                    ──► upsample all to the finest level, concat ──► 3x3 conv ──► dropout ──► 1x1
    aux level (p2) ─► 3x3 conv ──► dropout ──► 1x1          (training only, loss x aux_weight)

Shape legend: B batch, C_i channels of level i, H_i/W_i its size, C ``channels``,
K ``num_classes``, H/W the padded input size (= H_0 * common_stride).
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import fvcore.nn.weight_init as weight_init
import torch
import torch.nn.functional as F
from detectron2.config import configurable
from detectron2.layers import Conv2d, ShapeSpec, get_norm
from detectron2.modeling import SEM_SEG_HEADS_REGISTRY
from torch import Tensor, nn

__all__ = ["UPerNetHead", "PyramidPoolingModule"]


def _conv_norm_relu(in_channels: int, out_channels: int, kernel_size: int, norm: str) -> Conv2d:
    """Conv (no bias when normalised) + norm + ReLU, MSRA-initialised as mmcv's ConvModule."""
    conv = Conv2d(
        in_channels,
        out_channels,
        kernel_size,
        padding=kernel_size // 2,
        bias=not norm,
        norm=get_norm(norm, out_channels),
        activation=F.relu,
    )
    weight_init.c2_msra_fill(conv)
    return conv


def _classifier(in_channels: int, num_classes: int) -> nn.Conv2d:
    """1x1 conv to class logits; small normal init as mmseg's ``conv_seg``."""
    conv = nn.Conv2d(in_channels, num_classes, kernel_size=1)
    nn.init.normal_(conv.weight, std=0.01)
    nn.init.zeros_(conv.bias)
    return conv


def _resize(x: Tensor, size: Sequence[int]) -> Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


class PyramidPoolingModule(nn.Module):
    """PSPNet's pyramid pooling: global context at several grid sizes next to the input.

    Note: the 1x1-pooled branch sees one value per image and channel, so with ``norm="BN"``
    training needs at least 2 images per process (as in the official recipes).
    """

    def __init__(self, in_channels: int, channels: int, pool_scales: Sequence[int], norm: str):
        super().__init__()
        self.stages = nn.ModuleList(
            nn.Sequential(
                nn.AdaptiveAvgPool2d(int(s)), _conv_norm_relu(in_channels, channels, 1, norm)
            )
            for s in pool_scales
        )
        self.out_channels = in_channels + len(pool_scales) * channels

    def forward(self, x: Tensor) -> Tensor:
        # x: B, C_in, h, w -> B, C_in + S * C, h, w
        return torch.cat([x] + [_resize(stage(x), x.shape[-2:]) for stage in self.stages], dim=1)


def _check_features(
    input_shape: Dict[str, ShapeSpec], in_features: Sequence[str], aux_in_feature: Optional[str]
) -> None:
    """The levels the head reads exist, are distinct and have channels and strides."""
    if isinstance(in_features, str) or not in_features:
        raise ValueError(f"in_features must be a non-empty list of names, got {in_features!r}")
    if len(set(in_features)) != len(in_features):
        raise ValueError(f"in_features has duplicates: {list(in_features)}")
    wanted = list(in_features) + ([aux_in_feature] if aux_in_feature is not None else [])
    missing = [f for f in wanted if f not in input_shape]
    if missing:
        raise ValueError(
            f"UPerNetHead features {missing} are not among the backbone outputs "
            f"{sorted(input_shape)}."
        )
    for f in wanted:
        spec = input_shape[f]
        if not spec.channels or not spec.stride:
            raise ValueError(f"input_shape[{f!r}] needs channels and stride, got {spec}")
    strides = [input_shape[f].stride for f in in_features]
    if len(set(strides)) != len(strides):
        raise ValueError(
            f"in_features must have distinct strides, got {dict(zip(in_features, strides))}"
        )


@SEM_SEG_HEADS_REGISTRY.register()
class UPerNetHead(nn.Module):
    """UPerNet head with an optional auxiliary FCN head, for ``SemanticSegmentor``.

    ``forward(features, targets)`` returns ``(None, losses)`` in training (``loss_sem_seg``
    and, with the auxiliary head, ``loss_sem_seg_aux``) and ``(logits, {})`` otherwise, logits
    of shape (B, K, H, W) at the padded input resolution (``SemanticSegmentor`` crops and
    resizes them per image). Losses are pixel-wise cross entropy averaged over the labelled
    pixels (detectron2's convention; a crop with no labelled pixel gives 0, not NaN).

    Built with keyword arguments (LazyConfig), or from a yacs cfg by ``build_sem_seg_head``
    (``MODEL.SEM_SEG_HEAD.NAME: UPerNetHead``, keys of ``add_e3va_config``).

    Args:
        input_shape: the backbone's output shapes (channels and strides are used).
        in_features: levels fused by the FPN, any order (sorted by stride here); the
            coarsest one gets the pyramid pooling module.
        num_classes: K.
        channels: width of every conv of the head (512 in the Swin recipes).
        pool_scales: output grid sizes of the pyramid pooling branches.
        norm: detectron2 norm name for all convs ("SyncBN", "BN", "GN", "" for none).
        ignore_value: target label excluded from the losses (and the value targets are padded
            with by ``SemanticSegmentor``).
        loss_weight: weight of the main loss.
        aux_in_feature: level of the auxiliary FCN head (stage 3 = "p2"); None switches it off.
        aux_channels: width of the auxiliary head's conv.
        aux_weight: weight of the auxiliary loss.
        dropout: Dropout2d probability before each classifier.
    """

    @classmethod
    def from_config(cls, cfg, input_shape: Dict[str, ShapeSpec]):
        head, upernet = cfg.MODEL.SEM_SEG_HEAD, cfg.MODEL.UPERNET
        return dict(
            input_shape=input_shape,
            in_features=head.IN_FEATURES,
            num_classes=head.NUM_CLASSES,
            channels=head.CONVS_DIM,
            pool_scales=upernet.POOL_SCALES,
            norm=head.NORM,
            ignore_value=head.IGNORE_VALUE,
            loss_weight=head.LOSS_WEIGHT,
            aux_in_feature=upernet.AUX_IN_FEATURE or None,
            aux_channels=upernet.AUX_CHANNELS,
            aux_weight=upernet.AUX_WEIGHT,
            dropout=upernet.DROPOUT,
        )

    @configurable
    def __init__(
        self,
        *,
        input_shape: Dict[str, ShapeSpec],
        in_features: Sequence[str],
        num_classes: int,
        channels: int = 512,
        pool_scales: Sequence[int] = (1, 2, 3, 6),
        norm: str = "BN",
        ignore_value: int = 255,
        loss_weight: float = 1.0,
        aux_in_feature: Optional[str] = "p2",
        aux_channels: int = 256,
        aux_weight: float = 0.4,
        dropout: float = 0.1,
    ):
        super().__init__()
        _check_features(input_shape, in_features, aux_in_feature)
        if num_classes < 1 or channels < 1 or (aux_in_feature is not None and aux_channels < 1):
            raise ValueError("num_classes, channels and aux_channels must be positive")
        if not pool_scales or any(int(s) < 1 for s in pool_scales):
            raise ValueError(f"pool_scales must be positive grid sizes, got {pool_scales!r}")
        if aux_weight < 0 or not 0 <= dropout < 1:
            raise ValueError(
                f"need aux_weight >= 0 and 0 <= dropout < 1, got {aux_weight}, {dropout}"
            )
        # Finest level first, so that fusion and the output stride do not depend on the order.
        self.in_features: List[str] = sorted(in_features, key=lambda f: input_shape[f].stride)
        in_channels = [input_shape[f].channels for f in self.in_features]
        self.common_stride: int = input_shape[self.in_features[0]].stride
        self.num_classes = num_classes
        self.ignore_value = ignore_value  # read by SemanticSegmentor to pad targets
        self.loss_weight = loss_weight
        self.aux_in_feature = aux_in_feature
        self.aux_weight = aux_weight

        self.ppm = PyramidPoolingModule(in_channels[-1], channels, pool_scales, norm)
        self.ppm_bottleneck = _conv_norm_relu(self.ppm.out_channels, channels, 3, norm)
        self.lateral_convs = nn.ModuleList(
            _conv_norm_relu(c, channels, 1, norm) for c in in_channels[:-1]
        )
        self.fpn_convs = nn.ModuleList(
            _conv_norm_relu(channels, channels, 3, norm) for _ in in_channels[:-1]
        )
        self.fpn_bottleneck = _conv_norm_relu(len(in_channels) * channels, channels, 3, norm)
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = _classifier(channels, num_classes)

        if aux_in_feature is not None:
            aux_in = input_shape[aux_in_feature].channels
            self.aux_conv = _conv_norm_relu(aux_in, aux_channels, 3, norm)
            self.aux_classifier = _classifier(aux_channels, num_classes)

    def layers(self, features: Dict[str, Tensor]) -> Tensor:
        """Fused features before dropout and classifier: B, C, H_0, W_0."""
        x = [features[f] for f in self.in_features]  # B, C_i, H_i, W_i; finest first
        laterals = [conv(xi) for conv, xi in zip(self.lateral_convs, x[:-1])]  # B, C, H_i, W_i
        laterals.append(self.ppm_bottleneck(self.ppm(x[-1])))
        for i in range(len(laterals) - 1, 0, -1):  # top-down
            laterals[i - 1] = laterals[i - 1] + _resize(laterals[i], laterals[i - 1].shape[-2:])
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])] + laterals[-1:]
        size = outs[0].shape[-2:]
        return self.fpn_bottleneck(torch.cat([_resize(o, size) for o in outs], dim=1))

    def forward(
        self, features: Dict[str, Tensor], targets: Optional[Tensor] = None
    ) -> Tuple[Optional[Tensor], Dict[str, Tensor]]:
        """``targets``: B, H, W class ids (``ignore_value`` for unlabelled or padded pixels)."""
        logits = self.classifier(self.dropout(self.layers(features)))  # B, K, H_0, W_0
        if not self.training:
            return _upsample(logits, self.common_stride), {}  # B, K, H, W
        if targets is None:
            raise ValueError("UPerNetHead needs targets in training (dataset dicts with sem_seg)")
        losses = {"loss_sem_seg": self._loss(logits, targets) * self.loss_weight}
        if self.aux_in_feature is not None:
            aux = self.aux_classifier(self.dropout(self.aux_conv(features[self.aux_in_feature])))
            losses["loss_sem_seg_aux"] = self._loss(aux, targets) * self.aux_weight
        return None, losses

    def _loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        logits = _resize(logits, targets.shape[-2:]).float()  # B, K, H, W
        loss = F.cross_entropy(logits, targets, ignore_index=self.ignore_value, reduction="sum")
        return loss / (targets != self.ignore_value).sum().clamp(min=1)


def _upsample(x: Tensor, factor: int) -> Tensor:
    if factor == 1:
        return x
    return F.interpolate(x, scale_factor=factor, mode="bilinear", align_corners=False)
