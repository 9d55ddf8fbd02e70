"""The run executor (projects/transfer/run_executor.py), through which the accuracy study trains:
the study end to end on a tiny setting (real spawned runs; a restart trains nothing that has a
record), a row's options on the command line, and the minutes of a resumed run."""
import json
import os
import types

import pytest
import torch

from e3va_d2 import engine
from e3va_d2.engine.signals import TrainingStopped
from projects.transfer import run_executor, study, study_records

CONFIG = os.path.join(os.path.dirname(__file__), "..", study_records.REGIMES["far"])
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
def test_study_tiny_and_restart(tmp_path):
    records = tmp_path / "records"
    args = ["--regimes", "far", "--rows", "fixed,e3va", "--seeds", "0", "--jobs", "1",
            "--output", str(tmp_path / "runs"), "--records", str(records), *TINY]
    study.run(study.parse_args(args))
    written = {row: records / "far" / row / "seed0.json" for row in ("fixed", "e3va")}
    fixed, e3va = (json.loads(path.read_text()) for path in written.values())
    for record in (fixed, e3va):
        assert record["regime"] == "far" and record["seed"] == 0
        assert set(record["final"]) == {"bbox/AP", "segm/AP"}
        assert record["eval_curve"][-1]["iter"] == 3  # the final evaluation, after 3 iterations
        assert record["trunk"].startswith("e3va://")
    assert fixed["trainable_in_backbone"] == 0 < e3va["trainable_in_backbone"]

    result = tmp_path / "runs" / "far" / "runs" / "e3va" / "seed0" / "result.json"
    stamps = [path.stat().st_mtime_ns for path in (result, *written.values())]
    study.run(study.parse_args(args))  # every run has its record: nothing trains again
    assert [path.stat().st_mtime_ns for path in (result, *written.values())] == stamps


def test_overrides_reach_the_swapped_tuning_method(tmp_path):
    """Options of a row's method given on the command line apply to that method (they were
    silently dropped when the swap came after them)."""
    zero = "model.backbone.bottom_up.tuning.zero_init=True"
    cfg = run_executor.run_config(CONFIG, [zero], "e3va", 0, str(tmp_path))
    assert cfg.model.backbone.bottom_up.tuning.zero_init is True
    assert cfg.train.seed == 0 and cfg.train.output_dir == str(tmp_path)
    assert run_executor.trunk_source(cfg).startswith("e3va://")
    random = run_executor.run_config(CONFIG, ["model.backbone.bottom_up.weights="], "e3va", 1,
                                     str(tmp_path))
    assert run_executor.trunk_source(random) == "random" and random.train.seed == 1


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
    with pytest.raises(TrainingStopped):
        run_executor.train_one(CONFIG, [], "e3va", 0, str(tmp_path), threads=1)
    assert run_executor.minutes_before(str(tmp_path)) == 10
    TenMinuteSessions.stop = False
    result = run_executor.train_one(CONFIG, [], "e3va", 0, str(tmp_path), threads=1)
    assert result["minutes"] == 20 and result["metrics"] == {"bbox/AP": 50.0}
