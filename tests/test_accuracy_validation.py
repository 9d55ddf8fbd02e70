"""Issue 37's side of the accuracy study: a validation split per regime, disjoint from training
and test; a third regime fixed in advance; runs at multiples of the learning rate; and the
blocks chosen on the validation split (the feedback curve, learning-rate sensitivity, the
selection rule), rendered from hand-made records, pending until records exist."""
import dataclasses
import json
import os
import shlex

import numpy as np
import pytest

from projects import tables
from projects.transfer import run_executor, study, study_records, study_render, study_report
from projects.transfer import study_selection as ss
from projects.transfer import study_validation as sv


def config_path(regime):
    return os.path.join(study_records.ROOT, study_records.REGIMES[regime])


def split_specs(regime):
    """The regime's (train, test, val) ShapesSpecs, as its config and VALIDATION name them."""
    from e3va_d2.config import load_config
    from e3va_d2.data.shapes import DEFAULT_SPLITS

    cfg = load_config(config_path(regime))
    names = (cfg.dataloader.train.dataset.names, cfg.dataloader.test.dataset.names,
             study_records.VALIDATION[regime])
    return [DEFAULT_SPLITS[name[len("shapes_"):]] for name in names]


@pytest.mark.parametrize("regime", list(study_records.REGIMES))
def test_each_validation_split_is_new_images_of_its_regimes_training_distribution(regime):
    from detectron2.data import DatasetCatalog

    from e3va_d2.data.shapes import DEFAULT_SPLITS
    from e3va_d2.data.shapes_render import render

    train, test, val = split_specs(regime)
    assert study_records.VALIDATION[regime] in DatasetCatalog  # registered like the others
    # the training distribution: every parameter but the seed and the number of images
    assert val == dataclasses.replace(train, seed=val.seed, num_images=val.num_images)
    assert val.num_images == test.num_images == 512
    # Disjoint by construction: image i is drawn from default_rng([seed, i]) alone, and no other
    # split anywhere has this seed.
    seeds = [spec.seed for spec in DEFAULT_SPLITS.values()]
    assert seeds.count(val.seed) == 1 and len({train.seed, test.seed, val.seed}) == 3
    # and in fact: none of its first images is one of the training or test split's first
    held = {render(spec, i)[0].tobytes() for spec in (train, test) for i in range(4)}
    assert not held & {render(val, i)[0].tobytes() for i in range(4)}


# Each split's first training image and cache folder as main drew them before the fill and
# object_scale options of the third regime were added.
BEFORE = {"near_train": ("7648f32919cf04b0df8bd2a21ab26c4e65e50ec7", "shapes-v1-320186aba2"),
          "far_train": ("0b8aa75ae1db398925c1791d8d2b945f600a3a3a", "shapes-v1-0329f4b6fa")}


@pytest.mark.parametrize("split", list(BEFORE))
def test_near_and_far_keep_the_images_their_records_were_measured_on(split):
    import hashlib

    from e3va_d2.data.shapes import DEFAULT_SPLITS, shapes_folder_name
    from e3va_d2.data.shapes_render import render

    image = render(DEFAULT_SPLITS[split], 0)[0]
    assert (hashlib.sha1(image.tobytes()).hexdigest(),
            shapes_folder_name(DEFAULT_SPLITS[split])) == BEFORE[split]


def object_stats(spec, images=24):
    """Mean objects per image and median visible object area (pixels) over the first images."""
    from e3va_d2.data.shapes_render import render

    counts, areas = [], []
    for i in range(images):
        objects = render(spec, i)[2]
        counts.append(len(objects))
        areas += [area for _, area in objects]
    return np.mean(counts), np.median(areas)


def test_the_third_regime_loads_and_differs_from_near_and_far_as_documented():
    from e3va_d2.config import load_config

    cfg, far = load_config(config_path("dense")), load_config(config_path("far"))
    # the recipe is far's: only the data (and where runs write) differ
    for key in ("optimizer", "lr_multiplier", "model"):
        assert cfg[key] == far[key], key
    assert (cfg.train.max_iter, cfg.train.eval_period) == (far.train.max_iter, 500)
    dense, near_train, far_train = (split_specs(r)[0] for r in ("dense", "near", "far"))
    assert (dense.min_objects, dense.max_objects) == (3, 8)
    assert dense.object_scale == (0.08, 0.25) and dense.fill == "dots_rings"
    for other in (near_train, far_train):
        assert (other.min_objects, other.max_objects, other.object_scale) == (
            1, 4, (0.12, 0.45))
        assert (other.num_images, other.min_size, other.max_size) == (
            dense.num_images, dense.min_size, dense.max_size)  # what a run costs
    assert {near_train.fill, far_train.fill, dense.fill} == {"solid", "texture", "dots_rings"}
    dense_count, dense_area = object_stats(dense)
    far_count, far_area = object_stats(far_train)
    assert dense_count > far_count + 1, (dense_count, far_count)
    assert dense_area < 0.5 * far_area, (dense_area, far_area)


