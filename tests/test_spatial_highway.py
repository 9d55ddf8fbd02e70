"""The spatial highway (this project's extension of E3VA): it keeps E3VA's guarantees (the trunk
runs without autograd and keeps nothing, a zero-initialised highway is the frozen model bit for
bit, recomputation changes no gradient) and adds what it claims: spatial mixing, adapters that
read the highway's deviation, and parameter counts that match the formula."""
import pytest
import torch

from e3va_d2.modeling import SwinTransformer, TunedSwin, build_tuning
from e3va_d2.modeling.spatial_highway import GridMixer
from e3va_d2.modeling.tuning import SpatialE3VATuning
from projects.benchmark.measure import saved_bytes_by_module

from .conftest import TINY_SWIN
from .helpers import assert_is_the_frozen_trunk, assert_same_gradients

VARIANTS = [dict(), dict(stage_mixer=False), dict(read_state=False), dict(conv_kernels=()),
            dict(conv_kernels=(3, 5, 7))]


def tiny(**options):
    torch.manual_seed(0)
    return TunedSwin(trunk=SwinTransformer(**TINY_SWIN),
                     tuning=build_tuning("e3va_spatial", **options)).train()


def perturb(model, std=0.05):
    """Give every trainable tensor a random value, so that every path of the highway is live."""
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, std)
    return model


@pytest.mark.parametrize("options", VARIANTS)
@pytest.mark.parametrize("size", [(64, 64), (97, 131)])
def test_zeroed_spatial_highway_equals_frozen_backbone_exactly(options, size):
    model = tiny(zero_init=True, **options)
    images = torch.randn(2, 3, *size)
    assert_is_the_frozen_trunk(model, images)


@pytest.mark.parametrize("options", VARIANTS)
def test_gradients_reach_every_highway_parameter_and_never_the_trunk(options):
    model = perturb(tiny(**options))
    sum(o.square().mean() for o in model(torch.randn(2, 3, 64, 80)).values()).backward()
    for name, p in model.named_parameters():
        trainable = name.startswith(("highway.", "trunk.norm"))
        assert p.requires_grad == trainable, name
        if trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, name
        else:
            assert p.grad is None, name


@pytest.mark.parametrize("options", VARIANTS)
def test_recomputation_gives_the_same_gradients(options):
    a = perturb(tiny(recompute_adapters=True, **options))
    b = tiny(recompute_adapters=False, **options)
    b.load_state_dict(a.state_dict())
    images = torch.randn(2, 3, 64, 80)
    for model in (a, b):
        sum(o.square().mean() for o in model(images).values()).backward()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_it_keeps_what_e3va_keeps_and_nothing_of_the_trunk():
    images = torch.randn(2, 3, 96, 96)
    e3va = TunedSwin(trunk=SwinTransformer(**TINY_SWIN), tuning="e3va").train()
    spatial = tiny(stage_mixer=False)
    saved = saved_bytes_by_module(lambda: spatial(images), spatial)
    assert not [m for m in saved if m.startswith("trunk.layers")]
    # The convolutions and the deviation are recomputed: each adapter keeps one B x L x C input.
    assert saved == saved_bytes_by_module(lambda: e3va(images), e3va)
    mixed = tiny()  # the default adds the stage mixers
    saved_mixed = saved_bytes_by_module(lambda: mixed(images), mixed)
    assert not [m for m in saved_mixed if m.startswith("trunk.layers")]
    extra = {m: b for m, b in saved_mixed.items() if "stage_mixers" in m}
    assert {m: b for m, b in saved_mixed.items() if m not in extra} == saved
    assert len(extra) == 4  # one kept input per stage
    for name, nbytes in extra.items():
        stage = int(name.split(".")[2])
        grid, channels = 24 // 2**stage, 32 * 2**stage
        assert nbytes == 2 * grid * grid * channels * 4, name


def test_the_mixer_mixes_neighbouring_tokens_only():
    mixer = GridMixer(4, (3,))
    torch.nn.init.ones_(mixer.convs[0].weight)
    h = torch.zeros(1, 25, 4)
    h[0, 12] = 1.0  # the centre of a 5 x 5 grid
    out = mixer(h, (5, 5)).view(5, 5, 4)[..., 0]
    assert out[2, 2] == 2.0  # itself (identity) + itself (conv)
    assert (out[1:4, 1:4] > 0).sum() == 9 and out.sum() == 10.0  # 3 x 3 neighbourhood only


