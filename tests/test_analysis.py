"""Flop counts include Swin's fused attention, and detectron2's analysis and export modules
import on detectron2 0.6 (whose export package needs Caffe2 at import)."""
import torch
import torch.nn.functional as F
from fvcore.nn import FlopCountAnalysis

import e3va_d2  # noqa: F401  (registers the attention handle)
from e3va_d2.modeling import SwinTransformer


class Fused(torch.nn.Module):
    def forward(self, q, k, v, mask):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


class Unfused(torch.nn.Module):
    def forward(self, q, k, v, mask):
        weights = (q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + mask).softmax(-1)
        return weights @ v


def test_fused_attention_counts_as_its_two_matmuls():
    """As many flops as fvcore counts for the same attention written out (5-D: every batch
    dimension counts; a value width unlike the key's)."""
    q, k = torch.randn(2, 3, 4, 49, 16), torch.randn(2, 3, 4, 49, 16)
    v, mask = torch.randn(2, 3, 4, 49, 8), torch.randn(3, 1, 49, 49)
    fused = FlopCountAnalysis(Fused(), (q, k, v, mask))
    unfused = FlopCountAnalysis(Unfused(), (q, k, v, mask))
    assert fused.total() == unfused.total() == 2 * 3 * 4 * 49 * 49 * (16 + 8)
    assert fused.unsupported_ops() == {}


def test_swin_flops_include_every_blocks_attention():
    trunk = SwinTransformer(embed_dim=32, depths=(2, 2), num_heads=(1, 2), window_size=7,
                            drop_path_rate=0.0, out_features=("p0", "p1")).eval()
    flops = FlopCountAnalysis(trunk, torch.randn(1, 3, 56, 56))
    # stage 0: a 14x14 grid, 4 windows of 49 tokens, 32 channels; stage 1: 7x7, 1 window, 64
    per_block = [2 * 4 * 49 * 49 * 32, 2 * 1 * 49 * 49 * 64]
    assert flops.by_operator()["scaled_dot_product_attention"] == 2 * sum(per_block)


def test_detectron2_export_and_analysis_import():
    from detectron2.export import TracingAdapter
    from detectron2.utils.analysis import FlopCountAnalysis as D2FlopCountAnalysis

    assert TracingAdapter.__module__ == "detectron2.export.flatten"
    assert D2FlopCountAnalysis is not None
