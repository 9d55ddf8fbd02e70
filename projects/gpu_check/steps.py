"""The GPU check's steps: what every CUDA user runs, each on a small setting that fits the
10-minute budget, each failing with what differs.

Every step takes the :class:`Settings` (the device is one of them), so that the steps whose
arithmetic a CPU can show run in the CPU tests too (tests/test_gpu_check.py); on the GPU they
are what ``make gpu-check`` runs (projects/gpu_check/check.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import itertools
import json
import math
import os
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.data import DatasetCatalog
from detectron2.data.detection_utils import read_image
from detectron2.engine import create_ddp_model
from detectron2.utils import comm
from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage
from torch import nn

from e3va_d2.compat import detectron2_build
from e3va_d2.config import load_config
from e3va_d2.engine import E3VATrainer, launch
from e3va_d2.engine.predictor import Predictor
from e3va_d2.engine.step import TrainStep
from e3va_d2.modeling import E3VATuning, SwinTransformer, TunedSwin, swin_size
from e3va_d2.modeling.tuning import parse_method_spec
from e3va_d2.utils.cuda_build import check_cuda_build
from projects.benchmark import plan, tuning_cost
from projects.benchmark.bench import Bench, num_classes
from projects.benchmark.measure import synthetic_detection_batch
from projects.benchmark.plan_fit import fits, padded_pixels
from projects.benchmark.plan_measure import measure

from .runner import Outcome, Skip

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
GIB = 2**30
TINY_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)
_SWIN_B_CASCADE = "configs/COCO/cascade_mask_rcnn_swin_b_e3va.py"


@dataclasses.dataclass(frozen=True)
class Settings:
    """What each step runs. The defaults are ``make gpu-check``'s: the paper's Swin-B Cascade
    Mask R-CNN where the size of the model matters (AMP, planner, timing), the demos where a
    whole training run does (their synthetic data is generated in seconds)."""

    device: str = "cuda"
    output: str = "output/gpu_check"
    # One GPU trains the UPerNet demo, whose head asks for SyncBN (BN in one process).
    syncbn_config: str = "configs/Shapes/upernet_swin_demo_e3va.py"
    syncbn_datasets: Tuple[str, str] = ("shapes_sem_seg_mini_train", "shapes_sem_seg_mini_val")
    syncbn_iters: int = 20
    syncbn_batch: int = 4
    # AMP: the COCO config (SyncBN box heads) on synthetic images.
    amp_config: str = _SWIN_B_CASCADE
    amp_dtypes: Tuple[str, ...] = ("float16", "bfloat16")
    amp_size: int = 384
    amp_batch: int = 2
    amp_iters: int = 10  # float16's scaler skips the first few (it starts at 2**16)
    # E3VA's lossless options against the default, on a Swin-B trunk.
    lossless_trunk: Tuple[Tuple[str, object], ...] = tuple(
        {**swin_size("B"), "window_size": 7}.items())
    lossless_options: Tuple[str, ...] = ("recompute_branches=block", "recompute_branches=stage")
    lossless_size: int = 224
    # Two processes on two halves of a batch against one process on all of it.
    ddp_trunk: Tuple[Tuple[str, object], ...] = tuple(TINY_SWIN.items())
    ddp_backend: str = "nccl"
    resume_config: str = "configs/Shapes/mask_rcnn_swin_demo_e3va.py"
    resume_datasets: Tuple[str, str] = ("shapes_mini_train", "shapes_mini_val")
    # The planner's CPU fit against the CUDA allocator at one size.
    planner_config: str = _SWIN_B_CASCADE
    planner_method: str = "e3va"
    planner_fit_sizes: str = "224,288"
    planner_fit_batches: str = "1,2"
    planner_size: int = 384
    planner_batch: int = 2
    # CUDA step times of the frozen model, E3VA and full fine-tuning.
    timing_config: str = _SWIN_B_CASCADE
    timing_methods: str = "fixed,e3va,full"
    timing_size: int = 512
    timing_batch: int = 2
    timing_steps: int = 5
    timing_warmup: int = 2

    @property
    def on_cuda(self) -> bool:
        return torch.device(self.device).type == "cuda"


# -- helpers -----------------------------------------------------------------------------------


def tensors_off_device(model: nn.Module, device: str) -> List[str]:
    """Parameters and buffers of ``model`` that are not on ``device``'s type."""
    kind = torch.device(device).type
    return [name for name, t in itertools.chain(model.named_parameters(), model.named_buffers())
            if t.device.type != kind]


