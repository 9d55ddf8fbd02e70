"""The accuracy study's tables come from its committed run records: docs/ACCURACY.md must hold
exactly what the script renders from docs/records/accuracy, and the arithmetic behind them
(recovery ratios, curves read from detectron2's metrics) is checked on hand-made records."""
import json
import os

import pytest

from projects.tables import replace_block
from projects.transfer import run_executor, study, study_records, study_render, study_report


def test_committed_tables_match_the_committed_records():
    """Every regime's block, recorded runs or not yet, is what its committed records give."""
    from projects.tables import RECORD_SETS
    from projects.transfer import study_selection, study_validation

    rendered = study_render.render_tables(study_records.load_runs())
    regimes = study_records.REGIMES
    assert set(rendered) == ({f"accuracy-{regime}" for regime in regimes}
                             | {f"{study_report.CURVES}-{regime}" for regime in regimes}
                             | {study_report.SUMMARY, study_report.VARIANTS, study_report.DETAIL,
                                study_report.GAP, study_report.RECOVERY_CURVES}
                             | set(study_validation.BLOCKS) | set(study_selection.BLOCKS))
    assert set(rendered) == set(RECORD_SETS)  # projects.tables knows every block it renders
    for name, body in rendered.items():
        path = study_render.block_path(name)
        with open(path) as f:
            doc = f.read()
        assert replace_block(doc, name, body) == doc, (
            f"{os.path.relpath(path, study_records.ROOT)}'s {name!r} table differs from its "
            "records: "
            "run `python -m projects.transfer.study --render`")


def record(regime, row, seed, box, mask=None):
    return {"regime": regime, "row": row, "seed": seed, "trunk": "t",
            "final": {"bbox/AP": box, "segm/AP": box if mask is None else mask},
            "eval_curve": [{"iter": 10, "bbox/AP": box / 2}, {"iter": 20, "bbox/AP": box}],
            "loss_curve": [], "trainable_in_backbone": 1000, "minutes": 1.0}


def test_paired_recoveries_pair_each_seed_with_the_same_seeds_baselines():
    rows = {"full": [record("near", "full", 0, 30), record("near", "full", 1, 37)],
            "fixed": [record("near", "fixed", 0, 10), record("near", "fixed", 1, 12),
                      record("near", "fixed", 2, 12)],
            "e3va": [record("near", "e3va", s, v) for s, v in ((2, 40), (1, 27), (0, 25))]}
    # in seed order, each against its own seed's full and fixed; seed 2 has no full run
    assert study_report.paired_recoveries(rows, "e3va") == pytest.approx([15 / 20, 15 / 25])
    assert study_report.paired_recoveries({"e3va": rows["e3va"]}, "e3va") == []


def test_recovery_is_the_share_of_the_fixed_to_full_gap():
    rows = {"full": [record("near", "full", s, v) for s, v in enumerate((30, 32))],
            "fixed": [record("near", "fixed", s, v) for s, v in enumerate((10, 12))],
            "e3va": [record("near", "e3va", s, v) for s, v in enumerate((25, 27))]}
    assert study_report.recovery(rows, "e3va") == pytest.approx((26 - 11) / (31 - 11))
    assert study_report.recovery(rows, "full") == 1 and study_report.recovery(rows, "fixed") == 0
    assert study_report.recovery({"e3va": rows["e3va"]}, "e3va") is None  # no baselines, no ratio
    table = study_report.regime_table("near", rows)
    assert "| `e3va` | 26.0 ± 1.4 | 25.0, 27.0 |" in table and "| 0.75 |" in table
    assert table.index("`full`") < table.index("`fixed`") < table.index("`e3va`")


def test_recovery_curve_is_the_share_of_the_gap_at_each_evaluation():
    """record() puts half the final AP at iteration 10: recovery there uses those halves."""
    rows = {"full": [record("far", "full", 0, 40)], "fixed": [record("far", "fixed", 0, 20)],
            "e3va": [record("far", "e3va", 0, 30)],
            "lora": [dict(record("far", "lora", 0, 36), eval_curve=[{"iter": 20, "bbox/AP": 36}])],
            "e3va:zero_init=True": [record("far", "e3va:zero_init=True", 0, 39)]}
    table = study_report.recovery_curve_table({"far": rows})
    assert "| far | full - fixed (box AP) | 10.0 | 20.0 |" in table
    assert "| far | `lora` |  | 0.80 |" in table  # not evaluated at 10: blank
    assert "| far | `e3va` | 0.50 | 0.50 |" in table
    assert "zero_init" not in table  # variants are compared with their method elsewhere


