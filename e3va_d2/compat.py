"""The one place that knows how detectron2 builds and versions differ.

e3va-d2 runs on two detectron2 flavours: the official build from source (any recent main,
compiled ``detectron2._C``) and the pure-Python v0.6 tree that ``scripts/install_detectron2.sh``
installs from PyPI, whose ``detectron2._C`` is a stand-in that raises on use. Everything that
depends on which one is present goes through this module.
"""
from __future__ import annotations

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


def restore_numpy_aliases() -> None:
    """detectron2 0.6 still uses ``np.int``, ``np.float`` and ``np.bool``, removed in NumPy 1.24:
    ``SemSegEvaluator``, ``PascalVOCDetectionEvaluator``, ``BitMasks`` from polygons and the
    class histogram fail without them. They meant the Python builtins, so alias those back;
    only done for detectron2 < 0.7 (main uses the builtins) and only where NumPy lacks them.
    """
    major_minor = tuple(int(p) for p in DETECTRON2_VERSION.split(".")[:2] if p.isdigit())
    if major_minor >= (0, 7):
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


restore_numpy_aliases()
