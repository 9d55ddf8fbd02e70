"""The benchmarks' workbench: every tuning method's model on one detector, built to compute the
same function, and each method's memory and step time measured with one model on the device.

Why one bench for all of them: costs differ by method only when everything else is the same.
Every method starts from the same function (zero-initialised adapters, and one shared copy of
every tensor the models have in common: trunk, neck, heads) and steps with lr=0, so the heads
sample the same proposals everywhere. Sharing also keeps eleven Swin-B detectors within a
24 GB machine. The cost benchmark (``tuning_cost.py``), the sweep, the planner and the PEFT
comparison build their models here; turning measurements into tables is ``cost_report.py``'s.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.config import instantiate
from omegaconf import OmegaConf

from e3va_d2.config import set_tuning_method
from e3va_d2.engine.params import trainable_parameter_table
from e3va_d2.layers import adapt_sync_batchnorm
from e3va_d2.modeling import TUNING_METHODS, build_tuning
from e3va_d2.modeling.tuning.spec import parse_method_spec, parse_method_specs

from .measure import MeasuredStep, median, release_freed_memory, saved_kind
from .peak_memory import step_peak_memory

logger = logging.getLogger("e3va_d2.benchmark")

# Rows in the order of the paper's tables; methods registered elsewhere come last.
PAPER_ORDER = ["full", "fixed", "bitfit", "norm", "partial1", "adapter", "lora", "adaptformer",
               "e3va", "e3va_plus", "e3va_plusplus"]


def method_names(spec: str) -> List[str]:
    """The method specs of ``--methods`` (:mod:`e3va_d2.modeling.tuning.spec`, checked: a bad
    one is a ``ValueError``); ``all``: every registered method, the paper's in its order."""
    if spec == "all":
        return [m for m in PAPER_ORDER if m in TUNING_METHODS] + sorted(
            m for m in TUNING_METHODS if m not in PAPER_ORDER)
    return parse_method_specs(spec)


def check_methods(parser: argparse.ArgumentParser, spec: str) -> None:
    """A bad ``--methods`` is a usage error of ``parser`` (exit 2 naming it), before any model
    is built."""
    try:
        method_names(spec)
    except ValueError as e:
        parser.error(f"--methods: {e}")


