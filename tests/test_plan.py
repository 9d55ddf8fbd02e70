"""The planner (projects/benchmark/plan.py): refusals before measuring, physical fits only,
resuming a stopped run, reading its own records, and the paper comparison's arithmetic.

Every refusal test replaces ``plan.measure`` by a function that fails the test: a refusal must
come before a minute of measuring. The resume test measures nothing either (a fake peak).
"""
import json
import logging
import os

import pytest
import torch

from projects.benchmark import plan
from projects.benchmark.gpu_terms import GpuTerms
from projects.benchmark.plan_checks import PlanError
from projects.benchmark.plan_fit import PeakModel
from projects.tables import current_commit

ROOT = os.path.join(os.path.dirname(__file__), "..")
SWIN_B = os.path.join(ROOT, "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py")
TOY = os.path.join(ROOT, "configs/Shapes/upernet_swin_demo_e3va.py")
TOY_OPTS = ["model.backbone.weights=", "model.backbone.trunk.window_size=2"]


@pytest.fixture
def no_measuring(monkeypatch):
    def refuse(args):
        raise AssertionError("measured before refusing")

    monkeypatch.setattr(plan, "measure", refuse)


def points(peaks):
    """Measured points from {(side, batch): peak bytes} (divisibility 32, roles: fit)."""
    return [dict(size=s, batch=b, pixels=s * s * b, peak_bytes=v, role="fit")
            for (s, b), v in peaks.items()]


def measured_file(tmp_path, peaks, name="plan.json", wrap=lambda m: {"measured": m}):
    path = tmp_path / name
    measured = dict(points={"e3va": points(peaks)}, size_divisibility=32, device="cpu",
                    trainable={"e3va": 10**6})
    path.write_text(json.dumps(wrap(measured)))
    return str(path)


LINEAR = {(s, b): 2e9 + 300e6 * b + 900 * s * s * b for s in (224, 288) for b in (1, 2)}


def refusal(argv, tmp_path) -> str:
    with pytest.raises(PlanError) as e:
        plan.main([*argv, "--output", str(tmp_path / "out")] if "--output" not in argv
                  else argv)
    return str(e.value)


@pytest.mark.parametrize("argv, words", [
    (["--max-batch", "0"], ["--max-batch 0", "at least 1"]),
    (["--cuda-context", "12GiB", "--gpu-memory", "11GiB"], ["--cuda-context", "nothing"]),
    (["--gpu-memory", "11"], ["amount of memory"]),
    (["--allocator-slack", "-0.1"], ["--allocator-slack"]),
    (["--fit-sizes", "224"], ["--fit-sizes", "two different sides"]),
    (["--fit-batches", "2"], ["--fit-batches", "two different batches"]),
    (["--fit-sizes", "224,abc"], ["--fit-sizes", "whole numbers"]),
    (["--fit-sizes", "64,96"], ["below 224", "whole window", "negative bytes per pixel"]),
    (["--sizes", ","], ["--sizes is empty"]),
    (["--config-file", "no/such.py"], ["--config-file", "no such file"]),
])
def test_arguments_without_a_physical_answer_are_refused_before_measuring(
        argv, words, tmp_path, no_measuring):
    message = refusal(["--config-file", SWIN_B, *argv] if "--config-file" not in argv
                      else argv, tmp_path)
    for word in words:
        assert word in message


def test_an_output_that_cannot_be_written_is_refused_before_measuring(tmp_path, no_measuring):
    a_file = tmp_path / "taken"
    a_file.write_text("")
    assert "is a file" in refusal(["--config-file", SWIN_B, "--output", str(a_file)], tmp_path)
    message = refusal(["--config-file", SWIN_B, "--output", str(a_file / "below")], tmp_path)
    assert "cannot be written" in message and "below" in message


def test_a_broken_or_foreign_from_json_names_the_file(tmp_path, no_measuring):
    truncated = tmp_path / "plan.json"
    truncated.write_text('{"measured": {"points": ')
    message = refusal(["--from-json", str(truncated)], tmp_path)
    assert str(truncated) in message and "not JSON" in message
    foreign = os.path.join(ROOT, "docs/records/peak-swin-b.json")
    message = refusal(["--from-json", foreign], tmp_path)
    assert "peak-swin-b.json" in message and "'peak-swin-b'" in message
    other = tmp_path / "other.json"
    other.write_text('{"results": {}}')
    assert "no measured points" in refusal(["--from-json", str(other)], tmp_path)
    assert "no such file" in refusal(["--from-json", str(tmp_path / "none.json")], tmp_path)