def test_adapters_read_the_deviation_so_corrections_compound():
    """With read_state, the first block's adapters get gradient through the later adapters'
    inputs too; without it, only through the highway's sum."""
    images = torch.randn(2, 3, 64, 64)
    grads = {}
    for read_state in (True, False):
        model = perturb(tiny(read_state=read_state))
        sum(o.square().mean() for o in model(images).values()).backward()
        adapter = model.highway.layers[0]["blocks"][0].attn_adapter
        grads[read_state] = adapter.down.input_factors.grad
    assert (grads[True] - grads[False]).norm() > 1e-3 * grads[False].norm()


def test_parameter_count_matches_the_formula():
    dims, depths, rank = [32, 64, 128, 256], [2, 2, 2, 2], 8
    for kernels, mixer in (((3,), False), ((3, 5), True), ((), False)):
        model = TunedSwin(trunk=SwinTransformer(**TINY_SWIN),
                          tuning=build_tuning("e3va_spatial", conv_kernels=kernels,
                                              stage_mixer=mixer))
        expected = 0
        for c, depth in zip(dims, depths):
            h = c // 2
            low_rank = 2 * rank * (c + h) + h + 2 * rank * (h + c) + c  # D and U
            convs = sum(h * k * k + h for k in kernels)
            expected += 2 * depth * (low_rank + convs)
            if mixer:
                expected += low_rank + sum(h * k * k + h for k in kernels)
        assert sum(p.numel() for p in model.highway.parameters()) == expected


def test_options_are_checked():
    with pytest.raises(ValueError, match="odd sizes"):
        SpatialE3VATuning(conv_kernels=(2,))
    with pytest.raises(ValueError, match="parallel"):
        SpatialE3VATuning(structure="stacked")
    assert build_tuning("e3va_spatial").name == "e3va_spatial"


def test_a_short_run_lowers_the_loss():
    """A few steps on a fixed regression target: the highway learns."""
    model = tiny()
    torch.manual_seed(1)
    images = torch.randn(4, 3, 64, 64)
    target = {k: torch.randn_like(v) for k, v in model(images).items()}
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(15):
        out = model(images)
        loss = sum((out[k] - target[k]).square().mean() for k in out)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_each_seed_builds_the_spatial_highway_it_built_before():
    """The spatial highway once built E3VA's adapters, then replaced them: every seed (the
    accuracy study's too) was drawn after them. It draws their numbers without building them."""
    from e3va_d2.modeling.spatial_highway import SpatialBlockAdapters

    trunk = SwinTransformer(**TINY_SWIN)
    torch.manual_seed(0)
    built = build_tuning("e3va_spatial").attach(trunk).layers[0]["blocks"][0]
    torch.manual_seed(0)
    build_tuning("e3va").attach(trunk)  # what used to be built first
    before = SpatialBlockAdapters(32, hidden_dim=16, kernels=(3,), rank=8)
    for (name, ours), theirs in zip(built.state_dict().items(), before.state_dict().values()):
        assert torch.equal(ours, theirs), name


def backward_on(model, images):
    outputs = model(images)
    sum(o.square().mean() for o in outputs.values()).backward()
    return outputs


@pytest.mark.parametrize("per", ["block", "stage"])
@pytest.mark.parametrize("read_state", [True, False])
def test_recomputed_branches_give_the_spatial_highway_s_forward_and_gradients(per, read_state):
    """Lossless with the spatial highway too: its adapters that read the highway's deviation
    rerun their segment from the highway kept at its start; the others need only the stream."""
    default = perturb(tiny(read_state=read_state))
    recomputing = tiny(read_state=read_state, recompute_branches=per)
    recomputing.load_state_dict(default.state_dict())
    images = torch.randn(2, 3, 64, 80)  # odd grids: padding in windows and merging
    outs = [backward_on(m, images) for m in (default, recomputing)]
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    assert_same_gradients(default, recomputing)


