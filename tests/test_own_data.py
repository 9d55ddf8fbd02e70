"""One's own COCO data in one config (docs/DATA.md): the shipped configs by name from anywhere,
the class count from the json, and the walk-through of docs/DATA.md run as written."""
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile

import pytest
from detectron2.config import LazyConfig, instantiate
from omegaconf import OmegaConf

from e3va_d2.config import (
    ConfigError,
    coco_json_config,
    get_config,
    get_config_file,
    shipped_configs,
)

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
CUSTOM = os.path.join(ROOT, "configs", "Custom", "own_coco_data.py")


def write_coco(folder, categories=((1, "red box"), (2, "blue box")), rle=False, images=2):
    """A tiny COCO instances json (and blank images) under ``folder``; returns its path."""
    from PIL import Image

    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    anns = []
    for i in range(images):
        Image.new("RGB", (64, 48)).save(os.path.join(folder, "images", f"{i}.png"))
        for cid, _ in categories:
            seg = ({"size": [48, 64], "counts": "0"} if rle
                   else [[4, 4, 20, 4, 20, 20, 4, 20]])
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": cid, "iscrowd": 0,
                         "bbox": [4, 4, 16, 16], "area": 256, "segmentation": seg})
    path = os.path.join(folder, "ann.json")
    with open(path, "w") as f:
        json.dump({"images": [{"id": i, "file_name": f"{i}.png", "height": 48, "width": 64}
                              for i in range(images)],
                   "annotations": anns,
                   "categories": [{"id": c, "name": n} for c, n in categories]}, f)
    return path


