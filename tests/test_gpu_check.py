"""`make gpu-check` (projects/gpu_check): the runner stops at the first failed step and reports
every step; a machine without a GPU is told so and nothing runs; the results become the docs'
record; and the steps whose arithmetic a CPU can show run here on the CPU (the others skip)."""
import json
import math
import os

import pytest
import torch

from projects import tables
from projects.gpu_check import check, runner, steps
from projects.gpu_check.runner import EXIT_FAILED, EXIT_NO_GPU, EXIT_PASSED, Outcome, Skip
from projects.gpu_check.steps import Settings

from .conftest import TINY_SWIN

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = "configs/Shapes/mask_rcnn_swin_demo_e3va.py"


def _fail():
    raise AssertionError("gradients differ")


def _skip():
    raise Skip("needs 2 GPUs, this machine has 1")


def test_the_runner_stops_at_the_first_failure_and_reports_every_step_that_ran():
    ran, lines = [], []

    def passing(name):
        def step():
            ran.append(name)
            return Outcome(f"{name} ok", {"value": 1})
        return step

    results = runner.run_steps([("a", passing("a")), ("b", _skip), ("c", _fail),
                                ("d", passing("d"))], log=lines.append)
    assert ran == ["a"]  # d never ran
    assert [(r.name, r.status) for r in results] == [("a", "passed"), ("b", "skipped"),
                                                     ("c", "failed")]
    assert results[0].details == {"value": 1}
    assert results[1].summary == "needs 2 GPUs, this machine has 1"
    assert results[2].summary == "AssertionError: gradients differ"
    assert runner.exit_code(results) == EXIT_FAILED
    text = "\n".join(lines)
    assert "c: FAILED" in text and "Traceback" in text and "not run: d" in text
    assert runner.exit_code(results[:2]) == EXIT_PASSED