def test_a_fit_whose_peak_falls_with_size_is_refused_not_printed(tmp_path):
    falling = {(s, b): 3e9 + 300e6 * b - 5000 * s * s * b for s in (64, 96) for b in (1, 2)}
    message = refusal(["--from-json", measured_file(tmp_path, falling)], tmp_path)
    assert "'e3va'" in message and "not physical" in message and "bytes per pixel" in message
    assert not (tmp_path / "out" / "plan.md").exists()


def test_a_fit_through_peaks_set_by_different_parts_is_refused(tmp_path):
    # A frozen Swin-L RetinaNet at 224-288: the peak barely moves, then jumps (measured, MiB).
    jump = {(224, 1): 933.9, (288, 1): 943.5, (224, 2): 944.7, (288, 2): 999.8}
    message = refusal(["--from-json", measured_file(
        tmp_path, {k: v * 2**20 for k, v in jump.items()})], tmp_path)
    assert "not linear in pixels" in message and "--fit-sizes" in message


@pytest.mark.parametrize("wrap", [
    lambda m: {"measured": m},  # plan.json
    lambda m: m,  # measured.json, the state of a run
    lambda m: {"table": "plan-swin-l", "commit": "x", "command": "c",
               "data": {"config_file": "c.py", "measured": m}},  # a docs record
])
def test_from_json_reads_a_plan_a_state_and_a_record(tmp_path, wrap, no_measuring):
    result = plan.main(["--from-json", measured_file(tmp_path, LINEAR, wrap=wrap),
                        "--output", str(tmp_path / "out"), "--sizes", "1333x800"])
    assert result["models"]["e3va"].per_pixel == pytest.approx(900, rel=1e-6)
    assert "| e3va | 1333x800 |" in (tmp_path / "out" / "plan.md").read_text()


def test_the_shipped_record_plans_again(tmp_path, no_measuring):
    plan.main(["--from-json", os.path.join(ROOT, "docs/records/plan-swin-l.json"),
               "--output", str(tmp_path)])
    assert "Tesla V100" in (tmp_path / "plan.md").read_text()


def test_card_need_adds_each_named_term():
    terms = GpuTerms(workspace=8 * 2**20, ddp_gradient_copy=True, allocator_slack=0.1,
                     cuda_context=2**29)
    allocated = 2**33 + 8 * 2**20 + 4 * 10**6
    assert terms.allocated(2**33, 10**6) == allocated
    assert terms.need(2**33, 10**6) == pytest.approx(allocated * 1.1 + 2**29)
    capacity = terms.need(2**33, 10**6)
    assert terms.largest_step_peak(capacity, 10**6) == pytest.approx(2**33)
    assert terms.slack_to_fill(capacity, 2**33, 10**6) == pytest.approx(0.1)
    assert GpuTerms(ddp_gradient_copy=False).ddp_copy_bytes(10**6) == 0


def test_a_stopped_run_resumes_and_builds_only_what_is_left(tmp_path, monkeypatch, caplog):
    from projects.benchmark import bench, plan_measure

    built, calls = [], []

    class CountingBench(bench.Bench):
        def __init__(self, cfg, methods, *args, **kwargs):
            built.append(list(methods))
            super().__init__(cfg, methods, *args, **kwargs)

    def fake_peak(step, device):  # a linear "peak", no profiling
        if len(calls) == 5:
            raise KeyboardInterrupt  # the user stops the run
        calls.append(1)
        pixels = sum(d["image"].shape[-1] * d["image"].shape[-2] for d in step.batch)
        return dict(peak_bytes=int(1e8 + 1e3 * pixels + 1e6 * len(step.batch)))

    monkeypatch.setattr(plan_measure, "Bench", CountingBench)
    monkeypatch.setattr(plan_measure, "measure_peak", fake_peak)
    argv = ["--config-file", TOY, "--methods", "fixed,e3va", "--fit-sizes", "64,128",
            "--output", str(tmp_path), "--sizes", "256", *TOY_OPTS]
    with caplog.at_level(logging.INFO), pytest.raises(KeyboardInterrupt):
        plan.main(argv)
    assert sum("AMP off" in r.getMessage() for r in caplog.records) <= 1  # once, not per step
    assert "[4/8] fixed at 128x128 x 2" in caplog.text
    saved = json.loads((tmp_path / "measured.json").read_text())
    assert [len(v) for v in saved["points"].values()] == [4, 1]  # kept when stopped
    assert saved["measured_at"] == [current_commit()]  # which code measured them
    calls.clear()
    result = plan.main(argv)
    assert built == [["fixed", "e3va"], ["e3va"]]  # fixed was done: not built again
    assert len(calls) == 3
    assert result["models"]["e3va"].per_pixel == pytest.approx(1e3, rel=1e-6)


