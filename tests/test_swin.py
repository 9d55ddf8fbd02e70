"""The Swin trunk: shapes and padding at odd sizes, the branch decomposition, stages built only
when needed, drop path and activation checkpointing."""
import pytest
import torch

from e3va_d2.modeling.swin import SwinTransformer, swin_size

from .conftest import TINY_SWIN


@pytest.mark.parametrize("size", [(64, 64), (97, 131), (200, 249)])
def test_outputs_match_declared_shapes_at_any_size(size):
    torch.manual_seed(0)
    trunk = SwinTransformer(**TINY_SWIN).eval()
    images = torch.randn(2, 3, *size)
    with torch.no_grad():
        outs = trunk(images)
    shapes = trunk.output_shape()
    assert list(outs) == ["p0", "p1", "p2", "p3"]
    for name, out in outs.items():
        stride, channels = shapes[name].stride, shapes[name].channels
        # Patch embedding pads to 4, every merge pads odd grids by one: a ceil at each step.
        expected = [size[0], size[1]]
        for _ in range(stride.bit_length() - 1):
            expected = [(n + 1) // 2 for n in expected]
        assert out.shape == (2, channels, *expected), name
        assert torch.isfinite(out).all()
    assert [shapes[f].stride for f in outs] == [4, 8, 16, 32]
    assert [shapes[f].channels for f in outs] == [32, 64, 128, 256]
    assert trunk.size_divisibility == 32


def naive_attention_branch(block, x, hw):
    """Window attention written the slow way: explicit windows, bias index and region mask."""
    H, W = hw
    B, _, C = x.shape
    ws, s, attn = block.window_size, block.shift_size, block.attn
    heads, d = attn.num_heads, C // attn.num_heads
    y = block.norm1(x).view(B, H, W, C)
    Hp, Wp = -(-H // ws) * ws, -(-W // ws) * ws
    y = torch.nn.functional.pad(y, (0, 0, 0, Wp - W, 0, Hp - H))
    if s:
        y = torch.roll(y, (-s, -s), (1, 2))

    def region(i, n):
        return 0 if i < n - ws else (1 if i < n - s else 2)

    out = torch.zeros_like(y)
    cells = [(r, c) for r in range(ws) for c in range(ws)]
    for top in range(0, Hp, ws):
        for left in range(0, Wp, ws):
            t = y[:, top : top + ws, left : left + ws].reshape(B, ws * ws, C)
            q, k, v = attn.qkv(t).view(B, ws * ws, 3, heads, d).unbind(2)
            scores = torch.einsum("bnhd,bmhd->bhnm", q, k) * d**-0.5
            for n, (r1, c1) in enumerate(cells):
                for m, (r2, c2) in enumerate(cells):
                    idx = (r1 - r2 + ws - 1) * (2 * ws - 1) + (c1 - c2 + ws - 1)
                    scores[:, :, n, m] += attn.relative_position_bias_table[idx]
                    if s:
                        a = (region(top + r1, Hp), region(left + c1, Wp))
                        b = (region(top + r2, Hp), region(left + c2, Wp))
                        if a != b:
                            scores[:, :, n, m] -= 100.0
            o = torch.einsum("bhnm,bmhd->bnhd", scores.softmax(-1), v).reshape(B, ws * ws, C)
            out[:, top : top + ws, left : left + ws] = attn.proj(o).view(B, ws, ws, C)
    if s:
        out = torch.roll(out, (s, s), (1, 2))
    return out[:, :H, :W].reshape(B, H * W, C)


@pytest.mark.parametrize("size", [(56, 56), (60, 44)])
def test_window_attention_matches_a_naive_implementation(size):
    """Padding to window multiples, the cyclic shift and its region mask, checked against
    explicit per-window attention (the 60x44 image gives a 15x11 grid: padded, shifted)."""
    torch.manual_seed(0)
    trunk = SwinTransformer(**TINY_SWIN, out_features=("p0",)).eval()
    stage = trunk.layers[0]
    for p in trunk.parameters():  # non-trivial biases and tables
        torch.nn.init.normal_(p, std=0.2)
    x, hw = trunk.patch_embed(torch.randn(2, 3, *size))
    mask = stage.shift_mask(hw, x.device)
    with torch.no_grad():
        for block in stage.blocks:
            assert block.shift_size in (0, 3)
            ours = block.attention_branch(x, hw, mask)
            naive = naive_attention_branch(block, x, hw)
            torch.testing.assert_close(ours, naive, atol=1e-4, rtol=1e-4)


def windows_in_the_batch(attn, x, mask):
    """The shifted windows' attention as first written: windows as a 5th dimension of the
    query, which CUDA's fast SDPA kernels do not take."""
    Bw, N, C = x.shape
    q, k, v = attn.qkv(x).view(Bw, N, 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
    nW = mask.shape[0]
    bias = attn.position_bias().unsqueeze(0).to(q.dtype) + mask.to(q.dtype).unsqueeze(1)
    q, k, v = (t.view(Bw // nW, nW, attn.num_heads, N, -1) for t in (q, k, v))
    out = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    return attn.proj(out.reshape(Bw, attn.num_heads, N, -1).transpose(1, 2).reshape(Bw, N, C))


@pytest.mark.parametrize("amp", [False, True])
def test_shifted_windows_give_a_4d_query_and_the_5d_formulations_values(amp, monkeypatch):
    torch.manual_seed(0)
    trunk = SwinTransformer(**TINY_SWIN, out_features=("p0",)).train()
    for p in trunk.parameters():
        torch.nn.init.normal_(p, std=0.2)
    block = trunk.layers[0].blocks[1]
    mask = trunk.layers[0].shift_mask((15, 11), torch.device("cpu"))  # 6 windows, padded
    tokens = torch.randn(2 * mask.shape[0], 49, 32)
    sdpa, ranks = torch.nn.functional.scaled_dot_product_attention, []
    results = []
    for attention in (block.attn, lambda t, m: windows_in_the_batch(block.attn, t, m)):
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                            lambda q, *a, **kw: ranks.append(q.dim()) or sdpa(q, *a, **kw))
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = attention(tokens, mask)
        grads = torch.autograd.grad(out.float().square().sum(), list(block.attn.parameters()))
        results.append((out, grads))
    assert ranks == [4, 5]
    (ours, our_grads), (theirs, their_grads) = results
    assert torch.equal(ours, theirs)
    assert all(torch.equal(a, b) for a, b in zip(our_grads, their_grads))
    # Inference: for a 4-D query CPU's SDPA may take its flash kernel (as unshifted windows
    # always did), which rounds differently.
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        ours, theirs = block.attn(tokens, mask), windows_in_the_batch(block.attn, tokens, mask)
    atol = theirs.abs().max().item() * (2**-6 if amp else 1e-5)  # two bf16 roundings
    torch.testing.assert_close(ours, theirs, rtol=0, atol=atol)


def test_block_is_sum_of_its_two_branches():
    torch.manual_seed(0)
    trunk = SwinTransformer(**TINY_SWIN).eval()
    stage = trunk.layers[0]
    x, hw = trunk.patch_embed(torch.randn(2, 3, 90, 70))
    mask = stage.shift_mask(hw, x.device)
    for block in stage.blocks:
        with torch.no_grad():
            a1 = block.attention_branch(x, hw, mask)
            a2 = block.mlp_branch(x + a1)
            assert torch.equal(block(x, hw, mask), x + a1 + a2)
        x = x + a1 + a2


def test_only_requested_stages_are_built():
    trunk = SwinTransformer(**TINY_SWIN, out_features=("p1",))
    assert len(trunk.layers) == 2
    assert trunk.layers[-1].downsample is None
    assert not hasattr(trunk, "norm0") and hasattr(trunk, "norm1")
    outs = trunk(torch.randn(1, 3, 64, 64))
    assert list(outs) == ["p1"] and outs["p1"].shape == (1, 64, 8, 8)
    with pytest.raises(ValueError, match="subset"):
        SwinTransformer(**TINY_SWIN, out_features=("p4",))


@pytest.mark.parametrize(
    "size,millions", [("T", 27.52), ("S", 48.84), ("B", 86.75), ("L", 195.00)]
)
def test_released_sizes_have_released_parameter_counts(size, millions):
    """Trunk + output norms, no classifier (Swin paper: T 28M, S 50M, B 88M, L 197M with it)."""
    with torch.device("meta"):
        trunk = SwinTransformer(**swin_size(size))
    assert sum(p.numel() for p in trunk.parameters()) / 1e6 == pytest.approx(millions, abs=0.01)


def test_drop_path_is_random_in_training_and_off_in_eval():
    torch.manual_seed(0)
    trunk = SwinTransformer(**{**TINY_SWIN, "depths": (2, 2, 2, 2)}, drop_path_rate=0.5)
    images = torch.randn(4, 3, 64, 64)
    trunk.train()
    a, b = trunk(images)["p3"], trunk(images)["p3"]
    assert not torch.equal(a, b)
    trunk.eval()
    with torch.no_grad():
        assert torch.equal(trunk(images)["p3"], trunk(images)["p3"])


def test_activation_checkpointing_gives_same_outputs_and_gradients():
    torch.manual_seed(0)
    plain = SwinTransformer(**TINY_SWIN, drop_path_rate=0.0)
    ckpt = SwinTransformer(**TINY_SWIN, drop_path_rate=0.0, use_checkpoint=True)
    ckpt.load_state_dict(plain.state_dict())
    images = torch.randn(2, 3, 64, 96)
    losses = [sum(o.square().mean() for o in m(images).values()) for m in (plain, ckpt)]
    for loss in losses:
        loss.backward()
    torch.testing.assert_close(losses[0], losses[1])
    for (name, p), q in zip(plain.named_parameters(), ckpt.parameters()):
        torch.testing.assert_close(p.grad, q.grad, msg=name)


def test_unknown_size_is_refused():
    with pytest.raises(ValueError, match="Unknown Swin size"):
        swin_size("XL")
