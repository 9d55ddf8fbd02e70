"""``E3VATrainer``: detectron2's DefaultTrainer, driven by a LazyConfig instead of a yacs cfg.

Config keys read (besides ``model``, ``optimizer``, ``lr_multiplier`` and ``dataloader.{train,
test,evaluator}``, which are instantiated as they are):

    train.output_dir, train.init_checkpoint, train.delta_checkpoint (optional), train.max_iter,
    train.device ("auto" | "cuda" | "cpu"), train.amp.enabled, train.amp.dtype (optional),
    train.ddp.{broadcast_buffers, find_unused_parameters, fp16_compression},
    train.checkpointer.{period, max_to_keep}, train.eval_period, train.log_period,
    train.optimize_torchscript
"""
from __future__ import annotations

import inspect
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.config import instantiate
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.engine.defaults import default_writers
from detectron2.evaluation import inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate

from ..checkpoint import E3VACheckpointer, PeriodicCheckpointer, export_delta, load_delta
from ..compat import HAS_COMPILED_OPS, detectron2_build
from ..layers import adapt_sync_batchnorm
from .params import trainable_parameter_table
from .resume import GatherTrainingState, gathered_or_local, load_training_state, preserved_rng
from .step import TrainStep, resolve_amp_dtype

__all__ = ["E3VATrainer", "resolve_device"]

logger = logging.getLogger("e3va_d2.trainer")


def resolve_device(device: str) -> str:
    """``"auto"`` picks CUDA when present; an explicit ``"cuda"`` without a GPU is an error."""
    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(
            f"train.device={device!r} but CUDA is not available; use train.device=auto or cpu"
        )
    return device


def _accepts(lazy_call, argument: str) -> bool:
    target = lazy_call.get("_target_")
    if isinstance(target, str):
        target = locate(target)
    try:
        return argument in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def _restart_data_iterator(step) -> None:
    """Make the next step draw from the loader's (just loaded) state."""
    if isinstance(getattr(type(step), "_data_loader_iter", None), property):
        step._data_loader_iter_obj = None  # detectron2 main: the iterator is created lazily
    else:
        step._data_loader_iter = iter(step.data_loader)  # detectron2 0.6: created eagerly


