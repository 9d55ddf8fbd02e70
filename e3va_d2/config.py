"""Loading LazyConfig files with command-line overrides that cannot silently miss.

detectron2's ``LazyConfig.apply_overrides`` creates a key that does not exist, so a typo such as
``train.max_itr=10`` is accepted and ignored. Here an override must name an existing key,
unless it is written ``+key=value`` (Hydra's syntax for adding one).
"""
from __future__ import annotations

import difflib
import os
from typing import Iterable, List, Sequence

from detectron2.config import LazyConfig
from omegaconf import DictConfig, OmegaConf

__all__ = ["ConfigError", "load_config", "apply_overrides", "config_keys"]

_ABSENT = object()


class ConfigError(ValueError):
    """A config file or override that cannot be used; the message says how to fix it."""


def config_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """Every dotted key of ``cfg`` (for suggestions)."""
    keys = []
    for key, value in cfg.items_ex(resolve=False):
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys.extend(config_keys(value, full + "."))
    return keys


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply ``key=value`` overrides in place (Hydra grammar); unknown keys are errors."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"Cannot parse the overrides {list(overrides)}: {e}. "
                          "Write them as key=value, e.g. train.max_iter=100.") from e
    plain: List[str] = []
    for override in parsed:
        key = override.key_or_group
        if override.is_delete():
            raise ConfigError(f"Deleting keys ({override.input_line}) is not supported")
        if not override.is_add() and OmegaConf.select(cfg, key, default=_ABSENT) is _ABSENT:
            close = difflib.get_close_matches(key, config_keys(cfg), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"Override {override.input_line!r} names no existing config key.{hint} "
                f"To add a new key on purpose, write +{override.input_line}."
            )
        plain.append(override.input_line.lstrip("+"))
    return LazyConfig.apply_overrides(cfg, plain)


def load_config(path: str, overrides: Iterable[str] = ()) -> DictConfig:
    """``LazyConfig.load`` with a clear error for a missing file, then strict overrides."""
    if not os.path.isfile(path):
        raise ConfigError(
            f"Config file {path!r} does not exist (working directory: {os.getcwd()}). "
            "Configs live under configs/, e.g. configs/COCO/cascade_mask_rcnn_swin_b_e3va.py."
        )
    if not path.endswith(".py"):
        raise ConfigError(f"{path!r} is not a LazyConfig .py file; e3va-d2 configs are Python.")
    cfg = LazyConfig.load(path)
    return apply_overrides(cfg, list(overrides))
