"""Startup checks of training settings: each a clear error naming the key, raised before a
model is built, instead of a run that trains nothing (and exits 0) or dies deep in a scheduler;
and the model's number of classes against the data's categories, once both are known.
"""
from __future__ import annotations

import logging
from typing import Iterable, Optional, Tuple

from detectron2.data import MetadataCatalog

from ..config import ConfigError

__all__ = [
    "check_max_iter",
    "check_num_classes",
    "check_period",
    "check_process_count",
    "check_resume_iteration",
    "check_training_settings",
    "check_yacs_training_settings",
    "model_num_classes",
]

logger = logging.getLogger("e3va_d2.trainer")


def check_max_iter(max_iter, key: str) -> None:
    """``max_iter`` must be an integer >= 1: 0 or less would train nothing, yet evaluate and
    save an untrained model as if it were trained."""
    if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
        raise ConfigError(f"{key}={max_iter!r}: the number of training iterations must be an "
                          f"integer >= 1 (to only evaluate, use --eval-only)")


def check_period(value, key: str, what: str, fix: str) -> None:
    """A period in iterations must be an integer >= 1: 0 ends in a ``ZeroDivisionError`` once
    the model and data are built. ``what`` the run does every period; ``fix`` an example."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r}: the run {what} every {key} iterations, so it must "
                          f"be an integer >= 1 ({fix})")


_CHECKPOINT_FIX = "to save only at the end, set it to the run's max_iter"


def check_training_settings(cfg) -> None:
    """The LazyConfig training settings that would make a run do nothing or fail after minutes
    of building: ``train.max_iter``, ``train.checkpointer.period``, ``train.log_period``."""
    check_max_iter(cfg.train.max_iter, "train.max_iter")
    check_period(cfg.train.checkpointer.period, "train.checkpointer.period",
                 "saves a checkpoint", _CHECKPOINT_FIX)
    check_period(cfg.train.get("log_period", 20), "train.log_period", "writes its metrics",
                 "e.g. train.log_period=20")


def check_yacs_training_settings(cfg) -> None:
    """The yacs twins of :func:`check_training_settings`."""
    check_max_iter(cfg.SOLVER.MAX_ITER, "SOLVER.MAX_ITER")
    check_period(cfg.SOLVER.CHECKPOINT_PERIOD, "SOLVER.CHECKPOINT_PERIOD", "saves a checkpoint",
                 _CHECKPOINT_FIX)


def check_resume_iteration(start_iter: int, max_iter: int, key: str, checkpoint: str) -> None:
    """After ``--resume``: a checkpoint beyond ``max_iter`` is an error (the run would do
    nothing); one exactly at the end is a finished run, said in the log."""
    if start_iter > max_iter:
        raise ConfigError(
            f"--resume: {checkpoint} was saved after iteration {start_iter - 1}, but {key}="
            f"{max_iter}, so there is nothing left to train. Raise {key} above {start_iter - 1} "
            "to train on, or evaluate that checkpoint with --eval-only.")
    if start_iter == max_iter:
        logger.warning("--resume: %s is the end of the run (%s=%d): nothing left to train.",
                       checkpoint, key, max_iter)


def check_process_count(num_processes_per_machine, num_machines) -> None:
    """``--num-gpus 0`` would start no process at all and exit 0 without a word."""
    for value, flag in ((num_processes_per_machine, "--num-gpus"), (num_machines,
                                                                     "--num-machines")):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag} {value}: must be >= 1 (processes per machine; without "
                             "CUDA, --num-gpus N starts N CPU processes)")


# (attribute path of the head, LazyConfig key, yacs key, metadata field the classes are named in)
_CLASS_HEADS = (
    ("roi_heads", "model.roi_heads.num_classes", "MODEL.ROI_HEADS.NUM_CLASSES", "thing_classes"),
    ("sem_seg_head", "model.sem_seg_head.num_classes", "MODEL.SEM_SEG_HEAD.NUM_CLASSES",
     "stuff_classes"),
    ("", "model.num_classes", "MODEL.RETINANET.NUM_CLASSES", "thing_classes"),  # RetinaNet
)


def model_num_classes(model) -> Optional[Tuple[int, str, str, str]]:
    """(number of classes, LazyConfig key, yacs key, metadata field) of the model's class head:
    R-CNN's ``roi_heads`` (cascade included), a semantic segmentor's ``sem_seg_head``, or the
    model itself (RetinaNet); None for a model with none of these."""
    model = getattr(model, "module", model)  # DDP
    for attribute, lazy_key, yacs_key, field in _CLASS_HEADS:
        head = getattr(model, attribute, None) if attribute else model
        count = getattr(head, "num_classes", None)
        if isinstance(count, int) and not isinstance(count, bool):
            return count, lazy_key, yacs_key, field
    return None


def check_num_classes(model, dataset_names: Iterable[str], *, yacs: bool = False) -> None:
    """The model's number of classes must be the datasets' number of categories: with more
    categories, the extra ones silently train as background (or fail deep in the loss with
    ``IndexError: Target 4 is out of bounds``); with fewer, the model is not the one asked for.
    Datasets whose metadata does not name its classes (yet) are not checked."""
    found = model_num_classes(model)
    if found is None:
        return
    count, lazy_key, yacs_key, field = found
    key = yacs_key if yacs else lazy_key
    for name in [dataset_names] if isinstance(dataset_names, str) else dataset_names:
        if name not in MetadataCatalog:
            continue
        classes = MetadataCatalog.get(name).get(field, None)
        if classes is None or len(classes) == count:
            continue
        setting = f"{key} {len(classes)}" if yacs else f"{key}={len(classes)}"
        shown = list(classes)[:8] + (["..."] if len(classes) > 8 else [])
        raise ConfigError(
            f"Dataset '{name}' has {len(classes)} categories ({field}: {shown}) but the model "
            f"has {count} classes ({key}={count}). Set {setting} to train or evaluate on this "
            f"dataset, or use a dataset with {count} categories.")
