"""One detectron2 backbone for every tuning method: a Swin trunk plus the method's modules."""
from __future__ import annotations

from typing import Dict, List, Optional, Union

import torch
from detectron2.modeling import Backbone
from torch import Tensor, nn

from .highway import HIGHWAY_PREFIX, Highway
from .pretrained import load_pretrained_swin
from .swin import SwinTransformer
from .tuning import TuningMethod, build_tuning

__all__ = ["TunedSwin", "tuned_swins", "unreachable_trainable_parameters"]


class TunedSwin(Backbone):
    """A Swin trunk tuned by one method (``"e3va"``, ``"full"``, ``"fixed"``, …).

    ``requires_grad`` is decided here, when the model is built, so ``instantiate(cfg.model)``
    already has the final trainable set; trainers only read it. When the method freezes the
    whole trunk, the trunk stays in eval mode even in ``model.train()`` and runs without
    autograd.

    Args:
        trunk: the Swin trunk; its ``out_features`` are this backbone's outputs.
        tuning: a :class:`TuningMethod` or a registered name (see ``TUNING_METHODS``).
        weights: a pre-trained Swin checkpoint (any layout
            :func:`~e3va_d2.modeling.swin_weights.convert_swin_checkpoint` reads, e.g. the
            official ``swin_base_patch4_window7_224_22k.pth``) loaded into the trunk as the
            model is built, as ``E3VACheckpointer`` loads ``train.init_checkpoint``. So the
            model config alone says which trunk it starts from, and tools that load
            ``train.init_checkpoint`` with a plain ``DetectionCheckpointer`` (detectron2's
            ``lazyconfig_train_net.py``, a yacs ``DefaultTrainer``) still start from it.
            Empty: the trunk keeps its random initialisation, unless a later
            ``train.init_checkpoint`` provides it.
        check_gradient_flow: refuse, at build time, trainable parameters that no output
            depends on (they would make DDP need ``find_unused_parameters``).
    """

    def __init__(
        self,
        *,
        trunk: SwinTransformer,
        tuning: Union[str, TuningMethod] = "e3va",
        weights: str = "",
        check_gradient_flow: bool = True,
    ):
        super().__init__()
        self.tuning = build_tuning(tuning)
        self.trunk = trunk
        # E3VA's highway, or None for methods that only edit the trunk.
        self.highway: Optional[Highway] = self.tuning.attach(trunk)
        self.requires_grad_(False)
        trainable = list(self.tuning.trainable_parameters(trunk, self.highway))
        for _, param in trainable:
            param.requires_grad_(True)
        self.trainable_names = [name for name, _ in trainable]

        self._out_features = list(trunk._out_features)
        self._out_feature_channels = dict(trunk._out_feature_channels)
        self._out_feature_strides = dict(trunk._out_feature_strides)
        if check_gradient_flow:
            dead = unreachable_trainable_parameters(self)
            if dead:
                raise ValueError(
                    f"Tuning method {self.tuning.name!r} marks parameters as trainable that no "
                    f"backbone output depends on: {dead[:8]}{' ...' if len(dead) > 8 else ''}. "
                    "Drop them from the method or request the outputs that use them."
                )
        self.weights = weights
        if weights:
            load_pretrained_swin(self, weights)

    @property
    def size_divisibility(self) -> int:
        return self.trunk.size_divisibility

    def train(self, mode: bool = True) -> TunedSwin:
        super().train(mode)
        if self.tuning.trunk_runs_without_grad:
            # A frozen trunk must not change behaviour (drop path) when the model trains.
            self.trunk.eval()
        return self

    def inherited_weights(self) -> Dict[str, str]:
        """Parameter name -> trunk parameter it copies at load time (relative to self)."""
        if self.highway is None:
            return {}
        return self.highway.inherited_weights("trunk.", HIGHWAY_PREFIX)

    def forward(self, images: Tensor) -> Dict[str, Tensor]:
        if self.highway is not None:
            return self.highway(self.trunk, images)
        if self.tuning.trunk_runs_without_grad:
            with torch.no_grad():
                return self.trunk(images)
        return self.trunk(images)


def tuned_swins(model: nn.Module) -> List[TunedSwin]:
    """The :class:`TunedSwin` backbones inside ``model`` (one for every shipped model)."""
    return [m for m in model.modules() if isinstance(m, TunedSwin)]


def unreachable_trainable_parameters(backbone: nn.Module, image_size: int = 64) -> List[str]:
    """Names of trainable parameters that get no gradient from a backward of all outputs.

    Runs one small forward/backward in eval mode (no randomness, no ``.grad`` written).
    """
    named = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
    if not named:
        return []
    was_training = backbone.training
    backbone.eval()
    try:
        device = named[0][1].device
        in_chans = backbone.trunk.patch_embed.proj.in_channels
        images = torch.zeros(1, in_chans, image_size, image_size, device=device)
        with torch.enable_grad():
            outputs = backbone(images)
            total = sum(out.float().sum() for out in outputs.values())
            if not total.requires_grad:
                return [n for n, _ in named]
            grads = torch.autograd.grad(total, [p for _, p in named], allow_unused=True)
    finally:
        backbone.train(was_training)
    return [n for (n, _), g in zip(named, grads) if g is None]
