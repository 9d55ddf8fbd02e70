"""The transfer comparison end to end on a tiny setting: 2 methods + the random-trunk floor,
1 seed, a few iterations; outputs written, and a restart skips what is finished."""
import json
import os
import types

import pytest
import torch

from e3va_d2 import engine
from e3va_d2.engine.signals import TrainingStopped
from projects.transfer import compare, run_executor

TINY = [
    "train.max_iter=3",
    "dataloader.train.dataset.names=shapes_mini_train",
    "dataloader.test.dataset.names=shapes_mini_val",
    "dataloader.train.total_batch_size=2",
    "dataloader.train.num_workers=0",
    "dataloader.test.num_workers=0",
    "model.roi_heads.box_predictor.test_topk_per_image=5",  # untrained heads: fast inference
]


@pytest.mark.slow  # every run is a spawned process: the slowest test by far
def test_compare_tiny_and_restart(tmp_path):
    args = ["--methods", "fixed,e3va", "--seeds", "0", "--jobs", "1", "--cost-steps", "1",
            "--output", str(tmp_path), *TINY]
    summary = compare.main(args)
    assert list(summary) == ["fixed", "e3va", compare.FLOOR]
    for entry in summary.values():
        assert entry["seeds"] == [0]
        assert set(entry["metrics"]) >= {"bbox/AP", "segm/AP"}
        assert entry["saved_bytes"] > 0 and entry["step_seconds"] > 0
    assert summary["fixed"]["trainable_in_backbone"] == 0
    assert summary["e3va"]["trainable_in_backbone"] > 0
    assert summary[compare.FLOOR]["trunk"] == "random"
    assert summary["e3va"]["trunk"].startswith("e3va://")
    for name in ("results.json", "results.md", "accuracy_vs_memory.png"):
        assert os.path.getsize(tmp_path / name) > 0, name
    table = (tmp_path / "results.md").read_text()
    assert "| e3va | random |" in table and "| fixed | pre-trained |" in table

    result = tmp_path / "runs" / "e3va" / "seed0" / "result.json"
    stamp = result.stat().st_mtime_ns
    again = compare.main(args)  # everything finished: nothing retrains
    assert result.stat().st_mtime_ns == stamp
    assert json.loads((tmp_path / "results.json").read_text())["rows"] == json.loads(
        json.dumps(again))


def test_overrides_reach_the_swapped_tuning_method(tmp_path):
    """Options of a row's method given on the command line apply to that method (they were
    silently dropped when the swap came after them)."""
    config = os.path.join(os.path.dirname(__file__), "..", compare.DEFAULT_CONFIG)
    zero = "model.backbone.bottom_up.tuning.zero_init=True"
    cfg = run_executor.run_config(config, [zero], "e3va", 0, str(tmp_path))
    assert cfg.model.backbone.bottom_up.tuning.zero_init is True
    assert cfg.train.seed == 0 and cfg.train.output_dir == str(tmp_path)
    floor = run_executor.run_config(config, [], run_executor.FLOOR, 1, str(tmp_path))
    assert run_executor.trunk_source(floor) == "random" and floor.train.seed == 1
    assert run_executor.trunk_source(cfg).startswith("e3va://")


def test_minutes_count_every_session_of_a_resumed_run(tmp_path, monkeypatch):
    """A run stopped after 10 minutes and finished in 10 more reports 20 (it reported the last
    session's 10: a parked run's record understated its time)."""
    clock = types.SimpleNamespace(now=1000.0)
    monkeypatch.setattr(run_executor, "time", types.SimpleNamespace(time=lambda: clock.now))

    class TenMinuteSessions:
        stop = True

        def __init__(self, cfg):
            self._trainer = types.SimpleNamespace(model=torch.nn.Linear(2, 2))

        def resume_or_load(self, resume):
            assert resume

        def train(self):
            clock.now += 600
            if TenMinuteSessions.stop:
                raise TrainingStopped(143)
            return {"bbox": {"AP": 50.0}}

    monkeypatch.setattr(engine, "E3VATrainer", TenMinuteSessions)
    config = os.path.join(os.path.dirname(__file__), "..", compare.DEFAULT_CONFIG)
    with pytest.raises(TrainingStopped):
        run_executor.train_one(config, [], "e3va", 0, str(tmp_path), threads=1)
    assert run_executor.minutes_before(str(tmp_path)) == 10
    TenMinuteSessions.stop = False
    result = run_executor.train_one(config, [], "e3va", 0, str(tmp_path), threads=1)
    assert result["minutes"] == 20 and result["metrics"] == {"bbox/AP": 50.0}
