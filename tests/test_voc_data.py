"""Pascal VOC data: the shapes VOC export (round trip through detectron2's reader,
determinism, concurrent export, lazy registration) and VOC evaluation of perfect predictions."""
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import load_voc_instances
from detectron2.structures import Boxes, BoxMode, Instances

from e3va_d2.data import (
    ShapesSpec,
    ensure_shapes_split,
    ensure_shapes_voc_split,
    register_shapes_voc,
)
from e3va_d2.data.shapes import THING_CLASSES
from e3va_d2.data.shapes_voc import voc_folder_name
from e3va_d2.evaluation import VOCDetectionEvaluator

from .helpers import race, tree_bytes

SMALL = ShapesSpec(num_images=6, seed=21)


# ---- export ----------------------------------------------------------------------------------


def test_registration_is_lazy_and_sets_voc_metadata(tmp_path):
    names = register_shapes_voc(str(tmp_path), splits={"val": SMALL}, prefix="t_voc_lazy",
                                force=True)
    assert names == ["t_voc_lazy_val"] and "shapes_voc_mini_train" in DatasetCatalog
    meta = MetadataCatalog.get("t_voc_lazy_val")
    assert meta.dirname == str(tmp_path / voc_folder_name(SMALL))
    assert (meta.year, meta.split, meta.thing_classes) == (2007, "val", list(THING_CLASSES))
    assert meta.evaluator_type == "pascal_voc"
    assert os.listdir(tmp_path) == []  # registration generates nothing


def test_voc_export_round_trips_through_detectron2s_reader(tmp_path, monkeypatch):
    register_shapes_voc(str(tmp_path), splits={"val": SMALL}, prefix="t_voc", force=True)
    dicts = DatasetCatalog.get("t_voc_val")
    meta = MetadataCatalog.get("t_voc_val")
    # detectron2 0.6's reader uses np.str, removed in NumPy 2 (main uses str). Set through the
    # module's dict: reading np.str first (as setattr does) warns on NumPy 1.x.
    monkeypatch.setitem(np.__dict__, "str", str)
    assert load_voc_instances(meta.dirname, meta.split, meta.thing_classes) == dicts

    source = ensure_shapes_split(SMALL, root=str(tmp_path))
    with open(source.json_file) as f:
        coco = json.load(f)
    assert [d["image_id"] for d in dicts] == [
        os.path.splitext(im["file_name"])[0] for im in coco["images"]
    ]
    for d, im in zip(dicts, coco["images"]):
        assert (d["height"], d["width"]) == (im["height"], im["width"])
        expected = [
            (a["category_id"] - 1, BoxMode.convert(a["bbox"], BoxMode.XYWH_ABS, BoxMode.XYXY_ABS))
            for a in coco["annotations"]
            if a["image_id"] == im["id"]
        ]
        assert [(a["category_id"], a["bbox"]) for a in d["annotations"]] == expected
        assert all(a["bbox_mode"] == BoxMode.XYXY_ABS for a in d["annotations"])
        with (
            open(d["file_name"], "rb") as f,
            open(os.path.join(source.image_root, im["file_name"]), "rb") as g,
        ):
            assert f.read() == g.read()


def test_export_is_deterministic(tmp_path):
    a = ensure_shapes_voc_split(SMALL, "val", root=str(tmp_path / "a"))
    b = ensure_shapes_voc_split(SMALL, "val", root=str(tmp_path / "b"))
    files = tree_bytes(Path(a))
    assert len(files) == 2 * SMALL.num_images + 2  # jpgs, xmls, split file, marker
    assert files == tree_bytes(Path(b))
    assert ensure_shapes_voc_split(SMALL, "val", root=str(tmp_path / "a")) == a  # cached


_RACE_WORKER = """
from e3va_d2.data.shapes_voc import ensure_shapes_voc_split
barrier.wait(timeout=120)
queue.put(ensure_shapes_voc_split(spec, "val", root=root))
"""