def test_without_a_gpu_it_says_so_runs_nothing_and_writes_nothing(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(check, "run_steps", lambda *a, **k: pytest.fail("a step ran"))
    monkeypatch.setattr(check, "publish", lambda *a, **k: pytest.fail("a record was written"))
    output = tmp_path / "out"
    assert check.main(["--output", str(output), "--record", "gpu-check"]) == EXIT_NO_GPU
    said = capsys.readouterr().out
    assert "no CUDA GPU is visible" in said and "nothing was checked" in said
    assert f"exit {EXIT_NO_GPU}" in said
    assert not output.exists()


def test_a_run_writes_its_results_and_the_docs_record(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(check, "machine_line", lambda: "1 x NVIDIA H100, torch 2.14.1")
    monkeypatch.setattr(check, "STEPS", (
        ("environment", lambda s: Outcome("1 x H100 (capability 9.0)")),
        ("ddp_gradients", lambda s: _skip()),
        ("amp", lambda s: _fail()),
        ("timing", lambda s: pytest.fail("ran after a failure"))))
    published = {}
    monkeypatch.setattr(check, "publish", lambda name, data, render, command: published.update(
        name=name, data=data, render=render, command=command))
    code = check.main(["--output", str(tmp_path), "--record", "gpu-check"])
    assert code == EXIT_FAILED
    data = json.loads((tmp_path / "gpu-check.json").read_text())
    assert [s["status"] for s in data["steps"]] == ["passed", "skipped", "failed"]
    assert published["name"] == "gpu-check" and published["data"] == data
    assert published["render"] == tables.TABLES["gpu-check"].render
    assert published["command"].startswith("python -m projects.gpu_check")
    table = runner.render(data)  # what the docs show, from the record alone
    assert "failed at amp" in table and "| environment | passed | 1 x H100" in table
    assert "needs 2 GPUs" in table and "1 passed, 1 skipped, 1 failed" in capsys.readouterr().out


def test_steps_can_be_chosen_and_an_unknown_one_is_a_usage_error(capsys):
    assert check.parse_args(["--steps", "timing,amp"]).steps == ["amp", "timing"]
    with pytest.raises(SystemExit):
        check.parse_args(["--steps", "amp,speed"])
    assert "unknown ['speed']" in capsys.readouterr().err


def test_until_a_gpu_runs_it_the_docs_say_pending():
    assert tables.TABLES["gpu-check"].pending == "no GPU run yet"
    with open(os.path.join(ROOT, "docs/INSTALL.md")) as f:
        assert tables.block(f.read(), "gpu-check") == tables.pending_block("gpu-check")


def test_the_environment_step_fails_with_the_startup_error_on_a_gpu_the_build_lacks(monkeypatch):
    monkeypatch.setattr(torch.version, "hip", None, raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: ["sm_75", "sm_80", "sm_90"])
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None: (6, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=None: "Tesla P100-PCIE-16GB")
    with pytest.raises(RuntimeError, match="P100.*6.0.*cu126"):
        steps.environment(Settings())


def test_steps_that_need_cuda_skip_on_the_cpu():
    cpu = Settings(device="cpu")
    for step in (steps.environment, steps.planner_against_cuda):
        with pytest.raises(Skip):
            step(cpu)


def test_the_lossless_step_passes_on_the_cpu_and_catches_a_lossy_option():
    settings = Settings(device="cpu", lossless_trunk=tuple(TINY_SWIN.items()), lossless_size=64)
    outcome = steps.lossless_options(settings)
    assert "float32, float16, bfloat16" in outcome.summary
    assert set(outcome.details["largest_relative_difference"]) == {
        f"{o} ({d})" for o in settings.lossless_options for d in ("float32", "float16", "bfloat16")}
    lossy = Settings(device="cpu", lossless_trunk=tuple(TINY_SWIN.items()), lossless_size=64,
                     lossless_options=("saved_input_dtype=bfloat16",))
    with pytest.raises(AssertionError, match=r"saved_input_dtype=bfloat16 \(float32\): gradient"):
        steps.lossless_options(lossy)


@pytest.mark.slow  # 8 training steps of the demo detector
def test_the_amp_step_trains_under_float16_and_bfloat16_on_the_cpu():
    settings = Settings(device="cpu", amp_config=DEMO, amp_size=64, amp_iters=4)
    outcome = steps.amp_training(settings)
    runs = outcome.details["runs"]
    assert set(runs) == {"float16", "bfloat16"}
    assert runs["bfloat16"]["scale"] is None and runs["bfloat16"]["skipped_steps"] == 0
    # float16's scaler starts at 2**16: its first steps overflow, are skipped and counted
    assert runs["float16"]["scale"] < 2**16 and 0 < runs["float16"]["skipped_steps"] < 4
    for run in runs.values():
        assert len(run["losses"]) == 4 and run["moved"] > 0


@pytest.mark.slow  # two gloo processes
def test_the_ddp_step_shows_two_processes_equal_one_on_the_cpu(tmp_path):
    settings = Settings(device="cpu", ddp_backend="gloo", output=str(tmp_path))
    outcome = steps.ddp_gradients(settings)
    assert outcome.details["largest_relative_difference"] < 1e-4


@pytest.mark.slow  # a whole (short) training, evaluation and prediction
def test_the_syncbn_step_trains_evaluates_and_predicts_on_the_cpu(tmp_path):
    settings = Settings(device="cpu", output=str(tmp_path), syncbn_iters=2, syncbn_batch=2)
    outcome = steps.syncbn_training(settings)
    assert outcome.details["batch_norms"] > 0 and len(outcome.details["losses"]) >= 1
    assert "predictor" in outcome.summary


@pytest.mark.slow  # profiled CPU steps and timed steps of three models
def test_the_planner_prediction_and_the_timing_run_on_the_cpu(tmp_path):
    # 64,96 gave -84 bytes per pixel, which the planner now refuses (issue 36): 128,192 is linear
    settings = Settings(device="cpu", output=str(tmp_path), planner_config=DEMO,
                        planner_fit_sizes="128,192",
                        planner_size=128, timing_config=DEMO, timing_size=64, timing_steps=1,
                        timing_warmup=1)
    predicted, measured = steps.planner_prediction(settings)
    assert len(measured["points"]["e3va"]) == 4 and measured["device"] == "cpu"
    assert 0 < predicted < 2**31 and math.isfinite(predicted)
    outcome = steps.timing(settings)
    assert set(outcome.details["step_seconds"]) == {"fixed", "e3va", "full"}
