"""The predictor and the drawing demo: both channel orders give the same predictions (and a wrong
one different ones), demo.py writes one picture per input for detection and segmentation, and
curves.py draws a metrics.json."""
import json
import logging
import os

import numpy as np
import pytest
import torch
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from PIL import Image

from e3va_d2.checkpoint import export_delta
from e3va_d2.config import ConfigError, load_config
from e3va_d2.engine.predictor import Predictor
from projects.demo import curves, demo

ROOT = os.path.join(os.path.dirname(__file__), "..")
UPERNET = os.path.join(ROOT, "configs/Shapes/upernet_swin_demo_e3va.py")
MASK_RCNN = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")


def test_predictor_takes_either_channel_order():
    predictor = Predictor(load_config(UPERNET, ["train.device=cpu"]), checkpoint="",
                          allow_untrained=True)
    path = DatasetCatalog.get("shapes_sem_seg_mini_val")[0]["file_name"]
    rgb = read_image(path, format="RGB")
    from_rgb = predictor(rgb, image_format="RGB")["sem_seg"]
    from_bgr = predictor(np.ascontiguousarray(rgb[:, :, ::-1]), image_format="BGR")["sem_seg"]
    assert from_rgb.shape[-2:] == rgb.shape[:2]
    assert torch.equal(from_rgb, from_bgr)
    assert not torch.equal(from_rgb, predictor(rgb, image_format="BGR")["sem_seg"])
    with pytest.raises(ValueError, match="image_format"):
        predictor(rgb, image_format="rgb")


@pytest.mark.parametrize("config,dataset", [(MASK_RCNN, "shapes_mini_val"),
                                            (UPERNET, "shapes_sem_seg_mini_val")])
def test_demo_writes_one_picture_per_input(config, dataset, tmp_path):
    written = demo.main(["--config-file", config, "--dataset", dataset, "--num-images", "2",
                         "--output", str(tmp_path), "--confidence-threshold", "0",
                         "--opts", "train.device=cpu", "train.eval_untrained=True"])
    assert len(written) == 2 and all(os.path.isfile(p) for p in written)
    source = Image.open(DatasetCatalog.get(dataset)[0]["file_name"])
    drawn = Image.open(written[0])
    assert drawn.size == (2 * source.size[0], 2 * source.size[1])  # --scale 2 by default


def test_curves_overlay_runs(tmp_path):
    for name, ap in (("full", 15.0), ("e3va", 9.0)):
        folder = tmp_path / name / "seed0"
        folder.mkdir(parents=True)
        rows = [{"iteration": i, "total_loss": 2.0 - i / 100} for i in range(19, 100, 20)]
        rows.append({"iteration": 100, "bbox/AP": ap, "bbox/APl": float("nan")})
        (folder / "metrics.json").write_text("\n".join(json.dumps(r) for r in rows))
    path = curves.main([str(tmp_path / "full" / "seed0"), str(tmp_path / "e3va" / "seed0")])
    assert path == str(tmp_path / "full" / "seed0" / "curves.png") and os.path.getsize(path) > 0
    assert curves.label(str(tmp_path / "e3va" / "seed0")) == "e3va"
    assert curves.series(curves.read_metrics(str(tmp_path / "e3va" / "seed0")), "bbox/AP") == (
        [100], [9.0])


def test_demo_draws_several_tasks_on_one_trunk(tmp_path):
    """--tasks: one picture per image with a panel per task, from the tasks' deltas."""
    deltas = []
    for i, config in enumerate((MASK_RCNN, UPERNET)):
        torch.manual_seed(i)
        deltas.append(str(tmp_path / f"delta{i}.pth"))
        export_delta(instantiate(load_config(config, ["train.device=cpu"]).model), deltas[-1])
    (written,) = demo.main(["--config-file", MASK_RCNN, "--delta", deltas[0],
                            "--tasks", f"{UPERNET}={deltas[1]}", "--dataset", "shapes_mini_val",
                            "--num-images", "1", "--output", str(tmp_path / "out"),
                            "--opts", "train.device=cpu"])
    source = Image.open(DatasetCatalog.get("shapes_mini_val")[0]["file_name"])
    assert Image.open(written).size == (2 * 2 * source.size[0], 2 * source.size[1])


def test_predictor_refuses_an_untrained_model_as_the_cli_does():
    cfg = load_config(MASK_RCNN, ["train.device=cpu"])
    with pytest.raises(ConfigError, match="never trained.*checkpoint=.*allow_untrained=True"):
        Predictor(cfg)
    assert Predictor(cfg, allow_untrained=True).untrained
    cfg.train.eval_untrained = True
    assert Predictor(cfg).untrained


def test_demo_says_when_nothing_passes_the_threshold(tmp_path, capsys):
    demo.main(["--config-file", MASK_RCNN, "--dataset", "shapes_mini_val", "--num-images", "1",
               "--output", str(tmp_path), "--confidence-threshold", "1.01",
               "--opts", "train.device=cpu", "train.eval_untrained=True"])
    assert "no prediction scores at least --confidence-threshold=1.01" in capsys.readouterr().out


def test_train_net_logs_the_config_with_its_overrides(tmp_path, caplog):
    import train_net

    cfg = load_config(MASK_RCNN, ["train.max_iter=7", f"train.output_dir={tmp_path}"])
    LazyConfig.save(cfg, str(tmp_path / "config.yaml"))  # what default_setup saves
    with caplog.at_level(logging.INFO, logger="e3va_d2"):
        train_net.log_resolved_config(cfg)
    assert "max_iter: 7" in caplog.text and str(tmp_path / "config.yaml") in caplog.text
