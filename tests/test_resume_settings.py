"""On --resume, the config's optimizer and schedule settings win over the checkpoint's, each
change logged: `--resume optimizer.lr=1e-4` trained at the checkpoint's learning rate, silently,
and after raising max_iter the first resumed step ran at the old schedule's last value."""
import logging
import os

import pytest
from detectron2.config import instantiate
from detectron2.engine import HookBase

from e3va_d2.engine import E3VATrainer

from .helpers import short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")


class Seen(Exception):
    pass


class LearningRatesOfTheFirstStep(HookBase):
    """Record each parameter group's learning rate and weight decay as the first step starts,
    then stop (the step itself is not needed)."""

    def before_step(self):
        groups = self.trainer._trainer.optimizer.param_groups
        self.seen = [(g["lr"], g["weight_decay"]) for g in groups]
        raise Seen()


def cfg_with(out, *overrides):
    cfg = short_run_config(DEMO, out, "shapes_mini_train", "shapes_mini_val", 4,
                           "dataloader.train.total_batch_size=1", *overrides)
    del cfg.dataloader.evaluator
    return cfg


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler.step\\(\\)` before")
def test_resume_applies_and_logs_the_configs_optimizer_and_schedule(tmp_path, caplog,
                                                                     monkeypatch):
    # The run that diverged: lr 0.05, weight decay 0.05, 4 iterations; saved after iteration 1.
    first = E3VATrainer(cfg_with(tmp_path, "optimizer.lr=0.05"))
    first.resume_or_load(resume=False)
    first.iter = 1
    first.scheduler.step(), first.scheduler.step()  # where the saving run's schedule was
    first.checkpointer.save("model_0000001", iteration=1)
    del first

    cfg = cfg_with(tmp_path, "optimizer.lr=1e-4", "optimizer.weight_decay=0.01",
                   "train.max_iter=40")
    resumed = E3VATrainer(cfg)
    configured = [(g["initial_lr"], g["weight_decay"])
                  for g in resumed._trainer.optimizer.param_groups]
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    seen = LearningRatesOfTheFirstStep()
    resumed.register_hooks([seen])
    # detectron2's setup_logger stops our loggers' records at "e3va_d2"; caplog listens above.
    monkeypatch.setattr(logging.getLogger("e3va_d2"), "propagate", True)
    with caplog.at_level(logging.WARNING, logger="e3va_d2.trainer"):
        with pytest.raises(Seen):
            resumed.train()
    # The config's schedule at iteration 2 of 40 (inside its warmup), on the config's lr.
    multiplier = instantiate(cfg.lr_multiplier)(2 / 40)
    assert seen.seen == [(lr * multiplier, decay) for lr, decay in configured]
    assert "resume: optimizer.lr 0.05 (checkpoint) -> 0.0001 (config)" in caplog.text
    assert "resume: optimizer.weight_decay 0.05 (checkpoint) -> 0.01 (config)" in caplog.text
    assert "resume: train.max_iter 4 (checkpoint) -> 40 (config)" in caplog.text
