"""Does the installed torch carry kernels for this GPU? A clear error at startup if not.

A torch wheel holds compiled kernels (SASS, ``sm_XY``) for a list of compute capabilities and
possibly portable code (PTX, ``compute_XY``) that the driver compiles for newer cards. torch
2.14's default wheels (CUDA 13) start at capability 7.5, so a GTX 1080Ti (6.1), P100 (6.0) or
V100 (7.0) gets "no kernel image is available for execution on the device" at the first op,
often deep inside a model; torch itself only warns. :func:`check_cuda_build` turns that into
one error before the model is built, naming the GPU, its capability, the build's list and the
install that covers it (``make setup`` picks it by itself: ``scripts/torch_spec.sh``).
"""
from __future__ import annotations

import importlib.metadata
import re
from typing import Iterable, Optional, Tuple

import torch

__all__ = ["CUDA12_INDEX", "UnsupportedGPUError", "build_covers", "check_cuda_build",
           "torch_spec_for"]

# The oldest capability torch's default (PyPI, CUDA 13) wheels have kernels for, and the
# index of its CUDA 12.6 wheels, which go back to 5.0. scripts/torch_spec.sh, which makes
# `make setup` choose, holds the same two facts (tests/test_gpu_check.py checks they agree).
DEFAULT_BUILD_OLDEST = (7, 5)
CUDA12_INDEX = "https://download.pytorch.org/whl/cu126"
CUDA12_OLDEST = (5, 0)

Capability = Tuple[int, int]


class UnsupportedGPUError(RuntimeError):
    """The GPU a run asked for has no kernels in the installed torch build."""


def _arch_capability(arch: str) -> Optional[Tuple[str, Capability, bool]]:
    """``"sm_86"`` -> ("sm", (8, 6), False); ``"sm_90a"`` -> ("sm", (9, 0), True) (arch-specific:
    that exact capability only); ``"compute_120"`` -> ("compute", (12, 0), False)."""
    match = re.fullmatch(r"(sm|compute)_(\d+)([af]?)", arch)
    if match is None:
        return None
    number = int(match.group(2))
    return match.group(1), (number // 10, number % 10), match.group(3) == "a"


def build_covers(arch_list: Iterable[str], capability: Capability) -> bool:
    """Whether a build for ``arch_list`` (``torch.cuda.get_arch_list()``) runs on a GPU of
    ``capability``: SASS for the same major version and an equal or lower minor one, or PTX for
    an equal or lower capability (compiled by the driver)."""
    for arch in arch_list:
        parsed = _arch_capability(arch)
        if parsed is None:
            continue
        kind, built, specific = parsed
        if kind == "compute" and built <= capability:
            return True
        if kind == "sm" and (built == capability if specific else
                             built[0] == capability[0] and built[1] <= capability[1]):
            return True
    return False


def _installed_version(package: str) -> Optional[str]:
    try:
        return importlib.metadata.version(package).split("+")[0]
    except importlib.metadata.PackageNotFoundError:
        return None


def torch_spec_for(capability: Capability) -> Optional[str]:
    """The ``TORCH_SPEC`` (pip arguments) of this torch version's build for ``capability``;
    None when no build of this version has kernels for it."""
    if capability < CUDA12_OLDEST:
        return None
    pins = [f"torch=={torch.__version__.split('+')[0]}"]
    torchvision = _installed_version("torchvision")
    if torchvision:
        pins.append(f"torchvision=={torchvision}")
    if capability < DEFAULT_BUILD_OLDEST:
        pins += ["--index-url", CUDA12_INDEX]
    return " ".join(pins)


def _device_index(device: str) -> int:
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


def check_cuda_build(device: str) -> None:
    """Raise :class:`UnsupportedGPUError` if ``device`` is a CUDA GPU the installed torch has no
    kernels for; nothing for the CPU, a build without an arch list, or ROCm."""
    if not str(device).startswith("cuda") or getattr(torch.version, "hip", None):
        return
    arch_list = torch.cuda.get_arch_list()
    if not arch_list:
        return
    index = _device_index(str(device))
    capability = tuple(torch.cuda.get_device_capability(index))
    if build_covers(arch_list, capability):
        return
    name = torch.cuda.get_device_name(index)
    spec = torch_spec_for(capability)
    fix = (f"Install the build that covers it: make setup TORCH_SPEC='{spec}' (make setup "
           "picks it by itself on this machine; see docs/INSTALL.md)" if spec else
           f"No build of torch {torch.__version__.split('+')[0]} supports it: install an older "
           "torch that does (https://pytorch.org/get-started/previous-versions/)")
    raise UnsupportedGPUError(
        f"GPU {index} ({name}) has compute capability {capability[0]}.{capability[1]}, but the "
        f"installed torch {torch.__version__} (CUDA {torch.version.cuda}) has kernels only for "
        f"{' '.join(arch_list)}: every CUDA op would fail with 'no kernel image is available'. "
        f"{fix}. Or run on the CPU (train.device=cpu, MODEL.DEVICE cpu).")
