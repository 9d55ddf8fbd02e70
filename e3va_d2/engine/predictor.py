"""``Predictor``: detectron2's ``DefaultPredictor`` for a LazyConfig, with E3VA's checkpoints.

One image in (numpy, H x W x 3, BGR as detectron2's or RGB: say which), one output dict out,
with the test mapper's augmentations (resizing) and image format of ``cfg.dataloader.test``.
Weights: ``train.init_checkpoint`` (a model trained here, or its base), then
``train.delta_checkpoint`` if set; arguments override both. A model whose trainable tensors no
file provided is refused, as ``train_net.py --eval-only`` refuses it (its adapters and heads are
random: its predictions would be noise); ``allow_untrained=True`` or ``train.eval_untrained=True``
builds it anyway, and ``untrained`` lists those tensors.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import torch
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T

from ..checkpoint import E3VACheckpointer, load_delta
from ..config.reliability import reliability_settings
from ..errors import ConfigError
from ..utils.safe_load import trust_checkpoint_code
from .trainer import E3VATrainer, test_dataset_names

__all__ = ["Predictor"]

FORMATS = ("BGR", "RGB")


class Predictor:
    def __init__(self, cfg, checkpoint: Optional[str] = None, delta: Optional[str] = None,
                 allow_untrained: Optional[bool] = None):
        self.cfg = cfg
        self.model = E3VATrainer.build_model(cfg).eval()  # device, SyncBN as in training
        checkpoint = cfg.train.get("init_checkpoint", "") if checkpoint is None else checkpoint
        delta = cfg.train.get("delta_checkpoint", "") if delta is None else delta
        settings = reliability_settings(cfg)
        checkpointer = E3VACheckpointer(self.model,
                                        allow_shape_mismatch=settings.allow_shape_mismatch)
        with trust_checkpoint_code(settings.trust_checkpoint_code):
            if checkpoint:
                checkpointer.load(checkpoint)
        if delta:
            load_delta(self.model, delta)
        self.untrained = [] if delta else checkpointer.untrained
        if allow_untrained is None:
            allow_untrained = cfg.train.get("eval_untrained", False)
        if self.untrained and not allow_untrained:
            raise ConfigError(
                f"Predictor: {len(self.untrained)} trainable tensors of the model were never "
                f"trained (e.g. {self.untrained[:3]}): no trained checkpoint was given "
                f"(checkpoint={checkpoint!r}). Pass checkpoint=<a trained model_final.pth> "
                "(default: train.init_checkpoint), or the base it was trained from and "
                "delta=<its model_final_delta.pth>; allow_untrained=True (or "
                "train.eval_untrained=True) predicts with the untrained model anyway.")
        mapper = cfg.dataloader.test.mapper
        self.augmentations = T.AugmentationList(
            [instantiate(a) for a in mapper.get("augmentations", [])])
        self.input_format = mapper.get("image_format", "BGR")
        if self.input_format not in FORMATS:
            raise ValueError(f"the test mapper's image_format={self.input_format!r}; the "
                             f"predictor supports {FORMATS}")
        self.metadata = MetadataCatalog.get(test_dataset_names(cfg)[0])

    @torch.no_grad()
    def __call__(self, image: np.ndarray, image_format: str = "BGR") -> dict:
        """Predictions for one (H, W, 3) uint8 image in ``image_format`` channel order, in the
        image's own resolution (detectron2's output dict: instances / sem_seg)."""
        if image_format not in FORMATS:
            raise ValueError(f"image_format={image_format!r}; expected one of {FORMATS}")
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
        if image_format != self.input_format:
            image = image[:, :, ::-1]
        height, width = image.shape[:2]
        aug = T.AugInput(np.ascontiguousarray(image))
        self.augmentations(aug)
        tensor = torch.as_tensor(aug.image.astype("float32").transpose(2, 0, 1))
        return self.model([{"image": tensor, "height": height, "width": width}])[0]
