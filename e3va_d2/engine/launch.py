"""Multi-process launch: detectron2's ``launch`` (NCCL) on GPUs, a gloo twin on CPU.

detectron2's ``launch`` asserts CUDA in every worker, so several CPU processes (the test suite,
machines without GPUs) need their own spawn; everything after process-group setup is shared.
"""
from __future__ import annotations

import logging
import socket
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from ..compat import init_local_process_group
from .checks import check_process_count

__all__ = ["launch", "free_local_url"]

DEFAULT_TIMEOUT = timedelta(minutes=30)


def free_local_url() -> str:
    """A tcp:// URL on loopback with a port that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"tcp://127.0.0.1:{port}"


def launch(
    main_func: Callable,
    num_processes_per_machine: int,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: Optional[str] = None,
    args: Sequence = (),
    backend: str = "auto",
    timeout: timedelta = DEFAULT_TIMEOUT,
) -> None:
    """Run ``main_func(*args)`` in ``num_processes_per_machine`` processes on this machine.

    Args:
        backend: "auto" (NCCL through detectron2's launch when CUDA is available, else gloo),
            "nccl" or "gloo".
    """
    check_process_count(num_processes_per_machine, num_machines)
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    world_size = num_machines * num_processes_per_machine
    if backend == "nccl" or world_size == 1:
        d2_launch(
            main_func,
            num_processes_per_machine,
            num_machines=num_machines,
            machine_rank=machine_rank,
            dist_url=dist_url,
            args=tuple(args),
        )
        return
    if backend != "gloo":
        raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    if dist_url in (None, "auto"):
        if num_machines != 1:
            raise ValueError("dist_url='auto' only works on one machine; pass tcp://HOST:PORT")
        dist_url = free_local_url()
    mp.spawn(
        _gloo_worker,
        nprocs=num_processes_per_machine,
        args=(main_func, world_size, num_processes_per_machine, machine_rank, dist_url,
              tuple(args), timeout),
        daemon=False,
    )


def _gloo_worker(
    local_rank: int,
    main_func: Callable,
    world_size: int,
    num_processes_per_machine: int,
    machine_rank: int,
    dist_url: str,
    args: tuple,
    timeout: timedelta,
) -> None:
    rank = machine_rank * num_processes_per_machine + local_rank
    try:
        dist.init_process_group(
            backend="gloo", init_method=dist_url, world_size=world_size, rank=rank,
            timeout=timeout,
        )
    except Exception:
        logging.getLogger(__name__).error("Process group URL: %s", dist_url)
        raise
    init_local_process_group(num_processes_per_machine, machine_rank)
    comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
