"""recomputed_bottleneck: the values of the plain layer chain, its gradients (inputs included,
under autocast too), and only the input kept for backward."""
import pytest
import torch
import torch.nn.functional as F

from e3va_d2.layers import recomputed_bottleneck
from projects.benchmark.measure import saved_activation_bytes


def chain(x, layers, gelu_at):
    for i, (weight, bias) in enumerate(layers):
        x = F.linear(F.gelu(x) if i == gelu_at else x, weight, bias)
    return x


def dual_low_rank_layers(dim=12, hidden=6, r2=4, dtype=torch.float64):
    shapes = [((r2, dim), None), ((hidden, r2), hidden), ((r2, hidden), None), ((dim, r2), dim)]
    return [(torch.randn(*w, dtype=dtype, requires_grad=True),
             None if b is None else torch.randn(b, dtype=dtype, requires_grad=True))
            for w, b in shapes]


@pytest.mark.parametrize("input_needs_grad", [False, True])
def test_gradients_match_autograd_of_the_plain_chain(input_needs_grad):
    torch.manual_seed(0)
    layers = dual_low_rank_layers()
    x = torch.randn(2, 5, 12, dtype=torch.float64, requires_grad=input_needs_grad)
    params = [t for layer in layers for t in layer if t is not None]
    inputs = [x] * input_needs_grad + params
    assert torch.equal(recomputed_bottleneck(x, layers, 2), chain(x, layers, 2))
    torch.autograd.gradcheck(lambda *_: recomputed_bottleneck(x, layers, 2), inputs)
    standard = [(torch.randn(6, 12, dtype=torch.float64, requires_grad=True),
                 torch.randn(6, dtype=torch.float64, requires_grad=True)),
                (torch.randn(12, 6, dtype=torch.float64, requires_grad=True), None)]
    weights = [t for layer in standard for t in layer if t is not None]
    torch.autograd.gradcheck(lambda *_: recomputed_bottleneck(x, standard, 1),
                             [x] * input_needs_grad + weights)


def test_under_bf16_autocast_it_matches_the_plain_chain():
    torch.manual_seed(0)
    layers = dual_low_rank_layers(64, 32, 16, torch.float32)
    x = torch.randn(4, 50, 64)
    grads = []
    for fn in (recomputed_bottleneck, chain):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = fn(x, layers, 2)
        assert out.dtype == torch.bfloat16
        grads.append(torch.autograd.grad(out.float().square().sum(), [layers[0][0], layers[3][1]]))
    for ours, reference in zip(*grads):
        assert ours.dtype == torch.float32
        atol = 0.03 * reference.abs().max().item()
        torch.testing.assert_close(ours, reference, rtol=0.03, atol=atol)


def test_keeps_only_the_input_and_optionally_a_narrow_copy():
    layers = dual_low_rank_layers(64, 32, 16, torch.float32)
    x = torch.randn(4, 50, 64)
    params = torch.nn.ParameterList(
        [torch.nn.Parameter(t) for layer in layers for t in layer if t is not None])
    model = torch.nn.Module()
    model.params = params  # so the counter skips the weights
    # The plain chain also keeps both rank-16 products and the two 32-wide activations.
    def saved(fn, **options):
        return saved_activation_bytes(lambda: fn(x, layers, 2, **options), model)

    assert saved(chain) == x.nbytes * (1 + 2 * 16 / 64 + 2 * 32 / 64)
    assert saved(recomputed_bottleneck) == x.nbytes
    assert saved(recomputed_bottleneck, saved_dtype=torch.bfloat16) == x.nbytes // 2
    assert saved(recomputed_bottleneck, saved_dtype=torch.float8_e4m3fn) == x.nbytes // 4
    with pytest.raises(ValueError, match="gelu_at=0"):
        recomputed_bottleneck(x, layers, 0)


def test_float8_copy_is_scaled_to_the_formats_range():
    """Unscaled, activations of magnitude 1e-3 would mostly round to float8's subnormals or 0."""
    from e3va_d2.layers.bottleneck import _narrow, _widen

    x = torch.randn(1000) * 1e-3
    kept, scale = _narrow(x, torch.float8_e4m3fn)
    assert kept.dtype == torch.float8_e4m3fn and kept.float().abs().max() == 448
    torch.testing.assert_close(_widen(kept, scale, torch.float32), x, rtol=0.07, atol=0)
    assert _narrow(x.bfloat16(), torch.bfloat16)[0].dtype == torch.bfloat16  # never widened


def test_float8_scaling_is_float32_under_float16_autocast():
    """Under float16 autocast the adapters' inputs are float16. A scale computed in float16
    rounds below 0.03 (x / 448 leaves float16's normal range) and is 0 below 3e-5, where the
    widened copy is 0 (CPU) or inf / NaN (CUDA): the weight gradients go wrong."""
    torch.manual_seed(0)
    layers = dual_low_rank_layers(64, 32, 16, torch.float32)
    for magnitude in (1e-2, 1e-5):
        x = (torch.randn(4, 50, 64) * magnitude).half()
        grads = []
        for saved_dtype in (None, torch.float8_e4m3fn):
            with torch.autocast("cpu", dtype=torch.float16):
                out = recomputed_bottleneck(x, layers, 2, saved_dtype=saved_dtype)
            grads.append(torch.autograd.grad(out.float().sum(), layers[0][0])[0])
        exact, narrow = grads
        assert narrow.isfinite().all()
        # float8 keeps 3 mantissa bits (6% per value); the gradient sums many of them.
        tolerance = 0.06 * exact.abs().max().item()
        torch.testing.assert_close(narrow, exact, rtol=0, atol=tolerance, msg=str(magnitude))
