"""Training state besides weights, optimizer and scheduler that an exact ``--resume`` needs.

An uninterrupted run and a run killed and resumed at any checkpoint must take identical steps.
Beyond what detectron2 checkpoints, that needs, per process (rank):

- the data position: :class:`~e3va_d2.data.loader.ResumableTrainLoader`'s state;
- the global RNGs (``random``, ``numpy``, ``torch``, the process's GPU): the models draw from
  them (RPN and ROI sampling, drop path); the loader's augmentations are seeded per item and
  never do;
- running values models keep as plain attributes (RetinaNet's and FCOS's ``loss_normalizer``,
  an EMA of the positive-anchor count), which ``state_dict()`` misses.

Only the main process writes checkpoints, so with several processes :class:`GatherTrainingState`
collects every rank's state at each checkpoint iteration first.
"""
from __future__ import annotations

import contextlib
import logging
import numbers
import random
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from detectron2.engine import HookBase
from detectron2.utils import comm

__all__ = [
    "EMA_ATTRIBUTES",
    "GatherTrainingState",
    "preserved_rng",
    "rng_state",
    "set_rng_state",
    "training_state",
    "load_training_state",
    "gathered_or_local",
]

logger = logging.getLogger(__name__)

# Plain numeric attributes detectron2 models update while training (DenseDetector._ema_update).
EMA_ATTRIBUTES = ("loss_normalizer",)


def rng_state() -> Dict[str, Any]:
    """The global RNG states, as lists and tensors (loadable with ``weights_only=True``)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # This process's GPU only: each rank draws on its own, and a state per visible GPU
        # could not be restored where fewer are visible.
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # saved before: one state per visible GPU
            device = torch.cuda.current_device()
            if device >= len(cuda):
                logger.warning("The checkpoint holds no CUDA RNG state for GPU %d: its random "
                               "draws continue from another state.", device)
                return
            cuda = cuda[device]
        torch.cuda.set_rng_state(cuda)


@contextlib.contextmanager
def preserved_rng():
    """Restore the global RNGs on exit: evaluation inside training must not move them (a
    resumed run does not repeat the evaluation the uninterrupted run made before its save)."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


def _unwrapped(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DDP: its names must not depend on the number of processes."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _ema_attributes(model: torch.nn.Module) -> Dict[str, float]:
    model = _unwrapped(model)
    found = {}
    for name, module in model.named_modules():
        for attr in EMA_ATTRIBUTES:
            value = getattr(module, attr, None)
            if isinstance(value, numbers.Real) and not isinstance(value, bool):
                found[f"{name}.{attr}" if name else attr] = float(value)
    return found


def _set_ema_attributes(model: torch.nn.Module, values: Dict[str, float]) -> None:
    modules = dict(_unwrapped(model).named_modules())
    for key, value in values.items():
        name, _, attr = key.rpartition(".")
        if name not in modules:
            raise KeyError(f"The checkpoint's training state names {key!r}, which this model "
                           "lacks: it was saved from another model")
        setattr(modules[name], attr, value)


def training_state(model: torch.nn.Module, data_loader) -> Dict[str, Any]:
    """This process's state: RNGs, EMA attributes and (if it has one) the loader's position."""
    loader = data_loader.state_dict() if hasattr(data_loader, "state_dict") else None
    return {"rng": rng_state(), "attributes": _ema_attributes(model), "loader": loader}


def load_training_state(model: torch.nn.Module, data_loader, ranks: List[Dict[str, Any]]) -> None:
    """Restore this rank's entry of ``ranks`` (one per process of the run that saved it)."""
    rank, world = comm.get_rank(), comm.get_world_size()
    exact = len(ranks) == world
    if not exact:
        logger.warning(
            "The checkpoint was saved by %d processes, this run has %d: weights, optimizer and "
            "schedule resume exactly; the data order and random draws continue approximately.",
            len(ranks), world,
        )
    state = ranks[rank if exact else 0]
    _set_ema_attributes(model, state["attributes"])
    if exact:
        set_rng_state(state["rng"])
    loader = state["loader"]
    if not hasattr(data_loader, "load_state_dict"):
        logger.warning(
            "The training loader (%s) cannot restore its position: the resumed run starts its "
            "data stream again. Build it with e3va_d2.data.build_resumable_train_loader for an "
            "exact resume.", type(data_loader).__name__,
        )
    elif loader is None:
        logger.warning("The checkpoint holds no loader position: the data stream starts again.")
    elif exact:
        data_loader.load_state_dict(loader)
    else:
        # Another layout: continue after the furthest position any rank had drawn.
        data_loader.load_state_dict(
            dict(loader, next_position=max(r["loader"]["next_position"] for r in ranks))
        )


class GatherTrainingState(HookBase):
    """With several processes, collect every rank's :func:`training_state` at the iterations
    the checkpointer saves (``gathered``), for the main process to write."""

    def __init__(self, period: int, max_iter: int):
        self.period = period
        self.max_iter = max_iter
        self.gathered: Optional[List[Dict[str, Any]]] = None  # at the last checkpoint iteration

    def after_step(self):
        if comm.get_world_size() == 1:
            return
        it = self.trainer.iter
        if (it + 1) % self.period == 0 or it >= self.max_iter - 1:
            self.gather()

    def gather(self):
        """Collect every rank's state now (all ranks call it): also before a save outside the
        checkpoint period (SIGTERM)."""
        if comm.get_world_size() > 1:
            step = self.trainer._trainer
            self.gathered = comm.all_gather(training_state(step.model, step.data_loader))


def gathered_or_local(trainer) -> List[Dict[str, Any]]:
    """Every rank's training state: gathered by the trainer's :class:`GatherTrainingState`
    hook, or this one process's now."""
    if comm.get_world_size() > 1:
        hooks = [h for h in trainer._hooks if isinstance(h, GatherTrainingState)]
        gathered = hooks[0].gathered if hooks else None
        if gathered is not None:
            return gathered
        logger.warning("Saving outside a checkpoint iteration with several processes: only "
                       "the main process's training state is saved.")
    step = trainer._trainer
    return [training_state(step.model, step.data_loader)]
