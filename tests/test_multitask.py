"""One frozen trunk, many tasks: the three shapes demos (Mask R-CNN, RetinaNet, UPerNet) share
one trunk pass and one copy of the trunk's weights, and each task's outputs equal its model run
alone exactly; tasks on another base or another tuning method are refused."""
import os

import pytest
import torch
from detectron2.config import instantiate
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image

from e3va_d2.checkpoint import DeltaMismatchError, export_delta
from e3va_d2.config import load_config
from e3va_d2.engine.multitask import MultiTaskPredictor, TaskMismatchError
from e3va_d2.engine.predictor import Predictor

ROOT = os.path.join(os.path.dirname(__file__), "..")
# Score threshold 0: the untrained heads' detections must not all be filtered away.
TASKS = {
    "instances": ("configs/Shapes/mask_rcnn_swin_demo_e3va.py",
                  ["model.roi_heads.box_predictor.test_score_thresh=0.0"]),
    "boxes": ("configs/Shapes/retinanet_swin_demo_e3va.py", ["model.test_score_thresh=0.0"]),
    "semantic": ("configs/Shapes/upernet_swin_demo_e3va.py", []),
}


def task_cfg(name, *overrides):
    config, own = TASKS[name]
    return load_config(os.path.join(ROOT, config), ["train.device=cpu", *own, *overrides])


def make_delta(cfg, path, seed):
    """A stand-in for a trained delta: the model's own random trainable weights (nonzero
    highway, heads), exported against the base it was built on."""
    torch.manual_seed(seed)
    export_delta(instantiate(cfg.model), path)
    return path


@pytest.fixture(scope="module")
def tasks(tmp_path_factory):
    folder = tmp_path_factory.mktemp("deltas")
    return {name: (task_cfg(name), make_delta(task_cfg(name), str(folder / f"{name}.pth"), i))
            for i, name in enumerate(TASKS)}


@pytest.fixture(scope="module")
def image():
    return read_image(DatasetCatalog.get("shapes_mini_val")[0]["file_name"], format="RGB")


def assert_same_outputs(shared, alone):
    assert shared.keys() == alone.keys()
    if "sem_seg" in alone:
        assert torch.equal(shared["sem_seg"], alone["sem_seg"])
    if "instances" in alone:
        a, b = shared["instances"].get_fields(), alone["instances"].get_fields()
        assert a.keys() == b.keys() and len(alone["instances"]) > 0
        for key in b:
            x, y = a[key], b[key]
            x, y = (x.tensor, y.tensor) if hasattr(x, "tensor") else (x, y)
            assert torch.equal(x, y), key


def test_shared_trunk_outputs_equal_each_task_alone(tasks, image):
    multi = MultiTaskPredictor(tasks)
    shared = multi(image, image_format="RGB")
    assert multi.trunk_pass.runs == 1  # three tasks, one pass of the frozen trunk
    for name, (cfg, delta) in tasks.items():
        alone = Predictor(cfg, checkpoint="", delta=delta)(image, image_format="RGB")
        assert_same_outputs(shared[name], alone)


def test_one_copy_of_the_trunk_weights(tasks):
    multi = MultiTaskPredictor(tasks)
    pointers = []
    for predictor in multi.predictors.values():
        trunk = predictor.model.backbone.bottom_up.trunk if hasattr(
            predictor.model.backbone, "bottom_up") else predictor.model.backbone.trunk
        pointers.append({n: p.data_ptr() for n, p in trunk.named_parameters()
                         if not p.requires_grad})
    assert pointers[0] and all(p == pointers[0] for p in pointers[1:])


def test_a_spatial_highway_task_shares_the_trunk_pass_too(tasks, image, tmp_path):
    spatial = task_cfg("instances", "model.backbone.bottom_up.tuning._target_="
                       "e3va_d2.modeling.tuning.SpatialE3VATuning")
    delta = make_delta(spatial, str(tmp_path / "spatial.pth"), 7)
    multi = MultiTaskPredictor(dict(tasks, instances=(spatial, delta)))
    shared = multi(image, image_format="RGB")
    assert multi.trunk_pass.runs == 1
    alone = Predictor(spatial, checkpoint="", delta=delta)(image, image_format="RGB")
    assert_same_outputs(shared["instances"], alone)