def test_losing_an_export_race_uses_the_winners_folder(tmp_path, monkeypatch):
    """Deterministic race: another export lands between ours finishing and our rename."""
    from e3va_d2.data import cache, shapes_voc

    spec, root = ShapesSpec(num_images=4, seed=23), str(tmp_path / "race")
    source = ensure_shapes_split(spec, root=root)  # the race is about the export only
    real_rename, calls = os.rename, []

    def rename_after_a_rival(src, dst):
        if not calls:
            calls.append(src)
            monkeypatch.setattr(cache.os, "rename", real_rename)
            assert shapes_voc.ensure_shapes_voc_split(spec, "val", root=root) == dst  # the rival
        real_rename(src, dst)  # fails: dst exists and is not empty

    monkeypatch.setattr(cache.os, "rename", rename_after_a_rival)
    folder = shapes_voc.ensure_shapes_voc_split(spec, "val", root=root)
    assert calls and not os.path.exists(calls[0])  # our copy was really made, then discarded
    expected = [os.path.basename(source.root), os.path.basename(folder)]
    assert sorted(os.listdir(root)) == sorted(expected)
    reference = ensure_shapes_voc_split(spec, "val", root=str(tmp_path / "reference"))
    assert tree_bytes(Path(folder)) == tree_bytes(Path(reference))


def test_concurrent_export_yields_one_complete_folder(tmp_path):
    spec, root = ShapesSpec(num_images=12, seed=22), str(tmp_path / "race")
    source = ensure_shapes_split(spec, root=root)  # the race is about the export only
    results = race(_RACE_WORKER, {"spec": spec, "root": root})
    assert results[0] == results[1]
    expected = sorted([os.path.basename(source.root), voc_folder_name(spec)])
    assert sorted(os.listdir(root)) == expected  # the loser discarded its temp copy
    reference = ensure_shapes_voc_split(spec, "val", root=str(tmp_path / "reference"))
    assert tree_bytes(Path(results[0])) == tree_bytes(Path(reference))


# ---- evaluation ------------------------------------------------------------------------------


def _predictions(dicts, shift=0.0):
    outputs = []
    for d in dicts:
        boxes = torch.tensor([a["bbox"] for a in d["annotations"]]).reshape(-1, 4)
        inst = Instances((d["height"], d["width"]))
        inst.pred_boxes = Boxes(boxes + torch.tensor([shift, 0.0, shift, 0.0]))
        inst.scores = torch.ones(len(boxes))
        inst.pred_classes = torch.tensor([a["category_id"] for a in d["annotations"]]).long()
        outputs.append({"instances": inst})
    return outputs


def test_perfect_predictions_give_voc2007_ap50_of_100(caplog):
    dicts = DatasetCatalog.get("shapes_voc_mini_val")
    evaluator = VOCDetectionEvaluator("shapes_voc_mini_val")
    evaluator.reset()
    evaluator.process(dicts, _predictions(dicts))
    with caplog.at_level(logging.INFO, logger="e3va_d2.evaluation"):
        results = evaluator.evaluate()
    assert results["bbox"]["AP50"] == pytest.approx(100.0)
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert "VOC2007 11-point AP50 on shapes_voc_mini_val: 100.00" in caplog.text

    evaluator.reset()
    evaluator.process(dicts, _predictions(dicts, shift=12.0))  # worse boxes, lower AP
    assert evaluator.evaluate()["bbox"]["AP75"] < 100.0


def test_evaluator_exports_a_generated_dataset_before_reading_it(tmp_path):
    register_shapes_voc(str(tmp_path), splits={"val": SMALL}, prefix="t_voc_eval", force=True)
    meta = MetadataCatalog.get("t_voc_eval_val")
    assert not os.path.exists(meta.dirname)
    evaluator = VOCDetectionEvaluator("t_voc_eval_val")
    assert os.path.isfile(os.path.join(meta.dirname, "ImageSets", "Main", "val.txt"))
    dicts = DatasetCatalog.get("t_voc_eval_val")
    evaluator.reset()
    evaluator.process(dicts, _predictions(dicts))
    assert evaluator.evaluate()["bbox"]["AP50"] == pytest.approx(100.0)