def test_shipped_configs_load_by_name_from_a_copy_elsewhere(tmp_path, monkeypatch):
    """A copied shipped config fails (its bases are relative imports); one that names the
    shipped config through get_config loads from any folder."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py"), "copy.py")
    with pytest.raises(ImportError):
        LazyConfig.load("copy.py")
    (tmp_path / "mine.py").write_text(
        "from e3va_d2.config import get_config\n"
        "_base = get_config('COCO/cascade_mask_rcnn_swin_b_e3va.py')\n"
        "model, train = _base.model, _base.train\n"
        "train.max_iter = 7\n")
    cfg = LazyConfig.load("mine.py")
    assert cfg.train.max_iter == 7 and cfg.model.roi_heads.num_classes == 80
    assert get_config_file("configs/Shapes/mask_rcnn_swin_demo_e3va.py") == os.path.join(
        ROOT, "configs", "Shapes", "mask_rcnn_swin_demo_e3va.py")
    assert "COCO/cascade_mask_rcnn_swin_b_e3va.yaml" in shipped_configs()
    assert get_config("Shapes/mask_rcnn_swin_demo_e3va.yaml").MODEL.SWIN.EMBED_DIM > 0
    with pytest.raises(ConfigError, match="Did you mean COCO/cascade_mask_rcnn_swin_b_e3va.py"):
        get_config("COCO/cascade_mask_rcnn_swin_b_e3av.py")


def test_coco_json_config_takes_classes_and_data_from_the_json(tmp_path):
    ann = write_coco(str(tmp_path / "three"), categories=((1, "a"), (5, "b"), (7, "c")))
    cfg = coco_json_config(json=ann, image_root=str(tmp_path / "three" / "images"),
                           config="COCO/cascade_mask_rcnn_swin_b_e3va.py", name="own_three")
    resolved = OmegaConf.to_container(cfg.model.roi_heads, resolve=True)
    assert resolved["num_classes"] == 3
    # the cascade's three box predictors and the mask head follow it
    assert [p["num_classes"] for p in resolved["box_predictors"]] == [3, 3, 3]
    assert resolved["mask_head"]["num_classes"] == 3
    dicts = instantiate(cfg.dataloader.train.dataset)
    assert sorted({a["category_id"] for d in dicts for a in d["annotations"]}) == [0, 1, 2]
    assert cfg.dataloader.evaluator.dataset_name == "own_three"
    assert cfg.train.output_dir.endswith(os.path.join("own_three", "cascade_mask_rcnn_swin_b_e3va"))
    from detectron2.data import MetadataCatalog

    assert MetadataCatalog.get("own_three").thing_classes == ["a", "b", "c"]


def test_coco_json_config_on_retinanet_and_rle_masks(tmp_path):
    ann = write_coco(str(tmp_path / "rle"), rle=True)
    images = str(tmp_path / "rle" / "images")
    cfg = coco_json_config(json=ann, image_root=images,
                           config="PascalVOC/retinanet_swin_l_e3va.py", name="own_rle_retina")
    assert cfg.model.num_classes == 2
    mask = coco_json_config(json=ann, image_root=images, name="own_rle_mask",
                            config="COCO/cascade_mask_rcnn_swin_b_e3va.py")
    assert mask.dataloader.train.mapper.instance_mask_format == "bitmask"


def test_coco_json_config_errors_name_the_problem(tmp_path):
    ann = write_coco(str(tmp_path / "d"))
    images = str(tmp_path / "d" / "images")
    with pytest.raises(ConfigError, match="does not exist"):
        coco_json_config(json=str(tmp_path / "nope.json"), image_root=images,
                         config="Shapes/mask_rcnn_swin_demo_e3va.py")
    with pytest.raises(ConfigError, match="no detector"):
        coco_json_config(json=ann, image_root=images, config="Shapes/upernet_swin_demo_e3va.py",
                         name="own_seg")
    other = write_coco(str(tmp_path / "e"), categories=((1, "x"),))
    with pytest.raises(ConfigError, match="categories of"):
        coco_json_config(json=ann, image_root=images, test_json=other, name="own_mixed",
                         config="Shapes/mask_rcnn_swin_demo_e3va.py")
    coco_json_config(json=ann, image_root=images, name="own_taken",
                     config="Shapes/mask_rcnn_swin_demo_e3va.py")
    with pytest.raises(ConfigError, match="is taken"):
        coco_json_config(json=other, image_root=images, name="own_taken",
                         config="Shapes/mask_rcnn_swin_demo_e3va.py")
    (tmp_path / "bad.json").write_text('{"images": []}')
    with pytest.raises(ConfigError, match="no usable 'categories'"):
        coco_json_config(json=str(tmp_path / "bad.json"), image_root=images,
                         config="Shapes/mask_rcnn_swin_demo_e3va.py")


def test_custom_example_config_loads_on_its_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    os.makedirs("mydata")
    ann = write_coco(str(tmp_path / "mydata"))
    shutil.copy(ann, "mydata/train.json")
    shutil.copy(ann, "mydata/val.json")
    cfg = LazyConfig.load(CUSTOM)
    assert cfg.model.roi_heads.num_classes == 2
    assert set(cfg) == {"model", "dataloader", "optimizer", "lr_multiplier", "train"}


def doc_commands(path):
    """The ```bash blocks of a doc, in order."""
    with open(path) as f:
        text = f.read()
    section = text[text.index("## Your own data in one config"):]
    return re.findall(r"```bash\n(.*?)```", section, re.S)


@pytest.mark.slow
def test_data_md_walk_through_runs(tmp_path):
    """docs/DATA.md's walk-through as written (write the data, look at it, train, evaluate,
    draw), from a folder that holds the repository's entry points, with 2 iterations."""
    for name in ("configs", "projects", "train_net.py"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    steps = doc_commands(os.path.join(ROOT, "docs", "DATA.md"))
    assert len(steps) == 5
    steps[2] = steps[2].replace("train.max_iter=300", "train.max_iter=2")
    assert "train.max_iter=2" in steps[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT,
           "PATH": os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"]}
    logs = []
    for step in steps:
        out = subprocess.run(["bash", "-euo", "pipefail", "-c", step], cwd=tmp_path, env=env,
                             capture_output=True, text=True, timeout=300)
        logs.append(out.stdout + out.stderr)
        assert out.returncode == 0, f"{step}\n{logs[-1][-3000:]}"
    run = tmp_path / "output" / "train" / "mask_rcnn_swin_demo_e3va"
    assert len(os.listdir(tmp_path / "output" / "mydata_ground_truth")) == 4
    assert (run / "model_final.pth").is_file()
    assert "Per-category bbox AP" in logs[2] and "red box" in logs[2]
    assert "copypaste: " in logs[3]
    assert len(os.listdir(run / "predictions")) == 4


@pytest.mark.slow
def test_wheel_carries_the_configs(tmp_path):
    """A regular (non-editable) install finds the configs inside the package."""
    source = tmp_path / "source"  # a copy: setuptools builds in the tree it is given
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for name in ("e3va_d2", "configs"):
        shutil.copytree(os.path.join(ROOT, name), source / name, ignore=ignore)
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(os.path.join(ROOT, name), source / name)
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-q", str(source), "-w", str(tmp_path / "wheel")], check=True,
                   cwd=tmp_path, capture_output=True, timeout=300)
    (wheel,) = os.listdir(tmp_path / "wheel")
    zipfile.ZipFile(tmp_path / "wheel" / wheel).extractall(tmp_path / "site")
    code = ("import e3va_d2.config as c; print(c.configs_root()); "
            "print(c.get_config('Shapes/mask_rcnn_swin_demo_e3va.py').train.max_iter)")
    out = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                         text=True, env={**os.environ, "PYTHONPATH": str(tmp_path / "site")},
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    root, max_iter = out.stdout.split()[-2:]
    assert root == str(tmp_path / "site" / "e3va_d2" / "configs") and int(max_iter) > 0
