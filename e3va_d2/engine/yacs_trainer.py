"""``YacsTrainer``: the ``Trainer(DefaultTrainer)`` a yacs project writes, for ``.yaml`` configs.

detectron2's ``DefaultTrainer`` trains an e3va-d2 yacs config as it is (the backbone builders
load the pre-trained trunk themselves); this subclass adds what every project's ``train_net.py``
adds (an evaluator per dataset type) and crash-safe checkpoints that also read Swin layouts in
``MODEL.WEIGHTS``.
"""
from __future__ import annotations

import os

from detectron2.data import MetadataCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator, SemSegEvaluator

from ..checkpoint import E3VACheckpointer
from ..compat import HAS_COMPILED_OPS
from ..evaluation import VOCDetectionEvaluator

__all__ = ["YacsTrainer"]


class YacsTrainer(DefaultTrainer):
    def build_hooks(self):
        # DefaultTrainer.__init__ builds a DetectionCheckpointer just before its hooks.
        old = self.checkpointer
        self.checkpointer = E3VACheckpointer(old.model, old.save_dir, **old.checkpointables)
        return super().build_hooks()

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
