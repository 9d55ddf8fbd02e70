"""The cost benchmark: its measuring tools count what they claim, and the script runs on a tiny
Swin and writes well-formed tables and a chart."""
import gc
import json
import os
import weakref

import pytest
import torch

from e3va_d2.utils.cost import saved_activation_bytes

ROOT = os.path.join(os.path.dirname(__file__), "..")


def load_script():
    from projects.benchmark import tuning_cost

    return tuning_cost


def test_saved_bytes_count_each_storage_once_and_skip_parameters():
    layer = torch.nn.Linear(256, 256)
    x = torch.randn(64, 256)
    # exp saves its output, mul saves both inputs: y is one storage, counted once;
    # the Linear saves x (counted) and its weight (a parameter: not an activation).
    def forward():
        y = layer(x).exp()
        return (y * y).sum()
    assert saved_activation_bytes(forward, layer) == 2 * 64 * 256 * 4
    with torch.no_grad():
        assert saved_activation_bytes(forward, layer) == 0


def test_counting_saved_bytes_leaves_no_graph_alive():
    """Returning the saved tensor itself from the pack hook made each saved output reference
    its own grad_fn: the graph outlived the call until a gc pass (5 GB per Swin-B method)."""
    layer, x, refs = torch.nn.Linear(64, 64), torch.randn(8, 64), []

    def forward():
        y = layer(x).exp()  # exp saves its output
        refs.append(weakref.ref(y))
        return y.sum()

    gc.disable()
    try:
        assert saved_activation_bytes(forward, layer) > 0
        assert refs[0]() is None
    finally:
        gc.enable()


@pytest.mark.parametrize(
    "config",
    [
        "configs/Shapes/mask_rcnn_swin_demo_e3va.py",
        "configs/Shapes/retinanet_swin_demo_e3va.py",
        "configs/Shapes/upernet_swin_demo_e3va.py",
    ],
)
def test_benchmark_script_writes_tables_and_chart(config, tmp_path):
    script = load_script()
    results = script.main([
        "--config-file", os.path.join(ROOT, config), "--methods", "full,fixed,lora,e3va",
        "--size", "128", "--steps", "1", "--warmup", "1", "--output", str(tmp_path),
    ])
    assert list(results) == ["full", "fixed", "lora", "e3va"]
    table = (tmp_path / "cost.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | trainable (backbone)")
    assert [r.split("|")[1].strip() for r in rows[1:5]] == ["full", "fixed", "lora", "e3va"]
    assert all(r.count("|") == rows[0].count("|") for r in rows[:5])
    assert "GTX 1080Ti 11GB" in table and "(est.)" in table
    assert (tmp_path / "cost.png").stat().st_size > 10_000
    saved = {m: r["saved_bytes"] for m, r in results.items()}
    # The point of E3VA: little kept beyond the frozen model, unlike in-backbone methods.
    above = {m: (saved[m] - saved["fixed"]) / (saved["full"] - saved["fixed"]) for m in saved}
    assert above["e3va"] < 0.25 < above["lora"]
    assert results["fixed"]["trainable_backbone"] == 0
    assert json.loads((tmp_path / "cost.json").read_text())["results"]["e3va"]["step_seconds"] > 0


def test_methods_share_one_copy_of_common_weights():
    """Without sharing, lora's adapters draw random numbers before the heads are built, so its
    heads (hence proposals and costs) would differ from the frozen model's."""
    script = load_script()
    cfg = script.load_config(os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py"))
    fixed, lora = script.build_model(cfg, "fixed", 0), script.build_model(cfg, "lora", 0)
    reference, own = fixed.state_dict(), lora.state_dict()
    assert not torch.equal(reference["backbone.fpn_lateral2.weight"], own["backbone.fpn_lateral2.weight"])
    flags = {n: p.requires_grad for n, p in lora.named_parameters()}
    assert script.share_common_tensors(lora, reference) == len(reference)
    assert {n: p.requires_grad for n, p in lora.named_parameters()} == flags
    shared = lora.state_dict()
    assert all(shared[k].data_ptr() == v.data_ptr() for k, v in reference.items())
    assert len(shared) > len(reference)  # lora's own tensors stay its own


def test_unknown_method_is_refused():
    with pytest.raises(SystemExit, match="Unknown methods"):
        load_script().method_names("full,lorra")
