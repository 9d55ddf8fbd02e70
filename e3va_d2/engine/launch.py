"""Multi-process launch: detectron2's ``launch`` (NCCL) on GPUs, a gloo twin on CPU.

detectron2's ``launch`` asserts CUDA in every worker, so several CPU processes (the test suite,
machines without GPUs) need their own spawn; everything after process-group setup is shared.
The backend follows the device the config trains on (:func:`backend_for_device`), not the
hardware: ``train.device=cpu`` on a GPU machine is CPU DDP, which needs gloo. On either path
``dist_url=None`` or ``"auto"`` is a free loopback port, held for the process group until the
workers are done (:func:`reserved_local_url`), and each worker destroys its process group when
its function returns.

With several processes, workers die with the launcher (:mod:`.lifeline`), SIGTERM to the
launcher reaches them (:mod:`.signals`), and joining the process group says what it waits for
and fails after ``timeout`` (:mod:`.dist_wait`).
"""
from __future__ import annotations

import contextlib
import functools
import os
import socket
from datetime import timedelta
from typing import Callable, Iterator, Optional, Sequence

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

__all__ = ["backend_for_device", "launch", "reserved_local_url"]

DEFAULT_TIMEOUT = timedelta(minutes=DEFAULT_DIST_TIMEOUT_MINUTES)


@contextlib.contextmanager
def reserved_local_url() -> Iterator[str]:
    """A tcp:// URL on loopback whose port nothing else can take while the block runs.

    A port found free and released again could go to any other socket in the seconds before
    rank 0's store listened on it (other launches, gloo's own connections: the parallel tests),
    failing the launch with "address already in use". The port stays bound here, with
    ``SO_REUSEADDR`` and never listening: the kernel then hands it to no other socket, while
    the store (which binds with ``SO_REUSEADDR`` too) may still listen on it.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        yield f"tcp://127.0.0.1:{s.getsockname()[1]}"


def backend_for_device(device: Optional[str]) -> str:
    """The process-group backend for a config's device (``train.device``, yacs
    ``MODEL.DEVICE``): NCCL for CUDA, gloo for the CPU; ``"auto"`` (or None) is CUDA when
    present. A CUDA device without CUDA gets gloo, so that the worker's own device check, which
    names the key to change, is the error the user sees (not NCCL's)."""
    if device in (None, "auto"):
        return "nccl" if torch.cuda.is_available() else "gloo"
    return "nccl" if str(device).startswith("cuda") and torch.cuda.is_available() else "gloo"


@contextlib.contextmanager
def _resolved_dist_url(dist_url: Optional[str], num_machines: int) -> Iterator[str]:
    if dist_url not in (None, "auto"):
        yield dist_url
        return
    if num_machines != 1:
        raise ValueError(f"dist_url={dist_url!r} only works on one machine; pass the same "
                         "tcp://HOST:PORT (--dist-url) to every machine")
    with reserved_local_url() as url:
        yield url


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
        dist_url: the process group's address; None or "auto": a free port on loopback (one
            machine only).
        backend: "nccl", "gloo" or "auto" (NCCL when CUDA is available, else gloo); callers
            with a config pass :func:`backend_for_device` of its device.
        timeout: how long a process waits for the others (process group, collectives).
    """
    check_process_count(num_processes_per_machine, num_machines)
    if backend == "auto":
        backend = backend_for_device("auto")
    if backend not in ("nccl", "gloo"):
        raise ValueError(f"backend must be 'auto', 'nccl' or 'gloo', got {backend!r}")
    world_size = num_machines * num_processes_per_machine
    if world_size == 1:
        main_func(*args)
        return
    with _resolved_dist_url(dist_url, num_machines) as dist_url, \
            forward_signals_to_children() as forwarded:
        try:
            if backend == "nccl":
                d2_launch(
                    functools.partial(_nccl_worker, os.getpid(), main_func),
                    num_processes_per_machine,
                    num_machines=num_machines,
                    machine_rank=machine_rank,
                    dist_url=dist_url,
                    args=tuple(args),
                    timeout=timeout,
                )
            else:
                _spawn_gloo(main_func, num_processes_per_machine, num_machines, machine_rank,
                            dist_url, args, timeout)
        except mp.ProcessExitedException:
            if forwarded.received is None:
                raise
            # The workers saved and stopped on the signal passed on to them: exit as they did.
            raise SystemExit(128 + forwarded.received) from None


def _nccl_worker(launcher: int, main_func: Callable, *args) -> None:
    """Inside detectron2's worker (its NCCL group is up): die with the launcher, run, and
    destroy the group, which detectron2 0.6 leaves to the interpreter's exit (NCCL then warns
    of a leak, or hangs on exit when a peer is gone)."""
    die_with_parent(launcher)
    try:
        main_func(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _spawn_gloo(main_func, num_processes_per_machine, num_machines, machine_rank, dist_url,
                args, timeout) -> None:
    world_size = num_machines * num_processes_per_machine
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
