"""Helpers several test modules share: file-tree snapshots, racing processes, short demo runs,
gradients compared parameter by parameter."""
import multiprocessing as mp
import os
from pathlib import Path
from typing import List

import detectron2.data.transforms as T
import torch
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from e3va_d2.config import load_config
from e3va_d2.engine import E3VATrainer

DEMO_MASK_RCNN = os.path.join(os.path.dirname(__file__), "..",
                              "configs/Shapes/mask_rcnn_swin_demo_e3va.py")


def tree_bytes(folder: Path) -> dict:
    """Every file below ``folder``, relative path -> content."""
    return {
        str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


def race(worker_code: str, env: dict, processes: int = 2) -> List[object]:
    """Run ``worker_code`` in spawned processes at once; each sees ``env`` plus ``barrier`` (to
    line them up) and ``queue`` (for one result each). Returns the results; every process must
    exit cleanly."""
    ctx = mp.get_context("spawn")
    env = {**env, "barrier": ctx.Barrier(processes), "queue": ctx.Queue()}
    procs = [ctx.Process(target=exec, args=(worker_code, env)) for _ in range(processes)]
    for p in procs:
        p.start()
    results = [env["queue"].get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    return results


def short_run_config(config: str, output_dir, train_set: str, test_set: str, max_iter: int,
                     *overrides: str):
    """A shipped config cut down to a short CPU run on small splits, without eval during it."""
    return load_config(config, [
        f"train.output_dir={output_dir}",
        f"train.max_iter={max_iter}",
        "train.eval_period=0",
        "train.device=cpu",
        f"dataloader.train.dataset.names={train_set}",
        f"dataloader.test.dataset.names={test_set}",
        "dataloader.train.num_workers=0",
        "dataloader.test.num_workers=0",
        *overrides,
    ])


def small_demo_cfg(output_dir, max_iter: int, *overrides: str):
    """The Mask R-CNN demo at 64x64 with 16-channel heads and no evaluator, for tests of the
    training step's precision: float16 and bfloat16 are the CPU's slowest dtypes (few native
    kernels), so the full-size demo would take minutes."""
    cfg = short_run_config(DEMO_MASK_RCNN, output_dir, "shapes_mini_train", "shapes_mini_val",
                           max_iter, "dataloader.train.total_batch_size=2", *overrides)
    del cfg.dataloader.evaluator  # these tests compare weights and dtypes; nothing is evaluated
    cfg.dataloader.train.mapper.augmentations = [L(T.Resize)(shape=(64, 64))]
    model, channels = cfg.model, 16
    model.backbone.out_channels = model.proposal_generator.head.in_channels = channels
    model.proposal_generator.update(pre_nms_topk=(200, 100), post_nms_topk=(50, 50))
    model.roi_heads.batch_size_per_image = 32
    model.roi_heads.box_head.update(input_shape=ShapeSpec(channels=channels, height=7, width=7),
                                    fc_dims=[32])
    model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=32)
    model.roi_heads.mask_head.update(
        input_shape=ShapeSpec(channels=channels, width=14, height=14), conv_dims=[channels])
    return cfg


def evaluate_then_train(cfg):
    """Seeded trainer; returns (results of the untrained model, results after training)."""
    seed_all_rng(0)
    trainer = E3VATrainer(cfg)
    trainer.resume_or_load(resume=False)
    with EventStorage():
        before = E3VATrainer.test(cfg, trainer._trainer.model)
    return before, trainer.train()



def assert_same_gradients(a, b):
    """``b``'s gradients equal ``a``'s (to float32 rounding) for every trainable parameter, and
    every trainable parameter of ``a`` got one."""
    trained = 0
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        if p.requires_grad:
            torch.testing.assert_close(q.grad, p.grad, rtol=1e-6, atol=1e-7, msg=name)
            trained += 1
    assert trained == len(a.trainable_names)


def assert_is_the_frozen_trunk(model, images) -> None:
    """A tuned Swin whose highway adds nothing gives the frozen trunk's features bit for bit,
    while still on the gradient path (its outputs require grad)."""
    with torch.no_grad():
        frozen = model.trunk(images)
    outputs = model(images)
    for name in frozen:
        assert torch.equal(outputs[name], frozen[name]), name
    assert all(out.requires_grad for out in outputs.values())
