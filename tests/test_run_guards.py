"""A run either does what was asked or says why not, at startup: max_iter <= 0 and --num-gpus 0
are errors naming the key or flag (they used to train nothing and exit 0)."""
import os

import pytest
from detectron2.config import get_cfg

from e3va_d2.config import ConfigError, add_e3va_config, load_config
from e3va_d2.engine import E3VATrainer, YacsTrainer, launch

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
DEMO_YAML = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.yaml")


@pytest.mark.parametrize("max_iter", [0, -5])
def test_max_iter_below_one_is_refused_before_building(max_iter, tmp_path):
    cfg = load_config(DEMO, [f"train.output_dir={tmp_path}", "train.device=cpu",
                             f"train.max_iter={max_iter}"])
    with pytest.raises(ConfigError, match=f"train.max_iter={max_iter}: .* integer >= 1"):
        E3VATrainer(cfg)
    assert not os.listdir(tmp_path)  # nothing written


@pytest.mark.parametrize("max_iter", [0, -1])
def test_yacs_max_iter_below_one_is_refused(max_iter, tmp_path):
    cfg = get_cfg()
    add_e3va_config(cfg)
    cfg.merge_from_file(DEMO_YAML)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path),
                         "SOLVER.MAX_ITER", str(max_iter)])
    with pytest.raises(ConfigError, match=f"SOLVER.MAX_ITER={max_iter}"):
        YacsTrainer(cfg)


def _never_called():
    raise AssertionError("launch ran the main function")


@pytest.mark.parametrize("flag, kwargs", [
    ("--num-gpus 0", dict(num_processes_per_machine=0)),
    ("--num-machines 0", dict(num_processes_per_machine=1, num_machines=0)),
])
def test_launch_refuses_zero_processes(flag, kwargs):
    with pytest.raises(ValueError, match=f"{flag}: must be >= 1"):
        launch(_never_called, **kwargs)
