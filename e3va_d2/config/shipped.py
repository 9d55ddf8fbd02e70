"""The shipped configs, reachable from anywhere, as detectron2's ``model_zoo.get_config``.

Why: the files under ``configs/`` import their bases relatively (``from ..common.data.shapes
import dataloader``), so a copy of one elsewhere fails to load. A user's own config loads a
shipped one by name instead::

    from e3va_d2.config import get_config
    cfg = get_config("COCO/cascade_mask_rcnn_swin_b_e3va.py")

An installed wheel carries ``configs/`` inside the package (``e3va_d2/configs``, mapped by
setup.py); a source checkout, and the editable install that points at it, have it beside the
package. Either is found; nothing is linked.
"""
from __future__ import annotations

import difflib
import glob
import os
from typing import Iterable, List

from detectron2.config import get_cfg

from ..errors import ConfigError
from .defaults import add_e3va_config
from .lazy import load_config

__all__ = ["configs_root", "get_config", "get_config_file", "shipped_configs"]

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_ROOTS = (
    os.path.join(_PACKAGE, "configs"),  # installed from a wheel
    os.path.join(os.path.dirname(_PACKAGE), "configs"),  # a source checkout / editable install
)


def configs_root() -> str:
    """The folder holding the shipped configs (``COCO/``, ``Shapes/``, ``common/`` ...)."""
    for root in _ROOTS:
        if os.path.isdir(os.path.join(root, "common")):
            return root
    raise ConfigError(f"The shipped configs are not installed: none of {list(_ROOTS)} exists. "
                      "Reinstall e3va_d2 (pip install .), or use a source checkout.")


def shipped_configs() -> List[str]:
    """Every shipped config, as the name ``get_config`` takes (``Shapes/...py``)."""
    root = configs_root()
    found = []
    for ext in ("py", "yaml"):
        for path in glob.glob(os.path.join(root, "**", f"*.{ext}"), recursive=True):
            name = os.path.relpath(path, root).replace(os.sep, "/")
            if not name.startswith("common/"):
                found.append(name)
    return sorted(found)


def get_config_file(config_path: str) -> str:
    """The file of a shipped config named relative to ``configs/``, e.g.
    ``"COCO/cascade_mask_rcnn_swin_b_e3va.py"`` (a leading ``configs/`` is accepted)."""
    name = config_path.replace(os.sep, "/")
    name = name[len("configs/"):] if name.startswith("configs/") else name
    path = os.path.join(configs_root(), *name.split("/"))
    if not os.path.isfile(path):
        close = difflib.get_close_matches(name, shipped_configs(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"{config_path!r} is not a shipped config.{hint} "
                          "e3va_d2.config.shipped_configs() lists them.")
    return path


def get_config(config_path: str, overrides: Iterable[str] = ()):
    """A shipped config, loaded: a ``DictConfig`` for a ``.py`` (overrides checked as
    train_net.py checks them), a yacs ``CfgNode`` with the e3va-d2 keys for a ``.yaml``."""
    path = get_config_file(config_path)
    if path.endswith(".py"):
        return load_config(path, list(overrides))
    cfg = get_cfg()
    add_e3va_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(list(overrides))
    return cfg