def test_a_validation_run_evaluates_on_its_split_at_a_multiple_of_the_learning_rate():
    far = config_path("far")
    assert study.run_overrides(far, ["train.max_iter=7"], "far", "test", 1.0) == [
        "train.max_iter=7"]
    opts = study.run_overrides(far, ["optimizer.lr=0.004"], "far", "val", 0.5)
    cfg = run_executor.run_config(far, opts, "e3va", 0, "out")
    assert cfg.dataloader.test.dataset.names == "shapes_far_select"
    assert cfg.optimizer.lr == pytest.approx(0.002)  # the rate the user's overrides leave, x0.5
    cfg = run_executor.run_config(far, study.run_overrides(far, [], "far", "test", 2.0), "e3va",
                                  0, "out")
    assert cfg.dataloader.test.dataset.names == "shapes_far_val"  # the held-out test
    assert cfg.optimizer.lr == pytest.approx(2e-3)  # the recipe's 1e-3, x2


def fake_train_all(calls):
    """run_executor.train_all's stand-in: a finished run's metrics.json and result per run."""
    def train_all(config, opts, rows, seeds, output, jobs, threads):
        calls.append((rows, seeds, output, opts))
        out = {}
        for row in rows:
            for seed in seeds:
                folder = run_executor.run_folder(output, row, seed)
                os.makedirs(folder, exist_ok=True)
                with open(os.path.join(folder, "metrics.json"), "w") as f:
                    f.write(json.dumps({"iteration": 3999, "bbox/AP": 50.0, "segm/AP": 40.0}))
                out.setdefault(row, []).append(dict(
                    row=row, seed=seed, trunk="t", metrics={"bbox/AP": 50.0, "segm/AP": 40.0},
                    trainable_in_backbone=1, minutes=1.0))
        return out
    return train_all


