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
    "accuracy_dense_mask_rcnn_swin.py": ("shapes_mini_train", "shapes_mini_val"),
}


def test_every_shapes_config_is_covered():
    assert set(CONFIGS) == {f for f in os.listdir(os.path.join(ROOT, "configs/Shapes"))
                            if f.endswith(".py")}


def find_stock_tool(name, tmp_path_factory):
    """detectron2's tools/<name> from $E3VA_D2_DETECTRON2_TOOLS, a source checkout of the
    installed detectron2, or the sdist scripts/install_detectron2.sh downloaded (pure-Python
    build)."""
    candidates = [os.environ.get("E3VA_D2_DETECTRON2_TOOLS", ""),
                  os.path.join(os.path.dirname(detectron2.__file__), "..", "tools")]
    for folder in candidates:
        path = os.path.join(folder, name)
        if folder and os.path.isfile(path):
            return path
    if not os.path.isfile(SDIST):
        pytest.skip("no detectron2 tools/: set E3VA_D2_DETECTRON2_TOOLS to a checkout's tools/")
    folder = tmp_path_factory.mktemp("detectron2_tools")
    with tarfile.open(SDIST) as tar:
        member = tar.getmember(f"pb1-detectron2-0.6/tools/{name}")
        member.name = name
        tar.extract(member, folder)
    return str(folder / name)


@pytest.fixture(scope="module")
def stock_tool(tmp_path_factory):
    return find_stock_tool("lazyconfig_train_net.py", tmp_path_factory)


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


def run_tool(cmd, cwd=ROOT):
    out = subprocess.run(cmd, cwd=cwd, env={**os.environ, "OMP_NUM_THREADS": "1"},
                         capture_output=True, text=True, timeout=600)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-3000:]
    return log


MASK_RCNN = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")


@pytest.mark.slow
def test_stock_benchmark_eval(tmp_path_factory):
    """detectron2's tools/benchmark.py --task eval (its 300 iterations) on a shipped config;
    its one extra dependency, psutil, is in the test extra."""
    pytest.importorskip("psutil")
    tool = find_stock_tool("benchmark.py", tmp_path_factory)
    log = run_tool([sys.executable, tool, "--task", "eval", "--config-file", MASK_RCNN,
                    "dataloader.test.dataset.names=shapes_mini_val",
                    # no box passes: the heads' cost of an untrained model is not the point
                    "model.roi_heads.box_predictor.test_score_thresh=1.0"])
    assert "300 iters in" in log


@pytest.mark.slow
def test_stock_analyze_model_where_it_reads_lazyconfigs(tmp_path_factory):
    """detectron2 main's tools/analyze_model.py reads .py configs and, as the shipped configs
    import e3va_d2, counts Swin's attention; 0.6's reads yacs configs only (without the e3va-d2
    keys), which is why e3va_d2.tools.analyze_model exists."""
    tool = find_stock_tool("analyze_model.py", tmp_path_factory)
    with open(tool) as f:
        if "LazyConfig" not in f.read():
            pytest.skip("this detectron2's analyze_model.py reads yacs configs only (0.6): "
                        "python -m e3va_d2.tools.analyze_model is its equivalent")
    log = run_tool([sys.executable, tool, "--tasks", "flop", "parameter", "-n", "1",
                    "--config-file", MASK_RCNN, "dataloader.test.dataset.names=shapes_mini_val"])
    assert "scaled_dot_product_attention" in log and "Total GFlops" in log


@pytest.mark.slow
def test_analyze_model_counts_parameters_flops_and_activations():
    log = run_tool([sys.executable, "-m", "e3va_d2.tools.analyze_model", "--config-file",
                    MASK_RCNN, "--tasks", "parameter", "flop", "activation", "-n", "1",
                    "dataloader.test.dataset.names=shapes_mini_val"])
    attention = float(log.split("Attention (scaled_dot_product_attention): ")[1].split()[0])
    assert attention > 0
    assert "Total GFlops" in log and "Total (Million) Activations" in log
    assert "Trainable parameters" in log and "highway" in log


@pytest.mark.slow
def test_visualize_json_results_draws_an_evaluation(tmp_path):
    """train_net.py --eval-only writes the COCO predictions; the tool draws them beside the
    ground truth of the config's (here: synthetic) test set, which detectron2's own tool
    cannot find."""
    overrides = ["dataloader.test.dataset.names=shapes_mini_val", "train.eval_untrained=True",
                 f"dataloader.evaluator.output_dir={tmp_path}", f"train.output_dir={tmp_path}"]
    run_tool([sys.executable, "train_net.py", "--config-file", MASK_RCNN, "--eval-only",
              *overrides])
    results = tmp_path / "coco_instances_results.json"
    log = run_tool([sys.executable, "-m", "e3va_d2.tools.visualize_json_results",
                    "--config-file", MASK_RCNN, "--input", str(results), "--output",
                    str(tmp_path / "vis"), "--conf-threshold", "0.0",
                    "dataloader.test.dataset.names=shapes_mini_val"])
    assert "Wrote" in log and len(os.listdir(tmp_path / "vis")) > 0
