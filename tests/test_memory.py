"""Peak training memory: the profiler-based measurement counts what it claims, E3VA's memory
options keep their promises (lossless ones give the default's gradients), and the planner's
arithmetic is right."""
import functools
import json
import os

import pytest
import torch

from e3va_d2.modeling import E3VATuning, SwinTransformer, TunedSwin
from e3va_d2.modeling.tuning import SpatialE3VATuning
from projects.benchmark.measure import saved_bytes_by_module
from projects.benchmark.peak_memory import CATEGORIES, step_peak_memory

from .conftest import TINY_SWIN
from .helpers import assert_same_gradients

ROOT = os.path.join(os.path.dirname(__file__), "..")


def tiny(tuning, **trunk_kwargs):
    return TunedSwin(trunk=SwinTransformer(**{**TINY_SWIN, **trunk_kwargs}), tuning=tuning)


def nbytes(tensors):
    return sum(t.numel() * t.element_size() for t in tensors)


def training_step(model, images):
    """A full step (forward, backward, AdamW) on the tiny backbone plus a trainable 1x1 head, so
    that "fixed" trains something too."""
    head = torch.nn.Conv2d(model.output_shape()["p3"].channels, 4, 1)
    trainable = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=0.0)

    def step():
        optimizer.zero_grad(set_to_none=True)
        outs = model(images)
        loss = sum(o.square().mean() for o in outs.values()) + head(outs["p3"]).square().mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, list(model.parameters()) + list(head.parameters()), trainable


def test_peak_memory_categories_count_model_state_exactly():
    images = torch.randn(2, 3, 96, 96)
    peaks = {}
    for method in ("full", "fixed", "e3va"):
        torch.manual_seed(0)
        model = tiny(method).train()
        step, params, trainable = training_step(model, images)
        step()  # warm-up: AdamW allocates its moments on the first step
        peak = step_peak_memory(step)
        assert set(peak.by_category) == set(CATEGORIES)
        assert sum(peak.by_category.values()) == peak.profiler_peak_bytes == peak.peak_bytes
        assert peak.by_category["parameters"] == nbytes(params), method
        # Two moments per trainable tensor, plus AdamW's step counter (one float32) per tensor.
        assert peak.by_category["optimizer_state"] == 2 * nbytes(trainable) + 4 * len(trainable)
        assert 0 <= peak.peak_at <= 1 and peak.allocator_peak_bytes is None
        peaks[method] = peak
    full, fixed, e3va = (peaks[m].peak_bytes for m in ("full", "fixed", "e3va"))
    assert full > e3va > fixed
    # Full fine-tuning holds its gradients and the trunk's activations at its peak.
    assert peaks["full"].by_category["gradients"] > 0
    assert peaks["full"].by_category["activations"] > 5 * peaks["fixed"].by_category["activations"]


def test_peak_memory_needs_the_step_to_allocate_on_the_device():
    with pytest.raises(RuntimeError, match="no memory"):
        step_peak_memory(lambda: None)


# -- E3VA's memory options ------------------------------------------------------------------


def backward_on(model, images):
    outs = model(images)
    sum(o.square().mean() for o in outs.values()).backward()
    return outs


@pytest.mark.parametrize("per", ["block", "stage"])
@pytest.mark.parametrize("structure,trainable_downsampling", [
    ("parallel", False), ("stacked", False), ("parallel", True)])
def test_recomputed_branches_give_the_default_forward_and_gradients(per, structure,
                                                                    trainable_downsampling):
    torch.manual_seed(0)
    options = dict(structure=structure, trainable_downsampling=trainable_downsampling, rank=4)
    default = tiny(E3VATuning(**options)).train()
    recomputing = tiny(E3VATuning(recompute_branches=per, **options)).train()
    recomputing.load_state_dict(default.state_dict())  # the paper's init: adapters are not zero
    images = torch.randn(2, 3, 64, 80)  # odd grids: padding in windows and merging
    outs = [backward_on(m, images) for m in (default, recomputing)]
    for key in outs[0]:
        assert torch.equal(outs[0][key], outs[1][key]), key
    assert_same_gradients(default, recomputing)