@pytest.mark.parametrize("read_state", [True, False])
def test_recomputed_branches_keep_the_stream_and_the_highway_per_stage(read_state):
    images = torch.randn(2, 3, 96, 96)  # grids 24, 12, 6, 3
    saved = {}
    for per in (None, "stage"):
        model = tiny(read_state=read_state, recompute_branches=per)
        saved[per] = saved_bytes_by_module(lambda m=model: m(images), model)
    stream = [2 * (24 // 2**i) ** 2 * 32 * 2**i * 4 for i in range(4)]  # B * tokens * C floats
    # The trunk's stream at each stage's start, and the highway there when adapters read it
    # (at the first stage's start both are the patch embedding: one tensor).
    kept = 2 * sum(stream) - stream[0] if read_state else sum(stream)
    assert saved["stage"].pop("highway.branch_recompute") == kept
    assert saved["stage"] == {m: b for m, b in saved[None].items() if not m.endswith("_adapter")}


@pytest.mark.parametrize("read_state", [True, False])
def test_a_bfloat16_trunk_runs_beside_the_spatial_highway(read_state):
    wide = perturb(tiny(read_state=read_state, rank=4))
    narrow = tiny(read_state=read_state, rank=4, trunk_dtype="bfloat16")
    narrow.load_state_dict(wide.state_dict())
    assert {p.dtype for s in narrow.trunk.layers for p in s.blocks.parameters()} == {
        torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in narrow.highway.parameters())
    images = torch.randn(2, 3, 96, 96)
    saved_wide, saved_narrow = (saved_bytes_by_module(lambda m=m: m(images), m)
                                for m in (wide, narrow))
    # Adapters that read the trunk's branch alone keep it as the narrow trunk made it; those that
    # also read the deviation keep a float32 sum, as do the stage mixers.
    for name, nbytes in saved_wide.items():
        halved = name.endswith("_adapter") and not read_state
        assert saved_narrow[name] * (2 if halved else 1) == nbytes, name
    outs_wide, outs_narrow = backward_on(wide, images), backward_on(narrow, images)
    for key, out in outs_wide.items():
        assert outs_narrow[key].dtype == torch.float32
        torch.testing.assert_close(outs_narrow[key], out, rtol=0.05, atol=0.05, msg=key)
    for (name, p), q in zip(wide.named_parameters(), narrow.parameters()):
        if p.requires_grad:
            scale = p.grad.abs().max().item()
            torch.testing.assert_close(q.grad, p.grad, rtol=0.1, atol=0.05 * scale, msg=name)


def test_a_bfloat16_trunk_with_recomputed_branches_is_exact_beside_the_spatial_highway():
    default = perturb(tiny(rank=4, trunk_dtype="bfloat16"))
    recomputing = tiny(rank=4, trunk_dtype="bfloat16", recompute_branches="stage")
    recomputing.load_state_dict(default.state_dict())
    images = torch.randn(2, 3, 64, 64)
    outs = [backward_on(m, images) for m in (default, recomputing)]
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in outs[0])
    assert_same_gradients(default, recomputing)


def test_zeroed_spatial_highway_beside_a_bfloat16_trunk_equals_e3va_s_exactly():
    torch.manual_seed(0)
    e3va = TunedSwin(trunk=SwinTransformer(**TINY_SWIN),
                     tuning=build_tuning("e3va", zero_init=True, trunk_dtype="bfloat16")).train()
    spatial = tiny(zero_init=True, trunk_dtype="bfloat16")
    spatial.trunk.load_state_dict(e3va.trunk.state_dict())
    images = torch.randn(2, 3, 64, 64)
    a, b = e3va(images), spatial(images)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_narrow_saved_inputs_shrink_what_the_spatial_highway_keeps_and_only_round_backward():
    wide = perturb(tiny())
    narrow = tiny(saved_input_dtype="bfloat16")
    narrow.load_state_dict(wide.state_dict())
    images = torch.randn(2, 3, 96, 96)
    saved_wide, saved_narrow = (saved_bytes_by_module(lambda m=m: m(images), m)
                                for m in (wide, narrow))
    for name, nbytes in saved_wide.items():  # adapters' and mixers' inputs: half
        kept_input = name.endswith("_adapter") or "stage_mixers" in name
        assert saved_narrow[name] * (2 if kept_input else 1) == nbytes, name
    outs_wide, outs_narrow = backward_on(wide, images), backward_on(narrow, images)
    assert all(torch.equal(outs_wide[k], outs_narrow[k]) for k in outs_wide)
    differ = 0
    for (name, p), q in zip(wide.named_parameters(), narrow.parameters()):
        if p.requires_grad:
            scale = p.grad.abs().max().item()
            torch.testing.assert_close(q.grad, p.grad, rtol=0.05, atol=0.02 * scale, msg=name)
            differ += not torch.equal(q.grad, p.grad)
    assert differ  # the rounding reached the gradients: the option is not a no-op