def test_the_fast_peak_matches_the_profiler_timeline():
    from projects.benchmark.measure import MeasuredStep
    from projects.benchmark.peak_memory import step_peak_memory
    from projects.benchmark.plan_measure import cpu_step_peak

    class Toy(torch.nn.Module):  # a detectron2-style model: a list of dicts in, losses out
        def __init__(self):
            super().__init__()
            self.frozen = torch.nn.Linear(256, 256).requires_grad_(False)
            self.head = torch.nn.Sequential(torch.nn.Linear(256, 512), torch.nn.GELU(),
                                            torch.nn.Linear(512, 1))

        def forward(self, batch):
            x = torch.stack([d["image"] for d in batch])
            return {"loss": self.head(self.frozen(x)).square().mean()}

    torch.manual_seed(0)
    step = MeasuredStep(Toy(), [{"image": torch.randn(64, 256)} for _ in range(2)],
                        torch.device("cpu"))
    step.run(seed=0, record=False)  # AdamW's moments
    timeline = step_peak_memory(lambda: step.run(seed=0, record=False)).peak_bytes
    peaks = cpu_step_peak(step)
    assert peaks["peak_bytes"] == pytest.approx(timeline, rel=0.02)
    assert peaks["peak_bytes"] == max(peaks["forward_backward_bytes"], peaks["update_bytes"])


def test_the_optimizer_update_is_a_floor_not_a_slope():
    # At small sizes the update (weights, gradients, moments) can set a step's peak; a line
    # through those peaks is flat and predicts far too little at 1333x800.
    from projects.benchmark.sweep import per_pixel_image_and_constant

    def forward_backward(s, b):
        return 1e9 + 300e6 * b + 900.0 * s * s * b

    fit_points = [dict(size=s, batch=b, pixels=s * s * b, role="fit", update_bytes=2e9,
                       forward_backward_bytes=forward_backward(s, b),
                       peak_bytes=max(forward_backward(s, b), 2e9))
                  for s in (224, 288) for b in (1, 2)]
    model = PeakModel.fit(fit_points)
    assert model.per_pixel == pytest.approx(900.0, rel=1e-6) and model.update == 2e9
    assert model.predict(224 * 224, 1) == 2e9  # the update's floor
    assert model.predict(1344 * 800, 2) == pytest.approx(1e9 + 600e6 + 900.0 * 1344 * 800 * 2)
    flat = per_pixel_image_and_constant(fit_points, "peak_bytes")[0]
    assert flat < 450  # what fitting whole-step peaks gave: half the slope, or less
    assert model.largest_batch(1344 * 800, 2e9 - 1) == 0


TABLE4_METHODS = ("full", "e3va", "lora", "bitfit", "adapter", "fixed")


def paper_run(per_pixel, constant, trainable, methods=TABLE4_METHODS, config="c.py"):
    """One model's measured points, as plan_paper keeps them (fit sides 224, 288)."""
    peaks = {(s, b): constant + per_pixel * s * s * b for s in (224, 288) for b in (1, 2)}
    return dict(key=dict(config_file=config, opts=[], device="cpu"),
                points={m: points(peaks) for m in methods}, size_divisibility=32,
                device="cpu", trainable={m: trainable for m in methods})


def test_the_paper_comparison_adds_its_terms_and_judges_each_card(tmp_path):
    from projects.benchmark import paper_memory

    terms = GpuTerms(ddp_gradient_copy=True, allocator_slack=0.0, cuda_context=0)
    data = dict(runs={"swin-l-cascade": paper_run(1000.0, 2**30, 10**6)},
                terms=terms.to_dict(), device="cpu", fit_sizes="224,288")
    s = paper_memory.summary(data)
    pixels = 1344 * 800
    step = 2**30 + 1000.0 * pixels * 2
    allocated = step + 128 * pixels * 5 + 8 * 2**20 + 4 * 10**6
    (row,) = s["rows"]  # the only published Swin-L Cascade row: E3VA, Table 1
    assert row["allocated"] == pytest.approx(allocated)
    assert row["allocated"] / row["published"] == pytest.approx(allocated / (9471 * 2**20))
    cell = next(c for c in s["cells"] if (c["method"], c["batch"], c["gb"]) == ("e3va", 2, 11))
    assert cell["need"] == pytest.approx(allocated) and cell["ours"] and not cell["paper"]
    assert cell["published_slack"] == pytest.approx(11 * 2**30 / (9471 * 2**20) - 1)
    assert cell["to_agree"] == pytest.approx(11 * 2**30 - allocated)
    assert s["agree"] == sum(c["ours"] == c["paper"] for c in s["cells"])
    record = tmp_path / "plan-paper.json"
    record.write_text(json.dumps({"data": data}))
    assert f"{s['agree']} of {len(s['cells'])} cells agree" in paper_memory.error_band(
        str(record))
    assert paper_memory.error_band(str(tmp_path / "none.json")) == ""


