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
    with torch.no_grad():
        frozen = model.trunk(images)
    outputs = model(images)
    for name in frozen:
        assert torch.equal(outputs[name], frozen[name]), name
    assert all(out.requires_grad for out in outputs.values())


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