class E3VATrainer(DefaultTrainer):
    """Train a LazyConfig model: optimizer over trainable parameters only, AMP on CUDA and CPU,
    periodic evaluation and atomic checkpoints, ``--resume`` as in detectron2."""

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        if not logger.isEnabledFor(logging.INFO):
            setup_logger(cfg.train.output_dir, comm.get_rank(), name="e3va_d2")
        logger.info("Using %s", detectron2_build())
        self.cfg = cfg
        device = resolve_device(cfg.train.get("device", "auto"))
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)

        ddp_options = dict(cfg.train.get("ddp", {}))
        if comm.get_world_size() > 1 and not device.startswith("cuda"):
            ddp_options["device_ids"] = None  # CPU processes (gloo)
        model = create_ddp_model(model, **ddp_options)

        amp = cfg.train.get("amp", {})
        device_type = "cuda" if device.startswith("cuda") else "cpu"
        self._trainer = TrainStep(
            model,
            data_loader,
            optimizer,
            device_type=device_type,
            amp_dtype=resolve_amp_dtype(amp.get("enabled", False), device_type, amp.get("dtype")),
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = E3VACheckpointer(
            model, cfg.train.output_dir, trainer=weakref.proxy(self)
        )
        self.start_iter = 0
        self.max_iter = cfg.train.max_iter
        self.register_hooks(self.build_hooks())

    # ---- builders (classmethods, as in DefaultTrainer, so tools can reuse them) ----
    @classmethod
    def build_model(cls, cfg):
        device = resolve_device(cfg.train.get("device", "auto"))
        model = instantiate(cfg.model)
        model.to(device)
        adapt_sync_batchnorm(model, comm.get_world_size(), device)
        table, totals = trainable_parameter_table(model)
        logger.info("Trainable parameters:\n%s", table)
        if totals["trainable"] == 0:
            raise ValueError("The model has no trainable parameter; check the tuning method")
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        cfg.optimizer.params.model = model
        optimizer = instantiate(cfg.optimizer)
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        trainable = {id(p) for p in model.parameters() if p.requires_grad}
        if in_optimizer != trainable:
            raise ValueError(
                f"The optimizer holds {len(in_optimizer)} tensors but the model has "
                f"{len(trainable)} trainable ones; build its params with "
                "detectron2.solver.get_default_optimizer_params (it skips frozen parameters)."
            )
        return optimizer

    @classmethod
    def build_train_loader(cls, cfg):
        return instantiate(cfg.dataloader.train)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name=None):
        return instantiate(cfg.dataloader.test)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return LRMultiplier(
            optimizer, multiplier=instantiate(cfg.lr_multiplier), max_iter=cfg.train.max_iter
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name=None, output_folder=None):
        evaluator_cfg = cfg.dataloader.evaluator
        if "output_dir" in evaluator_cfg and evaluator_cfg.output_dir is None:
            evaluator_cfg.output_dir = os.path.join(cfg.train.output_dir, "inference")
        if not HAS_COMPILED_OPS and _accepts(evaluator_cfg, "use_fast_impl"):
            # COCOEvaluator's default (fast_eval_api) needs the compiled ops.
            if evaluator_cfg.get("use_fast_impl", True):
                logger.info("No compiled detectron2 ops: using the pure-Python COCO evaluation.")
            evaluator_cfg.use_fast_impl = False
        return instantiate(evaluator_cfg)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate on ``dataloader.test``; returns detectron2's ``{task: {metric: value}}``."""
        if "evaluator" not in cfg.dataloader:
            return {}
        # The loader comes first: building it materialises generated datasets the evaluator
        # reads (the synthetic shapes json).
        loader = cls.build_test_loader(cfg)
        evaluator = cls.build_evaluator(cfg)
        results = inference_on_dataset(model, loader, evaluator)
        if comm.is_main_process() and results:
            print_csv_format(results)
        return results

    # ---- loop ----
    def build_hooks(self):
        cfg = self.cfg
        main = comm.is_main_process()
        ckpt = cfg.train.checkpointer
        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(self._trainer.optimizer, self.scheduler),
            GatherTrainingState(ckpt.period, self.max_iter),
            PeriodicCheckpointer(self.checkpointer, ckpt.period, max_to_keep=ckpt.get(
                "max_to_keep")) if main else None,
            hooks.EvalHook(cfg.train.eval_period, self._eval_and_save),
            hooks.PeriodicWriter(
                default_writers(cfg.train.output_dir, self.max_iter),
                period=cfg.train.log_period,
            ) if main else None,
        ]

    def _eval_and_save(self):
        with preserved_rng():
            self._last_eval_results = self.test(self.cfg, self._trainer.model)
        return self._last_eval_results

    def resume_or_load(self, resume: bool = True):
        """Resume from the last checkpoint of ``train.output_dir`` if asked and present, else
        load ``train.init_checkpoint`` (then ``train.delta_checkpoint``)."""
        init = self.cfg.train.get("init_checkpoint", "")
        if not init and not (resume and self.checkpointer.has_checkpoint()):
            logger.warning(
                "train.init_checkpoint is empty: the Swin trunk keeps its RANDOM initialisation "
                "(fine for the synthetic demo; set it to an ImageNet checkpoint for real use)."
            )
        self.checkpointer.resume_or_load(init, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
            return
        delta = self.cfg.train.get("delta_checkpoint", "")
        if delta:
            load_delta(self.checkpointer.model, delta)
            logger.info("Loaded trainable weights from delta %s", delta)

    def train(self):
        """Run the loop; returns the last evaluation results (as detectron2's tools do)."""
        with torch.jit.optimized_execution(self.cfg.train.get("optimize_torchscript", False)):
            TrainerBase.train(self, self.start_iter, self.max_iter)
        if comm.is_main_process():
            path = os.path.join(self.cfg.train.output_dir, "model_final_delta.pth")
            export_delta(self._trainer.model, path, extra={"iteration": self.iter})
            logger.info("Saved the trainable weights (delta against the base) to %s", path)
        return getattr(self, "_last_eval_results", OrderedDict())

    # detectron2 0.6's DefaultTrainer saves the optimizer as a separate checkpointable, main
    # through the trainer; here it always travels with the trainer (iteration, hooks, step),
    # with what an exact resume needs besides (engine/resume.py: data position, RNGs, EMAs).
    def state_dict(self):
        ret = TrainerBase.state_dict(self)
        ret["_trainer"] = self._trainer.state_dict()
        ret["resume"] = gathered_or_local(self)
        return ret

    def load_state_dict(self, state_dict):
        TrainerBase.load_state_dict(self, state_dict)
        self._trainer.load_state_dict(state_dict["_trainer"])
        if "resume" not in state_dict:
            logger.warning("The checkpoint predates exact resume (no data position or RNG "
                           "state): the resumed run's data order and random draws differ.")
            return
        step = self._trainer
        load_training_state(step.model, step.data_loader, state_dict["resume"])
        _restart_data_iterator(step)
