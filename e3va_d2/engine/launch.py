"""Multi-process launch: detectron2's ``launch`` (NCCL) on GPUs, a gloo twin on CPU.

detectron2's ``launch`` asserts CUDA in every worker, so several CPU processes (the test suite,
machines without GPUs) need their own spawn; everything after process-group setup is shared.

With several processes, workers die with the launcher (:mod:`.lifeline`), SIGTERM to the
launcher reaches them (:mod:`.signals`), and joining the process group says what it waits for
and fails after ``timeout`` (:mod:`.dist_wait`).
"""
from __future__ import annotations

import functools
import os
import socket
from datetime import timedelta
from typing import Callable, Optional, Sequence

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.engine import launch as d2_launch
from detectron2.utils import comm

from ..compat import init_local_process_group
from ..config.reliability import DEFAULT_DIST_TIMEOUT_MINUTES
from .checks import check_process_count
from .dist_wait import announced_wait
from .lifeline import die_with_parent
from .signals import forward_signals_to_children

__all__ = ["launch", "free_local_url"]

DEFAULT_TIMEOUT = timedelta(minutes=DEFAULT_DIST_TIMEOUT_MINUTES)


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
        timeout: how long a process waits for the others (process group, collectives).
    """
    check_process_count(num_processes_per_machine, num_machines)
    if backend == "auto":
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    with forward_signals_to_children() as forwarded:
        try:
            if backend == "nccl":
                d2_launch(
                    functools.partial(_die_with_launcher, os.getpid(), main_func),
                    num_processes_per_machine,
                    num_machines=num_machines,
                    machine_rank=machine_rank,
                    dist_url=dist_url,
                    args=tuple(args),
                    timeout=timeout,
                )
            else:
                _spawn_gloo(main_func, num_processes_per_machine, num_machines, machine_rank,
                            dist_url, args, backend, timeout)
        except mp.ProcessExitedException:
            if forwarded.received is None:
                raise
            # The workers saved and stopped on the signal passed on to them: exit as they did.
            raise SystemExit(128 + forwarded.received) from None


def _die_with_launcher(launcher: int, main_func: Callable, *args) -> None:
    die_with_parent(launcher)
    main_func(*args)


def _spawn_gloo(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url,
                args, backend, timeout) -> None:
    world_size = num_machines * num_processes_per_machine
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
              tuple(args), timeout, os.getpid()),
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
    launcher: Optional[int] = None,
) -> None:
    if launcher is not None:
        die_with_parent(launcher)
    rank = machine_rank * num_processes_per_machine + local_rank
    what = f"{world_size} processes to join the process group at {dist_url} (this is rank {rank})"
    with announced_wait(what, timeout):
        dist.init_process_group(
            backend="gloo", init_method=dist_url, world_size=world_size, rank=rank,
            timeout=timeout,
        )
    init_local_process_group(num_processes_per_machine, machine_rank)
    with announced_wait(f"the other {world_size - 1} processes at the start barrier", timeout):
        comm.synchronize()
    try:
        main_func(*args)
    finally:
        dist.destroy_process_group()
