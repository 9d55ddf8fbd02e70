"""The pre-text task and its pre-training script: scenes are a function of their index, their
labels say what is drawn, no downstream class is a pre-text class, and a run stopped and started
again ends with the very weights and records an uninterrupted run writes."""
from __future__ import annotations

import itertools
import json
import os

import numpy as np
import pytest
import torch

from e3va_d2.data.shapes_render import THING_CLASSES
from projects.pretrain import pretrain_swin
from projects.pretrain.pretext import (
    BACKGROUND,
    SCENE_CLASSES,
    STYLES,
    SceneStream,
    render_scene,
    token_labels,
)


def test_scenes_are_a_function_of_their_index():
    a, b = render_scene(100, 7), render_scene(100, 7)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.class_map, b.class_map)
    assert not np.array_equal(a.image, render_scene(101, 7).image)


def test_labels_describe_the_scene():
    for index in range(40):
        scene = render_scene(100, index)
        drawn = set(np.unique(scene.class_map).tolist()) - {BACKGROUND}
        assert scene.label in drawn  # the main glyph is visible
        assert drawn <= set(range(len(SCENE_CLASSES)))
        assert (scene.class_map == scene.label).sum() >= 30
        # Every labelled pixel has a style and the reverse.
        assert np.array_equal(scene.class_map == BACKGROUND, scene.style_map == BACKGROUND)
    labels = [render_scene(100, i).label for i in range(300)]
    assert len(set(labels)) > 30  # classes are drawn uniformly


def test_downstream_classes_stay_out_of_the_pretext():
    banned = set(THING_CLASSES) | {"square", "circle", "disc", "diamond"}
    assert not banned & set(SCENE_CLASSES)
    assert "stripes" not in STYLES and "checks" not in STYLES  # the far regime's textures


def test_token_labels_match_a_direct_count():
    label_map = np.full((20, 20), BACKGROUND, dtype=np.int16)
    label_map[0:8, 0:8] = 3  # fills token (0, 0) of an 8-pixel grid
    label_map[8:10, 8:16] = 5  # a quarter of token (1, 1)
    label_map[16:18, 16:18] = 1  # a quarter of the corner token's 4 x 4 pixels inside the image
    label_map[0:3, 8:13] = 2  # 15 of token (0, 1)'s 64 pixels: under a quarter
    labels = token_labels(label_map, 8, 6)
    assert labels.shape == (3, 3)
    assert labels[0, 0] == 3 and labels[1, 1] == 5 and labels[2, 2] == 1
    assert labels[0, 1] == 6 and labels[0, 2] == 6  # background


def test_stream_gives_token_labels_per_stride():
    image, label, style, dense = SceneStream(100, 2, token_strides=(16, 32))[1]
    assert image.shape == (3, 112, 112) and image.dtype == torch.float32
    assert dense["class@16"].shape == (7, 7) and dense["class@32"].shape == (4, 4)
    assert int(dense["class@16"].max()) <= len(SCENE_CLASSES)
    assert 0 <= label < len(SCENE_CLASSES) and 0 <= style < len(STYLES)


TINY = ["--embed-dim", "16", "--depths", "1", "1", "2", "1", "--num-heads", "1", "1", "2", "2",
        "--batch-size", "4", "--steps", "4", "--warmup-steps", "2", "--val-images", "8",
        "--eval-period", "2", "--checkpoint-period", "1", "--log-period", "2", "--workers", "0",
        "--threads", str(torch.get_num_threads())]


def _records(run_dir) -> list:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    for row in rows:
        row.pop("images_per_s", None)  # a time, not a result
    return rows


def test_a_stopped_run_resumes_exactly(tmp_path, monkeypatch):
    straight, stopped = tmp_path / "straight", tmp_path / "stopped"
    pretrain_swin.main(["--run-dir", str(straight)] + TINY)
    # Stop after every step (a checkpoint each), then start again until done.
    clock = itertools.count(0, 1000)
    monkeypatch.setattr(pretrain_swin.time, "time", lambda: float(next(clock)))
    steps = [pretrain_swin.main(["--run-dir", str(stopped), "--max-minutes", "1"] + TINY)["step"]
             for _ in range(4)]
    monkeypatch.undo()
    assert steps == [1, 2, 3, 4]
    final = pretrain_swin.main(["--run-dir", str(stopped)] + TINY)
    a = torch.load(straight / "last_checkpoint.pth", weights_only=True)
    b = torch.load(stopped / "last_checkpoint.pth", weights_only=True)
    assert a["step"] == b["step"] == 4
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    assert _records(straight) == _records(stopped)
    shipped = [torch.load(d / "swin.pth", weights_only=True) for d in (straight, stopped)]
    for key, value in shipped[0]["model"].items():
        assert torch.equal(value, shipped[1]["model"][key]), key
    for meta in (s["meta"] for s in shipped):
        meta.pop("train_hours")
    assert shipped[0]["meta"] == shipped[1]["meta"]
    assert final["val_accuracy"] >= 0


def test_resume_refuses_another_recipe(tmp_path):
    pretrain_swin.main(["--run-dir", str(tmp_path)] + TINY)
    with pytest.raises(SystemExit, match="other settings"):
        pretrain_swin.main(["--run-dir", str(tmp_path)] + TINY + ["--lr", "0.01"])


def test_the_shipped_layout_is_the_official_classifier(tmp_path):
    pretrain_swin.main(["--run-dir", str(tmp_path)] + TINY)
    state = torch.load(tmp_path / "swin.pth", weights_only=True)["model"]
    assert "norm.weight" in state and "head.weight" in state
    assert not any(k.startswith(("norm2", "norm3", "dense", "style")) for k in state)


@pytest.mark.parametrize("option", ["--record", "--plot"])
def test_a_run_folder_without_its_state_is_refused_by_name(tmp_path, option):
    """Run state is not committed, so on a fresh clone the shipped trunk's run folder is empty:
    --record and --plot say what is missing and where the committed curve is (--record failed
    with a bare FileNotFoundError)."""
    argv = ["--run-dir", str(tmp_path), option] + (["pretrain-scenes"] if option == "--record"
                                                  else [])
    with pytest.raises(SystemExit, match="no last_checkpoint.pth or metrics.jsonl") as stop:
        pretrain_swin.main(argv)
    assert "docs/records/pretrain-scenes.json" in str(stop.value)
    assert os.listdir(tmp_path) == []  # nothing written, the docs table untouched