def pick_device(name: str) -> torch.device:
    """``--device``: "auto" (CUDA when there is one, else the CPU), "cpu" or "cuda"."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def num_classes(cfg) -> int:
    for key in ("roi_heads.num_classes", "num_classes", "sem_seg_head.num_classes"):
        value = OmegaConf.select(cfg.model, key, default=None)
        if value is not None:
            return int(value)
    raise SystemExit("Cannot find num_classes in the config's model")


def build_model(cfg, method: str, seed: int):
    """The config's model with its tuning method (a ``method_names`` spec) replaced, adapters
    zero-initialised so that it computes the frozen model's function. Methods draw different
    random numbers while building, so weights match across methods only once
    ``share_common_tensors`` has run (``Bench``)."""
    name, options = parse_method_spec(method)
    tuning = build_tuning(name, **options)
    if getattr(tuning, "zero_init", None) is False:
        tuning = dataclasses.replace(tuning, zero_init=True)
    set_tuning_method(cfg.model, tuning)
    torch.manual_seed(seed)
    model = instantiate(cfg.model)
    adapt_sync_batchnorm(model, world_size=1, device="cpu")
    return model


def share_common_tensors(model: torch.nn.Module, reference: Dict[str, torch.Tensor]) -> int:
    """Point every parameter and buffer of ``model`` that ``reference`` (another method's
    state dict) has under the same name, shape and dtype at the reference's storage; own
    ``requires_grad`` flags are kept. Returns how many tensors are now shared.

    Safe because nothing changes the weights (lr=0). Different methods draw different random
    numbers while building (adapters come before the heads), so without it their heads would
    differ too.
    """
    own = model.state_dict()
    common = {
        k: v for k, v in reference.items()
        if k in own and own[k].shape == v.shape and own[k].dtype == v.dtype
    }
    model.load_state_dict(common, strict=False, assign=True)
    return len(common)


class Bench:
    """The models of all methods, each measured with one model on the device at a time.

    ``batches``: label -> model input; ``steps[method][f"{kind}{label}"]`` is a training step
    of each of ``kinds`` ("model": the whole detector, "backbone": the backbone alone).

    ``build(cfg, method, seed)`` makes a method's model (default :func:`build_model`; the
    PEFT comparison builds a model this project has no tuning method for).
    """

    def __init__(self, cfg, methods: List[str], device: torch.device, batches: Dict[str, list],
                 amp_dtype=None, kinds=("model", "backbone"), build=None):
        self.device, self.methods, self.labels = device, methods, list(batches)
        self.steps: Dict[str, Dict[str, MeasuredStep]] = {}
        self.results: Dict[str, dict] = {}
        reference = None
        for method in methods:
            model = (build or build_model)(cfg, method, seed=0)
            if reference is None:
                reference = model.state_dict()
            else:
                share_common_tensors(model, reference)
            _, totals = trainable_parameter_table(model)
            self.results[method] = dict(
                trainable_backbone=totals["trainable_in_backbone"],
                swin_parameters=totals["swin"],
                trainable_total=totals["trainable"],
                total_parameters=totals["trainable"] + totals["frozen"],
            )
            # One optimizer per model: its AdamW state is allocated once, whatever the step.
            trainable = [p for p in model.parameters() if p.requires_grad]
            optimizer = torch.optim.AdamW(trainable, lr=0.0)
            self.steps[method] = {
                f"{kind}{b}": MeasuredStep(model, batches[b], device, optimizer=optimizer,
                                           backbone_only=kind == "backbone", amp_dtype=amp_dtype)
                for b in batches for kind in kinds
            }
            logger.info("built %s: %s trainable in the backbone", method,
                        f"{totals['trainable_in_backbone']:,}")

    def on_device(self, method: str, where: torch.device) -> None:
        if self.device.type != "cuda":
            return
        for step in self.steps[method].values():
            step.model.to(where)
            step.batch = [{k: v.to(where) if hasattr(v, "to") else v for k, v in d.items()}
                          for d in step.batch]
            # AdamW's "step" counters stay CPU scalars (torch reads them on the host each
            # step) unless the optimizer is capturable or fused, which keeps them on the device.
            on_device_steps = any(step.optimizer.defaults.get(k) for k in ("capturable", "fused"))
            for state in step.optimizer.state.values():
                for key, value in state.items():
                    if torch.is_tensor(value) and (key != "step" or on_device_steps):
                        state[key] = value.to(where)

    def measure_memory(self, method: str, label, warmup: int, profile_peak: bool) -> dict:
        """Warm ``method`` up (``warmup`` steps at ``label``, whole model and backbone) and
        measure, into its results: bytes saved for backward at every batch label, by module and
        by kind at ``label``; on CUDA the allocator's peak at every label; with
        ``profile_peak`` the peak of one step at ``label`` by category (after a warm-up, so
        that AdamW's moments exist, as in training). Needs the "model" and "backbone" kinds."""
        self.on_device(method, self.device)
        steps, r = self.steps[method], self.results[method]
        timed, timed_backbone = steps[f"model{label}"], steps[f"backbone{label}"]
        for i in range(warmup):
            timed.run(seed=i, record=False)
            timed_backbone.run(seed=i, record=False)
        r["saved_bytes_by_batch"] = {str(b): steps[f"model{b}"].saved_bytes()
                                     for b in self.labels if b != label}
        r["saved_bytes_by_module"] = timed.saved_bytes_by_module()
        r["saved_bytes"] = sum(r["saved_bytes_by_module"].values())
        r["saved_bytes_by_batch"][str(label)] = r["saved_bytes"]
        r["saved_bytes_by_kind"] = kinds = {}
        for module, nbytes in r["saved_bytes_by_module"].items():
            kinds[saved_kind(module)] = kinds.get(saved_kind(module), 0) + nbytes
        if self.device.type == "cuda":
            r["cuda_peak_by_batch"] = {str(b): steps[f"model{b}"].cuda_peak_bytes()
                                       for b in self.labels}
            r["cuda_peak_bytes"] = r["cuda_peak_by_batch"][str(label)]
        if profile_peak:
            if not warmup:
                timed.run(seed=0, record=False)
            run_step = functools.partial(timed.run, seed=0, record=False)
            r["peak"] = step_peak_memory(run_step, self.device).to_dict()
        self.on_device(method, torch.device("cpu"))
        release_freed_memory()
        logger.info("%s: %.1f MiB saved for backward%s", method, r["saved_bytes"] / 2**20,
                    f", peak {r['peak']['peak_bytes'] / 2**20:.1f} MiB" if "peak" in r else "")
        return r

    def time_interleaved(self, keys: Sequence[str], steps: int,
                         methods: Optional[Sequence[str]] = None) -> None:
        """``steps`` timed runs of each of ``keys`` (e.g. "model1") of every method (or of
        ``methods``), the methods interleaved so that machine noise hits all alike; the times
        collect in each step's ``times``."""
        for i in range(steps):
            for method in self.methods if methods is None else methods:
                self.on_device(method, self.device)
                for key in keys:
                    self.steps[method][key].run(seed=100 + i)
                self.on_device(method, torch.device("cpu"))

    def record_times(self, names: Dict[str, str]) -> None:
        """Into every method's results, for each step key -> name of ``names`` (e.g. "model1"
        -> "step"): the step's times (``step_times``) and their median (``step_seconds``)."""
        for method in self.methods:
            for key, name in names.items():
                times = self.steps[method][key].times
                self.results[method][f"{name}_times"] = times
                self.results[method][f"{name}_seconds"] = median(times)
