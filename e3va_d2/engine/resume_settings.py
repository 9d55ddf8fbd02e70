"""On ``--resume``, the config's optimizer and schedule settings win over the checkpoint's, and
every one that differs is logged.

A checkpoint stores each parameter group's hyperparameters (learning rate, weight decay,
betas...) and the LR scheduler's base learning rates; loading them silently replaced what the
user changed for the resumed run: after a divergence, ``--resume optimizer.lr=1e-4`` trained at
the checkpoint's 1e6 again, and after raising ``max_iter`` the first resumed step ran at the old
schedule's last value. :class:`ConfigWinsOnResume` remembers the settings of the freshly built
optimizer (the config's) and, when training starts, puts them back over whatever a resume
loaded, logging ``resume: optimizer.lr 1e+06 (checkpoint) -> 0.0001 (config)``; the learning
rate of the first step is then the config's schedule at the resumed iteration. With the config
unchanged, nothing differs and the resume stays exact.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch
from detectron2.engine import HookBase
from detectron2.solver import LRMultiplier

__all__ = ["LAZY_KEYS", "YACS_KEYS", "ConfigWinsOnResume"]

logger = logging.getLogger("e3va_d2.trainer")

# What to call a setting in the log. "initial_lr" is a group's base learning rate (what the
# schedule multiplies); "lr" is the scheduled value of the moment, recomputed from it.
LAZY_KEYS = {"initial_lr": "optimizer.lr", "max_iter": "train.max_iter", "*": "optimizer.{}"}
YACS_KEYS = {"initial_lr": "SOLVER.BASE_LR", "weight_decay": "SOLVER.WEIGHT_DECAY",
             "momentum": "SOLVER.MOMENTUM", "nesterov": "SOLVER.NESTEROV",
             "max_iter": "SOLVER.MAX_ITER", "*": "the optimizer's {}"}


def _settings(group: Mapping[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in group.items() if k not in ("params", "lr")}


def _same(a, b) -> bool:
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return torch.equal(torch.as_tensor(a), torch.as_tensor(b))
    return a == b


class ConfigWinsOnResume(HookBase):
    """Build it with the optimizer and scheduler before anything is loaded into them.

    Args:
        keys: how settings are named in the log (:data:`LAZY_KEYS`, :data:`YACS_KEYS`).
    """

    def __init__(self, optimizer, scheduler, max_iter: int, keys: Mapping[str, str]):
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.max_iter = max_iter
        self.keys = keys
        self.configured = [_settings(g) for g in optimizer.param_groups]
        self.checkpoint_max_iter: Optional[int] = None

    # The run's max_iter travels in the checkpoint, to name a change of it.
    def state_dict(self):
        return {"max_iter": self.max_iter}

    def load_state_dict(self, state_dict):
        self.checkpoint_max_iter = state_dict.get("max_iter")

    def _key(self, name: str) -> str:
        return self.keys.get(name, self.keys["*"].format(name))

    def before_train(self):
        if not self.trainer.start_iter:
            return  # nothing was resumed
        changed: Dict[str, List[Tuple[int, Any, Any]]] = {}
        for index, (group, wanted) in enumerate(zip(self.optimizer.param_groups,
                                                    self.configured)):
            for name, value in wanted.items():
                if name not in group or not _same(group[name], value):
                    changed.setdefault(name, []).append((index, group.get(name), value))
                    group[name] = value
        for name, changes in changed.items():
            pairs = sorted({(repr(old), repr(new)) for _, old, new in changes})
            if len(pairs) == 1:
                logger.warning("resume: %s %s (checkpoint) -> %s (config)", self._key(name),
                               *pairs[0])
            else:
                logger.warning("resume: %s of %d parameter groups: %s", self._key(name),
                               len(changes), "; ".join(f"group {i}: {old!r} (checkpoint) -> "
                                                       f"{new!r} (config)"
                                                       for i, old, new in changes))
        if self.checkpoint_max_iter not in (None, self.max_iter):
            logger.warning("resume: %s %d (checkpoint) -> %d (config): the schedule is the "
                           "config's from iteration %d on", self._key("max_iter"),
                           self.checkpoint_max_iter, self.max_iter, self.trainer.start_iter)
        self._follow_the_configured_schedule()

    def _follow_the_configured_schedule(self) -> None:
        """The scheduler's base learning rates are the config's, and the next step's learning
        rate is the config's schedule at the resumed iteration (the value the scheduler's last
        step would have set with these settings)."""
        groups = self.optimizer.param_groups
        if not isinstance(self.scheduler, LRMultiplier):
            return
        self.scheduler.base_lrs = [g["initial_lr"] for g in groups]
        lrs = self.scheduler.get_lr()
        for group, lr in zip(groups, lrs):
            group["lr"] = lr
        self.scheduler._last_lr = list(lrs)