def test_final_training_loss_averages_each_runs_last_iterations_then_the_seeds():
    runs = [dict(record("near", "e3va", s, 1.0), loss_curve=[
        {"iter": i, "total_loss": v} for i, v in zip((100, 200, 300, 400), losses)])
        for s, losses in enumerate(((9.0, 9.0, 2.0, 1.0), (9.0, 5.0, 4.0, 3.0)))]
    assert study_report.final_training_loss(runs, span=200) == pytest.approx((1.5 + 3.5) / 2)
    assert study_report.final_training_loss([record("near", "e3va", 0, 1.0)]) is None  # no curve


def test_rows_carry_peak_memory_from_the_cost_record_and_one_seed_shows_no_spread(tmp_path):
    rows = {"full": [record("far", "full", 0, 30)],
            "fixed": [record("far", "fixed", s, v) for s, v in enumerate((10, 12))],
            "e3va": [record("far", "e3va", 0, 25)], "lora": [record("far", "lora", 0, 28)]}
    peaks = {m: {"peak": {"peak_bytes": mib * 2**20}}
             for m, mib in (("full", 160), ("fixed", 60), ("e3va", 70))}
    table = study_report.regime_table("far", rows, peaks)
    assert "| `full` | 30.0 | 30.0 |" in table  # not "30.0 ± 0.0": one seed has no spread
    assert "| 160 MiB | 100.0% |" in table and "| 60 MiB | 0.0% |" in table
    assert "| 70 MiB | 10.0% |" in table  # (70 - 60) / (160 - 60)
    assert "| 0.89 | 0.92 |  |  |  |" in table  # LoRA: not measured, blank rather than invented
    summary = study_report.summary_table({"far": rows, "near": {"full": rows["full"]}}, peaks)
    assert summary.splitlines()[0] == (
        "| method | near: box AP | near: recovery | far: box AP | far: recovery "
        "| paper's recovery | peak above fixed (study trunk) |")
    assert "| `fixed` | not run yet |  | 11.0 ± 1.4 (2 seeds) | 0.00 | 0.00 | 0.0% |" in summary
    assert "| `e3va` | not run yet |  | 25.0 (1 seed) | 0.74 | 0.83 | 10.0% |" in summary
    (tmp_path / "peak.json").write_text(json.dumps({"data": {"results": {
        "full": {"peak": {"peak_bytes": 5}}, "e3va": {"peak": None}, "fixed": {}}}}))
    assert study_report.load_peaks(str(tmp_path / "peak.json")) == {
        "full": {"peak": {"peak_bytes": 5}}}
    assert study_report.load_peaks(str(tmp_path / "missing.json")) == {}