def test_each_table_is_predicted_at_its_datasets_size_and_no_share_where_the_paper_has_none():
    """Table 2 (VOC) at mmdetection's 1000x600, Table 1 (COCO) at 1333x800; a published row at
    or below the paper's FIXED (Table 2's partial-1) gets no share above FIXED, and the band
    leaves it out."""
    from projects.benchmark import paper_memory

    terms = GpuTerms(ddp_gradient_copy=False, allocator_slack=0.0, cuda_context=0)
    methods = ("full", "fixed", "partial1", "e3va")
    data = dict(runs={"swin-l-cascade": paper_run(1000.0, 2**30, 10**6),
                      "swin-l-retinanet": paper_run(1000.0, 2**30, 10**6, methods)},
                terms=terms.to_dict(), device="cpu", fit_sizes="224,288")
    s = paper_memory.summary(data)
    rows = {r["method"]: r for r in s["rows"] if r["run"] == "swin-l-retinanet"}
    voc, coco = 1024 * 608, 1344 * 800  # padded to 32
    assert rows["full"]["step"] == pytest.approx(2**30 + 1000.0 * voc * 2)
    (cascade,) = [r for r in s["rows"] if r["run"] == "swin-l-cascade"]
    assert cascade["step"] == pytest.approx(2**30 + 1000.0 * coco * 2)
    assert "above_fixed" not in cascade  # no FIXED published for that model
    assert rows["partial1"]["published"] <= rows["fixed"]["published"]
    assert rows["partial1"]["above_fixed"] is None and rows["e3va"]["above_fixed"] is not None
    shares = [r["above_fixed"] for r in s["rows"] if r.get("above_fixed") is not None]
    assert (s["above_low"], s["above_high"]) == (min(shares), max(shares))
    table = paper_memory.published_table(s["rows"])
    assert table.count("paper's not above FIXED") == 1
    assert "1000x600" in paper_memory.render(data)


def test_every_table4_cell_that_disagrees_says_which_measured_excess_closes_it():
    from projects.benchmark import paper_memory

    terms = GpuTerms(ddp_gradient_copy=True)  # the default slack and context
    # Swin-B's frozen detector predicted far below the paper's 7,137 MiB (a large excess),
    # its LoRA above the paper's (a negative one): one closes cells, the other cannot.
    swin_b = paper_run(1500.0, 2**30, 10**6, methods=("fixed", "lora"))
    swin_b["points"]["lora"] = points({(s, b): 9 * 2**30 + 3000.0 * s * s * b
                                       for s in (224, 288) for b in (1, 2)})
    data = dict(runs={"swin-l-cascade": paper_run(2500.0, 3 * 2**30, 10**6),
                      "swin-b-cascade": swin_b},
                terms=terms.to_dict(), device="cpu", fit_sizes="224,288")
    s = paper_memory.summary(data)
    excess = paper_memory.excesses(s["rows"])
    assert excess["swin-b-cascade", "fixed"] > 2**30 > 0 > excess["swin-b-cascade", "lora"]
    differ = [c for c in s["cells"] if c["paper"] != c["ours"]]
    assert differ and s["explained"] and s["explained"] < len(differ)
    for c in differ:
        labels = [label for label, _, _ in c["terms"]]
        assert "the frozen detector's excess (FIXED, Swin-B)" in labels
        if c["method"] == "lora":
            assert "lora's excess (Swin-B)" in labels
        for _, extra, closes in c["terms"]:  # closes: the paper's verdict with it added
            assert closes == ((extra > c["to_agree"]) if c["ours"] else (extra <= c["to_agree"]))
    table = paper_memory.table4(s["cells"])
    for line in table.splitlines()[2:]:  # every bold cell has its card in the last column
        cells = line.strip("|").split(" | ")
        bold = [card for (card, _), cell in zip(paper_memory.TABLE4_CARDS, cells[3:7])
                if cell.startswith("**")]
        assert all(f"{card}: agrees at" in cells[-1] for card in bold)
        assert cells[-1].count("agrees at") == len(bold)
    closed = next(c for c in differ if any(closes for _, _, closes in c["terms"]))
    assert "closed by the frozen detector's excess" in paper_memory._why(closed)
    open_ = next(c for c in differ if not any(closes for _, _, closes in c["terms"]))
    assert "no excess Table 1 measures closes it" in paper_memory._why(open_)
    assert "Table 1 measures, over ours: lora's excess (Swin-B) -" in table