def test_each_split_and_rate_runs_in_its_own_folder_and_writes_its_own_record(
        tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(run_executor, "train_all", fake_train_all(calls))
    records, output = str(tmp_path / "records"), str(tmp_path / "out")
    argv = ["--regimes", "near", "--rows", "e3va", "--seeds", "0", "--records", records,
            "--output", output]
    study.run(study.parse_args([*argv, "--split", "val", "--lr-scale", "1,2"]))
    assert [(c[2], c[3]) for c in calls] == [
        (os.path.join(output, "near-val"), ["dataloader.test.dataset.names=shapes_near_select"]),
        (os.path.join(output, "near-val-lr2x"),
         ["dataloader.test.dataset.names=shapes_near_select", "optimizer.lr=0.002"])]
    runs = study_records.load_runs(records)
    assert sorted((r["split"], r["lr_scale"]) for r in runs) == [("val", 1.0), ("val", 2.0)]
    assert os.path.isfile(os.path.join(records, "near", "e3va", "val-lr2x-seed0.json"))
    # the held-out test is another run; the validation runs are not run again
    study.run(study.parse_args(argv))
    study.run(study.parse_args([*argv, "--split", "val", "--lr-scale", "2"]))
    assert [c[2] for c in calls[2:]] == [os.path.join(output, "near")]
    assert os.path.isfile(study_records.record_path("near", "e3va", 0, records))
    assert study_records.load_records(records) == {"near": {"e3va": [
        r for r in study_records.load_runs(records) if r["split"] == "test"]}}


def test_records_keep_their_split_and_learning_rate_and_older_ones_read_as_test_at_1x(
        tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "metrics.json").write_text(json.dumps({"iteration": 9, "bbox/AP": 5.0}) + "\n")
    result = {"row": "e3va_spatial:feedback_depth=2", "seed": 1, "trunk": "t",
              "metrics": {"bbox/AP": 5.0, "segm/AP": 4.0}, "trainable_in_backbone": 3,
              "minutes": 1.0}
    root = str(tmp_path / "records")
    study_records.write_record("far", result, str(folder), 10, root, "val", 0.5)
    path = study_records.record_path("far", result["row"], 1, root, "val", 0.5)
    assert path.endswith(os.path.join("far", "e3va_spatial__feedback_depth=2",
                                      "val-lr0.5x-seed1.json"))
    with open(path) as f:
        written = json.load(f)
    assert (written["split"], written["lr_scale"]) == ("val", 0.5)
    older = {k: v for k, v in written.items() if k not in ("split", "lr_scale")}
    older_path = study_records.record_path("far", "e3va", 0, root)
    os.makedirs(os.path.dirname(older_path))
    with open(older_path, "w") as f:
        json.dump(dict(older, row="e3va", seed=0), f)
    runs = study_records.load_runs(root)
    assert [(r["row"], r["split"], r["lr_scale"]) for r in runs] == [
        ("e3va", "test", 1.0), ("e3va_spatial:feedback_depth=2", "val", 0.5)]
    assert study_records.group(runs, "val", 0.5) == {"far": {result["row"]: [written]}}
    assert list(study_records.load_records(root)["far"]) == ["e3va"]


@pytest.mark.parametrize("argv, message", [
    (["--split", "train"], "argument --split: invalid choice: 'train'"),
    (["--lr-scale", "0,1"], "--lr-scale: expected positive multiples"),
    (["--lr-scale", "half"], "--lr-scale: expected positive multiples"),
])
def test_unknown_splits_and_bad_rates_are_refused_before_anything_runs(argv, message, capsys):
    with pytest.raises(SystemExit):
        study.parse_args(argv)
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("name, rows", [
    (sv.COST, {"fixed", *sv.CURVE_ROWS}),
    # the other candidates beside their own fixed, full and E3VA, so every ratio is in-process
    *((name, {"fixed", "full", "e3va", *rows}) for name, rows in sv.OPTION_COSTS.items()),
])
def test_the_cost_records_measure_their_rows_on_swin_b_at_512_batch_2(name, rows):
    words = shlex.split(tables.TABLES[name].command)
    option = {w: words[i + 1] for i, w in enumerate(words[:-1]) if w.startswith("--")}
    assert set(option["--methods"].split(",")) == rows
    assert (option["--config-file"], option["--size"], option["--batch"]) == (
        "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py", "512", "2")
    assert int(option["--steps"]) > 0 and "--no-peak" not in words  # time and peak both


def test_costs_from_two_records_are_each_taken_against_their_own_baselines(tmp_path,
                                                                           monkeypatch):
    def write(name, results):
        (tmp_path / f"{name}.json").write_text(json.dumps({"data": {"results": results}}))

    # the second process ran slower and used more memory for everything: its ratios still hold
    write("a", {"full": cost(200, 3.0), "fixed": cost(100, 0.9), "e3va": cost(110, 1.0),
                K2: cost(112, 1.1)})
    write("b", {"full": cost(400, 6.0), "fixed": cost(200, 1.8), "e3va": cost(220, 2.0),
                K2: cost(300, 9.0), "opt": cost(230, 2.4),
                "untimed": {"peak": {"peak_bytes": 210 * 2**20}, "step_seconds": float("nan")}})
    monkeypatch.setattr(tables, "record_path", lambda name: str(tmp_path / f"{name}.json"))
    costs = sv.load_costs(("a", "b", "never-measured"))
    assert costs["opt"] == sv.Cost(pytest.approx(0.15), pytest.approx(1.2))
    assert costs[K2] == sv.Cost(pytest.approx(0.12), pytest.approx(1.1))  # the first record's
    assert costs["untimed"] == sv.Cost(pytest.approx(0.05), None)
    assert sv.peak_cell(costs, "absent") is None and sv.step_ratio(costs, "absent") is None


# ------------------------------------------------------------------------------------------
# The blocks, from hand-made records
# ------------------------------------------------------------------------------------------


def run(regime, row, box, split="val", lr_scale=1.0, seed=0):
    return {"regime": regime, "row": row, "seed": seed, "split": split, "lr_scale": lr_scale,
            "trunk": "t", "final": {"bbox/AP": box, "segm/AP": box},
            "eval_curve": [{"iter": 20, "bbox/AP": box}], "loss_curve": [],
            "trainable_in_backbone": 1000, "minutes": 1.0}


K2, K4 = "e3va_spatial:feedback_depth=2", "e3va_spatial:feedback_depth=4"


def fake_runs():
    """fixed 50 and full 60 on every validation split, so that recovery = (AP - 50) / 10."""
    runs = []
    for regime in study_records.REGIMES:
        for row, box in (("full", 60), ("fixed", 50), ("lora", 56), ("e3va", 53),
                         ("e3va_spatial", 55), (K2, 59.5), (K4, 59.8)):
            runs.append(run(regime, row, box))
    runs.append(run("near", "lora", 57, lr_scale=2.0))  # LoRA gains from a larger rate near
    runs.append(run("near", "e3va", 52, lr_scale=2.0))
    runs.append(run("near", "e3va_spatial", 58, lr_scale=2.0))
    runs.append(run("far", "lora", 55, lr_scale=0.5))
    return runs


def with_every_planned_candidate(runs, box=51):
    """``runs`` and, for every planned candidate they lack, a run in every regime at ``box``
    (recovery 0.10): the plan complete, so that the rule's choice can stand."""
    have = {(r["row"], r["lr_scale"], r["regime"]) for r in runs}
    return runs + [run(regime, row, box, lr_scale=scale)
                   for row, scale in ss.PLANNED_CANDIDATES for regime in study_records.REGIMES
                   if (row, scale, regime) not in have]


def held_out_seeds(chosen, box_by_regime, lora_box=65):
    """Three test seeds of full (70), fixed (60), LoRA and ``chosen`` in every regime."""
    return [run(regime, row, box, "test", seed=seed) for regime in study_records.REGIMES
            for seed in range(3) for row, box in
            (("full", 70), ("fixed", 60), ("lora", lora_box), (chosen, box_by_regime[regime]))]


def cost(peak_mib, step):
    return {"peak": {"peak_bytes": peak_mib * 2**20}, "step_seconds": step}


# fixed 100 MiB, full 200: K2 at 10%, K4 at 30% (over budget); e3va's step 1.0 s.
COSTS = sv.record_costs({
    "full": cost(200, 3.0), "fixed": cost(100, 0.9), "lora": cost(160, 2.0),
    "partial1": cost(105, 1.0), "e3va": cost(108, 1.0), "e3va_spatial": cost(109, 1.05),
    K2: cost(110, 1.2), K4: cost(130, 1.25)})


def test_the_feedback_curve_sets_validation_recovery_against_memory_and_time():
    table = sv.feedback_table(fake_runs(), COSTS)
    lines = table.splitlines()
    assert lines[0] == ("| method | near: recovery (val) | far: recovery (val) "
                        "| dense: recovery (val) | peak above fixed (Swin-B) "
                        "| step / `e3va`'s (Swin-B) |")
    assert "| `full` | 1.00 | 1.00 | 1.00 | 100.0% | 3.00x |" in lines
    assert f"| `{K2}` | 0.95 | 0.95 | 0.95 | 10.0% | 1.20x |" in lines
    assert "| `partial1` | pending | pending | pending | 5.0% | 1.00x |" in lines  # not run
    # planned depths that have run nowhere yet stay in the table, pending
    assert "| `e3va_spatial:feedback_depth=8` | pending | pending | pending | pending " \
           "| pending |" in lines
    assert [line.split(" | ")[0] for line in lines[2:11]] == [
        f"| `{row}`" for row in sv.CURVE_ROWS]
    # a depth the plan did not name is added after the plan, by method and depth
    other = fake_runs() + [run("far", "e3va:feedback_depth=3", 51),
                           run("near", "partial1:last_blocks=8", 58), run("near", "lora", 57)]
    assert sv.curve_rows(other)[len(sv.CURVE_ROWS):] == ["e3va:feedback_depth=3",
                                                         "partial1:last_blocks=8"]
    # a diagnostic's cost is not awaited; another depth's is
    other_lines = sv.feedback_table(other, COSTS).splitlines()
    assert "| `partial1:last_blocks=8` | 0.80 | pending | pending | — | — |" in other_lines
    depth3 = next(line for line in other_lines if line.startswith("| `e3va:feedback_depth=3`"))
    assert depth3.endswith("| pending | pending |")
    # validation only: test records change nothing
    assert sv.feedback_table(fake_runs() + [run("near", K2, 50, split="test")], COSTS) == table


def test_learning_rate_sensitivity_ranks_the_three_methods_at_each_rate():
    table = sv.lr_table(fake_runs())
    lines = table.splitlines()
    assert lines[0] == "| regime | method | 0.5x | 1x | 2x | best rate |"
    assert "| near | `lora` | pending | 56.0 (#1) | 57.0 (#2) | 2x |" in lines
    assert "| near | `e3va_spatial` | pending | 55.0 (#2) | 58.0 (#1) | 2x |" in lines
    assert "| far | `lora` | 55.0 (#1) | 56.0 (#1) | pending | 1x |" in lines
    assert not any(line.startswith("| dense") for line in lines)  # it ran at 1x only
    # far's other rate has one method: no ranking to compare
    assert lines[-1].endswith("holds at every other rate recorded in: none; it changes in: near.")


def test_the_rule_chooses_the_best_worst_regime_within_the_memory_and_time_budget():
    found = ss.candidates(fake_runs(), COSTS)
    by_row = {(c.row, c.lr_scale): c for c in found}
    # K4 recovers most everywhere but costs 30% of full's extra peak: over the budget
    assert by_row[K4, 1.0].lowest() == pytest.approx(0.98) and not by_row[K4, 1.0].within_budget()
    assert by_row["e3va_spatial", 2.0].lowest() is None  # 2x ran near only
    chosen = ss.select(found)
    assert (chosen.row, chosen.lr_scale) == (K2, 1.0)
    # a tie on the worst regime goes to the lower peak
    tie = [dataclasses.replace(chosen, row="a", peak=0.12), dataclasses.replace(chosen, row="b")]
    assert ss.select(tie).row == "b"
    # without the costs nothing is chosen: memory and time are part of the rule
    assert ss.select(ss.candidates(fake_runs(), {})) is None
    assert all(c.row not in ("full", "fixed", "lora", "partial1") for c in found)


def test_the_choice_waits_for_every_candidate_that_could_still_pass_it():
    rank = "e3va_spatial:rank=32"  # planned, at 12% of full's extra peak: within the budget
    costs = {**COSTS, rank: sv.Cost(0.12, 1.1)}
    complete = with_every_planned_candidate(fake_runs())
    assert "**Chosen**: `" + K2 + "` at 1x" in ss.selection_block(complete, costs)

    def without(runs, row, regime):
        return [r for r in runs if not (r["row"] == row and r["regime"] == regime)]

    def block_with_rank(near, far, peak=0.12):
        runs = [r for r in complete if r["row"] != rank]
        return ss.selection_block(runs + [run("near", rank, near), run("far", rank, far)],
                                  {**costs, rank: sv.Cost(peak, 1.1)})

    # near and far above K2's 0.95: rank 32 could still pass it, so nothing is chosen yet
    block = block_with_rank(59.8, 59.7)
    assert (f"**Chosen**: pending. `{K2}` at 1x the learning rate leads (lowest validation "
            f"recovery 0.95); these could still pass it once their missing regimes have run: "
            f"`{rank}` at 1x (dense).") in block
    assert "Held-out test" not in block
    # far already below 0.95: its lowest can only be lower, and the choice stands
    assert f"**Chosen**: `{K2}` at 1x" in block_with_rank(59.8, 55)
    # a tie at 0.95 passes only with the lower peak (K2's is 10%)
    assert f"**Chosen**: `{K2}`" in block_with_rank(59.5, 59.9)
    assert "**Chosen**: pending." in block_with_rank(59.5, 59.9, peak=0.09)
    # a planned candidate with no run at all is still in the running
    block = ss.selection_block([r for r in complete if r["row"] != rank], costs)
    assert f"`{rank}` at 1x (near, far, dense)" in block
    assert f"| `{rank}` | 1x | pending | pending | pending | pending | 12.0% | 1.10x | yes |" \
        in block
    # over the budget it is not, however well it recovers where it ran (K4: 30%)
    assert f"**Chosen**: `{K2}`" in ss.selection_block(without(complete, K4, "dense"), costs)
    # nor is one whose cost is known to be over the budget before it runs
    assert f"**Chosen**: `{K2}`" in ss.selection_block(
        [r for r in complete if r["row"] != rank], {**costs, rank: sv.Cost(0.2, 1.1)})


def test_the_selection_block_names_the_choice_then_its_held_out_test(tmp_path):
    runs = with_every_planned_candidate(fake_runs())
    block = ss.selection_block(runs, COSTS)
    assert block.startswith("Rule (projects/transfer/study_selection.py): Among the rows")
    assert f"| `{K4}` | 1x | 0.98 | 0.98 | 0.98 | 0.98 | 30.0% | 1.25x | no |" in block
    assert f"**Chosen**: `{K2}` at 1x the learning rate (lowest validation recovery 0.95)." \
        in block
    assert "near met (0.95; LoRA 0.60)" in block
    # nothing on the held-out test yet: every regime pending, and the command that runs it
    assert "| near | 0 of 3 | pending | pending | pending | 0.95 | pending | pending |" in block
    assert ('**The goal on the held-out test**: pending until every regime has 3 seeds of the '
            'chosen row, full, fixed and LoRA: `python -m projects.transfer.study --split test '
            f'--regimes near,far,dense --rows "full,fixed,lora,{K2}" --seeds 0,1,2`.') in block
    # a row chosen at another rate runs there; the baselines run at the recipe's
    at_half = ss.Candidate("e3va", 0.5, {}, 0.1, 1.0)
    assert ss.held_out_commands(at_half, {"lora": ["dense"], "e3va": ["far", "near"]}) == [
        'python -m projects.transfer.study --split test --regimes dense --rows "lora" '
        '--seeds 0,1,2',
        'python -m projects.transfer.study --split test --regimes near,far --rows "e3va" '
        '--seeds 0,1,2 --lr-scale 0.5']
    # ... and is judged on its own runs there alone, never on its runs at the recipe's rate
    at_1x = held_out_seeds("e3va", dict.fromkeys(study_records.REGIMES, 69.5))
    judged = ss.held_out(at_1x, at_half)
    assert "| near | 0 of 3 | pending | pending | pending | pending | 0.50 | pending |" in judged
    assert judged.endswith('--rows "e3va" --seeds 0,1,2 --lr-scale 0.5`.')
    # one seed of each is shown, but judges nothing
    first = [run("near", row, box, "test") for row, box in
             (("full", 70), ("fixed", 60), ("lora", 65), (K2, 69))]
    assert "| near | 1 of 3 | 69.0 | 0.90 | 0.90 | 0.95 | 0.50 | pending |" in ss.selection_block(
        runs + first, COSTS)
    # near and far complete (LoRA 0.50, the chosen row 0.90 and 0.80), dense without LoRA
    for regime in study_records.REGIMES:
        for seed in range(3):
            runs += [run(regime, "full", 70, "test", seed=seed),
                     run(regime, "fixed", 60, "test", seed=seed),
                     run(regime, K2, (67 if regime == "far" else 68) + seed, "test",
                         seed=seed)]
            if regime != "dense":
                runs.append(run(regime, "lora", 65, "test", seed=seed))
    block = ss.selection_block(runs, COSTS)
    assert "| near | 3 of 3 | 69.0 ± 1.0 | 0.90 | 0.80, 0.90, 1.00 | 0.95 | 0.50 | met |" in block
    assert ("| far | 3 of 3 | 68.0 ± 1.0 | 0.80 | 0.70, 0.80, 0.90 | 0.95 | 0.50 | not met |"
            in block)
    assert ("| dense | 3 of 3 | 69.0 ± 1.0 | 0.90 | 0.80, 0.90, 1.00 | 0.95 | pending | pending |"
            in block)
    # far's three seeds miss the goal: no dense run can change that, so the verdict is given
    # while dense still runs, with what it waits on
    assert ('**The goal on the held-out test**: not met in far. Still to run, for dense in the '
            'table (no run can change the verdict): `python -m projects.transfer.study --split '
            'test --regimes dense --rows "lora" --seeds 0,1,2`.') in block
    # a regime that meets the goal judges nothing while another still runs
    far_ok = [r for r in runs if not (r["regime"] == "far" and r["row"] == K2
                                      and r["split"] == "test")]
    far_ok += [run("far", K2, 68 + seed, "test", seed=seed) for seed in range(3)]
    assert ('pending until every regime has 3 seeds of the chosen row, full, fixed and LoRA: '
            '`python -m projects.transfer.study --split test --regimes dense --rows "lora" '
            '--seeds 0,1,2`.') in ss.selection_block(far_ok, COSTS)
    # LoRA's dense seeds: far's 0.80 fails the goal; LoRA above the chosen row fails it too
    dense_lora = [run("dense", "lora", 65, "test", seed=seed) for seed in range(3)]
    block = ss.selection_block(runs + dense_lora, COSTS)
    assert "**The goal on the held-out test**: not met in far." in block
    assert "Still to run" not in block
    block = ss.selection_block(far_ok + dense_lora, COSTS)
    assert ("**The goal on the held-out test**: met in every regime, at 10.0% of full "
            "fine-tuning's extra peak and 1.20x E3VA's step.") in block
    stronger_lora = [run("dense", "lora", 69.5, "test", seed=seed) for seed in range(3)]
    block = ss.selection_block(far_ok + stronger_lora, COSTS)
    assert ("| dense | 3 of 3 | 69.0 ± 1.0 | 0.90 | 0.80, 0.90, 1.00 | 0.95 | 0.95 | not met |"
            in block)
    assert "**The goal on the held-out test**: not met in dense." in block


def test_the_readme_advice_follows_the_choice_and_then_its_held_out_test():
    # a planned candidate has not run: nothing is recommended
    assert ss.advice(fake_runs(), COSTS).startswith("**Not a recommendation yet.**")
    runs = with_every_planned_candidate(fake_runs())
    command = ("`python train_net.py --config-file configs/COCO/cascade_mask_rcnn_swin_b_"
               "e3va_spatial.py --num-gpus 8 model.backbone.bottom_up.tuning.feedback_depth=2`")
    pending = ss.advice(runs, COSTS)
    assert pending.startswith(f"**Chosen on validation: `{K2}`**, not yet a recommendation")
    assert pending.endswith(f"To try it: {command}.")
    # two of three seeds everywhere judge nothing yet
    two = [r for r in held_out_seeds(K2, {"near": 69, "far": 69, "dense": 69}) if r["seed"] < 2]
    assert ss.advice(runs + two, COSTS) == pending
    met = ss.advice(runs + held_out_seeds(K2, {"near": 69, "far": 69, "dense": 69}), COSTS)
    assert met.startswith(f"**Recommended when memory decides: `{K2}`.** On the held-out test")
    assert "at 10.0% of full fine-tuning's extra peak and 1.20x E3VA's step" in met
    assert met.endswith(f"Train it with {command}.")
    short = ss.advice(runs + held_out_seeds(K2, {"near": 69, "far": 68, "dense": 69}), COSTS)
    assert short.startswith(
        f"**Chosen on validation, short of the goal on the held-out test: `{K2}`.** On the "
        f"held-out test (3 seeds), in near it meets the goal; in far it recovers less than 0.9 "
        f"of the gap between the frozen trunk and full fine-tuning, though more than LoRA; in "
        f"dense it meets the goal (")
    assert ("(10.0% of full fine-tuning's extra peak, 1.20x E3VA's step): pick it when memory "
            "decides") in short
    assert short.endswith(f"To train it: {command}.")
    assert "under way" not in short
    # far short on its three seeds while dense's have not all run: short already, and says so
    early = [r for r in held_out_seeds(K2, {"near": 69, "far": 68, "dense": 69})
             if not (r["regime"] == "dense" and r["seed"] == 2)]
    assert "though more than LoRA; dense's runs are under way (" in ss.advice(runs + early, COSTS)
    # LoRA above the chosen row is short of the goal as well, on the other bar
    above = held_out_seeds(K2, {"near": 69, "far": 69, "dense": 69}, lora_box=69.5)
    assert "in near it recovers less than LoRA, though at least 0.9; in far" in ss.advice(
        runs + above, COSTS)
    below = held_out_seeds(K2, {"near": 69, "far": 66, "dense": 69}, lora_box=67)
    assert "in far it recovers less than 0.9 of the gap and less than LoRA; in dense" in \
        ss.advice(runs + below, COSTS)
    # the README's block ends with the advice
    assert ss.budget_table(runs, COSTS).endswith("\n\n" + pending)


def test_the_advised_command_builds_the_chosen_row():
    from detectron2.config import instantiate

    from e3va_d2.config import load_config, tuned_swin_node
    from e3va_d2.modeling import build_tuning

    args = shlex.split(ss.train_command("e3va_spatial:rank=32:stage_mixer=False"))
    config = args[args.index("--config-file") + 1]
    overrides = args[args.index("--num-gpus") + 2:]
    cfg = load_config(os.path.join(study_records.ROOT, config), overrides)
    assert instantiate(tuned_swin_node(cfg.model).tuning) == build_tuning(
        "e3va_spatial", rank=32, stage_mixer=False)
    # a method with no shipped Swin-B config is named, with the fix
    with pytest.raises(ValueError, match="no shipped config configs/COCO/cascade_mask_rcnn_"
                                         "swin_b_e3vaa.py; add one"):
        ss.train_command("e3vaa:rank=4")


def test_rendering_fake_records_writes_every_block_and_the_curves_plot(tmp_path, monkeypatch):
    records = tmp_path / "records"
    runs = with_every_planned_candidate(fake_runs())
    runs += [run("near", row, box, "test") for row, box in (("full", 70), ("fixed", 60),
                                                            (K2, 69))]
    for rec in runs:
        path = study_records.record_path(rec["regime"], rec["row"], rec["seed"], str(records),
                                         rec["split"], rec["lr_scale"])
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(rec, f)
    names = study_render.render_tables([], {}, {})
    doc, readme = tmp_path / "ACCURACY.md", tmp_path / "README.md"
    for path, inside in ((doc, False), (readme, True)):
        path.write_text("".join(f"<!-- begin: {n} -->\nold\n<!-- end: {n} -->\n" for n in names
                                if (n in study_render.README_BLOCKS) == inside))
    # the held-out figure draws the summary table's rows: the methods and the chosen row
    drawn = []
    draw = study_report.plot_accuracy_memory
    monkeypatch.setattr(study_report, "plot_accuracy_memory", lambda records, peaks, path, chosen:
                        drawn.append(study_report.summary_rows(records, chosen))
                        or draw(records, peaks, path, chosen))
    peaks = {row: {"peak": {"peak_bytes": mib * 2**20}}
             for row, mib in (("full", 200), ("fixed", 100), (K2, 110))}
    study_render.render(str(records), str(doc), str(tmp_path), str(readme), peaks=peaks,
                        costs=COSTS)
    assert drawn == [["full", "fixed", K2]]
    assert (tmp_path / "accuracy_memory.png").stat().st_size > 0
    text = doc.read_text()
    assert tables.block(text, sv.FEEDBACK) == sv.feedback_table(runs, COSTS) + "\n"
    assert tables.block(text, sv.LR) == sv.lr_table(runs) + "\n"
    assert f"**Chosen**: `{K2}`" in tables.block(text, ss.SELECTION)
    # validation runs stay out of the held-out tables
    assert tables.block(text, "accuracy-far") == study_report.NOT_RUN + "\n"
    assert "| `fixed` | 60.0 |" in tables.block(text, "accuracy-near")
    assert (tmp_path / "accuracy_feedback.png").stat().st_size > 0
    assert tables.block(readme.read_text(), ss.BUDGET) == ss.budget_table(runs, COSTS) + "\n"
    # the README's results table shows the chosen row beside the methods
    assert (f"| `{K2}` (chosen on validation) | 69.0 (1 seed) | 0.90 |"
            in tables.block(readme.read_text(), study_report.SUMMARY))


def test_the_budget_table_lists_the_rows_no_cheaper_row_beats():
    table = ss.budget_table(fake_runs(), COSTS)
    lines = table.splitlines()
    assert lines[0] == ("| extra memory you can spend (share of full's) | pick | near: recovery "
                        "| far: recovery | dense: recovery | step / `e3va`'s |")
    # by peak: fixed 0%, e3va 8% (0.30), e3va_spatial 9% (0.50), K2 10% (0.95), K4 30% (0.98),
    # lora 60% (0.60: beaten by cheaper rows, left out), full 100% (1.00)
    assert [line.split(" | ")[1] for line in lines[2:8]] == [
        "`fixed`", "`e3va`", "`e3va_spatial`", f"`{K2}`", f"`{K4}`", "`full`"]
    assert lines[2].startswith("| 0.0% to 8.0% | `fixed` | 0.00 | 0.00 | 0.00 | 0.90x |")
    assert lines[7] == "| 100.0% or more | `full` | 1.00 | 1.00 | 1.00 | 3.00x |"
    # a row missing from one regime, or at another learning rate, is not a choice
    near_only = [r for r in fake_runs() if not (r["row"] == K2 and r["regime"] == "far")]
    partial = ss.budget_table(near_only, COSTS)
    assert f"| `{K2}` |" not in partial
    assert f"Not in it until they have run in every regime: `{K2}`.\n" in partial
    assert "Not in it until" not in table
    # K2 at twice the rate would recover more, but the budget is read at the recipe's rate
    fast = [run(regime, K2, 59.9, lr_scale=2.0) for regime in study_records.REGIMES]
    assert ss.budget_table(fake_runs() + fast, COSTS) == table
    assert ss.budget_table(fake_runs(), {}).startswith("_Pending: no tuning method between")
    # the two ends alone say nothing about a budget between them: still pending
    ends = [r for r in fake_runs() if r["row"] in ("fixed", "full")]
    assert ss.budget_table(ends, COSTS).startswith("_Pending: no tuning method between "
                                                   "`fixed` and `full`")


def test_every_block_is_pending_until_its_records_exist():
    blocks = study_render.render_tables([], {}, {})
    assert blocks[sv.FEEDBACK].startswith("_Pending: no validation run is recorded yet")
    assert blocks[sv.LR].startswith("_Pending: no validation run at another learning rate")
    assert blocks[ss.SELECTION].startswith("Rule (") and blocks[ss.SELECTION].endswith(
        "then `python -m projects.transfer.study --render`)._")
    for regime in study_records.REGIMES:
        assert blocks[f"accuracy-{regime}"] == study_report.NOT_RUN
        assert blocks[f"{study_report.CURVES}-{regime}"] == study_report.NOT_RUN
    # only the 1x runs: sensitivity still pending, the curve not
    one_rate = [r for r in fake_runs() if r["lr_scale"] == 1]
    assert sv.lr_table(one_rate).startswith("_Pending")
    assert not sv.feedback_table(one_rate, {}).startswith("_Pending")
    assert "pending |" in sv.feedback_table(one_rate, {})  # memory and time not measured
    assert not sv.plot_feedback(one_rate, {}, "unused.png")  # nothing to draw: no file
    assert "**Chosen**: pending" in ss.selection_block(one_rate, {})
