"""Nothing silently wrong in or out of a checkpoint: another adapter rank is an error (a partial
load only on request, never on resume), NaN weights are neither saved as last_checkpoint nor
evaluated, --resume falls back past a missing or truncated last checkpoint, and resuming beyond
max_iter says so."""
import logging
import os
import shutil

import pytest
import torch
from detectron2.config import instantiate
from detectron2.utils.env import seed_all_rng

from e3va_d2.checkpoint import CheckpointReadError, E3VACheckpointer
from e3va_d2.checkpoint.sanity import (
    CheckpointShapeError,
    NonFiniteCheckpointError,
    NonFiniteWeightsError,
)
from e3va_d2.config import ConfigError, load_config
from e3va_d2.engine import E3VATrainer

from .helpers import short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
RANK = "model.backbone.bottom_up.tuning.rank"


def demo_model(*overrides):
    return instantiate(load_config(DEMO, ["train.device=cpu", *overrides]).model)


def run_cfg(out, *overrides, max_iter=4):
    cfg = short_run_config(DEMO, out, "shapes_mini_train", "shapes_mini_val", max_iter,
                           "train.checkpointer.period=2", "dataloader.train.total_batch_size=1",
                           *overrides)
    del cfg.dataloader.evaluator  # no evaluation at the end: these tests look at files
    return cfg


def train(cfg, resume=False):
    seed_all_rng(0)
    trainer = E3VATrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished 4-iteration run (checkpoints after iterations 1 and 3, and model_final)."""
    out = tmp_path_factory.mktemp("finished")
    train(run_cfg(str(out)))
    return out


@pytest.fixture
def run_copy(finished, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


# ------------------------------------------------------------------ shapes


def test_a_checkpoint_of_another_rank_is_refused(tmp_path):
    path = str(tmp_path / "rank4.pth")
    torch.save({"model": demo_model(f"{RANK}=4").state_dict()}, path)
    model = demo_model(f"{RANK}=8")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(CheckpointShapeError, match="allow_shape_mismatch=True") as info:
        E3VACheckpointer(model).load(path)
    assert path in str(info.value) and "checkpoint (2, 4, 32), model (2, 8, 32)" in str(info.value)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_partial_load_on_request_counts_what_stayed_untrained(tmp_path, caplog):
    path = str(tmp_path / "rank4.pth")
    torch.save({"model": demo_model(f"{RANK}=4").state_dict()}, path)
    checkpointer = E3VACheckpointer(demo_model(f"{RANK}=8"), allow_shape_mismatch=True)
    with caplog.at_level(logging.WARNING, logger="e3va_d2.checkpoint"):
        checkpointer.load(path)
    assert "Partial load" in caplog.text
    assert checkpointer.untrained and all(".bottom_up." in k for k in checkpointer.untrained)


def test_resume_after_changing_the_rank_is_a_clear_error(run_copy):
    trainer = E3VATrainer(run_cfg(str(run_copy), f"{RANK}=16", max_iter=6))
    with pytest.raises(CheckpointShapeError, match="Cannot resume .* tuning rank"):
        trainer.resume_or_load(resume=True)


# ------------------------------------------------------------------ non-finite weights


def test_non_finite_weights_are_not_saved_and_last_checkpoint_stays(run_copy):
    model = demo_model()
    checkpointer = E3VACheckpointer(model, str(run_copy))
    before = (run_copy / "last_checkpoint").read_text()
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteWeightsError, match=f"last_checkpoint still names .*{before}"):
        checkpointer.save("model_0000005")
    assert not (run_copy / "model_0000005.pth").exists()
    assert (run_copy / "last_checkpoint").read_text() == before


def test_a_diverging_run_never_tags_a_non_finite_checkpoint(tmp_path):
    cfg = run_cfg(str(tmp_path), "optimizer.lr=1e6", "train.checkpointer.period=1")
    with pytest.raises(FloatingPointError):
        train(cfg)
    last = tmp_path / "last_checkpoint"
    if last.exists():
        saved = torch.load(tmp_path / last.read_text(), weights_only=True)["model"]
        assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())


def test_non_finite_checkpoints_are_refused_by_evaluation(tmp_path):
    model = demo_model()
    state = model.state_dict()
    state["roi_heads.box_predictor.cls_score.weight"][0, 0] = float("inf")
    path = str(tmp_path / "diverged.pth")
    torch.save({"model": state}, path)
    with pytest.raises(NonFiniteCheckpointError, match="NaN or infinite") as info:
        E3VACheckpointer(demo_model()).load(path)  # what --eval-only and the demo do
    assert path in str(info.value)


# ------------------------------------------------------------------ resume


class Counter:
    """A checkpointable, as the trainer is: what --resume restores besides the weights."""

    def __init__(self):
        self.iteration = 0

    def state_dict(self):
        return {"iteration": self.iteration}

    def load_state_dict(self, state):
        self.iteration = state["iteration"]


def damage(path, how):
    if how == "missing":
        os.unlink(path)
    elif how == "truncated":
        with open(path, "rb") as f:
            data = f.read()
        with open(path, "wb") as f:
            f.write(data[: len(data) // 3])
    else:
        checkpoint = torch.load(path, weights_only=True)
        checkpoint["model"]["weight"].fill_(float("nan"))
        torch.save(checkpoint, path)


@pytest.mark.parametrize("how", ["missing", "truncated", "non_finite"])
def test_resume_falls_back_past_an_unusable_last_checkpoint(tmp_path, how, caplog):
    counter = Counter()
    checkpointer = E3VACheckpointer(torch.nn.Linear(2, 2), str(tmp_path), trainer=counter)
    for iteration in (1, 3, 5):
        counter.iteration = iteration
        checkpointer.save(f"model_{iteration:07d}")
        os.utime(tmp_path / f"model_{iteration:07d}.pth", (iteration, iteration))  # write order
    damage(str(tmp_path / "model_0000005.pth"), how)
    counter.iteration = 0
    with caplog.at_level(logging.WARNING, logger="e3va_d2.checkpoint"):
        checkpointer.resume_or_load("", resume=True)
    assert counter.iteration == 3 and checkpointer.resumed_from.endswith("model_0000003.pth")
    assert "Resuming from" in caplog.text and "model_0000005.pth" in caplog.text


def test_resume_without_any_usable_checkpoint_is_an_error(tmp_path):
    checkpointer = E3VACheckpointer(torch.nn.Linear(2, 2), str(tmp_path), trainer=Counter())
    checkpointer.save("model_0000001")
    damage(str(tmp_path / "model_0000001.pth"), "truncated")
    with pytest.raises(CheckpointReadError, match="no usable checkpoint.*Remove .*last_checkpoint"):
        checkpointer.resume_or_load("", resume=True)


def test_the_trainer_resumes_from_the_previous_checkpoint(run_copy):
    damage(str(run_copy / "model_final.pth"), "truncated")  # what last_checkpoint names
    trainer = E3VATrainer(run_cfg(str(run_copy), max_iter=6))
    trainer.resume_or_load(resume=True)
    assert trainer.checkpointer.resumed_from.endswith("model_0000003.pth")
    assert trainer.start_iter == 4


def test_resume_with_max_iter_below_the_checkpoint_says_so(run_copy):
    trainer = E3VATrainer(run_cfg(str(run_copy), max_iter=2))
    with pytest.raises(ConfigError, match="iteration 3, but train.max_iter=2"):
        trainer.resume_or_load(resume=True)