def _check_placement(model: nn.Module, device: str) -> None:
    off = tensors_off_device(model, device)
    if off:
        raise AssertionError(f"{len(off)} parameters/buffers are not on {device}, e.g. {off[:5]}")


@contextlib.contextmanager
def full_precision_matmuls():
    """TF32 off while gradients are compared (cuDNN convolutions use it by default)."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def relative_difference(expected: torch.Tensor, actual: torch.Tensor) -> float:
    """max |expected - actual| / max |expected|: a difference on the scale of the tensor, so that
    tiny gradients (an adapter's, ~1e-4) are held to the same standard as large ones."""
    expected, actual = expected.detach().float().cpu(), actual.detach().float().cpu()
    if expected.shape != actual.shape:
        return float("inf")
    scale = float(expected.abs().max()) if expected.numel() else 0.0
    difference = float((expected - actual).abs().max()) if expected.numel() else 0.0
    return difference / scale if scale > 0 else (0.0 if difference == 0 else float("inf"))


def assert_same(names: Sequence[str], expected: Sequence[torch.Tensor],
                actual: Sequence[torch.Tensor], tolerance: float, what: str) -> float:
    """Every pair within ``tolerance`` (:func:`relative_difference`); returns the largest
    difference, or raises naming ``what`` and the first tensor that differs."""
    if len(expected) != len(actual) or not expected:
        raise AssertionError(f"{what}: {len(expected)} tensors expected, {len(actual)} given")
    worst = 0.0
    for name, x, y in zip(names, expected, actual):
        difference = relative_difference(x, y)
        if not difference <= tolerance:
            raise AssertionError(f"{what}, {name}: differs by {difference:.1e} of its largest "
                                 f"value (tolerance {tolerance:.0e})")
        worst = max(worst, difference)
    return worst


def _dtype_supported(device: str, dtype: torch.dtype) -> bool:
    if dtype == torch.bfloat16 and torch.device(device).type == "cuda":
        return torch.cuda.is_bf16_supported()
    return True


_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


# -- 1. environment ----------------------------------------------------------------------------


def environment(settings: Settings) -> Outcome:
    """Every visible GPU, its compute capability and whether the installed torch has kernels for
    it (the startup check's error if not); then a matmul and a convolution run on each."""
    if not settings.on_cuda:
        raise Skip("no CUDA device asked for")
    arch_list = torch.cuda.get_arch_list()
    devices = []
    for index in range(torch.cuda.device_count()):
        major, minor = torch.cuda.get_device_capability(index)
        check_cuda_build(f"cuda:{index}")  # the error users would get, with the fix
        properties = torch.cuda.get_device_properties(index)
        x = torch.randn(64, 64, device=f"cuda:{index}")
        conv = nn.Conv2d(3, 8, 3).to(f"cuda:{index}")
        y = float((x @ x).sum() + conv(torch.randn(1, 3, 16, 16, device=x.device)).sum())
        if not math.isfinite(y):
            raise AssertionError(f"GPU {index}: a matmul and a convolution gave {y}")
        devices.append(dict(index=index, name=torch.cuda.get_device_name(index),
                            capability=f"{major}.{minor}",
                            memory_gib=round(properties.total_memory / GIB, 1)))
    bf16 = ("native" if torch.cuda.is_bf16_supported(including_emulation=False) else
            "emulated" if torch.cuda.is_bf16_supported() else "not supported")
    names = sorted({f"{d['name']} (capability {d['capability']}, {d['memory_gib']} GiB)"
                    for d in devices})
    summary = (f"{len(devices)} x {', '.join(names)}; torch {torch.__version__} (CUDA "
               f"{torch.version.cuda}, kernels {' '.join(arch_list)}) covers it; bfloat16 "
               f"{bf16}")
    return Outcome(summary, dict(torch=torch.__version__, cuda=torch.version.cuda,
                                 cudnn=torch.backends.cudnn.version(), arch_list=arch_list,
                                 devices=devices, bfloat16=bf16, detectron2=detectron2_build()))


def machine_line() -> str:
    """The GPUs and torch, in one line (the record's ``machine``)."""
    names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    counted = ", ".join(f"{names.count(n)} x {n}" for n in sorted(set(names)))
    return f"{counted or 'no GPU'}, torch {torch.__version__}"


# -- 2. single-GPU training of a SyncBN config, and the predictor ------------------------------


def _losses(metrics_file: str) -> List[float]:
    with open(metrics_file) as f:
        return [json.loads(line)["total_loss"] for line in f if '"total_loss"' in line]


def syncbn_training(settings: Settings) -> Outcome:
    """The UPerNet demo (SyncBN head) trained by E3VATrainer on one device, evaluated, then its
    checkpoint through the Predictor: the path of ``--num-gpus 1``, ``--eval-only`` and the
    demo."""
    out = os.path.join(settings.output, "syncbn")
    shutil.rmtree(out, ignore_errors=True)  # a fresh run, never a resume of an older one
    train_set, test_set = settings.syncbn_datasets
    iters = settings.syncbn_iters
    cfg = load_config(settings.syncbn_config, [
        f"train.output_dir={out}", f"train.max_iter={iters}", "train.eval_period=0",
        f"train.device={settings.device}", f"train.checkpointer.period={iters}",
        f"train.log_period={max(1, iters // 4)}",
        f"dataloader.train.dataset.names={train_set}", f"dataloader.test.dataset.names={test_set}",
        f"dataloader.train.total_batch_size={settings.syncbn_batch}",
        "dataloader.train.num_workers=0", "dataloader.test.num_workers=0"])
    seed_all_rng(0)
    trainer = E3VATrainer(cfg)
    model = trainer._trainer.model
    _check_placement(model, settings.device)
    sync = [n for n, m in model.named_modules() if isinstance(m, nn.SyncBatchNorm)]
    norms = sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    if sync or not norms:
        raise AssertionError(f"one process should train BatchNorm2d in place of SyncBN; found "
                             f"{len(sync)} SyncBatchNorm ({sync[:3]}) and {norms} BatchNorm2d")
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    losses = _losses(os.path.join(out, "metrics.json"))
    if not losses or not all(math.isfinite(v) for v in losses):
        raise AssertionError(f"training losses {losses}")
    miou = results.get("sem_seg", {}).get("mIoU", float("nan"))
    if not math.isfinite(miou):
        raise AssertionError(f"the evaluation after training gave {results}")

    predictor = Predictor(cfg, checkpoint=os.path.join(out, "model_final.pth"))
    _check_placement(predictor.model, settings.device)
    record = DatasetCatalog.get(test_set)[0]
    image = read_image(record["file_name"], format="BGR")
    logits = predictor(image)["sem_seg"]
    expected = (cfg.model.sem_seg_head.num_classes, *image.shape[:2])
    if tuple(logits.shape) != expected or not torch.isfinite(logits).all():
        raise AssertionError(f"the predictor gave sem_seg of shape {tuple(logits.shape)} "
                             f"(expected {expected}), finite: {bool(torch.isfinite(logits).all())}")
    return Outcome(
        f"UPerNet demo, {norms} SyncBN -> BN on {settings.device}, {iters} iterations: loss "
        f"{losses[0]:.3f} -> {losses[-1]:.3f}, mIoU {miou:.1f} on {test_set}; predictor "
        f"{tuple(logits.shape)} on {logits.device.type}",
        dict(losses=losses, mIoU=miou, batch_norms=norms))


# -- 3. float16 and bfloat16 AMP ---------------------------------------------------------------


def amp_training(settings: Settings) -> Outcome:
    """The COCO Cascade config built as the trainer builds it (SyncBN box heads made BN after
    the move to the device), trained a few steps under each AMP dtype from the same weights:
    every loss finite, skipped (overflow) steps counted, the trainable weights moved."""
    cfg = load_config(settings.amp_config, [f"train.device={settings.device}"])
    torch.manual_seed(0)
    model = E3VATrainer.build_model(cfg)
    _check_placement(model, settings.device)
    device = next(model.parameters()).device
    batch = synthetic_detection_batch(settings.amp_batch, settings.amp_size,
                                      num_classes(cfg), seed=0)
    trainable = {n: p for n, p in model.named_parameters() if p.requires_grad}
    start = {n: p.detach().clone() for n, p in trainable.items()}
    runs, skipped_dtypes = {}, []
    for name in settings.amp_dtypes:
        dtype = _DTYPES[name]
        if not _dtype_supported(settings.device, dtype):
            skipped_dtypes.append(name)
            continue
        with torch.no_grad():
            for n, p in trainable.items():
                p.copy_(start[n])
        model.train()
        optimizer = torch.optim.AdamW(list(trainable.values()), lr=1e-4)
        step = TrainStep(model, itertools.repeat(batch), optimizer, device_type=device.type,
                         amp_dtype=dtype)
        with EventStorage() as storage:
            for i in range(settings.amp_iters):
                storage.iter = step.iter = i
                step.run_step()  # a non-finite loss raises FloatingPointError here
        losses = [v for v, _ in storage.history("total_loss").values()]
        skipped = step.precision.skipped_steps
        moved = sum(not torch.equal(p, start[n]) for n, p in trainable.items())
        if skipped >= settings.amp_iters or not moved:
            raise AssertionError(f"{name}: {skipped} of {settings.amp_iters} steps skipped, "
                                 f"{moved} trainable tensors moved")
        runs[name] = dict(losses=losses, skipped_steps=skipped, moved=moved,
                          scale=step.grad_scaler.get_scale() if step.grad_scaler else None)
    parts = [f"{n}: loss {r['losses'][0]:.3f} -> {r['losses'][-1]:.3f}, {r['skipped_steps']} of "
             f"{settings.amp_iters} steps skipped" for n, r in runs.items()]
    parts += [f"{n}: not supported by this GPU" for n in skipped_dtypes]
    return Outcome(f"{os.path.basename(settings.amp_config)} at {settings.amp_batch} x "
                   f"{settings.amp_size}px: " + "; ".join(parts),
                   dict(runs=runs, unsupported=skipped_dtypes))


# -- 4. E3VA's lossless memory options ---------------------------------------------------------

# How far (relative_difference) tensors that must be equal may be apart: the order of float
# sums (CUDA's atomics) moves float32 results by ~1e-6; a lossy option moves them by ~1e-3.
LOSSLESS_TOLERANCE = {None: 1e-4, torch.bfloat16: 1e-3, torch.float16: 1e-3}


def _tuning(options: str) -> E3VATuning:
    """``"recompute_branches=stage"`` (``:``-separated pairs) -> that E3VA."""
    _, values = parse_method_spec(":".join(["e3va", *filter(None, options.split(":"))]))
    return E3VATuning(**values)


def _gradients(model: nn.Module, images: torch.Tensor, dtype: Optional[torch.dtype]):
    model.zero_grad(set_to_none=True)
    with torch.autocast(images.device.type, dtype=dtype or torch.float32,
                        enabled=dtype is not None):
        outs = model(images)
        loss = sum(o.float().square().mean() for o in outs.values())
    loss.backward()
    named = [(n, p.grad) for n, p in model.named_parameters() if p.requires_grad]
    return [n for n, _ in named], [g for _, g in named], outs


def lossless_options(settings: Settings) -> Outcome:
    """Each lossless option (``recompute_branches``) against E3VA's default on the same weights
    and images: the same outputs and the same gradients of every trainable tensor, in float32
    and under each AMP dtype the device runs."""
    trunk = dict(settings.lossless_trunk)
    size = settings.lossless_size
    images = torch.randn(2, 3, size, size + 32, generator=torch.Generator().manual_seed(0))
    images = images.to(settings.device)
    torch.manual_seed(0)
    default = TunedSwin(trunk=SwinTransformer(**trunk), tuning=E3VATuning()).train()
    dtypes = [None] + [d for d in (torch.float16, torch.bfloat16)
                       if _dtype_supported(settings.device, d)]
    worst: Dict[str, float] = {}
    with full_precision_matmuls():
        default.to(settings.device)
        reference = {d: _gradients(default, images, d) for d in dtypes}
        for options in settings.lossless_options:
            variant = TunedSwin(trunk=SwinTransformer(**trunk), tuning=_tuning(options)).train()
            variant.load_state_dict(default.state_dict())  # adapters as trained: not zero
            variant.to(settings.device)
            for dtype in dtypes:
                names, expected, expected_outs = reference[dtype]
                _, grads, outs = _gradients(variant, images, dtype)
                what = f"{options} ({str(dtype or 'float32').replace('torch.', '')})"
                keys = sorted(expected_outs)
                assert_same(keys, [expected_outs[k] for k in keys], [outs[k] for k in keys],
                            LOSSLESS_TOLERANCE[dtype], f"{what}: output")
                worst[what] = assert_same(names, expected, grads, LOSSLESS_TOLERANCE[dtype],
                                          f"{what}: gradient")
            del variant
    label = ", ".join(str(d or "float32").replace("torch.", "") for d in dtypes)
    return Outcome(
        f"{', '.join(settings.lossless_options)} give E3VA's outputs and gradients "
        f"({len(reference[None][0])} trainable tensors, {label}; largest relative difference "
        f"{max(worst.values()):.1e})", dict(largest_relative_difference=worst))


# -- 5. two GPUs: NCCL gradient equivalence, and a resume --------------------------------------

_DDP_IMAGES, _DDP_STEPS = 4, 2
DDP_TOLERANCE = 1e-4  # relative_difference: two halves summed against the whole batch


class FeatureEnergy(nn.Module):
    """An E3VA backbone with a loss that is a mean over images, as detectron2's losses are."""

    def __init__(self, trunk: dict):
        super().__init__()
        self.backbone = TunedSwin(trunk=SwinTransformer(**trunk), tuning="e3va")

    def forward(self, images):
        feats = self.backbone(torch.stack(images))
        return {"loss": sum(f.square().mean() for f in feats.values())}


def ddp_steps(trunk: dict, device: str, out_file: Optional[str] = None):
    """``_DDP_STEPS`` SGD steps on this process's share of ``_DDP_IMAGES`` images (all of them
    in one process); returns, and in rank 0 saves to ``out_file``, the trainable gradients of
    every step and the trainable weights after the last."""
    world, rank = comm.get_world_size(), comm.get_rank()
    if world > 1 and torch.device(device).type == "cuda":
        device = f"cuda:{comm.get_local_rank()}"
    torch.manual_seed(0)
    model = FeatureEnergy(trunk).to(device)
    generator = torch.Generator().manual_seed(1)
    images = [torch.randn(3, 64, 64, generator=generator).to(device) for _ in range(_DDP_IMAGES)]
    share = _DDP_IMAGES // world
    params = [p for p in model.parameters() if p.requires_grad]
    if world > 1:
        on_cuda = torch.device(device).type == "cuda"
        model = create_ddp_model(model, device_ids=[torch.device(device).index] if on_cuda
                                 else None, broadcast_buffers=False)
    step = TrainStep(model, itertools.repeat(images[rank * share:(rank + 1) * share]),
                     torch.optim.SGD(params, lr=0.5), device_type=torch.device(device).type)
    grads = []
    with full_precision_matmuls(), EventStorage():
        for i in range(_DDP_STEPS):
            step.iter = i
            step.run_step()
            grads.append([p.grad.detach().cpu().clone() for p in params])
    result = dict(grads=grads, weights=[p.detach().cpu().clone() for p in params])
    if out_file and rank == 0:
        torch.save(result, out_file)
    return result


def ddp_gradients(settings: Settings) -> Outcome:
    """Two processes (NCCL on two GPUs) on 2 images each against one process on all 4: DDP's
    averaged gradients equal the whole batch's, step after step."""
    processes = 2
    if settings.on_cuda and torch.cuda.device_count() < processes:
        raise Skip(f"needs {processes} GPUs, this machine has {torch.cuda.device_count()}")
    trunk = dict(settings.ddp_trunk)
    os.makedirs(settings.output, exist_ok=True)
    out_file = os.path.join(settings.output, "ddp_two_processes.pt")
    one = ddp_steps(trunk, settings.device)
    launch(ddp_steps, processes, backend=settings.ddp_backend, dist_url="auto",
           args=(trunk, settings.device, out_file))
    two = torch.load(out_file)
    names = [f"step {i + 1}, tensor {k}" for i in range(_DDP_STEPS)
             for k in range(len(one["grads"][i]))]
    difference = assert_same(names, [g for s in one["grads"] for g in s],
                             [g for s in two["grads"] for g in s], DDP_TOLERANCE, "gradient")
    assert_same([f"tensor {k}" for k in range(len(one["weights"]))], one["weights"],
                two["weights"], DDP_TOLERANCE, "weight after the steps")
    return Outcome(f"{processes} processes ({settings.ddp_backend}) x {_DDP_IMAGES // processes}"
                   f" images = 1 x {_DDP_IMAGES}: {_DDP_STEPS} steps of "
                   f"{len(one['weights'])} trainable tensors, largest relative difference "
                   f"{difference:.1e}", dict(largest_relative_difference=difference))


def _train_net(settings: Settings, out: str, max_iter: int, *flags: str) -> str:
    train_set, test_set = settings.resume_datasets
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--num-gpus", "2", *flags,
           "--config-file", os.path.join(ROOT, settings.resume_config),
           f"train.output_dir={out}", f"train.max_iter={max_iter}", "train.eval_period=0",
           f"train.device={settings.device}", f"dataloader.train.dataset.names={train_set}",
           f"dataloader.test.dataset.names={test_set}", "dataloader.train.num_workers=0",
           "dataloader.test.num_workers=0"]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [
        ROOT, os.environ.get("PYTHONPATH")])))
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    log = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd[1:4])} ... exited {proc.returncode}:\n{log[-3000:]}")
    return log


