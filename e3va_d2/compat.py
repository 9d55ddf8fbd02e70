"""The one place that knows how detectron2 builds and versions differ.

e3va-d2 runs on two detectron2 flavours: the official build from source (any recent main,
compiled ``detectron2._C``) and the pure-Python v0.6 tree that ``scripts/install_detectron2.sh``
installs from PyPI, whose ``detectron2._C`` is a stand-in that raises on use. Everything that
depends on which one is present goes through this module.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from importlib import metadata

import detectron2
import numpy as np
import torch.distributed as dist
from detectron2.utils import comm

__all__ = [
    "DETECTRON2_VERSION",
    "E3VA_D2_VERSION",
    "restore_numpy_aliases",
    "HAS_COMPILED_OPS",
    "detectron2_build",
    "init_local_process_group",
    "import_export_without_caffe2",
]

DETECTRON2_VERSION: str = getattr(detectron2, "__version__", "unknown")


def _installed_version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


# pyproject.toml is the one place the version is written; this reads it back once installed.
E3VA_D2_VERSION: str = _installed_version("e3va_d2")


def _has_compiled_ops() -> bool:
    try:
        from detectron2 import _C
    except ImportError:
        return False
    return not getattr(_C, "IS_STANDIN", False)


HAS_COMPILED_OPS: bool = _has_compiled_ops()


def detectron2_build() -> str:
    """A one-line description of the detectron2 found, for logs."""
    kind = "full build (compiled ops)" if HAS_COMPILED_OPS else "pure-Python (no compiled ops)"
    return f"detectron2 {DETECTRON2_VERSION}, {kind}, at {detectron2.__path__[0]}"


def _is_v06() -> bool:
    major_minor = tuple(int(p) for p in DETECTRON2_VERSION.split(".")[:2] if p.isdigit())
    return major_minor < (0, 7)


def restore_numpy_aliases() -> None:
    """detectron2 0.6 still uses ``np.int``, ``np.float`` and ``np.bool``, removed in NumPy 1.24:
    ``SemSegEvaluator``, ``PascalVOCDetectionEvaluator``, ``BitMasks`` from polygons and the
    class histogram fail without them. They meant the Python builtins, so alias those back;
    only done for detectron2 < 0.7 (main uses the builtins) and only where NumPy lacks them.
    """
    if not _is_v06():
        return
    for name, builtin in (("int", int), ("float", float), ("bool", bool)):
        if name not in np.__dict__:
            setattr(np, name, builtin)


def init_local_process_group(num_workers_per_machine: int, machine_rank: int) -> None:
    """Create detectron2's per-machine process group (``comm.get_local_rank`` needs it).

    detectron2 main has ``comm.create_local_process_group``; v0.6 sets a module global.
    """
    if hasattr(comm, "create_local_process_group"):
        comm.create_local_process_group(num_workers_per_machine)
        return
    num_machines = dist.get_world_size() // num_workers_per_machine
    for i in range(num_machines):
        ranks = list(range(i * num_workers_per_machine, (i + 1) * num_workers_per_machine))
        group = dist.new_group(ranks)
        if i == machine_rank:
            comm._LOCAL_PROCESS_GROUP = group


def import_export_without_caffe2() -> None:
    """Make ``detectron2.export`` importable on detectron2 0.6 without Caffe2.

    0.6's ``detectron2/export/__init__.py`` imports its Caffe2 exporter first, which needs the
    ``caffe2`` package that torch 2 no longer ships, so ``TracingAdapter`` and everything that
    imports it (``detectron2.utils.analysis``: flop and activation counts) fail at import.
    detectron2 main imports the Caffe2 part only when Caffe2 is there. Do the same: the package
    is created without running its ``__init__`` and given its Caffe2-free names.
    """
    if not _is_v06() or "detectron2.export" in sys.modules:
        return
    try:
        importlib.import_module("detectron2.export")
        return
    except ModuleNotFoundError as e:
        if not (e.name or "").startswith("caffe2"):
            raise
    spec = importlib.util.find_spec("detectron2.export")
    package = importlib.util.module_from_spec(spec)
    sys.modules["detectron2.export"] = package
    detectron2.export = package  # as an import sets it
    from detectron2.export.flatten import TracingAdapter
    from detectron2.export.torchscript import dump_torchscript_IR, scripting_with_instances

    package.TracingAdapter = TracingAdapter
    package.dump_torchscript_IR = dump_torchscript_IR
    package.scripting_with_instances = scripting_with_instances
    package.__all__ = ["TracingAdapter", "dump_torchscript_IR", "scripting_with_instances"]


restore_numpy_aliases()
import_export_without_caffe2()
