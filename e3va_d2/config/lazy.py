"""Loading LazyConfig files with command-line overrides that cannot silently miss.

detectron2's ``LazyConfig.apply_overrides`` creates a key that does not exist, so a typo such as
``train.max_itr=10`` is accepted and ignored. Here an override must name an existing key,
unless it is written ``+key=value`` (Hydra's syntax for adding one).

Values are checked where they are declared: an override of a LazyCall whose target is a
dataclass (a tuning method) is checked by building that dataclass, which reports the error;
other numbers and flags must keep their type (``train.max_iter=abc`` fails at load time).
"""
from __future__ import annotations

import dataclasses
import difflib
import inspect
import os
from typing import Dict, Iterable, List, Sequence

from detectron2.config import LazyCall, LazyConfig, instantiate
from detectron2.utils.registry import locate
from omegaconf import DictConfig, OmegaConf

from ..errors import ConfigError
from ..modeling.backbone import TunedSwin
from ..modeling.tuning import OptionError

__all__ = [
    "ConfigError",
    "load_config",
    "apply_overrides",
    "config_keys",
    "tuned_swin_node",
    "set_tuning_method",
]

_ABSENT = object()


def config_keys(cfg: DictConfig, prefix: str = "") -> List[str]:
    """Every dotted key of ``cfg``, and every argument of its LazyCall targets (those the file
    leaves at their default included), for suggestions."""
    keys = []
    for key, value in cfg.items_ex(resolve=False):
        full = f"{prefix}{key}"
        keys.append(full)
        if isinstance(value, DictConfig):
            keys.extend(config_keys(value, full + "."))
    target = _target(cfg)
    if target is not None:
        keys.extend(f"{prefix}{name}" for name in _parameters(target) or ()
                    if f"{prefix}{name}" not in keys)
    return keys


def _target(node) -> object:
    """The callable a LazyCall node builds, or None (not a LazyCall, or not importable)."""
    if not isinstance(node, DictConfig) or "_target_" not in node:
        return None
    target = node._target_
    try:
        return locate(target) if isinstance(target, str) else target
    except ImportError:
        return None


def _parameters(target):
    try:
        return inspect.signature(target).parameters
    except (TypeError, ValueError):
        return None


def _parent(cfg: DictConfig, key: str):
    parent_key, _, name = key.rpartition(".")
    parent = OmegaConf.select(cfg, parent_key, default=None) if parent_key else cfg
    return parent_key, name, parent


def _target_parameters(cfg: DictConfig, key: str):
    """(argument name, signature parameters of the LazyCall target holding ``key``), or
    (name, None) when ``key``'s parent is no LazyCall or its target cannot be inspected."""
    _, name, parent = _parent(cfg, key)
    target = _target(parent)
    return name, None if target is None else _parameters(target)


def _dataclass_node(cfg: DictConfig, key: str):
    """(key of the LazyCall holding ``key``, that node) when its target is a dataclass, which
    checks its own fields; else (None, None)."""
    parent_key, _, parent = _parent(cfg, key)
    target = _target(parent)
    if isinstance(target, type) and dataclasses.is_dataclass(target):
        return parent_key, parent
    return None, None


def _is_known_key(cfg: DictConfig, key: str) -> bool:
    """A key present in the config, or an argument of the LazyCall target that holds it
    (``model.backbone.bottom_up.tuning.zero_init`` is valid although the file omits it)."""
    if OmegaConf.select(cfg, key, default=_ABSENT) is not _ABSENT:
        return True
    name, params = _target_parameters(cfg, key)
    if params is None:
        return False
    return name in params or any(p.kind is p.VAR_KEYWORD for p in params.values())


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply ``key=value`` overrides in place (Hydra grammar); unknown keys are errors,
    except arguments of a LazyCall target that the file leaves at their default."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    try:
        parsed = OverridesParser.create().parse_overrides(list(overrides))
    except HydraException as e:
        raise ConfigError(f"Cannot parse the overrides {list(overrides)}: {e}. "
                          "Write them as key=value, e.g. train.max_iter=100."
                          f"{_quoting_hint(list(overrides))}") from e
    plain: List[str] = []
    # LazyCalls of dataclasses whose fields are overridden -> those overrides
    dataclass_nodes: Dict[str, List[str]] = {}
    for override in parsed:
        key = override.key_or_group
        if override.is_delete():
            raise ConfigError(f"Deleting keys ({override.input_line}) is not supported")
        if not override.is_add() and not _is_known_key(cfg, key):
            close = difflib.get_close_matches(key, config_keys(cfg), n=3)
            hint = f" Did you mean {', '.join(close)}?" if close else ""
            raise ConfigError(
                f"Override {override.input_line!r} names no existing config key.{hint} "
                f"To add a new key on purpose, write +{override.input_line}."
            )
        node_key, _ = _dataclass_node(cfg, key)
        if node_key is not None:
            dataclass_nodes.setdefault(node_key, []).append(override.input_line)
        elif not override.is_add():
            _check_type(override.input_line, key, _current_value(cfg, key), override.value())
        plain.append(override.input_line.lstrip("+"))
    cfg = LazyConfig.apply_overrides(cfg, plain)
    for node_key, lines in dataclass_nodes.items():
        _check_dataclass(node_key, OmegaConf.select(cfg, node_key) if node_key else cfg, lines)
    return cfg