def ddp_resume(settings: Settings) -> Outcome:
    """``train_net.py --num-gpus 2`` on the Mask R-CNN demo for 2 iterations, then ``--resume``
    to 3: both ranks' data position and RNGs are saved and restored."""
    if settings.on_cuda and torch.cuda.device_count() < 2:
        raise Skip(f"needs 2 GPUs, this machine has {torch.cuda.device_count()}")
    out = os.path.join(settings.output, "resume")
    shutil.rmtree(out, ignore_errors=True)
    log = _train_net(settings, out, 2)
    if "World size: 2" not in log:
        raise AssertionError(f"train_net.py did not run 2 processes:\n{log[-2000:]}")
    state = torch.load(os.path.join(out, "model_final.pth"), weights_only=False)
    ranks = [(r["loader"]["rank"], r["loader"]["world_size"])
             for r in state["trainer"]["resume"]]
    if ranks != [(0, 2), (1, 2)]:
        raise AssertionError(f"the checkpoint holds the training state of ranks {ranks}")
    log = _train_net(settings, out, 3, "--resume")
    resumed = "Starting training from iteration 2" in log
    inexact = [w for w in ("continue approximately", "starts again") if w in log]
    if not resumed or inexact:
        raise AssertionError(f"resumed from iteration 2: {resumed}; warnings {inexact}:\n"
                             f"{log[-2000:]}")
    return Outcome("train_net.py --num-gpus 2, 2 iterations, then --resume from iteration 2 "
                   "with both ranks' data position and RNGs", dict(ranks=ranks))


