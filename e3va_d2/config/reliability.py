"""The reliability settings of a config, LazyConfig or yacs, read in one place.

LazyConfig keys (``configs/common/train.py``) and their yacs twins (:func:`add_e3va_config`):

    train.trust_checkpoint_code   MODEL.TRUST_CHECKPOINT_CODE   read files that need unpickling
    train.allow_shape_mismatch    MODEL.ALLOW_SHAPE_MISMATCH    load what fits of a checkpoint
    train.dist_timeout_minutes    DIST_TIMEOUT_MINUTES          wait for other processes so long

A config written before these keys existed gets the defaults (all off, 30 minutes).
"""
from __future__ import annotations

import dataclasses
import math
from datetime import timedelta

__all__ = ["DEFAULT_DIST_TIMEOUT_MINUTES", "ReliabilitySettings", "reliability_settings"]

# detectron2's: the other ranks wait while rank 0 evaluates COCO (in pure Python, minutes).
DEFAULT_DIST_TIMEOUT_MINUTES = 30.0


@dataclasses.dataclass(frozen=True)
class ReliabilitySettings:
    trust_checkpoint_code: bool = False
    allow_shape_mismatch: bool = False
    dist_timeout_minutes: float = DEFAULT_DIST_TIMEOUT_MINUTES
    dist_timeout_key: str = "train.dist_timeout_minutes"

    @property
    def dist_timeout(self) -> timedelta:
        return timedelta(minutes=self.dist_timeout_minutes)


def reliability_settings(cfg) -> ReliabilitySettings:
    """The settings of a LazyConfig (``cfg.train``) or a yacs ``CfgNode`` (``cfg.MODEL``)."""
    from .lazy import ConfigError

    if "train" in cfg:
        train = cfg.train
        values = dict(trust=train.get("trust_checkpoint_code", False),
                      partial=train.get("allow_shape_mismatch", False),
                      minutes=train.get("dist_timeout_minutes", DEFAULT_DIST_TIMEOUT_MINUTES))
        key = "train.dist_timeout_minutes"
    else:
        values = dict(trust=cfg.MODEL.get("TRUST_CHECKPOINT_CODE", False),
                      partial=cfg.MODEL.get("ALLOW_SHAPE_MISMATCH", False),
                      minutes=cfg.get("DIST_TIMEOUT_MINUTES", DEFAULT_DIST_TIMEOUT_MINUTES))
        key = "DIST_TIMEOUT_MINUTES"
    minutes = values["minutes"]
    if isinstance(minutes, bool) or not isinstance(minutes, (int, float)) or not (
            math.isfinite(minutes) and minutes > 0):
        raise ConfigError(f"{key}={minutes!r}: expected a number of minutes > 0")
    return ReliabilitySettings(bool(values["trust"]), bool(values["partial"]), float(minutes),
                               key)
