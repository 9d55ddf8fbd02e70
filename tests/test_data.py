"""Tests of the data layer: synthetic shapes cache, registration, loading errors, validation."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.structures import Boxes, BoxMode, Instances
from PIL import Image
from pycocotools.coco import COCO

from e3va_d2.data import (
    DatasetError,
    ShapesSpec,
    check_sem_seg_labels,
    ensure_shapes_split,
    load_dataset_dicts,
    load_sem_seg_dicts,
    register_shapes,
    validate_dataset_dicts,
)
from e3va_d2.data.shapes import default_cache_root, shapes_folder_name

from .helpers import race, tree_bytes

SMALL = ShapesSpec(num_images=8, seed=5)


@pytest.fixture(autouse=True)
def _tmp_cache(monkeypatch, tmp_path):
    """Never touch the user's cache: default generation goes to a per-test folder."""
    monkeypatch.setenv("E3VA_D2_DATASETS", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def small_split(tmp_path_factory):
    """Registered and generated 't_shapes_val' / 't_shapes_sem_seg_val' (8 images)."""
    root = tmp_path_factory.mktemp("shapes_cache")
    register_shapes(str(root), splits={"val": SMALL}, prefix="t_shapes")
    return ensure_shapes_split("t_shapes_val")


def test_generation_is_deterministic(tmp_path):
    spec = ShapesSpec(num_images=6, seed=3)
    a = ensure_shapes_split(spec, root=str(tmp_path / "a"))
    b = ensure_shapes_split(spec, root=str(tmp_path / "b"))
    files_a, files_b = tree_bytes(Path(a.root)), tree_bytes(Path(b.root))
    assert len(files_a) == 2 * 6 + 2  # images, label maps, json, marker
    assert files_a == files_b
    other = ensure_shapes_split(ShapesSpec(num_images=6, seed=4), root=str(tmp_path / "a"))
    assert other.root != a.root
    assert tree_bytes(Path(other.root))["annotations.json"] != files_a["annotations.json"]


def test_cache_root_env_and_folder_name(tmp_path):
    assert default_cache_root() == str(tmp_path / "cache")
    paths = ensure_shapes_split(SMALL)
    assert paths.root == str(tmp_path / "cache" / shapes_folder_name(SMALL))
    assert shapes_folder_name(SMALL).startswith("shapes-v")
    assert shapes_folder_name(SMALL) != shapes_folder_name(ShapesSpec(num_images=9, seed=5))


def fill_contrast(fill):
    """Median over a few one-object images: how far the object's mean colour is from a 4-pixel
    band around it, and its mean step between horizontally neighbouring pixels."""
    from e3va_d2.data.shapes import _render

    colour_steps, roughness = [], []
    for index in range(6):
        image, owner, _ = _render(ShapesSpec(seed=9, fill=fill, max_objects=1), index)
        image = image.astype(np.float32)
        inside = owner == 0
        ring = np.zeros_like(inside)  # a 4-pixel band around the object
        ys, xs = np.nonzero(inside)
        y0, y1, x0, x1 = ys.min() - 4, ys.max() + 5, xs.min() - 4, xs.max() + 5
        ring[max(y0, 0):y1, max(x0, 0):x1] = True
        ring &= ~inside
        colour_steps.append(np.abs(image[inside].mean(0) - image[ring].mean(0)).sum())
        dx = np.abs(np.diff(image, axis=1)).sum(-1)[inside[:, 1:] & inside[:, :-1]]
        roughness.append(dx.mean())
    return np.median(colour_steps), np.median(roughness)


def test_texture_fill_sets_objects_apart_by_texture_not_colour():
    """Texture-filled objects: close in mean colour to what surrounds them, but with far more
    pixel-to-pixel variation than solid ones; solid specs keep their folder names."""
    assert shapes_folder_name(ShapesSpec()) == "shapes-v1-4df184f189"  # unchanged by `fill`
    assert shapes_folder_name(ShapesSpec(fill="texture")) != shapes_folder_name(ShapesSpec())
    with pytest.raises(ValueError, match="fill"):
        ShapesSpec(fill="plaid")

    solid_step, solid_rough = fill_contrast("solid")
    texture_step, texture_rough = fill_contrast("texture")
    assert texture_step < 0.5 * solid_step, (texture_step, solid_step)
    assert texture_rough > 3 * solid_rough, (texture_rough, solid_rough)


def test_dots_and_rings_are_colour_matched_textures_and_object_scale_names_its_folder():
    """The accuracy study's third regime: dots or rings, matched in mean colour as the texture
    fill is; a non-default object scale names a folder of its own, the default none."""
    solid_step, solid_rough = fill_contrast("solid")
    step, rough = fill_contrast("dots_rings")
    assert step < 0.5 * solid_step, (step, solid_step)
    assert rough > 2 * solid_rough, (rough, solid_rough)
    assert shapes_folder_name(ShapesSpec(object_scale=(0.12, 0.45))) == "shapes-v1-4df184f189"
    assert shapes_folder_name(ShapesSpec(object_scale=(0.08, 0.25))) != "shapes-v1-4df184f189"
    with pytest.raises(ValueError, match="object_scale"):
        ShapesSpec(object_scale=(0.3, 0.2))


def test_json_masks_boxes_and_sem_seg_agree(small_split):
    coco = COCO(small_split.json_file)
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == [
        "rectangle",
        "ellipse",
        "triangle",
    ]
    sizes = set()
    for img in coco.loadImgs(coco.getImgIds()):
        h, w = img["height"], img["width"]
        sizes.add((h, w))
        assert SMALL.min_size <= h <= SMALL.max_size and SMALL.min_size <= w <= SMALL.max_size
        with Image.open(os.path.join(small_split.image_root, img["file_name"])) as im:
            assert im.size == (w, h) and im.mode == "RGB"
        stem = os.path.splitext(img["file_name"])[0]
        sem = np.asarray(Image.open(os.path.join(small_split.sem_seg_root, stem + ".png")))
        assert sem.shape == (h, w) and sem.dtype == np.uint8
        anns = coco.loadAnns(coco.getAnnIds(imgIds=img["id"]))
        assert 1 <= len(anns) <= SMALL.max_objects
        union = np.zeros((h, w), dtype=np.int64)
        for ann in anns:
            assert ann["iscrowd"] == 0
            mask = coco.annToMask(ann).astype(bool)
            assert mask.sum() == ann["area"] >= SMALL.min_visible_area
            ys, xs = np.nonzero(mask)
            x, y, bw, bh = ann["bbox"]
            assert (x, y, x + bw, y + bh) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert np.all(sem[mask] == ann["category_id"])
            union += mask
        assert union.max() == 1  # visible masks never overlap
        assert np.array_equal(union == 1, sem > 0)  # every labeled pixel belongs to an instance
    assert len(sizes) > 1


_RACE_WORKER = """
import os
from e3va_d2.data.shapes import ensure_shapes_split, shapes_folder_name
barrier.wait(timeout=120)
existed = os.path.exists(os.path.join(root, shapes_folder_name(spec)))
queue.put((existed, ensure_shapes_split(spec, root=root).json_file))
"""


def test_concurrent_generation_yields_one_complete_dataset(tmp_path):
    spec, root = ShapesSpec(num_images=24, seed=11), str(tmp_path / "race")
    results = race(_RACE_WORKER, {"spec": spec, "root": root})
    assert [existed for existed, _ in results] == [False, False]  # both really generated
    assert results[0][1] == results[1][1]
    assert os.listdir(root) == [shapes_folder_name(spec)]  # the loser discarded its temp copy
    reference = ensure_shapes_split(spec, root=str(tmp_path / "reference"))
    assert tree_bytes(Path(root) / shapes_folder_name(spec)) == tree_bytes(Path(reference.root))


_SLOW_WORKER = """
import time
import e3va_d2.data.shapes as shapes
render = shapes._render
def slow(spec, index):
    time.sleep(0.1)
    return render(spec, index)
shapes._render = slow
shapes.ensure_shapes_split(spec, root=root)
"""


def test_interrupted_generation_is_never_used(tmp_path):
    ctx = mp.get_context("spawn")
    spec, root = ShapesSpec(num_images=40, seed=12), tmp_path / "killed"
    proc = ctx.Process(target=exec, args=(_SLOW_WORKER, {"spec": spec, "root": str(root)}))
    proc.start()
    deadline = time.time() + 120
    while time.time() < deadline and not list(root.glob(".shapes-*/images/000002.jpg")):
        time.sleep(0.05)
    proc.kill()
    proc.join(timeout=30)
    leftovers = list(root.glob(".shapes-*"))
    assert len(leftovers) == 1 and not (root / shapes_folder_name(spec)).exists()

    paths = ensure_shapes_split(spec, root=str(root))
    with open(paths.json_file) as f:
        assert len(json.load(f)["images"]) == spec.num_images
    assert len(os.listdir(paths.image_root)) == spec.num_images

    # A target folder that was not produced by an atomic rename is reported, not used.
    broken = ShapesSpec(num_images=3, seed=13)
    (tmp_path / "partial" / shapes_folder_name(broken) / "images").mkdir(parents=True)
    with pytest.raises(DatasetError, match="Delete it"):
        ensure_shapes_split(broken, root=str(tmp_path / "partial"))


def test_a_copy_finished_by_another_process_between_the_checks_is_used(tmp_path, monkeypatch):
    """Two processes on a fresh cache (CI's two test workers): the other one renamed its
    complete copy into place just after this one found none; this one then saw a folder and
    called it incomplete (DatasetError) instead of using it."""
    from e3va_d2.data import cache

    root, name = tmp_path / "cache", "shapes-x"
    original, looked = cache.is_complete, []

    def then_the_other_process_finishes(folder):
        complete = original(folder)
        if not looked:  # the other writer's atomic rename lands right after the first look
            looked.append(folder)
            theirs = tmp_path / "theirs"
            theirs.mkdir()
            (theirs / "data.txt").write_text("theirs")
            (theirs / cache.MARKER).touch()
            root.mkdir()
            os.rename(theirs, root / name)
        return complete

    monkeypatch.setattr(cache, "is_complete", then_the_other_process_finishes)
    final = cache.build_folder_once(str(root), name, lambda folder: pytest.fail("wrote again"),
                                    "shapes dataset")
    assert final == str(root / name) and (root / name / "data.txt").read_text() == "theirs"


def test_registration_is_lazy_and_idempotent(tmp_path):
    root = tmp_path / "lazy"
    names = register_shapes(str(root), splits={"val": SMALL}, prefix="t_lazy")
    assert names == ["t_lazy_val", "t_lazy_sem_seg_val"]
    assert register_shapes(str(root), splits={"val": SMALL}, prefix="t_lazy") == names
    register_shapes()  # default splits registered at import: a no-op
    assert "shapes_train" in DatasetCatalog and "shapes_sem_seg_val" in DatasetCatalog
    assert not root.exists()  # nothing generated yet

    meta = MetadataCatalog.get("t_lazy_val")
    assert meta.thing_classes == ["rectangle", "ellipse", "triangle"]
    assert meta.evaluator_type == "coco" and len(meta.thing_colors) == 3
    assert meta.json_file.startswith(str(root))
    dicts = load_dataset_dicts("t_lazy_val")  # path checks must not trip before generation
    assert os.path.isfile(meta.json_file) and len(dicts) == SMALL.num_images
    ann = dicts[0]["annotations"][0]
    assert ann["bbox_mode"] == BoxMode.XYWH_ABS and 0 <= ann["category_id"] < 3

    sem_meta = MetadataCatalog.get("t_lazy_sem_seg_val")
    assert sem_meta.stuff_classes == ["background", "rectangle", "ellipse", "triangle"]
    assert sem_meta.ignore_label == 255 and sem_meta.evaluator_type == "sem_seg"
    sem_dicts = DatasetCatalog.get("t_lazy_sem_seg_val")
    assert set(sem_dicts[0]) == {"file_name", "sem_seg_file_name", "height", "width", "image_id"}
    assert len(os.listdir(root)) == 1  # both variants share one cache folder

    # force=True re-registers, e.g. after the cache location changed
    register_shapes(str(tmp_path / "moved"), splits={"val": SMALL}, prefix="t_lazy", force=True)
    assert MetadataCatalog.get("t_lazy_val").json_file.startswith(str(tmp_path / "moved"))
    assert not (tmp_path / "moved").exists()


def test_load_dataset_dicts_and_sem_seg_dicts(small_split):
    dicts = load_dataset_dicts("t_shapes_val")
    assert len(dicts) == SMALL.num_images and all(d["annotations"] for d in dicts)
    sem = load_sem_seg_dicts(["t_shapes_sem_seg_val"])
    assert len(sem) == SMALL.num_images and "sem_seg_file_name" in sem[0]
    with pytest.raises(DatasetError, match="not a semantic segmentation dataset"):
        load_sem_seg_dicts("t_shapes_val")


def test_load_dataset_dicts_unregistered():
    with pytest.raises(DatasetError, match="not registered") as info:
        load_dataset_dicts("t_shapes_vall")
    assert "register_coco_instances" in str(info.value) and "t_shapes_val" in str(info.value)


def test_load_dataset_dicts_missing_json(tmp_path, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", "/data/somewhere")
    register_coco_instances("t_missing_json", {}, str(tmp_path / "nope.json"), str(tmp_path))
    with pytest.raises(DatasetError) as info:
        load_dataset_dicts("t_missing_json")
    text = str(info.value)
    assert "nope.json" in text and "DETECTRON2_DATASETS" in text and "/data/somewhere" in text
    assert "datasets/README.md" in text


@pytest.mark.parametrize(
    "content", ['{"images": [{"id": 1', '{"images": [}, "annotations": []}', ""]
)
def test_load_dataset_dicts_malformed_json(tmp_path, content):
    path = tmp_path / "broken.json"
    path.write_text(content)
    name = f"t_broken_json_{abs(hash(content))}"
    register_coco_instances(name, {}, str(path), str(tmp_path))
    with pytest.raises(DatasetError, match="not valid JSON") as info:
        load_dataset_dicts(name)
    assert str(path) in str(info.value)


def _dicts(**override) -> list:
    good = {"bbox": [10, 10, 20, 20], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 1}
    image = {"file_name": "img_7.jpg", "image_id": 7, "height": 100, "width": 120}
    return [
        dict(image, image_id=6, annotations=[dict(good)]),
        dict(image, annotations=[dict(good), dict(good, **override)]),
    ]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"bbox_mode": BoxMode.XYXY_REL}, "not absolute"),
        ({"bbox_mode": None}, "not absolute"),
        ({"bbox": [10, 10, -5, 3]}, "negative size"),
        ({"bbox": [30, 10, 20, 40], "bbox_mode": BoxMode.XYXY_ABS}, "negative size"),
        ({"bbox": [10, float("nan"), 5, 3]}, "not finite"),
        ({"category_id": 3}, r"outside \[0, 3\)"),
        ({"category_id": -1}, "outside"),
        ({"bbox": [130, 10, 20, 20]}, "entirely outside"),
    ],
)
def test_validate_dataset_dicts_catches(override, message):
    validate_dataset_dicts(_dicts(), dataset_name="toy", num_classes=3)  # the good case passes
    with pytest.raises(DatasetError, match=message) as info:
        validate_dataset_dicts(_dicts(**override), dataset_name="toy", num_classes=3)
    text = str(info.value)
    assert "'toy'" in text and "img_7.jpg" in text and "image_id=7" in text
    assert "annotation #1" in text