def test_records_round_trip_and_curves_come_from_detectron2_metrics(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    lines = [{"iteration": 99, "total_loss": 1.5},
             {"iteration": 99, "bbox/AP": 5.0, "segm/AP": 4.0},
             {"iteration": 199, "total_loss": 1.0},
             {"iteration": 200, "bbox/AP": 3.0, "segm/AP": 2.0},
             {"iteration": 199, "total_loss": 1.0},  # resumed from iteration 100: again
             {"iteration": 200, "bbox/AP": 9.0, "segm/AP": 8.0}]
    (folder / "metrics.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    result = {"row": "e3va:zero_init=True", "seed": 1, "trunk": "e3va://x.pth",
              "metrics": {"bbox/AP": 9.0, "segm/AP": 8.0, "bbox/AP-ellipse": 7.123,
                          "bbox/APl": float("nan"), "fast_rcnn/cls_accuracy": 0.9},
              "trainable_in_backbone": 7,
              "minutes": 2.04}
    rec = study_records.make_record("far", result, str(folder), max_iter=200)
    assert [p["iter"] for p in rec["eval_curve"]] == [100, 200]  # the final one is at max_iter
    assert rec["eval_curve"][-1]["bbox/AP"] == 9.0  # a resumed run's repeat replaces the first
    # every final box and mask metric; no NaN (no large objects), no other metric
    assert rec["final_detail"] == {"bbox/AP": 9.0, "segm/AP": 8.0, "bbox/AP-ellipse": 7.12}
    assert rec["loss_curve"] == [{"iter": 100, "total_loss": 1.5},
                                 {"iter": 200, "total_loss": 1.0}]
    path = study_records.record_path("far", rec["row"], 1, str(tmp_path / "records"))
    os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        json.dump(rec, f)
    assert study_records.load_records(str(tmp_path / "records")) == {"far": {rec["row"]: [rec]}}


def test_runs_with_a_committed_record_are_not_run_again(tmp_path, monkeypatch):
    records = tmp_path / "records"
    for row, seed in (("full", 0), ("full", 1), ("fixed", 0), ("fixed", 1), ("e3va", 0)):
        path = study_records.record_path("near", row, seed, str(records))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(record("near", row, seed, 1.0), f)
    calls = []
    monkeypatch.setattr(run_executor, "train_all",
                        lambda config, opts, rows, seeds, *rest: calls.append((rows, seeds)) or {})
    args = study.parse_args(["--regimes", "near", "--rows", "full,fixed,lora,e3va",
                             "--seeds", "0,1", "--records", str(records),
                             "--output", str(tmp_path / "out")])
    study.run(args)
    assert calls == [(["lora"], [0, 1]), (["e3va"], [1])]


def test_curves_mark_where_the_step_schedule_drops_the_learning_rate():
    """The regimes share the recipe: LR x0.1 at 80% and again at 93% of 4,000 iterations."""
    assert [study_report.lr_drops(r) for r in study_records.REGIMES] == [[3200, 3720]] * 3


def test_variants_are_compared_with_their_own_method_seed_by_seed():
    rows = {"full": [record("far", "full", 0, 30)], "fixed": [record("far", "fixed", 0, 10)],
            "e3va": [record("far", "e3va", s, v) for s, v in enumerate((20, 22, 24))],
            "e3va:trunk_dtype=bfloat16": [record("far", "e3va:trunk_dtype=bfloat16", s, v)
                                          for s, v in ((0, 19), (2, 25))]}
    # A variant of a variant is compared with the row it changes by one option.
    rows["e3va:trunk_dtype=bfloat16:zero_init=True"] = [
        record("far", "e3va:trunk_dtype=bfloat16:zero_init=True", 0, 21)]
    table = study_report.variants_table({"far": rows})
    # seeds 0 and 2 only: -1 and +1, not the unpaired 22.0 - 22.0
    assert ("| `e3va:trunk_dtype=bfloat16` | far | 22.0 ± 4.2 (2 seeds) | `e3va` "
            "| +0.0 ± 1.4 (2 seeds) |" in table)
    assert "| 0.60 | 0.60 |" in table  # its recovery beside its base's
    assert ("| `e3va:trunk_dtype=bfloat16:zero_init=True` | far | 21.0 (1 seed) "
            "| `e3va:trunk_dtype=bfloat16` | +2.0 (1 seed) |" in table)
    # variants stay out of the methods' tables and the README's summary
    assert "trunk_dtype" not in study_report.regime_table("far", rows)
    assert "trunk_dtype" not in study_report.summary_table({"far": rows}, {})
    # ... but for the row chosen on validation, once it has a held-out record
    chosen = "e3va:trunk_dtype=bfloat16"
    summary = study_report.summary_table({"far": rows}, {}, chosen)
    assert f"| `{chosen}` (chosen on validation) | 22.0 ± 4.2 (2 seeds) | 0.60 |" in summary
    assert "zero_init" not in summary
    assert "(chosen" not in study_report.summary_table({"far": rows}, {}, "e3va:rank=32")
    assert study_report.paired_difference(rows["e3va:trunk_dtype=bfloat16"], rows["full"][:0]) == (
        "no common seed yet")
    assert study_report.variants_table({"far": {"e3va": rows["e3va"]}}) == (
        "_No variant is recorded yet._")


def test_a_paired_difference_that_rounds_to_zero_has_no_sign():
    base = [record("far", "e3va", 0, 59.61)]
    assert study_report.paired_difference([record("far", "e3va:x=1", 0, 59.60)], base) == (
        "+0.0 (1 seed)")
    assert study_report.paired_difference([record("far", "e3va:x=1", 0, 59.4)], base) == (
        "-0.2 (1 seed)")


def test_a_record_that_fails_to_build_leaves_no_file_that_marks_its_run_done(tmp_path):
    """The record's presence skips the run on every checkout, so it is written whole or not at
    all: here the run folder has no metrics.json, and no empty record may stay behind."""
    result = {"row": "e3va", "seed": 0, "trunk": "t", "metrics": {"bbox/AP": 1.0, "segm/AP": 1.0},
              "trainable_in_backbone": 1, "minutes": 1.0}
    with pytest.raises(OSError):
        study_records.write_record("near", result, str(tmp_path / "no-run"), 10, str(tmp_path))
    assert not os.path.exists(study_records.record_path("near", "e3va", 0, str(tmp_path)))


def test_detail_table_averages_each_metric_over_the_seeds_that_kept_it():
    detail = [{"bbox/AP": 9, "bbox/AP50": 90.0, "bbox/AP-ellipse": 10.0, "segm/AP50": 1.0,
               "bbox/APm": 5.0, "bbox/APs": 3.0},
              {"bbox/AP": 9, "bbox/AP50": 80.0, "bbox/AP-ellipse": 20.0}]
    recs = [dict(record("near", "e3va", s, 9), final_detail=d) for s, d in enumerate(detail)]
    older = record("near", "full", 0, 30)  # written before records kept their detail
    table = study_report.detail_table({"near": {"e3va": recs, "full": [older]}})
    # thresholds, then sizes small to large, then classes
    assert table.splitlines()[0] == "| regime | method | seeds | AP50 | APs | APm | AP-ellipse |"
    assert table.splitlines()[2] == "| near | `e3va` | 2 | 85.0 | 3.0 | 5.0 | 15.0 |"
    assert "full" not in table
    assert study_report.detail_table({"near": {"full": [older]}}).startswith("_No record")


def test_curve_table_averages_each_evaluation_over_the_seeds_that_reached_it():
    rows = {"full": [record("near", "full", s, v) for s, v in enumerate((30, 34))],
            "e3va": [record("near", "e3va", 0, 20)]}
    rows["e3va"][0]["eval_curve"] = rows["e3va"][0]["eval_curve"][:1]  # stopped after one
    table = study_report.curve_table("near", rows).splitlines()
    assert table[0] == "| method | seeds | 10 | 20 |"
    assert table[2] == "| `full` | 2 | 16.0 | 32.0 |"
    assert table[3] == "| `e3va` | 1 | 10.0 |  |"  # blank, not a mean over no seed
    assert table[-1].endswith("drops x0.1 at 3,200 and 3,720.")


def test_gap_table_sets_the_gap_against_the_seed_spread_and_adapters_against_lora():
    rows = {"full": [record("far", "full", s, v) for s, v in enumerate((30, 30))],
            "fixed": [record("far", "fixed", s, v) for s, v in enumerate((9, 11))],
            "lora": [record("far", "lora", 0, 20)],  # recovery 0.5
            "e3va": [record("far", "e3va", 0, 15)]}  # recovery 0.25
    table = study_report.gap_table({"far": rows}).splitlines()
    assert table[0] == ("| regime | full - fixed (box AP) | largest seed spread (std) "
                        "| gap / spread | `e3va` / `lora` recovery |")
    assert table[2] == "| far | 20.0 | 1.4 | 14 | 0.50 |"  # 20 / stdev(9, 11)
    assert table[3] == "| paper (COCO, Swin-B Cascade) | 8.4 |  |  | 0.91 |"
    del rows["lora"]
    assert study_report.gap_table({"far": rows}).splitlines()[2] == "| far | 20.0 | 1.4 | 14 |  |"


@pytest.mark.parametrize("argv, message", [
    (["--regimes", "near,farr"],
     "--regimes: unknown ['farr']; the study's regimes are near, far, dense"),
    (["--seeds", "0,one"], "--seeds: expected seeds as integers"),
])
def test_bad_regimes_and_seeds_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(argv)
    assert message in capsys.readouterr().err


def test_fit_check_finds_finished_runs_in_table_order_and_renders_the_gap(tmp_path):
    from projects.transfer import fit_check

    for regime, row, seed in (("far", "e3va", 2), ("far", "full", 1), ("near", "lora", 0),
                              ("far", "full", 0), ("far", "e3va:zero_init=True", 0)):
        folder = tmp_path / run_executor.run_folder(regime, row, seed)
        folder.mkdir(parents=True)
        (folder / "model_final.pth").write_bytes(b"")
        (folder / "result.json").write_text(json.dumps({"row": row, "seed": seed}))
    unfinished = tmp_path / run_executor.run_folder("far", "lora", 0)
    unfinished.mkdir(parents=True)
    (unfinished / "model_final.pth").write_bytes(b"")  # a checkpoint, but no result yet
    runs = fit_check.finished_runs(str(tmp_path), ["near", "far"])
    assert [(r["regime"], r["row"], r["seed"]) for r in runs] == [
        ("near", "lora", 0), ("far", "full", 0), ("far", "full", 1), ("far", "e3va", 2),
        ("far", "e3va:zero_init=True", 0)]
    table = fit_check.render({"setup": "s", "rows": [dict(
        regime="far", row="e3va", seed=2, train_box_ap=61.25, held_out_box_ap=60.0,
        train_mask_ap=64.0, held_out_mask_ap=63.5)]})
    assert "| far | `e3va` | 2 | 61.2 | 60.0 | +1.2 | 64.0 | 63.5 |" in table


def test_fit_check_refuses_an_unknown_regime_as_the_study_does(capsys):
    from projects.transfer import fit_check

    with pytest.raises(SystemExit):
        fit_check.main(["--regimes", "near,farr"])
    message = "--regimes: unknown ['farr']; the study's regimes are near, far, dense"
    assert message in capsys.readouterr().err


def test_a_row_with_options_gets_its_own_folder_and_config():
    """Options with '=' and brackets reach the tuning method, not the override parser (which
    refused 'train.output_dir=.../e3va_spatial:conv_kernels=()/seed0'); no ':' in folders."""
    from e3va_d2.config import tuned_swin_node

    row = "e3va_spatial:conv_kernels=()"
    folder = run_executor.run_folder("out/far", row, 1)
    assert folder == os.path.join("out/far", "runs", "e3va_spatial__conv_kernels=()", "seed1")
    cfg = run_executor.run_config(os.path.join(study_records.ROOT, study_records.REGIMES["far"]),
                             ["train.max_iter=7"], row, 1, folder)
    assert (cfg.train.output_dir, cfg.train.seed, cfg.train.max_iter) == (folder, 1, 7)
    tuning = tuned_swin_node(cfg.model).tuning
    assert tuning.name == "e3va_spatial" and list(tuning.conv_kernels) == []
    assert os.path.dirname(study_records.record_path("far", row, 1, "r")) == os.path.join(
        "r", "far", "e3va_spatial__conv_kernels=()")


def test_the_fit_checks_training_subset_is_the_training_splits_first_images():
    """fit_check evaluates a shorter copy of the training split's spec: image i must not
    depend on how many images the split has."""
    import dataclasses

    import numpy as np

    from e3va_d2.data.shapes import DEFAULT_SPLITS
    from e3va_d2.data.shapes_render import render

    spec = DEFAULT_SPLITS["far_train"]
    shorter = dataclasses.replace(spec, num_images=3)
    for i in range(3):
        (image, owner, objects), (image2, owner2, objects2) = render(spec, i), render(shorter, i)
        assert np.array_equal(image, image2) and np.array_equal(owner, owner2)
        assert objects == objects2