def test_a_run_measured_again_keeps_the_others_from_the_record_with_their_commits(
        tmp_path, monkeypatch):
    from projects.benchmark import paper_memory, plan_paper

    config = {run: paper_memory.RUNS[run][0] for run in paper_memory.RUNS}
    earlier = dict(runs={"swin-l-cascade": paper_run(2500.0, 3 * 2**30, 10**6,
                                                     config=config["swin-l-cascade"]),
                         # another model under the run's name: never kept for it
                         "swin-l-retinanet": paper_run(900.0, 2**30, 10**6,
                                                       methods=("fixed", "e3va"))},
                   terms=plan_paper.PAPER_TERMS.to_dict(), device="cpu", fit_sizes="224,288")
    record = tmp_path / "plan-paper.json"  # from before runs kept their commits
    record.write_text(json.dumps(dict(table="plan-paper", commit="aaaaaaa", command="c",
                                      data=earlier)))
    swin_b = dict(paper_run(1500.0, 2**30, 10**6, methods=("fixed", "e3va"),
                            config=config["swin-b-cascade"]), measured_at=["bbbbbbb"])

    def measure(args):  # only the run asked for is measured
        assert args.config_file == config["swin-b-cascade"]
        return swin_b

    monkeypatch.setattr(plan_paper, "measure", measure)
    monkeypatch.setattr(plan, "check_arguments", lambda args: None)
    argv = ["--output", str(tmp_path / "states"), "--keep-from", str(record)]
    data = plan_paper.main(["--runs", "swin-b-cascade", *argv])
    assert set(data["runs"]) == {"swin-l-cascade", "swin-b-cascade"}
    assert data["runs"]["swin-l-cascade"]["points"] == earlier["runs"]["swin-l-cascade"][
        "points"]
    assert data["runs"]["swin-l-cascade"]["measured_at"] == ["aaaaaaa"]  # the record's commit
    assert data["runs"]["swin-b-cascade"]["measured_at"] == ["bbbbbbb"]
    text = paper_memory.render(data)
    assert "Table 1: Swin-L Cascade Mask R-CNN (COCO): measured at aaaaaaa" in text
    assert "Table 1: Swin-B Cascade Mask R-CNN (COCO): measured at bbbbbbb" in text
    # Written and read back, nothing measured: each run keeps its own commit.
    record.write_text(json.dumps(dict(table="plan-paper", commit="ccccccc", command="c",
                                      data=json.loads(json.dumps(data)))))
    again = plan_paper.main(["--no-measure", *argv])
    assert {run: r["measured_at"] for run, r in again["runs"].items()} == {
        "swin-l-cascade": ["aaaaaaa"], "swin-b-cascade": ["bbbbbbb"]}
    assert paper_memory.render(again) == text
    # Without a record to keep from, Table 4's model must be measured.
    with pytest.raises(SystemExit, match="--runs swin-l-cascade"):
        plan_paper.main(["--no-measure", "--output", str(tmp_path / "states"),
                         "--keep-from", ""])


def test_prefilled_adamw_state_is_what_its_first_step_allocates():
    from projects.benchmark.plan_measure import prefill_optimizer_state

    stepped, prefilled = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    prefilled.bias.requires_grad_(False)
    a = torch.optim.AdamW(stepped.parameters(), lr=0.0)
    b = torch.optim.AdamW([p for p in prefilled.parameters() if p.requires_grad], lr=0.0)
    stepped(torch.ones(1, 4)).sum().backward()
    a.step()
    assert prefill_optimizer_state(b)
    want = {k: (v.shape, v.dtype, v.device) for k, v in a.state[stepped.weight].items()}
    assert {k: (v.shape, v.dtype, v.device) for k, v in b.state[prefilled.weight].items()} == want
    before = {k: v.data_ptr() for k, v in b.state[prefilled.weight].items()}
    prefilled(torch.ones(1, 4)).sum().backward()
    b.step()  # steps on the prefilled tensors: nothing allocated anew
    assert {k: v.data_ptr() for k, v in b.state[prefilled.weight].items()} == before
    assert float(b.state[prefilled.weight]["step"]) == 1.0
    assert not prefill_optimizer_state(torch.optim.SGD(stepped.parameters(), lr=0.1))
