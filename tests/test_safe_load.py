"""Checkpoints are data, never code: a checkpoint whose unpickling would run a command (here:
create a marker file) is refused, naming the file and the opt-in, on every path that reads
one: train.init_checkpoint, the backbone's weights, --resume (LazyConfig and yacs), yacs
MODEL.WEIGHTS, --eval-only, delta checkpoints, the predictor and the demo, ``.pkl`` files. The
marker never appears; with the explicit opt-in the same file does run its command (so the
payload is real)."""
import os
import pickle
import shlex
import subprocess
import sys

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.utils.file_io import PathManager

from e3va_d2.checkpoint import E3VACheckpointer, load_delta
from e3va_d2.config import add_e3va_config, load_config
from e3va_d2.utils.safe_load import (
    UnsafeCheckpointError,
    read_checkpoint_file,
    restricted_pickle_load,
    trust_checkpoint_code,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
DEMO_YAML = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.yaml")
REFUSED = "trust_checkpoint_code=True"  # every refusal names the opt-in


class Payload:
    """Unpickling this runs a shell command, as a hostile checkpoint would."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


@pytest.fixture
def hostile(tmp_path):
    """make(name) -> a checkpoint file that, when unpickled, creates ``marker``."""
    marker = tmp_path / "PWNED"

    def make(name="model_final.pth", folder=tmp_path):
        path = os.path.join(str(folder), name)
        command = f"touch {shlex.quote(str(marker))}"
        payload = {"model": {"w": torch.zeros(2)}, "extra": Payload(command)}
        if name.endswith(".pkl"):
            with open(path, "wb") as f:
                pickle.dump(payload, f)
        else:
            torch.save(payload, path)
        return path

    make.marker = marker
    return make


def refused(hostile, call, path):
    with pytest.raises(UnsafeCheckpointError, match=REFUSED) as info:
        call()
    assert path in str(info.value), info.value
    assert not hostile.marker.exists(), "the checkpoint ran its code"


def tiny_lazy_cfg(out, *overrides):
    return load_config(DEMO, [
        f"train.output_dir={out}", "train.device=cpu", "train.max_iter=2",
        "dataloader.train.dataset.names=shapes_mini_train", "dataloader.train.num_workers=0",
        "dataloader.test.dataset.names=shapes_mini_val", "dataloader.train.total_batch_size=1",
        *overrides])


@pytest.mark.parametrize("name", ["model.pth", "model.pkl", "model.pyth"])
def test_checkpointer_refuses_code_in_any_format(hostile, name):
    """train.init_checkpoint, --eval-only and the predictor all load through this."""
    path = hostile(name)
    refused(hostile, lambda: E3VACheckpointer(torch.nn.Linear(2, 2)).load(path), path)


def test_a_torch_file_named_pkl_is_read_as_torch_writes_it(hostile, tmp_path):
    """A torch.save file renamed .pkl: refused as code (naming the opt-in), not misreported as
    unreadable; a harmless one loads."""
    path = hostile("model_final.pth")
    renamed = str(tmp_path / "renamed.pkl")
    os.rename(path, renamed)
    refused(hostile, lambda: read_checkpoint_file(PathManager, renamed), renamed)
    harmless = str(tmp_path / "harmless.pkl")
    torch.save({"model": {"w": torch.ones(2)}}, harmless)
    assert torch.equal(read_checkpoint_file(PathManager, harmless)["model"]["w"], torch.ones(2))


def test_the_payload_is_real_and_runs_only_with_the_opt_in(hostile):
    path = hostile("trusted.pth")
    with trust_checkpoint_code():
        read_checkpoint_file(PathManager, path)
    assert hostile.marker.exists()


def test_backbone_weights_are_read_as_data(hostile, tmp_path):
    from e3va_d2.engine import E3VATrainer

    path = hostile("swin.pth")
    cfg = tiny_lazy_cfg(tmp_path, f"model.backbone.bottom_up.weights={path}")
    refused(hostile, lambda: E3VATrainer.build_model(cfg), path)


def test_lazyconfig_resume_reads_last_checkpoint_as_data(hostile, tmp_path):
    from e3va_d2.engine import E3VATrainer

    path = hostile("model_0000009.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    trainer = E3VATrainer(tiny_lazy_cfg(tmp_path))
    refused(hostile, lambda: trainer.resume_or_load(resume=True), path)


@pytest.mark.parametrize("resume", [False, True])
def test_yacs_weights_and_resume_are_read_as_data(hostile, tmp_path, resume):
    from e3va_d2.engine import YacsTrainer

    path = hostile("model_0000009.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    cfg = get_cfg()
    add_e3va_config(cfg)
    cfg.merge_from_file(DEMO_YAML)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('shapes_mini_train',)",
                         "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "1",
                         "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path),
                         "MODEL.WEIGHTS", "" if resume else path])
    trainer = YacsTrainer(cfg)
    refused(hostile, lambda: trainer.resume_or_load(resume=resume), path)


def test_delta_checkpoints_are_read_as_data(hostile):
    path = hostile("model_final_delta.pth")
    refused(hostile, lambda: load_delta(torch.nn.Linear(2, 2), path), path)


def test_demo_refuses_a_hostile_checkpoint(hostile, tmp_path):
    from projects.demo import demo

    path = hostile("model_final.pth")
    refused(hostile, lambda: demo.main(
        ["--config-file", DEMO, "--dataset", "shapes_mini_val", "--num-images", "1",
         "--output", str(tmp_path / "out"), "--opts", "train.device=cpu",
         f"train.init_checkpoint={path}"]), path)


def test_pkl_reader_allows_arrays_tensors_and_containers(tmp_path):
    """What detectron2's and Detectron's model zoo .pkl files hold still loads."""
    from collections import OrderedDict

    state = OrderedDict(conv=np.ones((2, 3), np.float32), bias=torch.arange(3.0),
                        steps=np.int64(7), names=["a", "b"], shape=(1, 2))
    path = tmp_path / "zoo.pkl"
    with open(path, "wb") as f:
        pickle.dump({"model": state, "__author__": "Detectron2 Model Zoo"}, f)
    with open(path, "rb") as f:
        loaded = restricted_pickle_load(f, str(path))
    assert np.array_equal(loaded["model"]["conv"], state["conv"])
    assert torch.equal(loaded["model"]["bias"], state["bias"])
    assert loaded["model"]["steps"] == 7 and loaded["model"]["names"] == ["a", "b"]


@pytest.mark.slow
def test_train_net_eval_only_refuses_and_names_the_flag(hostile, tmp_path):
    path = hostile("model_final.pth")
    run = subprocess.run(
        [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", DEMO, "--eval-only",
         f"train.output_dir={tmp_path}", "train.device=cpu", f"train.init_checkpoint={path}"],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
        env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert run.returncode != 0
    assert path in run.stderr and "--trust-checkpoint-code" in run.stderr, run.stderr[-2000:]
    assert not hostile.marker.exists()