# -- 6. the planner against the CUDA allocator -------------------------------------------------


def planner_prediction(settings: Settings) -> Tuple[float, dict]:
    """plan.py's prediction of the peak at ``planner_size`` x ``planner_batch``, fitted on the
    CPU (what a user without the GPU gets), and the measured points."""
    args = plan.parse_args([
        "--config-file", os.path.join(ROOT, settings.planner_config),
        "--methods", settings.planner_method, "--fit-sizes", settings.planner_fit_sizes,
        "--fit-batches", settings.planner_fit_batches, "--device", "cpu",
        "--output", os.path.join(settings.output, "plan"), "--fresh"])
    measured = measure(args)
    model = fits(measured["points"])[settings.planner_method]
    pixels = padded_pixels(settings.planner_size, settings.planner_size,
                           measured["size_divisibility"])
    return model.predict(pixels, settings.planner_batch), measured


def cuda_peaks(settings: Settings) -> Dict[str, int]:
    """The allocator's peaks over one training step (after a warm-up step, as the planner
    measures): allocated and reserved bytes, and the device memory in use then (context and
    other processes included)."""
    cfg = load_config(os.path.join(ROOT, settings.planner_config))
    label = f"{settings.planner_size}x{settings.planner_batch}"
    batch = synthetic_detection_batch(settings.planner_batch, settings.planner_size,
                                      num_classes(cfg), seed=0)
    device = torch.device(settings.device)
    bench = Bench(cfg, [settings.planner_method], device, {label: batch}, kinds=("model",))
    bench.on_device(settings.planner_method, device)
    step = bench.steps[settings.planner_method][f"model{label}"]
    step.run(seed=0, record=False)  # AdamW's state exists, as in training
    allocated = step.cuda_peak_bytes()
    reserved = torch.cuda.max_memory_reserved(device)
    free, total = torch.cuda.mem_get_info(device)
    bench.on_device(settings.planner_method, torch.device("cpu"))
    return dict(allocated=allocated, reserved=reserved, device_in_use=total - free)


