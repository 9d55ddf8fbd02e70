"""Config, model and data for the tools: either config kind, as train_net.py reads it."""
from __future__ import annotations

from typing import List, Sequence

from detectron2.config import CfgNode, get_cfg, instantiate
from detectron2.data import build_detection_test_loader

from ..checkpoint import E3VACheckpointer, load_delta
from ..config import add_e3va_config, load_config
from ..config.reliability import reliability_settings
from ..engine import E3VATrainer, YacsTrainer
from ..utils.safe_load import trust_checkpoint_code

__all__ = ["dataset_names", "load_any_config", "model_with_weights", "test_loader"]


def load_any_config(path: str, opts: Sequence[str] = ()):
    """A ``.py`` LazyConfig (overrides checked) or a ``.yaml`` yacs config with the e3va-d2
    keys (overrides as ``KEY VALUE`` pairs)."""
    if path.endswith((".yaml", ".yml")):
        cfg = get_cfg()
        add_e3va_config(cfg)
        cfg.merge_from_file(path)
        cfg.merge_from_list(list(opts))
        cfg.DATALOADER.NUM_WORKERS = 0
        return cfg
    cfg = load_config(path, list(opts))
    for split in ("train", "test"):
        if "num_workers" in cfg.dataloader[split]:
            cfg.dataloader[split].num_workers = 0
    return cfg


def dataset_names(cfg, split: str) -> List[str]:
    """The config's ``split`` ("train" / "test") dataset names."""
    if isinstance(cfg, CfgNode):
        return list(cfg.DATASETS.TRAIN if split == "train" else cfg.DATASETS.TEST)
    names = cfg.dataloader[split].dataset.names
    return [names] if isinstance(names, str) else list(names)


def model_with_weights(cfg, load: bool = True):
    """The config's model in eval mode, with the weights train_net.py --eval-only loads
    (``train.init_checkpoint`` + ``train.delta_checkpoint``, or ``MODEL.WEIGHTS``)."""
    yacs = isinstance(cfg, CfgNode)
    model = (YacsTrainer if yacs else E3VATrainer).build_model(cfg)
    if load:
        settings = reliability_settings(cfg)
        checkpointer = E3VACheckpointer(model, allow_shape_mismatch=settings.allow_shape_mismatch)
        with trust_checkpoint_code(settings.trust_checkpoint_code):
            checkpointer.load(cfg.MODEL.WEIGHTS if yacs else cfg.train.init_checkpoint)
        if not yacs and cfg.train.get("delta_checkpoint", ""):
            load_delta(model, cfg.train.delta_checkpoint)
    return model.eval()


def test_loader(cfg):
    """The config's test loader, one image per batch."""
    if isinstance(cfg, CfgNode):
        return build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])
    return instantiate(cfg.dataloader.test)