@pytest.mark.parametrize("trunk_dtype", [None, "bfloat16"])
def test_recomputed_branches_are_exact_under_autocast(trunk_dtype):
    """Backward recomputes under the forward's autocast, so it rounds as the forward did."""
    torch.manual_seed(0)
    default = tiny(E3VATuning(trunk_dtype=trunk_dtype)).train()
    recomputing = tiny(E3VATuning(trunk_dtype=trunk_dtype, recompute_branches="stage")).train()
    recomputing.load_state_dict(default.state_dict())
    images = torch.randn(2, 3, 64, 64)
    for model in (default, recomputing):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = sum(o.float().square().mean() for o in model(images).values())
        loss.backward()
    for (name, p), q in zip(default.named_parameters(), recomputing.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)


def test_recomputed_branches_keep_one_stream_tensor_per_stage_or_block():
    torch.manual_seed(0)
    images = torch.randn(2, 3, 96, 96)  # grids 24, 12, 6, 3
    saved = {}
    for per in (None, "block", "stage"):
        model = tiny(E3VATuning(recompute_branches=per)).train()
        saved[per] = saved_bytes_by_module(functools.partial(model, images), model)
    stream = [2 * (24 // 2**i) ** 2 * 32 * 2**i * 4 for i in range(4)]  # B * tokens * C floats
    assert saved["stage"]["highway.branch_recompute"] == sum(stream)
    assert saved["block"]["highway.branch_recompute"] == 2 * sum(stream)  # two blocks per stage
    adapters = sum(b for m, b in saved[None].items() if m.endswith("_adapter"))
    assert adapters == 2 * saved["block"]["highway.branch_recompute"]  # a1 and a2 per block
    for per in ("block", "stage"):  # nothing else changes
        others = {m: b for m, b in saved[per].items() if m != "highway.branch_recompute"}
        assert others == {m: b for m, b in saved[None].items() if not m.endswith("_adapter")}


def test_recomputed_branches_do_not_change_the_outputs():
    """In eval mode (no drop path) with gradients on, the recomputing forward runs (it keeps its
    stage tensors) and gives the default's outputs bit for bit; without gradients (inference)
    the plain forward runs and gives them too. (This test ran only the second case, where both
    models take the same path and nothing recomputes.)"""
    torch.manual_seed(0)
    default, recomputing = tiny("e3va").eval(), tiny(E3VATuning(recompute_branches="stage")).eval()
    recomputing.load_state_dict(default.state_dict())
    images = torch.randn(1, 3, 64, 64)
    saved = saved_bytes_by_module(functools.partial(recomputing, images), recomputing)
    assert saved.get("highway.branch_recompute", 0) > 0  # the recompute path ran
    a, b = default(images), recomputing(images)
    assert all(torch.equal(a[k], b[k]) for k in a)
    with torch.no_grad():
        c = recomputing(images)
    assert all(torch.equal(a[k], c[k]) for k in a)


def test_memory_options_are_validated():
    with pytest.raises(ValueError, match="recompute_branches='layer'"):
        E3VATuning(recompute_branches="layer")
    with pytest.raises(ValueError, match="cannot be combined with saved_input_dtype"):
        E3VATuning(recompute_branches="stage", saved_input_dtype="bfloat16")
    with pytest.raises(ValueError, match="trunk_dtype='float8'"):
        E3VATuning(trunk_dtype="float8")
    # The spatial highway takes E3VA's options, and E3VA's refusals (test_spatial_highway.py
    # tests what they do there).
    with pytest.raises(ValueError, match="cannot be combined with saved_input_dtype"):
        SpatialE3VATuning(recompute_branches="stage", saved_input_dtype="bfloat16")


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_narrow_trunk_runs_blocks_narrow_and_keeps_the_highway_float32(dtype):
    torch.manual_seed(0)
    wide = tiny(E3VATuning(rank=4)).train()
    narrow = tiny(E3VATuning(rank=4, trunk_dtype=dtype))
    narrow.load_state_dict(wide.state_dict())  # a float32 checkpoint loads into narrow blocks
    narrow.train()
    trunk = narrow.trunk
    assert {p.dtype for p in trunk.layers.parameters() if p.dtype != torch.float32} == {
        getattr(torch, dtype)}
    assert {p.dtype for s in trunk.layers for p in s.blocks.parameters()} == {getattr(torch, dtype)}
    float32 = list(trunk.patch_embed.parameters()) + list(narrow.highway.parameters()) + [
        p for s in trunk.layers if s.downsample is not None for p in s.downsample.parameters()] + [
        p for i in trunk.out_indices for p in getattr(trunk, f"norm{i}").parameters()]
    assert all(p.dtype == torch.float32 for p in float32)
    images = torch.randn(2, 3, 96, 96)
    saved_wide, saved_narrow = (saved_bytes_by_module(lambda m=m: m(images), m)
                                for m in (wide, narrow))
    # Adapters keep their inputs as the narrow trunk made them; nothing else changes.
    for name, nbytes_wide in saved_wide.items():
        assert saved_narrow[name] * (2 if name.endswith("_adapter") else 1) == nbytes_wide, name
    outs_wide, outs_narrow = backward_on(wide, images), backward_on(narrow, images)
    for key, out in outs_wide.items():
        assert outs_narrow[key].dtype == torch.float32
        torch.testing.assert_close(outs_narrow[key], out, rtol=0.05, atol=0.05, msg=key)
    for (name, p), q in zip(wide.named_parameters(), narrow.parameters()):
        if p.requires_grad:
            assert q.grad.dtype == torch.float32
            scale = p.grad.abs().max().item()
            torch.testing.assert_close(q.grad, p.grad, rtol=0.1, atol=0.05 * scale, msg=name)


def test_narrow_trunk_recomputing_branches_is_exact_and_keeps_the_narrow_stream():
    torch.manual_seed(0)
    default = tiny(E3VATuning(rank=4, trunk_dtype="bfloat16")).train()
    recomputing = tiny(E3VATuning(rank=4, trunk_dtype="bfloat16", recompute_branches="stage"))
    recomputing.load_state_dict(default.state_dict())
    recomputing.train()
    images = torch.randn(2, 3, 64, 64)
    outs = [backward_on(m, images) for m in (default, recomputing)]
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    for (name, p), q in zip(default.named_parameters(), recomputing.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
    saved = saved_bytes_by_module(lambda: recomputing(images), recomputing)
    stream = [2 * (16 // 2**i) ** 2 * 32 * 2**i for i in range(4)]  # B * tokens * C
    assert saved["highway.branch_recompute"] == 2 * sum(stream)


@pytest.mark.parametrize("recompute_branches", [None, "stage"])
def test_a_float16_trunk_that_overflows_stops_with_an_error_naming_the_fix(recompute_branches):
    from e3va_d2.modeling.trunk_precision import TrunkOverflowError

    torch.manual_seed(0)
    model = tiny(E3VATuning(rank=4, trunk_dtype="float16", recompute_branches=recompute_branches))
    images = torch.randn(1, 3, 64, 64)
    model(images)  # in range: runs
    with torch.no_grad():  # stage 2's MLPs each add 6e4: the stream leaves float16's range
        for block in model.trunk.layers[2].blocks:
            block.mlp.fc2.bias.fill_(6e4)
    for mode in (model.train, model.eval):
        mode()
        with pytest.raises(TrunkOverflowError, match=r"stage 2.*trunk_dtype='bfloat16'"):
            model(images)
    bfloat16 = tiny(E3VATuning(rank=4, trunk_dtype="bfloat16"))
    bfloat16.load_state_dict(model.state_dict())
    assert all(out.isfinite().all() for out in bfloat16(images).values())


@pytest.mark.parametrize("recompute_branches", [None, "stage"])
@pytest.mark.parametrize("trunk_dtype, amp_dtype", [("bfloat16", torch.float16),
                                                    ("float16", torch.bfloat16),
                                                    ("float16", torch.float16)])
def test_a_narrow_trunk_computes_in_its_own_dtype_under_any_autocast(trunk_dtype, amp_dtype,
                                                                     recompute_branches):
    """float16 AMP must not run a bfloat16 trunk's matmuls in float16 (the range bfloat16 is
    there to avoid) and promote its stream to float32; under any AMP dtype a float16 trunk's
    stream stays float16, so its overflow check still fires."""
    from e3va_d2.modeling.trunk_precision import TrunkOverflowError

    torch.manual_seed(0)
    model = tiny(E3VATuning(rank=4, trunk_dtype=trunk_dtype,
                            recompute_branches=recompute_branches)).train()
    computed = set()
    for stage in model.trunk.layers:
        for module in stage.blocks.modules():
            if isinstance(module, (torch.nn.Linear, torch.nn.LayerNorm)):
                module.register_forward_hook(lambda m, a, out: computed.add(out.dtype))
    images = torch.randn(2, 3, 64, 64)
    with torch.autocast("cpu", dtype=amp_dtype):
        loss = sum(o.float().square().mean() for o in model(images).values())
    loss.backward()  # recomputed branches: their blocks run again, as in the forward
    assert computed == {getattr(torch, trunk_dtype)}
    assert loss.isfinite() and all(p.grad.isfinite().all() for p in model.parameters()
                                   if p.requires_grad)
    if trunk_dtype == "float16":
        with torch.no_grad():  # as in the test above: stage 2 leaves float16's range
            for block in model.trunk.layers[2].blocks:
                block.mlp.fc2.bias.fill_(6e4)
        with torch.autocast("cpu", dtype=amp_dtype), pytest.raises(TrunkOverflowError,
                                                                   match="stage 2"):
            model(images)


def test_narrowest_dtype_wins_for_adapter_inputs():
    assert E3VATuning(trunk_dtype="bfloat16").adapter_saved_dtype() == torch.bfloat16
    assert E3VATuning(trunk_dtype="bfloat16", saved_input_dtype="float8_e4m3fn"
                      ).adapter_saved_dtype() == torch.float8_e4m3fn
    assert E3VATuning(trunk_dtype="float16", saved_input_dtype="bfloat16"
                      ).adapter_saved_dtype() == torch.bfloat16
    no_recompute = E3VATuning(trunk_dtype="bfloat16", recompute_adapters=False)
    assert no_recompute.adapter_saved_dtype() is None
    assert E3VATuning().adapter_saved_dtype() is None


# -- the planner ----------------------------------------------------------------------------


def test_memory_amounts_and_sizes_are_parsed_with_their_units():
    from projects.benchmark.plan_checks import parse_bytes, parse_size
    from projects.benchmark.plan_fit import padded_pixels

    assert parse_bytes("11GB") == 11 * 10**9
    assert parse_bytes("11GiB") == 11 * 2**30
    assert parse_bytes("11264 MiB") == 11 * 2**30
    assert parse_bytes("1.5gib") == 3 * 2**29
    assert parse_bytes("512MB") == 512 * 10**6
    for bad in ("11", "11 GBs", "eleven GB", "", "-1GB"):
        with pytest.raises(ValueError, match="amount of memory"):
            parse_bytes(bad)
    assert parse_size("1333x800") == (1333, 800)
    assert parse_size("512") == (512, 512)
    with pytest.raises(ValueError, match="image size"):
        parse_size("512x")
    assert padded_pixels(1333, 800, 32) == 1344 * 800
    assert padded_pixels(100, 100, 0) == 100 * 100


def test_peak_model_fits_predicts_and_finds_the_largest_batch():
    from projects.benchmark.plan_fit import PeakModel

    truth = PeakModel(per_pixel=900.0, per_image=300e6, constant=2.5e9)
    points = [dict(pixels=s * s * b, batch=b, peak_bytes=truth.predict(s * s, b))
              for s in (224, 288, 352) for b in (1, 2)]
    fitted = PeakModel.fit(points)
    assert fitted.per_pixel == pytest.approx(900.0, rel=1e-6)
    assert fitted.per_image == pytest.approx(300e6, rel=1e-6)
    assert fitted.constant == pytest.approx(2.5e9, rel=1e-6)
    pixels = 1344 * 800
    one = truth.predict(pixels, 1)
    assert one == pytest.approx(900 * pixels + 300e6 + 2.5e9)
    assert truth.predict(pixels, 3) - truth.predict(pixels, 2) == pytest.approx(one - 2.5e9)
    # Exactly at the budget fits; a byte less does not.
    assert truth.largest_batch(pixels, truth.predict(pixels, 4)) == 4
    assert truth.largest_batch(pixels, truth.predict(pixels, 4) - 1) == 3
    assert truth.largest_batch(pixels, one - 1) == 0
    assert truth.largest_batch(pixels, 1e15, max_batch=16) == 16
    with pytest.raises(ValueError, match="two image sizes and two batch sizes"):
        PeakModel.fit([p for p in points if p["batch"] == 1])


# A segmenter (all its costs per pixel) on a random trunk whose window (2) divides every grid
# here: at toy sizes a detector's heads and a window-7 trunk's padding are not linear in pixels.
PLANNER_CONFIG = ["--config-file", os.path.join(ROOT, "configs/Shapes/upernet_swin_demo_e3va.py")]
PLANNER_OPTS = ["model.backbone.weights=", "model.backbone.trunk.window_size=2"]


def test_planner_measures_fits_checks_and_plans_again_from_json(tmp_path):
    from projects.benchmark import plan

    # Sides 128 and 192 as make gpu-check uses: at 64 the frozen model's CPU peak depends on
    # the processor's kernels (an AMD EPYC put a point 15% of the spread off the line, which
    # the planner rightly refuses; the Intel machine of earlier stops fitted it).

    result = plan.main(PLANNER_CONFIG + [
        "--methods", "fixed,e3va", "--fit-sizes", "128,192", "--fit-batches", "1,2",
        "--check-sizes", "256", "--check-batches", "1", "--sizes", "1333x800,256",
        "--gpu-memory", "11GB", "--cuda-context", "0.5GiB", "--output", str(tmp_path),
    ] + PLANNER_OPTS)
    points = result["measured"]["points"]
    assert [(p["size"], p["batch"], p["role"]) for p in points["e3va"]] == [
        (128, 1, "fit"), (128, 2, "fit"), (192, 1, "fit"), (256, 1, "check"), (192, 2, "fit")]
    assert all(p["pixels"] == p["size"] ** 2 * p["batch"] for p in points["e3va"])  # 32 | size
    for method, model in result["models"].items():
        assert model.per_pixel > 0 and model.constant > 0, method
        assert model.predict(128 * 128, 2) > model.predict(128 * 128, 1)
    assert result["models"]["e3va"].per_pixel > result["models"]["fixed"].per_pixel
    assert result["check_max_error"] < 0.10
    text = (tmp_path / "plan.md").read_text()
    assert "| e3va | 1333x800 |" in text and "11GB (10.24 GiB)" in text
    assert "At 1333x800 on 11GB" in text and "Check at sizes not fitted" in text
    plan.main(PLANNER_CONFIG + ["--from-json", str(tmp_path / "plan.json"), "--sizes",
                                "1333x800,256", "--gpu-memory", "11GB", "--cuda-context", "0.5GiB",
                                "--output", str(tmp_path / "again")])
    assert (tmp_path / "again" / "plan.md").read_text() == text
    saved = json.loads((tmp_path / "plan.json").read_text())
    assert saved["fits"]["e3va"]["constant"] == pytest.approx(result["models"]["e3va"].constant)
