#!/usr/bin/env python
"""SIGKILL a two-process ``train_net.py`` launcher while its data loaders run; report every
process of its tree still alive afterwards (training processes, DataLoader workers, the
resource tracker). Exits 1 if any try left one.

    python scripts/probe_killed_launcher.py --tries 10

Linux only (reads /proc). Each try trains the Mask R-CNN shapes demo on CPU with
``dataloader.train.num_workers=2`` until every training process has its loader workers, then
kills the launcher the way the OOM killer or ``kill -9`` does. tests/test_processes.py runs one
try (slow).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Set

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")


def parents() -> Dict[int, int]:
    """pid -> parent pid of every live (non-zombie) process."""
    found = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z":
                found[int(entry)] = int(fields[1])
    return found


def children(pids: Set[int], table: Dict[int, int]) -> Set[int]:
    return {p for p, parent in table.items() if parent in pids}


def alive(pid: int) -> bool:
    return pid in parents()


def command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ").strip()[:120]
    except OSError:
        return "?"


def one_try(workers: int, grace: float, start_timeout: float) -> List[str]:
    """One launch and kill; the survivors, described."""
    out = tempfile.mkdtemp(prefix="probe_killed_launcher_")
    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--num-gpus", "2",
           "--config-file", DEMO, f"train.output_dir={out}", "train.max_iter=100000",
           "train.eval_period=0", "train.device=cpu",
           "dataloader.train.dataset.names=shapes_mini_train",
           "dataloader.test.dataset.names=shapes_mini_val",
           f"dataloader.train.num_workers={workers}", "dataloader.train.total_batch_size=2"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + start_timeout
    try:
        while True:  # until both training processes have their loader workers
            table = parents()
            ranks = {p for p in children({launcher.pid}, table)
                     if "resource_tracker" not in command(p)}
            if len(ranks) == 2 and all(len(children({r}, table)) >= workers for r in ranks):
                break
            if launcher.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the run did not start its loader workers (exit "
                                   f"{launcher.poll()}); try it by hand: {' '.join(cmd)}")
            time.sleep(0.2)
        time.sleep(1.0)  # the workers are reading
        table = parents()
        tree, frontier = set(), {launcher.pid}
        while frontier:
            tree |= frontier
            frontier = children(frontier, table) - tree
        tree.discard(launcher.pid)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait()
        end = time.monotonic() + grace
        while time.monotonic() < end and any(alive(p) for p in tree):
            time.sleep(0.2)
        survivors = [p for p in tree if alive(p)]
        described = [f"{p}: {command(p)}" for p in survivors]
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return described
    finally:
        if launcher.poll() is None:
            launcher.kill()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tries", type=int, default=10)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers per process")
    p.add_argument("--grace", type=float, default=60.0,
                   help="seconds the processes of the tree get to die (a loader worker still "
                   "starting dies once it has started: seconds, longer on a busy machine)")
    p.add_argument("--start-timeout", type=float, default=900.0)
    args = p.parse_args(argv)
    failed = 0
    for i in range(args.tries):
        survivors = one_try(args.workers, args.grace, args.start_timeout)
        failed += bool(survivors)
        print(f"try {i + 1}/{args.tries}: "
              + ("no process left" if not survivors else
                 f"{len(survivors)} processes left alive:\n  " + "\n  ".join(survivors)),
              flush=True)
    print(f"{failed} of {args.tries} tries left processes alive")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
