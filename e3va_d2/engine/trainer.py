"""``E3VATrainer``: detectron2's DefaultTrainer, driven by a LazyConfig instead of a yacs cfg.

Config keys read (besides ``model``, ``optimizer``, ``lr_multiplier`` and ``dataloader.{train,
test,evaluator}``, which are instantiated as they are):

    train.output_dir, train.init_checkpoint, train.delta_checkpoint (optional), train.max_iter,
    train.device ("auto" | "cuda" | "cpu"), train.amp.enabled, train.amp.dtype (optional),
    train.ddp.{broadcast_buffers, find_unused_parameters, fp16_compression, and any other DDP
    argument; gradient_as_bucket_view defaults to True},
    train.checkpointer.{period, max_to_keep}, train.eval_period, train.log_period,
    train.optimize_torchscript, train.reference_world_size (optional, see auto_scale_workers),
    train.trust_checkpoint_code, train.allow_shape_mismatch (optional, see
    e3va_d2.config.reliability)

About 350 lines: one method per ``DefaultTrainer`` method it must keep honest, each short.
"""
from __future__ import annotations

import copy
import inspect
import logging
import os
import weakref
from collections import OrderedDict

import torch
from detectron2.config import instantiate
from detectron2.engine import DefaultTrainer, TrainerBase, create_ddp_model, hooks
from detectron2.evaluation import DatasetEvaluator, inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger
from detectron2.utils.registry import locate

from ..checkpoint import E3VACheckpointer, PeriodicCheckpointer, export_delta, load_delta
from ..compat import HAS_COMPILED_OPS, detectron2_build
from ..config.reliability import reliability_settings
from ..layers import adapt_sync_batchnorm
from ..modeling.backbone import tuned_swins
from ..utils.cuda_build import check_cuda_build
from ..utils.safe_load import trust_checkpoint_code
from .checks import check_num_classes, check_resume_iteration, check_training_settings
from .lifeline import tie_loader_workers
from .params import trainable_parameter_table
from .resume import (
    GatherTrainingState,
    gathered_or_local,
    load_training_state,
    preserved_rng,
)
from .resume_settings import LAZY_KEYS, ConfigWinsOnResume
from .signals import StopOnSignal
from .step import TrainStep, call_after_backward, resolve_amp_dtype
from .writers import training_writers

__all__ = [
    "E3VATrainer",
    "ddp_options",
    "resolve_device",
    "test_dataset_names",
    "train_dataset_names",
]

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


def ddp_options(cfg, device_type: str) -> dict:
    """DDP's keyword arguments: ``train.ddp``, plus ``gradient_as_bucket_view=True`` unless it
    says otherwise (the gradients live in DDP's all-reduce buckets instead of beside them: one
    copy of the trainable gradients, not two), and no device ids for CPU processes (gloo)."""
    options = {"gradient_as_bucket_view": True, **cfg.train.get("ddp", {})}
    if comm.get_world_size() > 1 and device_type != "cuda":
        options["device_ids"] = None
    return options


def _accepts(lazy_call, argument: str) -> bool:
    target = lazy_call.get("_target_")
    if isinstance(target, str):
        target = locate(target)
    try:
        return argument in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


def test_dataset_names(cfg):
    """The test datasets of a config, as a list (``cfg.DATASETS.TEST`` of yacs configs)."""
    names = cfg.dataloader.test.dataset.names
    return [names] if isinstance(names, str) else list(names)


def train_dataset_names(cfg):
    """The training datasets of a config (its ``dataloader.train.dataset.names``), as a list;
    empty for a loader built otherwise."""
    names = cfg.dataloader.train.get("dataset", {}).get("names", [])
    return [names] if isinstance(names, str) else list(names)


def _dataloader_for(cfg, dataset_name):
    """A copy of ``cfg.dataloader`` whose test split is ``dataset_name`` (if given); the
    evaluator's ``${..test.dataset.names}`` follows it."""
    dataloader = copy.deepcopy(cfg.dataloader)
    if dataset_name is not None:
        dataloader.test.dataset.names = dataset_name
    return dataloader