def _quoting_hint(overrides: List[str]) -> str:
    """A word without ``=`` after an override is most often the rest of a value with spaces
    the shell split (``train.output_dir=my runs/a``): say how to quote it."""
    for i, word in enumerate(overrides):
        if "=" not in word and i and "=" in overrides[i - 1]:
            joined = f"{overrides[i - 1]} {word}"
            return (f" {word!r} looks like the rest of {overrides[i - 1]!r}, split at a space "
                    f"by the shell: quote an override that holds spaces, '{joined}' (or "
                    "write it without them).")
    return ""


def _check_dataclass(node_key: str, node: DictConfig, lines: List[str]) -> None:
    """Build the dataclass a LazyCall describes (cheap: options only), so that its own checks
    run at load time; report their error with the config key."""
    where = "Override " + ", ".join(repr(line) for line in lines)
    try:
        instantiate(node)
    except OptionError as e:
        key = f"{node_key}.{e.option}" if node_key else e.option
        raise ConfigError(f"{where}: {e.named(key)}") from e
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}: {e}") from e


def _current_value(cfg: DictConfig, key: str):
    """The config's value at ``key``, else the default of the LazyCall target's argument."""
    value = OmegaConf.select(cfg, key, default=_ABSENT)
    if value is not _ABSENT:
        return value
    name, params = _target_parameters(cfg, key)
    if params is None or name not in params or params[name].default is inspect.Parameter.empty:
        return _ABSENT
    return params[name].default


def _check_type(line: str, key: str, old, new) -> None:
    """A number or flag stays one: ``train.max_iter=abc`` fails here, naming the key, not in
    the LR scheduler after the model and data are built. Ints are accepted for floats."""
    if old is _ABSENT or old is None or new is None:
        return
    if isinstance(old, bool):
        ok = isinstance(new, bool)
    elif isinstance(old, int):
        ok = isinstance(new, int) and not isinstance(new, bool)
    elif isinstance(old, float):
        ok = isinstance(new, (int, float)) and not isinstance(new, bool)
    else:
        return
    if not ok:
        raise ConfigError(
            f"Override {line!r}: {key} is {'an' if type(old) is int else 'a'} "
            f"{type(old).__name__} (the config has {old!r}), but {new!r} is not.")


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


def tuned_swin_node(node):
    """The LazyCall of a model config's ``TunedSwin`` (under an FPN for detectors, the backbone
    itself for semantic segmentation), or None."""
    if isinstance(node, DictConfig):
        target = node.get("_target_")
        if target is TunedSwin or target == f"{TunedSwin.__module__}.{TunedSwin.__qualname__}":
            return node
        for key in node:
            found = tuned_swin_node(node[key])
            if found is not None:
                return found
    return None


def set_tuning_method(model_cfg: DictConfig, tuning) -> None:
    """Replace the tuning method of ``model_cfg``'s TunedSwin by ``tuning`` (a TuningMethod
    instance, e.g. ``build_tuning("lora")``), as a LazyCall with all its options spelled out."""
    node = tuned_swin_node(model_cfg)
    if node is None:
        raise ConfigError(f"{model_cfg.get('_target_')} has no TunedSwin backbone")
    node.tuning = LazyCall(type(tuning))(**dataclasses.asdict(tuning))
