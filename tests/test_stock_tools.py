"""detectron2's own, unmodified ``tools/lazyconfig_train_net.py`` trains every shapes config and
evaluates it at the end, on whichever build is installed: the configs themselves pick the
device and the COCO evaluation the build supports, and load the pre-trained trunk."""
import os
import subprocess
import sys
import tarfile

import detectron2
import pytest
import torch
from detectron2.config import LazyConfig
from detectron2.utils.file_io import PathManager

from projects.transfer.run_executor import trunk_source

ROOT = os.path.join(os.path.dirname(__file__), "..")
SDIST = os.path.join(os.environ.get("E3VA_D2_CACHE", os.path.expanduser("~/.cache/e3va_d2")),
                     "downloads", "pb1-detectron2-0.6.tar.gz")
CONFIGS = {
    "mask_rcnn_swin_demo_e3va.py": ("shapes_mini_train", "shapes_mini_val"),
    "retinanet_swin_demo_e3va.py": ("shapes_voc_mini_train", "shapes_voc_mini_val"),
    "upernet_swin_demo_e3va.py": ("shapes_sem_seg_mini_train", "shapes_sem_seg_mini_val"),
    "transfer_mask_rcnn_swin_e3va.py": ("shapes_mini_train", "shapes_mini_val"),
    "accuracy_near_mask_rcnn_swin.py": ("shapes_mini_train", "shapes_mini_val"),
    "accuracy_far_mask_rcnn_swin.py": ("shapes_mini_train", "shapes_mini_val"),
}


def test_every_shapes_config_is_covered():
    assert set(CONFIGS) == {f for f in os.listdir(os.path.join(ROOT, "configs/Shapes"))
                            if f.endswith(".py")}


@pytest.fixture(scope="module")
def stock_tool(tmp_path_factory):
    """The tool from $E3VA_D2_DETECTRON2_TOOLS, a source checkout of the installed detectron2,
    or the sdist scripts/install_detectron2.sh downloaded (pure-Python build)."""
    candidates = [os.environ.get("E3VA_D2_DETECTRON2_TOOLS", ""),
                  os.path.join(os.path.dirname(detectron2.__file__), "..", "tools")]
    for folder in candidates:
        path = os.path.join(folder, "lazyconfig_train_net.py")
        if folder and os.path.isfile(path):
            return path
    if not os.path.isfile(SDIST):
        pytest.skip("no detectron2 tools/: set E3VA_D2_DETECTRON2_TOOLS to a checkout's tools/")
    folder = tmp_path_factory.mktemp("detectron2_tools")
    with tarfile.open(SDIST) as tar:
        member = tar.getmember("pb1-detectron2-0.6/tools/lazyconfig_train_net.py")
        member.name = "lazyconfig_train_net.py"
        tar.extract(member, folder)
    return str(folder / "lazyconfig_train_net.py")


@pytest.mark.slow
@pytest.mark.parametrize("config", sorted(CONFIGS))
def test_stock_lazyconfig_train_net(stock_tool, config, tmp_path):
    train_set, test_set = CONFIGS[config]
    config_file = os.path.join(ROOT, "configs/Shapes", config)
    cmd = [sys.executable, stock_tool, "--config-file", config_file,
           "train.max_iter=2", "train.eval_period=0", f"train.output_dir={tmp_path}",
           "dataloader.train.total_batch_size=2", "dataloader.train.num_workers=0",
           "dataloader.test.num_workers=0", f"dataloader.train.dataset.names={train_set}",
           f"dataloader.test.dataset.names={test_set}"]
    out = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    assert (tmp_path / "model_final.pth").is_file()
    assert "copypaste: " in log  # the final evaluation ran and printed its table
    # The config's shipped trunk, not a random one: the model_final.pth the stock checkpointer
    # wrote holds its (frozen) weights.
    saved = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=False)
    url = trunk_source(LazyConfig.load(config_file))
    assert url.startswith("e3va://"), url
    with PathManager.open(url, "rb") as f:
        shipped = torch.load(f, map_location="cpu", weights_only=True)["model"]
    key = "layers.2.blocks.5.attn.qkv.weight"
    (name,) = [k for k in saved["model"] if k.endswith("trunk." + key)]
    assert torch.equal(saved["model"][name], shipped[key].float())