def _restart_data_iterator(step) -> None:
    """Make the next step draw from the loader's (just loaded) state."""
    if isinstance(getattr(type(step), "_data_loader_iter", None), property):
        step._data_loader_iter_obj = None  # detectron2 main: the iterator is created lazily
    else:
        step._data_loader_iter = iter(step.data_loader)  # detectron2 0.6: created eagerly


class E3VATrainer(DefaultTrainer):
    """detectron2's ``DefaultTrainer`` for a LazyConfig: every method it inherits or overrides
    keeps detectron2's signature and meaning, reading the LazyConfig keys listed above where
    detectron2 reads yacs ones (``cfg.dataloader.test.dataset.names`` for ``cfg.DATASETS.TEST``,
    ``cfg.train.output_dir`` for ``cfg.OUTPUT_DIR``...). On top: the optimizer must hold exactly
    the trainable parameters, AMP on CUDA and CPU, atomic checkpoints, exact ``--resume`` (and
    on ``--resume``, the config's optimizer and schedule settings, each change logged).
    """

    def __init__(self, cfg):
        # DefaultTrainer.__init__ reads yacs keys (cfg.SOLVER, cfg.MODEL.WEIGHTS); this builds
        # the same parts, in the same order, from the LazyConfig keys.
        TrainerBase.__init__(self)
        check_training_settings(cfg)  # before minutes of building
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        if not logger.isEnabledFor(logging.INFO):
            setup_logger(cfg.train.output_dir, comm.get_rank(), name="e3va_d2")
        logger.info("Using %s", detectron2_build())
        cfg = self.auto_scale_workers(cfg, comm.get_world_size())
        self.cfg = cfg
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        check_num_classes(model, train_dataset_names(cfg))  # the data's metadata is loaded now

        device_type = next(model.parameters()).device.type
        model = create_ddp_model(model, **ddp_options(cfg, device_type))

        amp = cfg.train.get("amp", {})
        hooks_owner = weakref.proxy(self)  # the step must not keep its trainer alive
        self._trainer = TrainStep(
            model,
            data_loader,
            optimizer,
            device_type=device_type,
            amp_dtype=resolve_amp_dtype(amp.get("enabled", False), device_type, amp.get("dtype")),
            after_backward=lambda: call_after_backward(hooks_owner._hooks),
        )
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = E3VACheckpointer(
            model, cfg.train.output_dir, trainer=weakref.proxy(self),
            allow_shape_mismatch=reliability_settings(cfg).allow_shape_mismatch,
        )
        self.start_iter = 0
        self.max_iter = cfg.train.max_iter
        self.register_hooks(self.build_hooks())

    # ---- builders (classmethods, as in DefaultTrainer, so tools can reuse them) ----
    @classmethod
    def build_model(cls, cfg):
        """``instantiate(cfg.model)`` on ``train.device``, with its trainable set logged."""
        device = resolve_device(cfg.train.get("device", "auto"))
        check_cuda_build(device)  # a GPU this torch has no kernels for: say so, and the fix
        with trust_checkpoint_code(reliability_settings(cfg).trust_checkpoint_code):
            model = instantiate(cfg.model)  # a backbone's ``weights`` load here
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
        # detectron2 0.6's get_default_optimizer_params adds "bias" to the overrides it is
        # given, in place: the config would refuse to build a second optimizer.
        overrides = copy.deepcopy(cfg.optimizer.params.get("overrides", None))
        try:
            optimizer = instantiate(cfg.optimizer)
        finally:
            if overrides is not None:
                cfg.optimizer.params.overrides = overrides
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
        """``cfg.dataloader.train``, its worker processes tied to this one (:mod:`.lifeline`)."""
        return tie_loader_workers(instantiate(cfg.dataloader.train))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name=None):
        """``cfg.dataloader.test``, on ``dataset_name`` instead of its own datasets if given;
        its worker processes tied to this one."""
        return tie_loader_workers(instantiate(_dataloader_for(cfg, dataset_name).test))

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return LRMultiplier(
            optimizer, multiplier=instantiate(cfg.lr_multiplier), max_iter=cfg.train.max_iter
        )

    @classmethod
    def build_evaluator(cls, cfg, dataset_name=None, output_folder=None):
        """``cfg.dataloader.evaluator`` for ``dataset_name`` (default: the test datasets),
        writing into ``output_folder`` (default: its ``output_dir``, else
        ``<train.output_dir>/inference``). Raises ``NotImplementedError`` without an evaluator
        in the config, as detectron2's does."""
        dataloader = _dataloader_for(cfg, dataset_name)
        if "evaluator" not in dataloader:
            raise NotImplementedError("cfg.dataloader has no evaluator")
        evaluator_cfg = dataloader.evaluator
        if "output_dir" in evaluator_cfg or _accepts(evaluator_cfg, "output_dir"):
            if output_folder is not None:
                evaluator_cfg.output_dir = output_folder
            elif evaluator_cfg.get("output_dir") is None:
                evaluator_cfg.output_dir = os.path.join(cfg.train.output_dir, "inference")
        if not HAS_COMPILED_OPS and _accepts(evaluator_cfg, "use_fast_impl"):
            # COCOEvaluator's default (fast_eval_api) needs the compiled ops; configs from
            # elsewhere may not say so.
            if evaluator_cfg.get("use_fast_impl", True):
                logger.info("No compiled detectron2 ops: using the pure-Python COCO evaluation.")
            evaluator_cfg.use_fast_impl = False
        return instantiate(evaluator_cfg)

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate ``model`` on each test dataset, as ``DefaultTrainer.test`` does.

        ``evaluators``: None (built by :meth:`build_evaluator`), one evaluator or one per test
        dataset. Returns ``{task: {metric: value}}`` for one dataset, else that per dataset.
        """
        names = test_dataset_names(cfg)
        if isinstance(evaluators, DatasetEvaluator):
            evaluators = [evaluators]
        if evaluators is not None and len(evaluators) != len(names):
            raise ValueError(f"{len(evaluators)} evaluators given for {len(names)} test "
                             f"datasets {names}: pass one per dataset")
        results = OrderedDict()
        for i, name in enumerate(names):
            # The loader comes first: building it materialises generated datasets the
            # evaluator reads (the synthetic shapes json).
            loader = cls.build_test_loader(cfg, name)
            check_num_classes(model, [name])
            if evaluators is not None:
                evaluator = evaluators[i]
            else:
                try:
                    evaluator = cls.build_evaluator(cfg, name)
                except NotImplementedError:
                    logger.warning("No evaluator in cfg.dataloader: %s is not evaluated", name)
                    results[name] = {}
                    continue
            results[name] = inference_on_dataset(model, loader, evaluator)
            if comm.is_main_process() and results[name]:
                logger.info("Evaluation results for %s in csv format:", name)
                print_csv_format(results[name])
        return next(iter(results.values())) if len(results) == 1 else results

    @staticmethod
    def auto_scale_workers(cfg, num_workers: int):
        """detectron2's linear scaling rule on LazyConfig keys.

        With ``train.reference_world_size`` = R > 0 processes in mind and ``num_workers`` = N
        in use, returns a copy whose ``dataloader.train.total_batch_size`` and
        ``optimizer.lr`` are x N/R, and ``train.max_iter``, ``eval_period`` and
        ``checkpointer.period`` x R/N (the schedules here are relative to ``max_iter``, so
        their steps and warmup follow). Unchanged (the same object) when R is 0 or N.
        """
        reference = cfg.train.get("reference_world_size", 0)
        if reference in (0, num_workers):
            return cfg
        batch = cfg.dataloader.train.total_batch_size
        if batch % reference:
            raise ValueError(f"dataloader.train.total_batch_size={batch} is not a multiple of "
                             f"train.reference_world_size={reference}")
        cfg = copy.deepcopy(cfg)
        scale = num_workers / reference
        cfg.dataloader.train.total_batch_size = int(round(batch * scale))
        cfg.optimizer.lr = cfg.optimizer.lr * scale
        for key in ("max_iter", "eval_period"):
            cfg.train[key] = int(round(cfg.train[key] / scale))
        cfg.train.checkpointer.period = int(round(cfg.train.checkpointer.period / scale))
        cfg.train.reference_world_size = num_workers  # the invariant detectron2 keeps
        logger.info("Auto-scaled the config to total_batch_size=%d, lr=%g, max_iter=%d.",
                    cfg.dataloader.train.total_batch_size, cfg.optimizer.lr, cfg.train.max_iter)
        return cfg

    # ---- loop ----
    def build_hooks(self):
        cfg = self.cfg
        main = comm.is_main_process()
        ckpt = cfg.train.checkpointer
        gather = GatherTrainingState(ckpt.period, self.max_iter)
        return [
            hooks.IterationTimer(),
            hooks.LRScheduler(self._trainer.optimizer, self.scheduler),
            ConfigWinsOnResume(self._trainer.optimizer, self.scheduler, self.max_iter, LAZY_KEYS),
            gather,
            PeriodicCheckpointer(self.checkpointer, ckpt.period, max_to_keep=ckpt.get(
                "max_to_keep")) if main else None,
            hooks.EvalHook(cfg.train.eval_period, self._evaluate),
            hooks.PeriodicWriter(self.build_writers(), period=cfg.train.log_period)
            if main else None,
            StopOnSignal(self.checkpointer, before_save=gather.gather),
        ]

    def build_writers(self):
        """detectron2's default writers (console, metrics.json, TensorBoard) into
        ``train.output_dir``, the console one safe to call twice at one iteration."""
        return training_writers(self.cfg.train.output_dir, self.max_iter)

    def _evaluate(self):
        # Without touching the global RNGs: a resumed run draws what the uninterrupted one did.
        with preserved_rng():
            self._last_eval_results = self.test(self.cfg, self._trainer.model)
        return self._last_eval_results

    def resume_or_load(self, resume: bool = True):
        """Resume from the last checkpoint of ``train.output_dir`` if asked and present, else
        load ``train.init_checkpoint`` (then ``train.delta_checkpoint``)."""
        init = self.cfg.train.get("init_checkpoint", "")
        built_from = [m.weights for m in tuned_swins(self._trainer.model) if m.weights]
        if not init and not built_from and not (resume and self.checkpointer.has_checkpoint()):
            logger.warning(
                "train.init_checkpoint and the backbone's weights are empty: the Swin trunk keeps "
                "its RANDOM initialisation (fine for the synthetic demo; set either to an "
                "ImageNet checkpoint for real use)."
            )
        with trust_checkpoint_code(reliability_settings(self.cfg).trust_checkpoint_code):
            self.checkpointer.resume_or_load(init, resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            self.start_iter = self.iter + 1
            check_resume_iteration(self.start_iter, self.max_iter, "train.max_iter",
                                   self.checkpointer.resumed_from)
            return
        delta = self.cfg.train.get("delta_checkpoint", "")
        if delta:
            load_delta(self.checkpointer.model, delta)
            logger.info("Loaded trainable weights from delta %s", delta)

    def train(self):
        """Run the loop; returns the last evaluation results (as detectron2's tools do)."""
        with torch.jit.optimized_execution(self.cfg.train.get("optimize_torchscript", False)):
            TrainerBase.train(self, self.start_iter, self.max_iter)
        results = getattr(self, "_last_eval_results", OrderedDict())
        if comm.is_main_process():
            path = os.path.join(self.cfg.train.output_dir, "model_final_delta.pth")
            try:
                export_delta(self._trainer.model, path, extra={"iteration": self.iter})
            except Exception:
                # The error ends the run before its caller logs the results: keep them.
                logger.error("Final evaluation (the delta could not be saved): %s",
                             dict(results))
                raise
            logger.info("Saved the trainable weights (delta against the base) to %s", path)
        return results

    # detectron2 0.6's DefaultTrainer saves the optimizer as a separate checkpointable, main
    # through the trainer; here it always travels with the trainer (iteration, hooks, step),
    # with what an exact resume needs besides (engine/resume.py: data position, RNGs, EMAs).
    def state_dict(self):
        ret = TrainerBase.state_dict(self)  # iteration, hooks
        ret["_trainer"] = self._trainer.state_dict()  # optimizer, AMP scaler
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
