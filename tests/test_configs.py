"""Every shipped config loads, builds its model, optimizer and schedule, and round-trips through
LazyConfig.save/load (no lambdas or other unpicklable values); the model-zoo table's record
counts what each config builds."""
import glob
import json
import os

import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.utils.registry import locate
from omegaconf import OmegaConf

from e3va_d2.config import ConfigError, apply_overrides, load_config
from e3va_d2.engine.params import trainable_parameter_table
from e3va_d2.modeling import TunedSwin

ROOT = os.path.join(os.path.dirname(__file__), "..")
CONFIGS = sorted(
    os.path.relpath(p, ROOT)
    for p in glob.glob(os.path.join(ROOT, "configs", "**", "*.py"), recursive=True)
    # Custom/ names a dataset of the user's: tests/test_own_data.py loads it on one it writes.
    if os.sep + "common" + os.sep not in p and os.sep + "Custom" + os.sep not in p
)
with open(os.path.join(ROOT, "docs", "records", "config-table.json")) as f:
    TABLE_COUNTS = {r["config"]: r["trainable_backbone"] for r in json.load(f)["data"]["rows"]}


def _plain(cfg):
    """Comparable form: targets as the objects they name (a saved yaml holds import paths)."""

    def walk(x):
        if isinstance(x, dict):
            return {k: locate(v) if k == "_target_" and isinstance(v, str) else walk(v)
                    for k, v in x.items()}
        if isinstance(x, list):
            return [walk(v) for v in x]
        return x

    return walk(OmegaConf.to_container(cfg, resolve=False))


def test_configs_are_found():
    assert "configs/Shapes/mask_rcnn_swin_demo_e3va.py" in CONFIGS
    assert "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py" in CONFIGS


@pytest.mark.parametrize("path", CONFIGS)
def test_config_builds_and_round_trips(path, tmp_path):
    cfg = load_config(os.path.join(ROOT, path))
    saved = str(tmp_path / "config.yaml")
    LazyConfig.save(cfg, saved)
    assert not os.path.exists(saved + ".pkl"), "config fell back to pickle: not serialisable"
    loaded = LazyConfig.load(saved)
    assert _plain(loaded) == _plain(cfg)

    with torch.device("meta"):  # the real build, without filling 200M random weights
        model = instantiate(loaded.model)
    tuned = [m for m in model.modules() if isinstance(m, TunedSwin)]
    assert len(tuned) == 1
    trainable = [p for p in model.parameters() if p.requires_grad]
    frozen_trunk = [p for p in tuned[0].trunk.parameters() if not p.requires_grad]
    assert trainable and (bool(frozen_trunk) == (tuned[0].tuning.name != "full"))
    if path in TABLE_COUNTS:  # docs/CONFIGS.md's table cannot drift from the configs
        counted = trainable_parameter_table(model)[1]["trainable_in_backbone"]
        assert counted == TABLE_COUNTS[path]
    loaded.optimizer.params.model = model
    optimizer = instantiate(loaded.optimizer)
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in trainable}
    multiplier = instantiate(loaded.lr_multiplier)
    assert 0 < multiplier(0.5) <= 1 and multiplier(0.999) < multiplier(0.5)
    assert loaded.train.max_iter > 0 and loaded.train.output_dir


def test_bad_overrides_are_clear_errors():
    cfg = load_config(os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py"))
    with pytest.raises(ConfigError, match="Did you mean train.max_iter"):
        apply_overrides(cfg, ["train.max_itr=10"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(cfg, ["train.max_iter"])
    # An argument of a LazyCall target that the file leaves at its default is a valid key.
    apply_overrides(cfg, ["model.backbone.bottom_up.tuning.zero_init=True", "train.max_iter=7"])
    assert cfg.model.backbone.bottom_up.tuning.zero_init is True and cfg.train.max_iter == 7
    with pytest.raises(ConfigError, match="no existing config key"):
        apply_overrides(cfg, ["model.backbone.bottom_up.tuning.zero_init_typo=True"])
    apply_overrides(cfg, ["+train.my_new_key=1"])
    assert cfg.train.my_new_key == 1
    with pytest.raises(ConfigError, match="does not exist"):
        load_config("configs/nope.py")


def test_model_zoo_table_covers_every_row_config():
    from projects.model_zoo.config_table import row_configs

    assert sorted(TABLE_COUNTS) == sorted(row_configs())
