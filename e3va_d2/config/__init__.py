"""Configs: LazyConfig loading with checked overrides (:mod:`.lazy`) and the yacs keys for
projects that use ``get_cfg()`` (:mod:`.defaults`), the shipped configs by name
(:mod:`.shipped`) and one's own COCO json in one config (:mod:`.own_data`)."""
from ..errors import ConfigError
from .defaults import add_e3va_config
from .lazy import (
    apply_overrides,
    config_keys,
    load_config,
    set_tuning_method,
    tuned_swin_node,
)
from .own_data import coco_json_config, set_num_classes
from .shipped import configs_root, get_config, get_config_file, shipped_configs

__all__ = [
    "ConfigError",
    "add_e3va_config",
    "apply_overrides",
    "coco_json_config",
    "configs_root",
    "config_keys",
    "get_config",
    "get_config_file",
    "load_config",
    "set_num_classes",
    "set_tuning_method",
    "shipped_configs",
    "tuned_swin_node",
]
