"""The cost benchmark: its measuring tools count what they claim, and the script runs on a tiny
Swin and writes well-formed tables and a chart."""
import gc
import json
import os
import weakref

import pytest
import torch

from projects.benchmark.measure import saved_activation_bytes, saved_bytes_by_module, saved_kind

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
    peak = "mask_rcnn" in config  # the profiled peak step once (the slowest part of the script)
    results = script.main([
        "--config-file", os.path.join(ROOT, config), "--methods", "full,fixed,lora,e3va",
        "--size", "128", "--steps", "1", "--warmup", "1", "--output", str(tmp_path),
    ] + ([] if peak else ["--no-peak"]))
    assert list(results) == ["full", "fixed", "lora", "e3va"]
    table = (tmp_path / "cost.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    assert rows[0].startswith("| method | trainable (backbone)")
    assert [r.split("|")[1].strip() for r in rows[1:5]] == ["full", "fixed", "lora", "e3va"]
    assert all(r.count("|") == rows[0].count("|") for r in rows[:5])
    # "Which GPU fits" is estimated only without a measured peak (with one it is plan.py's).
    assert ("GTX 1080Ti 11GB" in table and "(est.)" in table) == (not peak)
    assert "| step / full |" in rows[0]
    assert (tmp_path / "cost.png").stat().st_size > 10_000
    saved = {m: r["saved_bytes"] for m, r in results.items()}
    # The point of E3VA: little kept beyond the frozen model, unlike in-backbone methods.
    above = {m: (saved[m] - saved["fixed"]) / (saved["full"] - saved["fixed"]) for m in saved}
    assert above["e3va"] < 0.25 < above["lora"]
    assert results["fixed"]["trainable_backbone"] == 0
    assert json.loads((tmp_path / "cost.json").read_text())["results"]["e3va"]["step_seconds"] > 0
    if peak:  # E3VA's peak lies between the frozen backbone's and full fine-tuning's
        assert "Peak memory of a training step" in table
        assert (tmp_path / "peak.png").stat().st_size > 10_000
        peaks = {m: r["peak"]["peak_bytes"] for m, r in results.items()}
        assert peaks["fixed"] < peaks["e3va"] < peaks["full"]


def test_a_memory_only_run_has_no_time_columns():
    from projects.benchmark.cost_report import cost_table

    untimed = dict(trainable_backbone=0, swin_parameters=10, saved_bytes=2**20,
                   step_seconds=float("nan"), backbone_step_seconds=float("nan"))
    timed = {**untimed, "step_seconds": 2.0, "backbone_step_seconds": 1.0}
    header = cost_table({"full": untimed, "fixed": untimed}).splitlines()[0]
    assert "step" not in header and header.count("|") == 6
    rows = cost_table({"full": timed, "fixed": {**timed, "step_seconds": 1.0}}).splitlines()
    assert "| step / full | step / fixed |" in rows[0]
    assert rows[3].split("|")[6:8] == [" 0.50x ", " 1.00x "]


def test_methods_share_one_copy_of_common_weights():
    """Without sharing, lora's adapters draw random numbers before the heads are built, so its
    heads (hence proposals and costs) would differ from the frozen model's."""
    from e3va_d2.config import load_config
    from projects.benchmark import bench

    cfg = load_config(os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py"))
    fixed, lora = bench.build_model(cfg, "fixed", 0), bench.build_model(cfg, "lora", 0)
    reference, own = fixed.state_dict(), lora.state_dict()
    lateral = "backbone.fpn_lateral2.weight"
    assert not torch.equal(reference[lateral], own[lateral])
    flags = {n: p.requires_grad for n, p in lora.named_parameters()}
    assert bench.share_common_tensors(lora, reference) == len(reference)
    assert {n: p.requires_grad for n, p in lora.named_parameters()} == flags
    shared = lora.state_dict()
    assert all(shared[k].data_ptr() == v.data_ptr() for k, v in reference.items())
    assert len(shared) > len(reference)  # lora's own tensors stay its own


@pytest.mark.parametrize("module", ["tuning_cost", "sweep", "plan", "peft_peer"])
def test_a_bad_method_spec_is_a_usage_error(module, capsys):
    """The spec grammar raises ValueError (a library has no business exiting); each command
    line turns it into argparse's usage error, exit status 2, naming the bad method."""
    import importlib

    script = importlib.import_module(f"projects.benchmark.{module}")
    with pytest.raises(SystemExit) as stop:
        script.parse_args(["--methods", "full,lorra"])
    assert stop.value.code == 2
    assert "--methods: unknown tuning method 'lorra'" in capsys.readouterr().err


def test_all_is_every_method_the_papers_first():
    from projects.benchmark.bench import method_names

    names = method_names("all")
    assert names[:3] == ["full", "fixed", "bitfit"] and "e3va_spatial" in names


def test_saved_bytes_are_attributed_to_the_innermost_module():
    model = torch.nn.Sequential(torch.nn.Linear(32, 32), torch.nn.Sequential(torch.nn.GELU()))
    x = torch.randn(4, 32)
    by_module = saved_bytes_by_module(lambda: model(x).exp().sum(), model)
    # Linear keeps x, GELU its input (the Linear's output), exp (outside any module) its output.
    assert by_module == {"0": 4 * 32 * 4, "1.0": 4 * 32 * 4, "": 4 * 32 * 4}
    assert sum(by_module.values()) == saved_activation_bytes(lambda: model(x).exp().sum(), model)
    adapter = "backbone.bottom_up.highway.layers.0.blocks.1.mlp_adapter"
    assert saved_kind(adapter) == "highway adapters' inputs"
    assert saved_kind("backbone.bottom_up.trunk.layers.2.downsample.norm") == "patch merging"
    assert saved_kind("backbone.fpn_lateral3") == "neck (FPN)"
    assert saved_kind("roi_heads.box_head.0.fc1") == "ROI heads"


def test_benchmark_breakdown_amp_and_narrow_saved_inputs(tmp_path):
    """One process: E3VA with its adapters' inputs kept in bf16 saves exactly half of what they
    keep in fp32 and nothing else changes; under AMP (bf16 on CPU) those inputs are bf16 already,
    so the option changes nothing."""
    script = load_script()
    config = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
    methods = "full,fixed,e3va,e3va:saved_input_dtype=bfloat16"
    common = ["--config-file", config, "--methods", methods, "--size", "96", "--steps", "1",
              "--warmup", "1", "--fit-batches", "1", "--no-peak"]  # peaks: test_memory.py
    fp32 = script.main(common + ["--output", str(tmp_path / "fp32")])
    amp = script.main(common + ["--output", str(tmp_path / "amp"), "--amp"])
    table = (tmp_path / "fp32" / "cost.md").read_text()
    assert "| saved by | full | fixed | e3va | e3va:saved_input_dtype=bfloat16 |" in table
    assert "AMP (bfloat16)" in (tmp_path / "amp" / "cost.md").read_text()
    adapters = "highway adapters' inputs"
    narrow_spec = "e3va:saved_input_dtype=bfloat16"
    wide, narrow = (fp32[m]["saved_bytes_by_kind"] for m in ("e3va", narrow_spec))
    assert wide[adapters] == 2 * narrow[adapters] > 0
    others = {k: v for k, v in wide.items() if k != adapters}
    assert others == {k: v for k, v in narrow.items() if k != adapters}
    for results in (fp32, amp):
        for r in results.values():
            assert sum(r["saved_bytes_by_kind"].values()) == r["saved_bytes"]
    # Under AMP the trunk's branch outputs, which the adapters keep, are bf16 already.
    assert amp["e3va"]["saved_bytes_by_kind"][adapters] == narrow[adapters]
    assert amp["e3va"]["saved_bytes_by_kind"] == amp[narrow_spec]["saved_bytes_by_kind"]
    assert amp["e3va"]["step_seconds"] > 0


def test_fits_recover_exponent_and_per_pixel_and_per_image_costs():
    from projects.benchmark.sweep import per_pixel_and_image, power_law, predict

    pixels = [1e5, 2e5, 4e5, 8e5]
    fit = power_law(pixels, [3.0 * p**1.25 for p in pixels])
    assert fit[0] == pytest.approx(1.25) and predict(fit, 1.6e6) == pytest.approx(3.0 * 1.6e6**1.25)
    # A detector: 40 bytes per pixel in the backbone, 5 MB per image in the heads.
    points = [dict(pixels=s * s * b, batch=b, saved_bytes=40 * s * s * b + 5e6 * b)
              for s in (384, 512, 768) for b in (1, 2)]
    assert per_pixel_and_image(points, "saved_bytes") == pytest.approx((40, 5e6))


def test_sweep_script_measures_fits_and_extrapolates(tmp_path):
    from projects.benchmark import sweep

    result = sweep.main([
        "--config-file", os.path.join(ROOT, "configs/Shapes/upernet_swin_demo_e3va.py"),
        "--methods", "fixed,e3va", "--sizes", "64,96", "--batches", "1,2", "--steps", "1",
        "--extrapolate", "192x128x2", "--output", str(tmp_path),
    ])
    points = result["points"]["e3va"]
    assert [(p["size"], p["batch"]) for p in points] == [(64, 1), (64, 2), (96, 1), (96, 2)]
    assert all(p["saved_bytes"] > 0 and p["step_seconds"] > 0 for p in points)
    # A segmenter's activations are all per pixel: doubling the batch doubles them.
    assert points[1]["saved_bytes"] == pytest.approx(2 * points[0]["saved_bytes"], rel=0.1)
    text = (tmp_path / "sweep.md").read_text()
    assert "| 96x96 x 2 | 0.02M |" in text and "(extrapolated)" in text
    assert 0.8 < sweep.slopes(result["points"], "saved_bytes")["e3va"][1][0] < 1.2
    # The per-pixel / per-image fit reproduces the measured points it was fitted on.
    per_pixel, per_image = sweep.per_pixel_and_image(points, "saved_bytes")
    for p in points:
        fitted = per_pixel * p["pixels"] + per_image * p["batch"]
        assert fitted == pytest.approx(p["saved_bytes"], rel=0.1)
    redrawn = sweep.main(["--from-json", str(tmp_path / "sweep.json"),
                          "--output", str(tmp_path / "again"), "--extrapolate", "192x128x2"])
    assert redrawn["points"] == json.loads(json.dumps(result["points"]))
    assert (tmp_path / "again" / "sweep.md").read_text() == text
    assert (tmp_path / "sweep.png").stat().st_size > 10_000



def test_highway_time_separates_gradient_path_from_adapters(tmp_path):
    from projects.benchmark import highway_time

    result = highway_time.main([
        "--config-file", os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py"),
        "--size", "64", "--steps", "1", "--output", str(tmp_path),
    ])
    flops = result["flops"]
    # Sending gradients below the FPN costs FLOPs (its input gradients, the merges' backward);
    # the adapters add their own on top.
    assert flops["fixed"] < flops["gradient path"] < flops["e3va"]
    steps = highway_time.build_steps(
        highway_time.load_config(os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")),
        highway_time.synthetic_detection_batch(1, 64, 3), torch.device("cpu"))
    model = steps["gradient path"].model
    shared = [steps[v].model.backbone.bottom_up.trunk.patch_embed.proj.weight for v in steps]
    assert len({w.data_ptr() for w in shared}) == 1  # one copy of the common weights
    highway = model.backbone.bottom_up.highway
    embeddings, begin = [], highway.begin
    highway.begin = lambda embedding: embeddings.append(begin(embedding)) or embeddings[-1]
    sum(f.sum() for f in model.backbone(torch.randn(1, 3, 64, 64)).values()).backward()
    assert embeddings[0].grad is not None  # the gradient crossed every merge
    assert not any(p.grad is not None for n, p in model.named_parameters() if "_adapter" in n)
    assert "| gradient path |" in (tmp_path / "highway_time.md").read_text()


def test_moving_a_method_keeps_adamw_step_counters_where_torch_keeps_them():
    # AdamW keeps its "step" counters as CPU scalars (read on the host every step) unless it is
    # capturable or fused; moving them to the GPU costs a host sync per parameter per step.
    from types import SimpleNamespace

    from projects.benchmark.bench import Bench

    def method(**options):
        model = torch.nn.Linear(3, 2)
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.0, **options)
        model(torch.ones(1, 3)).sum().backward()
        optimizer.step()
        return {"model1": SimpleNamespace(model=model, batch=[], optimizer=optimizer)}

    bench = Bench.__new__(Bench)
    bench.device = torch.device("cuda")  # on_device moves only for a CUDA bench
    bench.steps = {"plain": method(), "fused": method(fused=True)}
    for name in bench.steps:
        bench.on_device(name, torch.device("meta"))  # any device but the CPU shows the move
    plain = bench.steps["plain"]["model1"].optimizer.state.values()
    assert all(s["step"].device.type == "cpu" and s["exp_avg"].device.type == "meta"
               for s in plain)
    fused = bench.steps["fused"]["model1"].optimizer.state.values()
    assert all(s["step"].device.type == "meta" for s in fused)  # fused keeps them on device


def test_inference_latency_table_is_the_median_and_its_excess_over_the_first_method():
    from projects.benchmark.inference_latency import render

    data = dict(setup="a config, 8x8", seconds={"fixed": [0.010, 0.030, 0.020],
                                                "e3va": [0.025, 0.022, 0.900]})
    text = render(data)
    assert "| `fixed` | 20.0 | +0.0 ms (+0.0%) |" in text
    # the median ignores the one slow image; the excess is over fixed's median
    assert "| `e3va` | 25.0 | +5.0 ms (+25.0%) |" in text
    assert text.rstrip().endswith("a config, 8x8.")


def test_a_records_setup_line_names_the_processor_model(tmp_path):
    from projects.benchmark.cost_report import cpu_name

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                       "model name\t: AMD EPYC 9B14 96-Core Processor\nflags\t: avx2\n")
    assert cpu_name(str(cpuinfo)) == "AMD EPYC 9B14 96-Core Processor"
    assert cpu_name(str(tmp_path / "absent")) != ""  # another OS: the architecture at least