def planner_against_cuda(settings: Settings) -> Outcome:
    """The planner's CPU prediction against the CUDA allocator's peak, allocated and reserved,
    at one size (a measurement: the table shows the ratios, nothing is asserted of them)."""
    if not settings.on_cuda:
        raise Skip("the allocator's peaks need a CUDA device")
    predicted, measured = planner_prediction(settings)
    peaks = cuda_peaks(settings)
    where = (f"{settings.planner_method}, {os.path.basename(settings.planner_config)} at "
             f"{settings.planner_batch} x {settings.planner_size}px")
    return Outcome(
        f"{where}: predicted {predicted / GIB:.2f} GiB; allocated {peaks['allocated'] / GIB:.2f}"
        f" GiB (x{predicted / peaks['allocated']:.2f}), reserved {peaks['reserved'] / GIB:.2f} "
        f"GiB (x{predicted / peaks['reserved']:.2f}); device in use "
        f"{peaks['device_in_use'] / GIB:.2f} GiB",
        dict(predicted_bytes=predicted, **{f"{k}_bytes": v for k, v in peaks.items()},
             cpu_points=measured["points"][settings.planner_method]))


# -- 7. timing ---------------------------------------------------------------------------------


def timing(settings: Settings) -> Outcome:
    """tuning_cost.py's timed training steps (median, after warm-up, methods interleaved) of
    the frozen model, E3VA and full fine-tuning on the device."""
    args = tuning_cost.parse_args([
        "--config-file", os.path.join(ROOT, settings.timing_config),
        "--methods", settings.timing_methods, "--size", str(settings.timing_size),
        "--batch", str(settings.timing_batch), "--fit-batches", str(settings.timing_batch),
        "--steps", str(settings.timing_steps), "--warmup", str(settings.timing_warmup),
        "--no-peak", "--device", settings.device])
    results = tuning_cost.run(args)
    seconds = {m: r["step_seconds"] for m, r in results.items()}
    bad = {m: s for m, s in seconds.items() if not (math.isfinite(s) and s > 0)}
    if bad:
        raise AssertionError(f"step times {bad}")
    base = seconds.get("fixed", min(seconds.values()))
    parts = [f"{m} {s:.3f} s (x{s / base:.2f})" for m, s in seconds.items()]
    return Outcome(f"{os.path.basename(settings.timing_config)}, {settings.timing_batch} x "
                   f"{settings.timing_size}px, median of {settings.timing_steps} steps: "
                   + ", ".join(parts),
                   dict(step_seconds=seconds,
                        cuda_peak_bytes={m: r.get("cuda_peak_bytes") for m, r in results.items()},
                        backbone_step_seconds={m: r["backbone_step_seconds"]
                                               for m, r in results.items()}))


# The check, in order: cheap and basic first, so that a broken install stops it in seconds.
STEPS = (
    ("environment", environment),
    ("syncbn_training", syncbn_training),
    ("amp", amp_training),
    ("lossless_options", lossless_options),
    ("ddp_gradients", ddp_gradients),
    ("ddp_resume", ddp_resume),
    ("planner", planner_against_cuda),
    ("timing", timing),
)
