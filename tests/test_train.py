"""The trainer end to end on the synthetic shapes: a short run whose loss falls and AP rises,
frozen tensors untouched, eval-only from a checkpoint, resume, delta checkpoints, AMP on CPU,
and the first-step gradient check."""
import copy
import json
import math
import os

import pytest
import torch
from detectron2.config import LazyCall as L
from detectron2.data import DatasetCatalog
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter

from e3va_d2.checkpoint import E3VACheckpointer
from e3va_d2.engine import E3VATrainer
from e3va_d2.engine.step import MixedPrecision, TrainStep, resolve_amp_dtype
from e3va_d2.engine.trainer import ddp_options

from .helpers import DEMO_MASK_RCNN, short_run_config, small_demo_cfg


def tiny_cfg(output_dir, *overrides, max_iter=8):
    return short_run_config(
        DEMO_MASK_RCNN, output_dir, "shapes_mini_train", "shapes_mini_val", max_iter,
        "train.log_period=1",
        f"train.checkpointer.period={max_iter}",
        "dataloader.train.total_batch_size=2",
        *overrides,
    )


def losses(output_dir):
    with open(os.path.join(output_dir, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [r["total_loss"] for r in rows if "total_loss" in r]


# The tests that share `trained` run in one xdist worker (`--dist loadgroup`, as `make test`
# runs them): split over two, each worker would train its own copy.
SHARES_THE_RUN = pytest.mark.xdist_group("test_train_trained")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short training run shared by several tests: 120 iterations at batch 2."""
    out = str(tmp_path_factory.mktemp("train"))
    cfg = tiny_cfg(out, max_iter=120)
    seed_all_rng(0)
    trainer = E3VATrainer(cfg)
    trainer.resume_or_load(resume=False)
    model = trainer._trainer.model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with EventStorage():
        untrained = E3VATrainer.test(cfg, model)
    results = trainer.train()
    return dict(cfg=cfg, out=out, model=model, before=before, untrained=untrained,
                results=results)


@SHARES_THE_RUN
def test_loss_falls_and_ap_rises(trained):
    values = losses(trained["out"])
    assert len(values) == 120
    first, last = sum(values[:10]) / 10, sum(values[-10:]) / 10
    assert last < 0.75 * first, (first, last)
    # A random, frozen trunk learns slowly; what matters is a clear rise from ~0.
    before, after = trained["untrained"]["bbox"], trained["results"]["bbox"]
    assert after["AP"] > before["AP"] + 0.3, (before, after)
    assert after["AP50"] > before["AP50"] + 1.5, (before, after)


@SHARES_THE_RUN
def test_frozen_tensors_are_bit_identical_and_trainable_ones_moved(trained):
    model, before = trained["model"], trained["before"]
    params = dict(model.named_parameters())
    for name, value in model.state_dict().items():
        if name in params and params[name].requires_grad:
            assert not torch.equal(value, before[name]), f"{name} did not train"
        elif name in params:
            assert torch.equal(value, before[name]), f"frozen {name} changed"


@SHARES_THE_RUN
def test_outputs_checkpoint_delta_and_config(trained):
    out = trained["out"]
    for name in ("model_final.pth", "model_final_delta.pth", "last_checkpoint", "metrics.json"):
        assert os.path.exists(os.path.join(out, name)), name
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]


@SHARES_THE_RUN
def test_eval_only_from_checkpoint_reproduces_final_results(trained):
    cfg = trained["cfg"]
    model = E3VATrainer.build_model(cfg)
    E3VACheckpointer(model).load(os.path.join(trained["out"], "model_final.pth"))
    results = E3VATrainer.test(cfg, model)
    assert results["bbox"]["AP"] == pytest.approx(trained["results"]["bbox"]["AP"], abs=1e-6)


@SHARES_THE_RUN
def test_delta_on_the_same_base_reproduces_the_model_and_can_train_on(trained, tmp_path):
    """Base = the random trunk of the same seed; delta = everything that trained."""
    seed_all_rng(0)
    cfg = tiny_cfg(str(tmp_path), max_iter=2)
    cfg.train.delta_checkpoint = os.path.join(trained["out"], "model_final_delta.pth")
    trainer = E3VATrainer(cfg)  # built with the same seed: same random base
    trainer.resume_or_load(resume=False)
    model = trainer._trainer.model
    reference = trained["model"].state_dict()
    for name, value in model.state_dict().items():
        assert torch.equal(value, reference[name]), name
    trainer.train()  # and it keeps training from there
    assert losses(str(tmp_path))


def test_resume_restores_iteration_weights_optimizer_and_lr(tmp_path):
    out = str(tmp_path)
    seed_all_rng(0)
    cfg = tiny_cfg(out, "train.checkpointer.period=4", max_iter=6)
    first = E3VATrainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    saved_lr = first._trainer.optimizer.param_groups[0]["lr"]
    saved = {k: v.clone() for k, v in first._trainer.model.state_dict().items()}
    saved_steps = {k: v["step"] for k, v in first._trainer.optimizer.state_dict()["state"].items()}

    cfg = tiny_cfg(out, "train.checkpointer.period=4", max_iter=9)
    second = E3VATrainer(cfg)
    second.resume_or_load(resume=True)
    assert second.start_iter == 6
    for name, value in second._trainer.model.state_dict().items():
        assert torch.equal(value, saved[name]), name
    restored = second._trainer.optimizer.state_dict()["state"]
    assert {k: v["step"] for k, v in restored.items()} == saved_steps
    assert second.scheduler.last_epoch == first.scheduler.last_epoch
    assert second._trainer.optimizer.param_groups[0]["lr"] == pytest.approx(saved_lr)
    second.train()
    assert second.iter == 9  # detectron2 leaves iter at max_iter after the loop


def test_cpu_bf16_autocast_step(tmp_path):
    seed_all_rng(0)
    cfg = small_demo_cfg(str(tmp_path), 2, "train.amp.enabled=True", "train.log_period=1")
    trainer = E3VATrainer(cfg)
    step = trainer._trainer
    assert step.amp_dtype == torch.bfloat16 and step.grad_scaler is None
    dtypes = []
    fc = trainer._trainer.model.roi_heads.box_head.fc1
    fc.register_forward_hook(lambda m, a, o: dtypes.append(o.dtype) if m.training else None)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert dtypes and all(d == torch.bfloat16 for d in dtypes)
    assert all(math.isfinite(v) for v in losses(str(tmp_path)))


def test_amp_dtype_rules(monkeypatch):
    assert resolve_amp_dtype(False, "cuda") is None
    # An Ampere or later GPU computes bfloat16: no grad scaler, float32's range.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert resolve_amp_dtype(True, "cuda") == torch.bfloat16
    # A V100 / P100 / 1080Ti only emulates it (slowly): float16 with the grad scaler.
    monkeypatch.setattr(torch.cuda, "is_bf16_supported",
                        lambda including_emulation=True: including_emulation)
    assert resolve_amp_dtype(True, "cuda") == torch.float16
    assert resolve_amp_dtype(True, "cuda", "bfloat16") == torch.bfloat16
    assert resolve_amp_dtype(True, "cpu") == torch.bfloat16
    assert resolve_amp_dtype(True, "cpu", "float16") == torch.float16  # CPU autocast has it
    with pytest.raises(ValueError, match="train.amp.dtype='float8'"):
        resolve_amp_dtype(True, "cpu", "float8")


def test_fp16_step_without_gradients_skips_the_scaler():
    """A loss nothing trainable reaches (a frozen backbone without a trainable neck) must not
    reach the grad scaler, which refuses an optimizer step with nothing unscaled (867f114)."""
    precision = MixedPrecision("cpu", torch.float16)  # its scaler, used without autocast here
    weight = torch.nn.Parameter(torch.ones(2))
    optimizer = torch.optim.SGD([weight], lr=0.5)
    assert precision.grad_scaler is not None
    had_gradients = precision.backward(torch.ones(2).sum())
    assert had_gradients is False
    precision.step(optimizer, had_gradients)
    assert torch.equal(weight, torch.ones(2)) and precision.skipped_steps == 0
    optimizer.zero_grad()
    assert precision.backward(weight.sum()) is True  # scaled: the scaler unscales before the step
    precision.step(optimizer, True)
    assert torch.allclose(weight, torch.full((2,), 0.5)) and precision.skipped_steps == 0


class _LossModel(torch.nn.Module):
    def __init__(self, loss):
        super().__init__()
        self.used = torch.nn.Parameter(torch.ones(2))
        self.unused = torch.nn.Parameter(torch.ones(2))
        self.loss = loss

    def forward(self, batch):
        return {"loss": self.used.sum() * self.loss}


def test_parameter_without_gradient_is_named_after_first_step():
    model = _LossModel(1.0)
    step = TrainStep(model, [[0]] * 3, torch.optim.SGD(model.parameters(), lr=0.1))
    with EventStorage(), pytest.raises(RuntimeError, match="unused"):
        step.iter = 0
        step.run_step()


def test_non_finite_loss_stops_training():
    model = _LossModel(float("nan"))
    model.unused.requires_grad_(False)
    step = TrainStep(model, [[0]] * 3, torch.optim.SGD([model.used], lr=0.1))
    with EventStorage(), pytest.raises(FloatingPointError, match="infinite or NaN"):
        step.iter = 0
        step.run_step()


class GradientProbe(HookBase):
    """A hook as one that clips or logs gradients would be: it must run after every backward,
    before the update, and see the gradients of that step."""

    def __init__(self, model, parameter_names):
        self.params = dict(model.named_parameters())
        self.names = parameter_names
        self.seen = []  # (iteration, gradient norms of the watched parameters)

    def after_backward(self):
        params = self.params
        self.seen.append((self.trainer.iter,
                          [float(params[n].grad.norm()) if params[n].grad is not None else None
                           for n in self.names]))


def test_after_backward_hooks_run_every_iteration_and_see_gradients(tmp_path):
    seed_all_rng(0)
    trainer = E3VATrainer(tiny_cfg(str(tmp_path), max_iter=3))
    model = trainer._trainer.model
    watched = [n for n, p in model.named_parameters() if p.requires_grad][:3]
    probe = GradientProbe(model, watched)
    trainer.register_hooks([probe])
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert [it for it, _ in probe.seen] == [0, 1, 2]
    assert all(norm is not None and norm > 0 for _, norms in probe.seen for norm in norms)


def test_a_standalone_step_calls_its_own_hooks_after_backward():
    model = _LossModel(1.0)
    model.unused.requires_grad_(False)
    step = TrainStep(model, [[0]] * 3, torch.optim.SGD([model.used], lr=0.1))
    probe = GradientProbe(model, ["used"])
    step.register_hooks([probe])
    with EventStorage():
        for i in range(2):
            step.iter = i
            step.run_step()
    assert [it for it, _ in probe.seen] == [0, 1]
    assert all(n == pytest.approx([2.0 ** 0.5]) for _, n in probe.seen)  # d(sum)/d(used)


def test_after_backward_hooks_see_unscaled_gradients_under_the_grad_scaler():
    """A clipping hook must clip true gradients, not ones multiplied by the loss scale."""
    model = _LossModel(1.0)
    model.unused.requires_grad_(False)
    step = TrainStep(model, [[0]] * 3, torch.optim.SGD([model.used], lr=0.1),
                     amp_dtype=torch.float16)
    probe = GradientProbe(model, ["used"])
    step.register_hooks([probe])
    with EventStorage():
        for i in range(2):
            step.iter = i
            step.run_step()
    assert step.grad_scaler.get_scale() == 2.0 ** 16 and step.precision.skipped_steps == 0
    assert [n for _, n in probe.seen] == [pytest.approx([2.0 ** 0.5])] * 2
    assert torch.allclose(model.used, torch.full((2,), 0.8))  # unscaled once: two steps of 0.1


def all_parameters(model):
    return [{"params": list(model.parameters())}]


def test_ddp_keeps_the_gradients_in_its_buckets_unless_the_config_says_otherwise(tmp_path):
    """gradient_as_bucket_view: one copy of the trainable gradients, not a second one in
    DDP's all-reduce buckets (tests/test_distributed.py trains with it)."""
    cfg = tiny_cfg(str(tmp_path))
    assert ddp_options(cfg, "cuda") == dict(gradient_as_bucket_view=True, **cfg.train.ddp)
    cfg.train.ddp.gradient_as_bucket_view = False
    assert ddp_options(cfg, "cuda")["gradient_as_bucket_view"] is False


def test_optimizer_over_frozen_parameters_is_refused(tmp_path):
    cfg = tiny_cfg(str(tmp_path))
    model = E3VATrainer.build_model(cfg)
    cfg.optimizer.params = L(all_parameters)()
    with pytest.raises(ValueError, match="trainable ones"):
        E3VATrainer.build_optimizer(cfg, model)


def same(results, other) -> bool:
    """Equal metrics, NaN (no large objects: APl) included."""
    return json.dumps(results, sort_keys=True) == json.dumps(other, sort_keys=True)


@SHARES_THE_RUN
def test_default_trainer_signatures_are_honoured(trained, tmp_path):
    """What a detectron2 user calls on a DefaultTrainer does what detectron2 documents: a
    dataset name and an output folder are used, not ignored; ``test`` takes evaluators, one per
    test dataset, and evaluates each dataset of a list."""
    cfg, model = trained["cfg"], trained["model"]
    elsewhere = str(tmp_path / "elsewhere")
    evaluator = E3VATrainer.build_evaluator(cfg, "shapes_mini_train", elsewhere)
    assert evaluator._metadata.name == "shapes_mini_train" and evaluator._output_dir == elsewhere
    assert cfg.dataloader.evaluator.output_dir is None  # the config itself is left alone
    loader = E3VATrainer.build_test_loader(cfg, "shapes_mini_train")
    assert len(loader.dataset) == len(DatasetCatalog.get("shapes_mini_train"))

    with EventStorage():
        given = E3VATrainer.test(cfg, model, evaluators=[
            E3VATrainer.build_evaluator(cfg, "shapes_mini_val", str(tmp_path / "given"))])
        assert same(given, trained["results"])  # the final evaluation of the same model
        assert os.path.isfile(tmp_path / "given" / "coco_instances_results.json")
        with pytest.raises(ValueError, match="2 evaluators given for 1 test datasets"):
            E3VATrainer.test(cfg, model, evaluators=[evaluator, evaluator])
        two = copy.deepcopy(cfg)
        two.dataloader.test.dataset.names = ["shapes_mini_val", "shapes_mini_train"]
        per_dataset = E3VATrainer.test(two, model)
    assert list(per_dataset) == ["shapes_mini_val", "shapes_mini_train"]
    assert same(per_dataset["shapes_mini_val"], trained["results"])

    writers = E3VATrainer(cfg).build_writers()  # inherited, it read cfg.OUTPUT_DIR and crashed
    assert any(isinstance(w, CommonMetricPrinter) for w in writers)  # its console printer
    assert any(isinstance(w, JSONWriter) for w in writers)


def test_auto_scale_workers_applies_the_linear_scaling_rule(tmp_path):
    cfg = tiny_cfg(str(tmp_path), "train.reference_world_size=2", max_iter=100)
    assert E3VATrainer.auto_scale_workers(cfg, 2) is cfg  # the reference: unchanged
    scaled = E3VATrainer.auto_scale_workers(cfg, 4)
    assert scaled.dataloader.train.total_batch_size == 4 and scaled.train.max_iter == 50
    assert scaled.optimizer.lr == pytest.approx(2 * cfg.optimizer.lr)
    assert scaled.train.reference_world_size == 4 and cfg.train.max_iter == 100
