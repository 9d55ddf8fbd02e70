"""A model exported by tracing (e3va_d2.engine.export) gives the eager model's outputs at image
sizes it was not traced at, after a save and load."""
import pytest
import torch
from detectron2.config import instantiate

from e3va_d2.config import get_config, set_tuning_method
from e3va_d2.engine.export import ExportedModel, export_model
from e3va_d2.modeling import build_tuning

TRACED_AT = (64, 96)
# Not the traced size, nor one another's window padding: one needs none at the first stage
# (multiples of the 4x7 window), one needs padding everywhere and odd patch merging.
OTHER_SIZES = [(56, 112), (75, 57)]


def demo_model(config, tuning=None):
    torch.manual_seed(0)
    cfg = get_config(config)
    if tuning is not None:
        set_tuning_method(cfg.model, build_tuning(tuning))
    model = instantiate(cfg.model).eval()
    # An untrained head scores low: keep every box, so that there is something to compare.
    if hasattr(model, "roi_heads"):
        model.roi_heads.box_predictor.test_score_thresh = 0.0
    elif hasattr(model, "test_score_thresh"):
        model.test_score_thresh = 0.0
    return model


def image(h, w, seed):
    return torch.randint(0, 256, (3, h, w), generator=torch.Generator().manual_seed(seed)).float()


def assert_same_outputs(eager, exported):
    assert eager.keys() == exported.keys()
    if "sem_seg" in eager:
        torch.testing.assert_close(exported["sem_seg"], eager["sem_seg"])
        return
    a, b = eager["instances"], exported["instances"]
    assert a.image_size == tuple(int(s) for s in b.image_size) and len(a) == len(b) > 0
    torch.testing.assert_close(b.pred_boxes.tensor, a.pred_boxes.tensor)
    torch.testing.assert_close(b.scores, a.scores)
    assert torch.equal(b.pred_classes, a.pred_classes)
    if a.has("pred_masks"):
        assert torch.equal(b.pred_masks, a.pred_masks)


def check_export(model, tmp_path):
    path = str(tmp_path / "model.ts")
    export_model(model, image(*TRACED_AT, seed=0)).save(path)
    exported = ExportedModel.load(path)
    for i, (h, w) in enumerate(OTHER_SIZES):
        x = image(h, w, seed=i + 1)
        # the original size to resize predictions to, unlike the mapper's
        height, width = 2 * h, 2 * w
        with torch.no_grad():
            eager = model([{"image": x, "height": height, "width": width}])[0]
        assert_same_outputs(eager, exported(x, height=height, width=width))


@pytest.mark.parametrize("tuning", ["e3va", "e3va_spatial"])
def test_traced_backbone_holds_at_other_sizes(tuning):
    """The Swin trunk and its highway traced at one size (window padding, shift masks, odd
    patch merging computed from traced sizes), run at two others."""
    cfg = get_config("Shapes/mask_rcnn_swin_demo_e3va.py")
    set_tuning_method(cfg.model, build_tuning(tuning))
    torch.manual_seed(0)
    backbone = instantiate(cfg.model.backbone.bottom_up).eval()
    with torch.no_grad():
        traced = torch.jit.trace(backbone, image(*TRACED_AT, seed=0)[None], strict=False,
                                 check_trace=False)
        for i, (h, w) in enumerate(OTHER_SIZES):
            x = image(h, w, seed=i + 1)[None]
            eager, out = backbone(x), traced(x)
            assert eager.keys() == out.keys()
            for name in eager:
                torch.testing.assert_close(out[name], eager[name])


@pytest.mark.slow
@pytest.mark.parametrize("config,tuning", [
    ("Shapes/mask_rcnn_swin_demo_e3va.py", None),
    ("Shapes/mask_rcnn_swin_demo_e3va.py", "e3va_spatial"),
    ("Shapes/mask_rcnn_swin_demo_e3va.py", "fixed"),
    ("Shapes/retinanet_swin_demo_e3va.py", None),
    ("Shapes/upernet_swin_demo_e3va.py", None),
])
def test_traced_models_hold_at_other_sizes(config, tuning, tmp_path):
    check_export(demo_model(config, tuning), tmp_path)


@pytest.mark.slow
def test_inference_latency_script_runs():
    """The script behind INFERENCE.md's inference cost, on one small image (not a timing)."""
    from projects.benchmark import inference_latency

    times = inference_latency.main(["--config", "Shapes/mask_rcnn_swin_demo_e3va.py",
                                    "--size", "64", "64", "--images", "1", "--warmup", "0"])
    assert set(times) == {"fixed", "e3va", "e3va_spatial"}
    assert all(len(v) == 1 and v[0] > 0 for v in times.values())
