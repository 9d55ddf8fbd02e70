"""Checks of the detectron2 installation provided by scripts/install_detectron2.sh.

Works with both a full detectron2 build (compiled ``detectron2._C``) and the
pure-Python build with e3va-d2's ``_C`` stand-in; stand-in specific checks
are skipped for a full build.
"""

import importlib
import importlib.machinery
import inspect
import pickle

import pytest

_C = importlib.import_module("detectron2._C")
IS_COMPILED = _C.__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
IS_STANDIN = getattr(_C, "IS_STANDIN", False) if not IS_COMPILED else False

# Everything that is not a compiled extension must be e3va-d2's stand-in.
standin_only = pytest.mark.skipif(
    IS_COMPILED, reason="detectron2 has a real compiled extension"
)


def test_c_extension_answers_what_detectron2_asks_of_it():
    """``detectron2.utils.collect_env`` asks ``_C`` for its compiler and CUDA versions and whether
    it has CUDA; a compiled build and the stand-in must both answer (the test here asserted only
    that an imported module is itself)."""
    assert isinstance(_C.get_compiler_version(), str) and _C.get_compiler_version()
    assert isinstance(_C.get_cuda_version(), str)
    assert isinstance(_C.has_cuda(), bool)


@standin_only
def test_pure_build_uses_e3va_standin():
    assert IS_STANDIN is True, (
        f"{_C.__file__} is neither a compiled extension nor e3va-d2's stand-in; "
        "run scripts/install_detectron2.sh to install the stand-in"
    )


@pytest.mark.parametrize(
    "module", ["detectron2.layers", "detectron2.evaluation", "detectron2.model_zoo"]
)
def test_detectron2_modules_import(module):
    importlib.import_module(module)


def test_coco_evaluator_exists():
    from detectron2.evaluation import COCOEvaluator

    assert inspect.isclass(COCOEvaluator)


def test_collect_env_info():
    from detectron2.utils.collect_env import collect_env_info

    info = collect_env_info()
    assert isinstance(info, str)
    assert "detectron2" in info


def test_model_zoo_configs_are_installed():
    from detectron2 import model_zoo

    cfg = model_zoo.get_config("common/models/mask_rcnn_fpn.py")
    assert "roi_heads" in cfg.model


@standin_only
@pytest.mark.parametrize(
    "op", ["box_iou_rotated", "deform_conv_forward", "roi_align_rotated_forward"]
)
def test_standin_missing_op_message(op):
    with pytest.raises(NotImplementedError) as info:
        getattr(_C, op)
    msg = str(info.value)
    assert op in msg
    assert "E3VA_D2_BUILD_FROM_SOURCE" in msg


@standin_only
def test_standin_box_iou_rotated():
    with pytest.raises(NotImplementedError, match="box_iou_rotated") as info:
        _C.box_iou_rotated  # noqa: B018  (the attribute access itself must raise)
    assert "E3VA_D2_BUILD_FROM_SOURCE" in str(info.value)


@standin_only
def test_standin_coco_ops_suggest_official_evaluator():
    with pytest.raises(NotImplementedError) as info:
        _C.COCOevalAccumulate  # noqa: B018  (the attribute access itself must raise)
    assert "use_fast_impl=False" in str(info.value)


@standin_only
def test_standin_rotated_iou_through_detectron2_api():
    import torch
    from detectron2.structures import RotatedBoxes, pairwise_iou_rotated

    boxes = RotatedBoxes(torch.tensor([[5.0, 5.0, 4.0, 2.0, 30.0]]))
    with pytest.raises(NotImplementedError, match="box_iou_rotated"):
        pairwise_iou_rotated(boxes, boxes)


@standin_only
def test_standin_reports_not_built():
    assert _C.has_cuda() is False
    assert "not built" in _C.get_compiler_version()
    assert "not built" in _C.get_cuda_version()


@standin_only
def test_standin_plays_well_with_introspection():
    # dunder/private probes must behave like on a normal module
    assert not hasattr(_C, "__wrapped__")
    assert not hasattr(_C, "_repr_html_")
    inspect.getmembers(_C)
    inspect.unwrap(_C.has_cuda)
    assert pickle.loads(pickle.dumps(_C.has_cuda)) is _C.has_cuda
    err = pickle.loads(pickle.dumps(_C.MissingExtensionError("box_iou_rotated")))
    assert "box_iou_rotated" in str(err)