def test_task_on_another_base_is_refused(tasks, tmp_path):
    """A task trained on another trunk: its delta does not load on this base, and with its own
    base it cannot share the trunk."""
    random_trunk = task_cfg("boxes", "model.backbone.bottom_up.weights=")
    torch.manual_seed(5)
    model = instantiate(random_trunk.model)
    base = str(tmp_path / "random_base.pth")
    torch.save({"model": model.state_dict()}, base)
    delta = str(tmp_path / "boxes_random.pth")
    export_delta(model, delta)
    with pytest.raises(DeltaMismatchError, match="different base"):
        MultiTaskPredictor(dict(tasks, boxes=(task_cfg("boxes"), delta)))
    own_base = task_cfg("boxes", "model.backbone.bottom_up.weights=",
                        f"train.init_checkpoint={base}")
    with pytest.raises(TaskMismatchError, match="another base"):
        MultiTaskPredictor(dict(tasks, boxes=(own_base, delta)))


def test_other_tuning_methods_cannot_share(tasks):
    lora = task_cfg("instances", "model.backbone.bottom_up.tuning._target_="
                    "e3va_d2.modeling.tuning.LoRATuning", "model.backbone.bottom_up.tuning.rank=4")
    with pytest.raises(TaskMismatchError, match="E3VA"):
        MultiTaskPredictor({"instances": (lora, None), "semantic": tasks["semantic"]})


def test_tasks_of_another_feedback_depth_cannot_share(tasks):
    """The trunk stops where a highway's feedback starts (tests/test_feedback.py shares a walk
    between two highways of one depth)."""
    fed = task_cfg("instances", "model.backbone.bottom_up.tuning.feedback_depth=2")
    with pytest.raises(TaskMismatchError, match="feedback_depth=2, 'semantic' 0.*own Predictor"):
        MultiTaskPredictor({"semantic": tasks["semantic"], "instances": (fed, None)})


@pytest.mark.slow
def test_benchmark_script_writes_its_table(tmp_path):
    from projects.benchmark import shared_trunk

    rows = shared_trunk.main(["--output", str(tmp_path), "--images", "2",
                           "--dataset", "shapes_mini_val"])
    assert [r["tasks"] for r in rows] == [1, 2, 3]
    assert torch.is_grad_enabled()  # the script's no_grad is scoped: later tests still train
    trunk = instantiate(task_cfg("instances").model).backbone.bottom_up.trunk
    trunk_mb = sum(p.numel() * p.element_size() for p in trunk.parameters()
                   if not p.requires_grad) / 2**20
    # One trunk in memory however many tasks: three separate models hold two more.
    assert rows[0]["shared_weights_mb"] == pytest.approx(rows[0]["separate_weights_mb"])
    saved = rows[2]["separate_weights_mb"] - rows[2]["shared_weights_mb"]
    assert saved == pytest.approx(2 * trunk_mb, rel=0.02)
    assert (tmp_path / "shared_trunk.md").is_file()
    assert (tmp_path / "shared_trunk.json").is_file()


def test_a_shared_walk_recomputes_branches_as_its_tasks_ask_and_gives_each_task_s_gradients():
    """Training through one shared walk (two tasks' highways beside one trunk pass): branch
    recomputation still keeps one stream tensor per stage, for both tasks, instead of every
    adapter's input, and each task gets exactly the gradients it gets alone."""
    from e3va_d2.engine.multitask import SharedTrunkPass
    from e3va_d2.modeling import E3VATuning, SwinTransformer, TunedSwin
    from projects.benchmark.measure import saved_bytes_by_module

    from .conftest import TINY_SWIN

    def task(seed):
        torch.manual_seed(0)  # the same frozen trunk for every task
        trunk = SwinTransformer(**TINY_SWIN)
        torch.manual_seed(seed)
        return TunedSwin(trunk=trunk, tuning=E3VATuning(rank=4, recompute_branches="stage"))

    alone, shared = [task(1).train(), task(2).train()], [task(1).train(), task(2).train()]
    trunk_pass = SharedTrunkPass()
    for model in shared:
        trunk_pass.lanes.append((model.highway, model.trunk))
        model.highway.trunk_pass = trunk_pass
    images = torch.randn(2, 3, 96, 96)  # grids 24, 12, 6, 3
    outputs = []
    saved = saved_bytes_by_module(lambda: outputs.extend(m(images) for m in shared),
                                       torch.nn.ModuleList(shared))
    assert trunk_pass.runs == 1
    stream = sum(2 * (24 // 2**i) ** 2 * 32 * 2**i * 4 for i in range(4))  # B * tokens * C floats
    assert saved["0.highway.branch_recompute"] == stream  # the walk's, for both tasks
    assert not [name for name in saved if name.endswith("_adapter")]
    sum(o.square().mean() for out in outputs for o in out.values()).backward()
    for model in alone:
        sum(o.square().mean() for o in model(images).values()).backward()
    for a, b in zip(alone, shared):
        for (name, p), q in zip(a.named_parameters(), b.parameters()):
            if p.requires_grad:
                torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