def test_validate_dataset_dicts_image_size():
    dicts = _dicts()
    dicts[1]["height"] = 0
    with pytest.raises(DatasetError, match="height=0"):
        validate_dataset_dicts(dicts, dataset_name="toy", num_classes=3)
    del dicts[1]["height"]
    with pytest.raises(DatasetError, match="height=None"):
        validate_dataset_dicts(dicts, dataset_name="toy", num_classes=3)


def test_validate_uses_metadata_num_classes(small_split):
    dicts = DatasetCatalog.get("t_shapes_val")
    dicts[0]["annotations"][0]["category_id"] = 3
    with pytest.raises(DatasetError, match=r"outside \[0, 3\)"):
        validate_dataset_dicts(dicts, dataset_name="t_shapes_val")


def test_check_sem_seg_labels(tmp_path):
    labels = np.zeros((20, 30), dtype=np.uint8)
    labels[:5] = 149
    labels[5:10] = 255
    ok = tmp_path / "ok.png"
    Image.fromarray(labels).save(ok)
    check_sem_seg_labels([{"sem_seg_file_name": str(ok)}], num_classes=150)
    labels[10:] = 150  # e.g. raw ADE20K labels without the -1 offset
    bad = tmp_path / "bad.png"
    Image.fromarray(labels).save(bad)
    dicts = [{"sem_seg_file_name": str(ok)}, {"sem_seg_file_name": str(bad)}]
    with pytest.raises(DatasetError, match="prepare_ade20k_sem_seg.py") as info:
        check_sem_seg_labels(dicts, num_classes=150, ignore_label=255)
    assert "[150]" in str(info.value) and "mIoU" in str(info.value)
    palette = Image.fromarray(np.full((4, 4), 2, dtype=np.uint8), mode="P")
    palette.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    palette.save(tmp_path / "palette.png")
    with pytest.raises(DatasetError, match="mode 'P'"):
        check_sem_seg_labels([{"sem_seg_file_name": str(tmp_path / "palette.png")}], 3)


def test_coco_evaluator_perfect_predictions_give_ap_100(small_split, tmp_path):
    from detectron2.evaluation import COCOEvaluator

    evaluator = COCOEvaluator("t_shapes_val", output_dir=str(tmp_path), use_fast_impl=False)
    evaluator.reset()
    for d in DatasetCatalog.get("t_shapes_val"):
        anns = d["annotations"]
        inst = Instances((d["height"], d["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.tensor([a["category_id"] for a in anns])
        masks = np.stack([mask_util.decode(a["segmentation"]) for a in anns])
        inst.pred_masks = torch.from_numpy(masks).bool()
        evaluator.process([{"image_id": d["image_id"]}], [{"instances": inst}])
    results = evaluator.evaluate()
    assert results["bbox"]["AP"] > 99 and results["segm"]["AP"] > 99
