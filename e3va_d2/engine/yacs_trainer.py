"""``YacsTrainer``: the ``Trainer(DefaultTrainer)`` a yacs project writes, for ``.yaml`` configs.

detectron2's ``DefaultTrainer`` trains an e3va-d2 yacs config as it is (the backbone builders
load the pre-trained trunk themselves); this subclass adds what every project's ``train_net.py``
adds (an evaluator per dataset type) and crash-safe checkpoints that also read Swin layouts in
``MODEL.WEIGHTS``; and the reliability of the LazyConfig trainer: ``SOLVER.MAX_ITER``,
``SOLVER.CHECKPOINT_PERIOD``, the classes against the data and the resumed iteration checked,
checkpoints read as data (``MODEL.TRUST_CHECKPOINT_CODE``), shapes checked
(``MODEL.ALLOW_SHAPE_MISMATCH``), SIGTERM saving a checkpoint, the config's solver settings
winning on ``--resume``.
"""
from __future__ import annotations

import os

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator

from ..checkpoint import E3VACheckpointer
from ..compat import HAS_COMPILED_OPS
from ..config.reliability import reliability_settings
from ..evaluation import VOCDetectionEvaluator
from ..utils.cuda_build import check_cuda_build
from ..utils.safe_load import trust_checkpoint_code
from .checks import check_num_classes, check_resume_iteration, check_yacs_training_settings
from .lifeline import tie_loader_workers
from .resume_settings import YACS_KEYS, ConfigWinsOnResume
from .signals import StopOnSignal
from .writers import training_writers

__all__ = ["YacsTrainer"]


class YacsTrainer(DefaultTrainer):
    def __init__(self, cfg):
        check_yacs_training_settings(cfg)  # before the model is built
        super().__init__(cfg)
        check_num_classes(self.model, cfg.DATASETS.TRAIN, yacs=True)  # the data is loaded now

    @classmethod
    def build_train_loader(cls, cfg):
        """detectron2's, its worker processes tied to this one (:mod:`.lifeline`)."""
        return tie_loader_workers(super().build_train_loader(cfg))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        return tie_loader_workers(super().build_test_loader(cfg, dataset_name))

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """DefaultTrainer's, after checking the model's classes against each test dataset
        whose metadata names its categories."""
        check_num_classes(model, cfg.DATASETS.TEST, yacs=True)
        return super().test(cfg, model, evaluators)

    @classmethod
    def build_model(cls, cfg):
        check_cuda_build(cfg.MODEL.DEVICE)  # a GPU this torch has no kernels for: the fix
        with trust_checkpoint_code(reliability_settings(cfg).trust_checkpoint_code):
            return super().build_model(cfg)  # MODEL.SWIN.WEIGHTS load here

    def build_hooks(self):
        # DefaultTrainer.__init__ builds a DetectionCheckpointer just before its hooks.
        old = self.checkpointer
        self.checkpointer = E3VACheckpointer(
            old.model, old.save_dir,
            allow_shape_mismatch=reliability_settings(self.cfg).allow_shape_mismatch,
            **old.checkpointables)
        return super().build_hooks() + [
            ConfigWinsOnResume(self.optimizer, self.scheduler, self.max_iter, YACS_KEYS),
            StopOnSignal(self.checkpointer)]

    def build_writers(self):
        return training_writers(self.cfg.OUTPUT_DIR, self.max_iter)

    def resume_or_load(self, resume=True):
        with trust_checkpoint_code(reliability_settings(self.cfg).trust_checkpoint_code):
            super().resume_or_load(resume=resume)
        if resume and self.checkpointer.has_checkpoint():
            check_resume_iteration(self.start_iter, self.max_iter, "SOLVER.MAX_ITER",
                                   self.checkpointer.resumed_from)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """The evaluator of the dataset's ``evaluator_type`` (coco, sem_seg, pascal_voc)."""
        output_folder = output_folder or os.path.join(cfg.OUTPUT_DIR, "inference")
        kind = MetadataCatalog.get(dataset_name).get("evaluator_type", None)
        if kind == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder,
                                 use_fast_impl=HAS_COMPILED_OPS)
        if kind == "sem_seg":
            return SemSegEvaluator(dataset_name, distributed=True, output_dir=output_folder)
        if kind == "pascal_voc":
            return VOCDetectionEvaluator(dataset_name)
        raise NotImplementedError(
            f"no evaluator for {dataset_name!r} (evaluator_type={kind!r}); set the metadata's "
            "evaluator_type to coco, sem_seg or pascal_voc, or pass evaluators to test()")
