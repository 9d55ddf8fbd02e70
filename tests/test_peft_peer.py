"""The PEFT LoRA comparison: HF PEFT's LoRA lands where it should in our Swin, trains only its
factors and the output norms, starts at the frozen model's function, and the script reports
E3VA's ratios from one run. ``peft`` is in the test extras (``make setup``), so CI runs them;
a checkout without it skips them."""
import json
import os

import pytest
import torch

from e3va_d2.modeling import SwinTransformer, TunedSwin

from .conftest import TINY_SWIN

peft = pytest.importorskip("peft")

ROOT = os.path.join(os.path.dirname(__file__), "..")


def test_peft_lora_wraps_every_block_linear_and_trains_only_its_factors_and_norms():
    from peft.tuners.lora import LoraLayer

    from projects.benchmark.peft_peer import apply_peft_lora

    torch.manual_seed(0)
    model = TunedSwin(trunk=SwinTransformer(**TINY_SWIN), tuning="full").eval()
    images = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(images)
    apply_peft_lora(model, rank=4)
    wrapped = sorted(n for n, m in model.trunk.named_modules() if isinstance(m, LoraLayer))
    blocks = [f"layers.{i}.blocks.{j}" for i in range(4) for j in range(2)]
    assert wrapped == sorted(f"{b}.{leaf}" for b in blocks
                             for leaf in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if ".lora_A." in n or ".lora_B." in n}
    norms = {f"trunk.norm{i}.{k}" for i in range(4) for k in ("weight", "bias")}
    assert len(lora) == 2 * len(wrapped) and trainable == lora | norms
    with torch.no_grad():  # B starts at zero: the frozen model's function
        after = model(images)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # Gradients reach the LoRA factors through the frozen trunk.
    model.train()
    sum(o.square().mean() for o in model(images).values()).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if n in lora)


def test_peft_lora_needs_a_trunk_that_runs_with_autograd():
    from projects.benchmark.peft_peer import apply_peft_lora

    model = TunedSwin(trunk=SwinTransformer(**TINY_SWIN), tuning="e3va")
    with pytest.raises(ValueError, match="runs with autograd"):
        apply_peft_lora(model)


@pytest.mark.slow  # about 45 s on 2 cores; make test-slow and CI run it
def test_peft_peer_script_reports_ratios_from_one_run(tmp_path):
    from projects.benchmark import peft_peer

    out = peft_peer.main([
        "--config-file", os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py"),
        "--size", "96", "--steps", "1", "--warmup", "1", "--output", str(tmp_path),
    ])
    results, ratios = out["results"], out["ratios"]
    recomputing = "e3va:recompute_branches=stage"
    assert list(results) == ["fixed", "full", "e3va", recomputing, "peft_lora"]
    assert list(ratios) == ["e3va", recomputing]
    saved = {m: r["saved_bytes"] for m, r in results.items()}
    # PEFT LoRA backpropagates through the trunk: it keeps nearly what full keeps.
    assert saved["fixed"] < saved[recomputing] < saved["e3va"] < saved["peft_lora"]
    assert saved["peft_lora"] <= saved["full"] * 1.2
    assert 0 < ratios[recomputing]["saved_above_fixed"] < ratios["e3va"]["saved_above_fixed"] < 0.25
    assert ratios["e3va"]["backbone_step_ratio"] > 0 and "peak_above_fixed" in ratios["e3va"]
    text = (tmp_path / "peft_peer.md").read_text()
    assert "| peft_lora |" in text and "- e3va: backbone step" in text
    assert "goal" not in text  # what was measured, not an issue's target
    saved_ratios = json.loads((tmp_path / "peft_peer.json").read_text())["ratios"]
    assert saved_ratios.keys() == ratios.keys()
    for method, values in ratios.items():
        assert saved_ratios[method] == pytest.approx(values)
