"""A run either does what was asked or says why not, at startup: max_iter <= 0 and --num-gpus 0
are errors naming the key or flag (they used to train nothing and exit 0); so are periods of 0,
an output folder that is a file or a dangling link, and links planted where the run writes its
files, all before anything is written."""
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


def train_net_main(config, out, *opts):
    """train_net.py's main on ``config`` with output folder ``out`` and overrides ``opts`` (yacs:
    KEY VALUE pairs), as the command line runs it."""
    import train_net

    folder = ["OUTPUT_DIR", str(out)] if config.endswith(".yaml") else [f"train.output_dir={out}"]
    return train_net.main(train_net.parse_args(["--config-file", config, *folder, *opts]))


class Built(Exception):
    """The trainer was reached: the run got past its startup checks."""


@pytest.fixture
def no_training(monkeypatch):
    """Make reaching a trainer fail at once (a check that did not fire must not train)."""
    import train_net

    def refuse(*args, **kwargs):
        raise Built()

    monkeypatch.setattr(train_net, "E3VATrainer", refuse)
    monkeypatch.setattr(train_net, "YacsTrainer", refuse)


@pytest.mark.parametrize("config, opts, key", [
    (DEMO, ["train.max_iter=-5"], "train.max_iter=-5"),
    (DEMO, ["train.checkpointer.period=0"], "train.checkpointer.period=0"),
    (DEMO, ["train.log_period=0"], "train.log_period=0"),
    (DEMO_YAML, ["SOLVER.MAX_ITER", "-5"], "SOLVER.MAX_ITER=-5"),
    (DEMO_YAML, ["SOLVER.CHECKPOINT_PERIOD", "0"], "SOLVER.CHECKPOINT_PERIOD=0"),
])
def test_train_net_refuses_bad_settings_before_writing_anything(config, opts, key, tmp_path,
                                                                 no_training):
    """max_iter=-5 wrote config.yaml and log.txt; a period of 0 ended in ZeroDivisionError
    after the model and data were built."""
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=f"{key}: .* integer >= 1"):
        train_net_main(config, out, *opts)
    assert not out.exists()  # no config.yaml, no log.txt, not even the folder


@pytest.mark.parametrize("make, problem", [
    (lambda out: out.write_text("a file"), "is a file, not a folder"),
    (lambda out: out.symlink_to(out.parent / "gone"), "is a symbolic link to .*gone, which does "
     "not exist"),
])
@pytest.mark.parametrize("config", [DEMO, DEMO_YAML])
def test_an_output_dir_that_is_a_file_or_a_dangling_link_is_named(make, problem, config, tmp_path,
                                                                   no_training):
    out = tmp_path / "out"
    make(out)
    key = "OUTPUT_DIR" if config.endswith(".yaml") else "train.output_dir"
    with pytest.raises(ConfigError, match=f"{key}={out} {problem}"):
        train_net_main(config, out)


@pytest.mark.parametrize("name", ["config.yaml", "log.txt", "metrics.json", "inference/x.json"])
@pytest.mark.parametrize("config", [DEMO, DEMO_YAML])
def test_train_net_refuses_links_where_the_run_writes(name, config, tmp_path, no_training):
    """detectron2's config.yaml (and the log, the metrics, the evaluators' files) are opened in
    place: a planted link made the run overwrite the file it points to."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    (out / "inference").mkdir(parents=True)
    (out / name).symlink_to(victim)
    with pytest.raises(ConfigError, match=f"symbolic links .*{out / name} -> {victim}"):
        train_net_main(config, out)
    assert victim.read_text() == "precious"
