"""yacs configs: ``add_e3va_config`` + the registry builders give the LazyConfig models (same
trainable parameters), detectron2's unmodified ``DefaultTrainer`` trains and evaluates the
shapes yaml on CPU, and ``train_net.py`` takes a ``.yaml`` as it takes a ``.py``."""
import os
import subprocess
import sys

import pytest
import torch
from detectron2.config import get_cfg, instantiate
from detectron2.data import DatasetCatalog
from detectron2.engine import DefaultTrainer
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import build_backbone, build_model
from detectron2.utils.env import seed_all_rng
from detectron2.utils.file_io import PathManager

from e3va_d2.compat import HAS_COMPILED_OPS
from e3va_d2.config import ConfigError, add_e3va_config, load_config
from e3va_d2.model_zoo import SCENES_SWIN

ROOT = os.path.join(os.path.dirname(__file__), "..")
SHAPES_YAML = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.yaml")
SHAPES_PY = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
COCO_YAML = os.path.join(ROOT, "configs/COCO/cascade_mask_rcnn_swin_b_e3va.yaml")
COCO_PY = os.path.join(ROOT, "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")
SHORT = ["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "('shapes_mini_train',)",
         "DATASETS.TEST", "('shapes_mini_val',)", "SOLVER.IMS_PER_BATCH", "2",
         "DATALOADER.NUM_WORKERS", "0"]


def yacs_cfg(path, *opts):
    cfg = get_cfg()
    add_e3va_config(cfg)
    cfg.merge_from_file(path)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", *opts])
    return cfg


def shapes(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters()}


def trainable(model):
    return {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("yaml_file,py_file,options", [
    (SHAPES_YAML, SHAPES_PY, []),
    # The ImageNet file is not downloaded; names and shapes need no weights (meta device).
    (COCO_YAML, COCO_PY, ["MODEL.SWIN.WEIGHTS", "", "MODEL.DEVICE", "meta"]),
])
def test_yaml_builds_the_lazyconfig_model(yaml_file, py_file, options):
    device = "meta" if "meta" in options else "cpu"
    with torch.device(device):
        yacs_model = build_model(yacs_cfg(yaml_file, *options))
        lazy_model = instantiate(load_config(py_file, ["train.device=cpu"]).model)
    assert trainable(yacs_model) == trainable(lazy_model) and trainable(yacs_model)
    assert shapes(yacs_model) == shapes(lazy_model)


def test_every_tuning_method_and_option_reaches_the_backbone():
    cfg = yacs_cfg(SHAPES_YAML, "MODEL.SWIN.WEIGHTS", "", "MODEL.TUNING.METHOD", "lora",
                   "MODEL.TUNING.RANK", "4")
    lora = build_backbone(cfg).bottom_up
    assert lora.tuning.name == "lora" and lora.tuning.rank == 4
    cfg = yacs_cfg(SHAPES_YAML, "MODEL.SWIN.WEIGHTS", "", "MODEL.TUNING.ZERO_INIT", "True")
    assert build_backbone(cfg).bottom_up.tuning.zero_init is True
    cfg = yacs_cfg(SHAPES_YAML, "MODEL.SWIN.WEIGHTS", "", "MODEL.TUNING.METHOD", "full")
    with pytest.raises(ConfigError, match="MODEL.TUNING.RANK is not an option of 'full'"):
        build_backbone(cfg)


def test_yaml_trunk_is_the_shipped_checkpoint():
    with PathManager.open(SCENES_SWIN.url, "rb") as f:
        state = torch.load(f, map_location="cpu", weights_only=True)["model"]
    trunk = build_backbone(yacs_cfg(SHAPES_YAML)).bottom_up.trunk
    key = "layers.2.blocks.5.attn.qkv.weight"
    assert torch.equal(trunk.state_dict()[key], state[key].float())


def test_stock_default_trainer_trains_and_evaluates(tmp_path):
    """detectron2's own DefaultTrainer, as a yacs user runs it: trains 3 iterations (the frozen
    trunk unchanged, the highway moved) and evaluates with the evaluators passed to test()."""
    # Score threshold 0: three iterations give low scores, and AP needs predictions.
    cfg = yacs_cfg(SHAPES_YAML, *SHORT, "SOLVER.MAX_ITER", "3", "OUTPUT_DIR", str(tmp_path),
                   "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0")
    seed_all_rng(0)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=False)
    backbone = trainer.model.backbone.bottom_up
    frozen = {n: p for n, p in backbone.named_parameters() if not p.requires_grad}
    highway = dict(backbone.highway.named_parameters())
    frozen_before = {n: p.detach().clone() for n, p in frozen.items()}
    highway_before = {n: p.detach().clone() for n, p in highway.items()}
    trainer.train()
    assert frozen and all(torch.equal(frozen_before[n], p) for n, p in frozen.items())
    assert any(not torch.equal(highway_before[n], p) for n, p in highway.items())
    DatasetCatalog.get("shapes_mini_val")  # generates the split (and its json) if needed
    evaluator = COCOEvaluator("shapes_mini_val", output_dir=str(tmp_path),
                              use_fast_impl=HAS_COMPILED_OPS)
    results = DefaultTrainer.test(cfg, trainer.model, evaluators=[evaluator])
    assert set(results) == {"bbox", "segm"}
    assert results["bbox"]["AP"] >= 0 and results["segm"]["AP"] >= 0  # a number, not NaN


@pytest.mark.slow
def test_train_net_takes_a_yaml(tmp_path):
    """``train_net.py --config-file x.yaml``: trains, evaluates at the end, then --eval-only
    evaluates the saved model to the same numbers."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    common = [sys.executable, os.path.join(ROOT, "train_net.py"), "--config-file", SHAPES_YAML]
    opts = [*SHORT, "SOLVER.MAX_ITER", "2", "OUTPUT_DIR", str(tmp_path)]
    out = subprocess.run([*common, *opts], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    final = [line.split("copypaste: ")[1] for line in out.stdout.splitlines()
             + out.stderr.splitlines() if "copypaste: " in line]
    assert final, "no evaluation at the end of training"
    again = subprocess.run(
        [*common, "--eval-only", *opts, "MODEL.WEIGHTS", str(tmp_path / "model_final.pth")],
        env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    evaluated = [line.split("copypaste: ")[1] for line in again.stdout.splitlines()
                 + again.stderr.splitlines() if "copypaste: " in line]
    assert evaluated[-2:] == final[-2:]  # the segm AP row of both runs
