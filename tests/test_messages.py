"""Every failure names what is wrong (the key, file or variable) and the fix: a truncated delta,
a folder given as a checkpoint, a last_checkpoint naming another run's file, an unquoted
override with spaces, an RLE mask of another size, a corrupt generated dataset, a dataset
variable naming a file, a full disk while the delta is saved. Each used to end in a bare
library error (or, for last_checkpoint, in continuing another run)."""
import json
import logging
import os

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from torch import nn

from e3va_d2.checkpoint import E3VACheckpointer, export_delta, load_delta
from e3va_d2.checkpoint.files import CheckpointWriteError
from e3va_d2.config import ConfigError, load_config
from e3va_d2.data import DatasetError, ShapesSpec, load_dataset_dicts, validate_dataset_dicts
from e3va_d2.data.shapes import ensure_shapes_split, register_shapes
from e3va_d2.engine import E3VATrainer
from e3va_d2.modeling.pretrained import CheckpointReadError, read_checkpoint

from .helpers import short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")


def test_a_truncated_delta_is_named(tmp_path):
    model = nn.Linear(8, 4)
    path = tmp_path / "model_final_delta.pth"
    export_delta(model, str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # an interrupted copy
    with pytest.raises(CheckpointReadError, match=f"{path} is not a readable delta .* "
                       "truncated"):
        load_delta(model, str(path))


def test_a_folder_given_as_a_checkpoint_is_called_a_folder(tmp_path):
    torch.save({"model": nn.Linear(2, 2).state_dict()}, tmp_path / "model_final.pth")
    checkpointer = E3VACheckpointer(nn.Linear(2, 2))
    for load in (checkpointer.load, read_checkpoint):  # init_checkpoint; a backbone's weights
        with pytest.raises(CheckpointReadError, match=f"{tmp_path} is a folder, not a file: "
                           f".* e.g. {tmp_path / 'model_final.pth'}"):
            load(str(tmp_path))


def test_last_checkpoint_naming_another_runs_file_is_refused(tmp_path):
    other, run = tmp_path / "other_run", tmp_path / "run"
    E3VACheckpointer(nn.Linear(2, 2), str(other)).save("model_final")
    run.mkdir()
    (run / "last_checkpoint").write_text("../other_run/model_final.pth")
    checkpointer = E3VACheckpointer(nn.Linear(2, 2), str(run))
    with pytest.raises(CheckpointReadError, match=f"{run / 'last_checkpoint'} names .*other_run"
                       "/model_final.pth, a file outside this run's folder"):
        checkpointer.resume_or_load("", resume=True)


def test_an_unquoted_override_with_spaces_gets_a_hint():
    with pytest.raises(ConfigError, match="'runs' looks like the rest of 'train.output_dir=my'"
                       ".* quote .*'train.output_dir=my runs'"):
        load_config(DEMO, ["train.output_dir=my", "runs"])


def test_an_rle_mask_of_another_size_names_the_image_and_annotation():
    rle = {"size": [30, 20], "counts": "0"}  # the image is 20 x 30 (height x width)
    dicts = [{"file_name": "a.jpg", "image_id": 7, "height": 20, "width": 30, "annotations": [
        {"bbox": [0, 0, 5, 5], "bbox_mode": 1, "category_id": 0,
         "segmentation": {"size": [20, 30], "counts": "0"}},
        {"bbox": [0, 0, 5, 5], "bbox_mode": 1, "category_id": 0, "segmentation": rle}]}]
    with pytest.raises(DatasetError, match="image 'a.jpg' \\(image_id=7\\), annotation #1: its "
                       "RLE segmentation has size=\\[30, 20\\], but the image is 20x30"):
        validate_dataset_dicts(dicts, dataset_name="probe", num_classes=1)


@pytest.fixture
def generated(tmp_path):
    """A tiny generated shapes split in its own cache folder, registered as 'probe_tiny'."""
    spec = ShapesSpec(num_images=2, seed=99)
    register_shapes(str(tmp_path), splits={"tiny": spec}, prefix="probe")
    yield "probe_tiny", ensure_shapes_split(spec, root=str(tmp_path))
    for name in ("probe_tiny", "probe_sem_seg_tiny"):
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_a_corrupt_generated_dataset_says_to_delete_its_folder(generated):
    name, paths = generated
    with open(paths.json_file, "r+") as f:
        text = f.read()
        f.seek(0), f.truncate(), f.write(text[: len(text) // 2])
    with pytest.raises(DatasetError, match=f"e3va_d2 generated it, and its copy is damaged: "
                       f"delete the folder {paths.root} and it is generated again"):
        load_dataset_dicts(name)


@pytest.mark.parametrize("make, what", [
    (lambda path: path.write_text("not a folder"), "a file, not a folder"),
    (lambda path: path.symlink_to(path.parent / "gone"), "a symbolic link to .*gone"),
])
def test_a_dataset_cache_variable_naming_a_file_is_named(make, what, tmp_path, monkeypatch):
    root = tmp_path / "cache"
    make(root)
    monkeypatch.setenv("E3VA_D2_DATASETS", str(root))
    with pytest.raises(DatasetError, match=f"E3VA_D2_DATASETS={root} is {what}"):
        ensure_shapes_split(ShapesSpec(num_images=1, seed=98))


def test_detectron2_datasets_naming_a_file_is_named(tmp_path, monkeypatch):
    (tmp_path / "datasets").write_text("not a folder")
    monkeypatch.setenv("DETECTRON2_DATASETS", str(tmp_path / "datasets"))
    DatasetCatalog.register("probe_builtin", lambda: [])
    MetadataCatalog.get("probe_builtin").set(
        json_file=str(tmp_path / "datasets" / "coco" / "instances.json"))
    try:
        with pytest.raises(DatasetError, match=f"currently '{tmp_path / 'datasets'}', which is "
                           "a file, not a folder"):
            load_dataset_dicts("probe_builtin")
    finally:
        DatasetCatalog.remove("probe_builtin")
        MetadataCatalog.remove("probe_builtin")


def disk_full_for(part: str, monkeypatch):
    """torch.save fails as on a full disk (torch's zip writer: "unexpected pos") for files
    whose name contains ``part``."""
    save = torch.save

    def saving(obj, f, *args, **kwargs):
        if part in os.path.basename(os.readlink(f"/proc/self/fd/{f.fileno()}")):  # temp file
            f.write(b"PK\x03\x04")
            raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos "
                               "1536 vs 1430")
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", saving)


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    path = tmp_path / "model_final_delta.pth"
    export_delta(nn.Linear(8, 4), str(path))
    before = path.read_bytes()
    disk_full_for("delta", monkeypatch)
    with pytest.raises(CheckpointWriteError, match=f"Could not write {path} .*unexpected pos.* "
                       "is the disk full\\?"):
        export_delta(nn.Linear(8, 4), str(path))
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model_final_delta.pth"]  # no temp file left


def test_a_full_disk_at_the_delta_keeps_the_evaluation_line(tmp_path, monkeypatch, caplog):
    cfg = short_run_config(DEMO, tmp_path, "shapes_mini_train", "shapes_mini_val", 1,
                           "dataloader.train.total_batch_size=1")
    trainer = E3VATrainer(cfg)
    trainer.test = lambda cfg, model: {"bbox": {"AP": 12.5}}  # the final evaluation's results
    trainer.resume_or_load(resume=False)
    disk_full_for("delta", monkeypatch)
    monkeypatch.setattr(logging.getLogger("e3va_d2"), "propagate", True)  # for caplog
    with caplog.at_level(logging.ERROR, logger="e3va_d2.trainer"):
        with pytest.raises(CheckpointWriteError, match="model_final_delta.pth"):
            trainer.train()
    assert "Final evaluation (the delta could not be saved): {'bbox': {'AP': 12.5}}" \
        in caplog.text
    assert json.loads((tmp_path / "metrics.json").read_text().splitlines()[-1])["bbox/AP"] == 12.5
