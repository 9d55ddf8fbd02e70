"""Configs: LazyConfig loading with checked overrides (:mod:`.lazy`) and the yacs keys for
projects that use ``get_cfg()`` (:mod:`.defaults`)."""
from ..errors import ConfigError
from .defaults import add_e3va_config
from .lazy import (
    apply_overrides,
    config_keys,
    load_config,
    set_tuning_method,
    tuned_swin_node,
)

__all__ = [
    "ConfigError",
    "add_e3va_config",
    "apply_overrides",
    "config_keys",
    "load_config",
    "set_tuning_method",
    "tuned_swin_node",
]
