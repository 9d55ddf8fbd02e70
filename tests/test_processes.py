"""Processes end cleanly: SIGTERM saves a checkpoint at the next iteration boundary and exits
non-zero (and --resume continues from it); workers die with a launcher killed by SIGKILL; a
process waiting for a missing peer says what it waits for and gives up after the configured
timeout instead of 30 silent minutes."""
import contextlib
import errno
import importlib
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch
from detectron2.engine import HookBase
from detectron2.utils.env import seed_all_rng

from e3va_d2.engine import E3VATrainer
from e3va_d2.engine.dist_wait import announced_wait
from e3va_d2.engine.signals import TrainingStopped

from .helpers import short_run_config

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")
ENV = {**os.environ, "OMP_NUM_THREADS": "1",
       "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}


def alive(pid: int) -> bool:
    """Running (a zombie nobody reaped yet counts as dead)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_until(condition, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)
    return condition()


# ------------------------------------------------------------------ SIGTERM


class TerminateAt(HookBase):
    """Send this process SIGTERM as the given iteration starts (a scheduler preempting it)."""

    def __init__(self, iteration):
        self.iteration = iteration

    def before_step(self):
        if self.trainer.iter == self.iteration:
            os.kill(os.getpid(), signal.SIGTERM)


def sigterm_cfg(out, max_iter):
    cfg = short_run_config(DEMO, out, "shapes_mini_train", "shapes_mini_val", max_iter,
                           "train.checkpointer.period=100", "dataloader.train.total_batch_size=1")
    del cfg.dataloader.evaluator
    return cfg


def test_sigterm_saves_a_checkpoint_then_exits_non_zero(tmp_path):
    seed_all_rng(0)
    trainer = E3VATrainer(sigterm_cfg(str(tmp_path), max_iter=5))
    trainer.register_hooks([TerminateAt(1)])
    trainer.resume_or_load(resume=False)
    with pytest.raises(TrainingStopped) as info:
        trainer.train()
    assert info.value.code == 128 + signal.SIGTERM
    assert trainer.iter == 1  # stopped at the boundary after the iteration it was in
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert not (tmp_path / "model_final_delta.pth").exists()  # the run did not finish
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is restored
    trainer.start_iter = 0
    trainer.resume_or_load(resume=True)  # what --resume does in the next process
    assert trainer.start_iter == 2


def test_sigterm_in_the_final_evaluation_stops_it_keeps_the_checkpoint_and_exits_143(tmp_path):
    """SIGTERM during the final evaluation was ignored: the evaluation ran on, the delta was
    saved and the run exited 0."""
    seed_all_rng(0)
    trainer = E3VATrainer(sigterm_cfg(str(tmp_path), max_iter=2))
    finished = []

    def evaluation_preempted_midway(cfg, model):
        os.kill(os.getpid(), signal.SIGTERM)  # a scheduler preempting the job
        time.sleep(5)  # the evaluation goes on, unless the signal stops it
        finished.append(True)
        return {"bbox": {"AP": 50.0}}

    trainer.test = evaluation_preempted_midway  # what the final evaluation runs
    trainer.resume_or_load(resume=False)
    with pytest.raises(TrainingStopped) as info:
        trainer.train()
    assert info.value.code == 128 + signal.SIGTERM
    assert not finished  # stopped, not waited for
    assert not (tmp_path / "model_final_delta.pth").exists()  # no half-evaluated final delta
    assert (tmp_path / "last_checkpoint").read_text() == "model_final.pth"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    resumed = E3VATrainer(sigterm_cfg(str(tmp_path), max_iter=2))
    resumed.resume_or_load(resume=True)  # --resume: nothing to train, evaluates, writes the delta
    assert resumed.start_iter == 2


# ------------------------------------------------------------------ dying with the launcher

CHILD = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("lifeline", sys.argv[1])
lifeline = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lifeline)
lifeline.die_with_parent(int(sys.argv[2]))
print("armed", flush=True)
time.sleep(120)
"""
PARENT = """
import os, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1], sys.argv[2], str(os.getpid())],
                         stdout=subprocess.PIPE, text=True)
assert child.stdout.readline().strip() == "armed"
print(child.pid, flush=True)
time.sleep(120)
"""


def test_a_process_dies_with_its_parent():
    lifeline = os.path.join(ROOT, "e3va_d2", "engine", "lifeline.py")
    parent = subprocess.Popen([sys.executable, "-c", PARENT, CHILD, lifeline],
                              stdout=subprocess.PIPE, text=True)
    child = int(parent.stdout.readline())
    assert alive(child)
    parent.kill()
    parent.wait()
    assert wait_until(lambda: not alive(child), 10), "the child outlived its parent"


def write_pid_and_sleep(folder):
    """A worker's main function: say who it is, then work 'forever'."""
    with open(os.path.join(folder, f"worker_{os.getpid()}"), "w"):
        pass
    time.sleep(300)


# Started as a script's background job (`train_net.py ... &`) is: SIGINT ignored, inherited by the
# workers. torch's spawn arms a parent-death SIGINT, which such workers then ignore.
LAUNCHER = """
import signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)
from e3va_d2.engine import launch
from tests.test_processes import write_pid_and_sleep
launch(write_pid_and_sleep, 2, args=(sys.argv[1],), backend="gloo")
"""


@pytest.mark.slow
def test_workers_die_with_a_killed_launcher(tmp_path):
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(tmp_path)], cwd=ROOT,
                                env=ENV)
    try:
        assert wait_until(lambda: len(os.listdir(tmp_path)) == 2, 240), "workers did not start"
        workers = [int(name.split("_")[1]) for name in os.listdir(tmp_path)]
        assert all(alive(pid) for pid in workers)
        launcher.send_signal(signal.SIGKILL)  # the OOM killer, kill -9, a scheduler
        launcher.wait()
        assert wait_until(lambda: not any(alive(pid) for pid in workers), 15), \
            "orphaned workers kept running"
    finally:
        launcher.kill()
        for name in os.listdir(tmp_path):
            try:
                os.kill(int(name.split("_")[1]), signal.SIGKILL)
            except ProcessLookupError:
                pass


# Loads lifeline.py alone (as "lifeline", which the spawned worker imports too: spawn runs this
# file again as its main module) and torch, nothing of detectron2: it starts in seconds.
READER = """
import importlib.util, sys, time, torch
spec = importlib.util.spec_from_file_location("lifeline", sys.argv[1])
lifeline = sys.modules["lifeline"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lifeline)

class Images(torch.utils.data.IterableDataset):
    def __iter__(self):
        yield torch.rand(3, 256, 256)
        time.sleep(600)  # busy with the next one (a huge file), for longer than the test waits
        yield torch.rand(3, 256, 256)

if __name__ == "__main__":
    loader = torch.utils.data.DataLoader(Images(), batch_size=1, num_workers=1,
                                         multiprocessing_context="spawn")
    batches = iter(lifeline.tie_loader_workers(loader))  # starts the worker
    if sys.argv[2] == "busy":
        next(batches)
    print("reading", flush=True)
    time.sleep(120)
"""


def children_of(pid: int) -> list:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                if entry.isdigit() and f.read().rsplit(")", 1)[1].split()[1] == str(pid):
                    found.append(int(entry))
        except OSError:
            continue
    return found


@pytest.mark.parametrize("when", [
    "starting",  # its watchdog would take the new parent, pid 1, for the reader: forever
    "busy",  # DataLoader's watchdog checks between items only
])
def test_a_loader_worker_dies_with_the_process_reading_it(when, tmp_path):
    """Spawned DataLoader workers and the resource tracker they hold open outlived a training
    process killed with its launcher, for good; tie_loader_workers, which the trainers apply
    to their loaders, makes them end with it, whether the worker is still starting or busy."""
    (tmp_path / "reader.py").write_text(READER)
    lifeline = os.path.join(ROOT, "e3va_d2", "engine", "lifeline.py")
    reader = subprocess.Popen([sys.executable, str(tmp_path / "reader.py"), lifeline, when],
                              stdout=subprocess.PIPE, text=True)
    started = []
    try:
        assert reader.stdout.readline().strip() == "reading"
        started = children_of(reader.pid)  # the worker and the resource tracker
        assert len(started) == 2
        reader.kill()  # as the kernel does to a training process whose launcher died
        reader.wait()
        # A worker still starting ends once it has started (imported torch): seconds, but a
        # minute on a loaded machine, so the wait is well above that. An untied one lives on:
        # forever when starting, 600 s when busy.
        assert wait_until(lambda: not any(alive(pid) for pid in started), 180), \
            "a loader worker (or the resource tracker) outlived the process reading it"
    finally:
        reader.kill()
        for pid in started:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_no_process_outlives_a_killed_train_net_launcher():
    """SIGKILL of a `--num-gpus 2` launcher left both DataLoader workers (about 740 MB each)
    and the resource tracker alive under pid 1, once in three tries. One try of the probe
    (`scripts/probe_killed_launcher.py --tries 10` for ten)."""
    probe = subprocess.run([sys.executable, os.path.join(ROOT, "scripts",
                                                         "probe_killed_launcher.py"),
                            "--tries", "1", "--workers", "1"], cwd=ROOT, env=ENV,
                           capture_output=True, text=True, timeout=1200)
    assert probe.returncode == 0, probe.stdout + probe.stderr[-3000:]


# ------------------------------------------------------------------ waiting for peers


def test_a_wait_says_what_it_waits_for_and_names_it_when_it_fails(caplog):
    with caplog.at_level(logging.INFO, logger="e3va_d2.launch"):
        with pytest.raises(RuntimeError, match="Gave up waiting for rank 1 .* TimeoutError"):
            with announced_wait("rank 1", timedelta(minutes=2), every=0.1):
                # Until the reminder is out: a fixed 0.35 s raced its thread on a loaded machine.
                wait_until(lambda: "Still waiting for rank 1 after" in caplog.text, 60)
                raise TimeoutError("the store timed out")
    assert "Waiting for rank 1 (fails after 2 min" in caplog.text
    assert "Still waiting for rank 1 after" in caplog.text


@pytest.mark.slow
def test_a_missing_peer_fails_after_the_configured_timeout(tmp_path):
    """One of two machines never starts: the other gives up after 5 s, naming the wait."""
    code = """
from datetime import timedelta
from e3va_d2.engine import launch
from e3va_d2.engine.launch import reserved_local_url
from tests.test_processes import write_pid_and_sleep
with reserved_local_url() as url:
    launch(write_pid_and_sleep, 1, num_machines=2, machine_rank=0, dist_url=url, args=(".",),
           backend="gloo", timeout=timedelta(seconds=5))
"""
    start = time.monotonic()
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode != 0
    assert "Waiting for 2 processes to join the process group" in run.stderr, run.stderr[-3000:]
    assert "Gave up waiting for 2 processes" in run.stderr, run.stderr[-3000:]
    assert time.monotonic() - start < 200


@pytest.mark.parametrize("config, opts, seconds", [
    (DEMO, ["train.dist_timeout_minutes=0.5"], 30),
    (DEMO.replace(".py", ".yaml"), ["DIST_TIMEOUT_MINUTES", "2.0"], 120),
])
def test_train_net_creates_the_process_group_with_the_configured_timeout(config, opts, seconds):
    import train_net

    args = train_net.parse_args(["--num-gpus", "2", "--config-file", config, *opts])
    assert train_net.dist_timeout(args) == timedelta(seconds=seconds)


def test_the_default_timeout_is_detectron2s_30_minutes():
    """Rank 0's pure-Python COCO evaluation outlasts 10 minutes while the others wait."""
    import train_net
    from e3va_d2.engine.launch import DEFAULT_TIMEOUT

    assert DEFAULT_TIMEOUT == timedelta(minutes=30)
    for config in (DEMO, DEMO.replace(".py", ".yaml")):
        args = train_net.parse_args(["--num-gpus", "2", "--config-file", config])
        assert train_net.dist_timeout(args) == timedelta(minutes=30), config


@pytest.fixture
def launched(monkeypatch):
    """CUDA "present"; every launch is recorded (backend, dist_url) instead of started."""
    launching = importlib.import_module("e3va_d2.engine.launch")  # the module, not the function
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(launching, "d2_launch", lambda fn, n, **kw: calls.append(
        ("nccl", kw["dist_url"])))
    monkeypatch.setattr(launching, "_spawn_gloo", lambda fn, n, machines, rank, url, *rest:
                        calls.append(("gloo", url)))
    return calls


@pytest.mark.parametrize("config, opts, backend", [
    (DEMO, ["train.device=cpu"], "gloo"),
    (DEMO, ["train.device=cuda"], "nccl"),
    (DEMO, ["train.device=auto"], "nccl"),
    (DEMO.replace(".py", ".yaml"), ["MODEL.DEVICE", "cpu"], "gloo"),
    (DEMO.replace(".py", ".yaml"), [], "nccl"),  # detectron2's default MODEL.DEVICE: cuda
])
def test_the_backend_follows_the_configs_device_not_the_hardware(launched, config, opts,
                                                                 backend):
    """train.device=cpu on a GPU machine is CPU DDP, which NCCL cannot run."""
    import train_net

    train_net.launch_main(train_net.parse_args(["--num-gpus", "2", "--config-file", config,
                                                *opts]))
    assert [b for b, _ in launched] == [backend]


@pytest.mark.parametrize("backend", ["nccl", "gloo"])
def test_launch_resolves_a_missing_dist_url_on_both_paths(launched, backend):
    from e3va_d2.engine import launch

    launch(print, 2, backend=backend, dist_url=None)
    launch(print, 2, backend=backend, dist_url="auto")
    assert [(b, url.startswith("tcp://127.0.0.1:")) for b, url in launched] == [(backend, True)] * 2
    with pytest.raises(ValueError, match="--dist-url"):
        launch(print, 1, num_machines=2, backend=backend, dist_url=None)


def test_train_net_takes_a_free_port_not_detectron2s_one_port_per_user(launched):
    """Two `--num-gpus 2` runs at once on one machine (two trainings, the parallel slow tests)
    met on detectron2's default --dist-url, the same port for every run of a user: the second
    one failed, or its ranks joined the first one's group."""
    from detectron2.engine import default_argument_parser

    import train_net

    fixed = default_argument_parser().parse_args([]).dist_url
    with socket.socket() as first_run:
        with contextlib.suppress(OSError):  # (something else may listen there already)
            first_run.bind(("127.0.0.1", int(fixed.rsplit(":", 1)[1])))
        train_net.launch_main(train_net.parse_args(["--num-gpus", "2", "--config-file", DEMO,
                                                    "train.device=cpu"]))
    ((_, url),) = launched
    assert url.startswith("tcp://127.0.0.1:") and url != fixed


def test_an_automatic_port_stays_reserved_while_the_workers_start(monkeypatch):
    """launch picked a free port and let it go: in the seconds the workers took to start, any
    socket of the machine (the other test worker's launch, gloo's own connections) could take
    it, and rank 0's store then failed with "address already in use"."""
    import torch.distributed as dist

    launching = importlib.import_module("e3va_d2.engine.launch")
    seen = []

    def spawn(fn, n, machines, rank, url, *rest):  # where the workers start, then listen
        port = int(url.rsplit(":", 1)[1])
        with socket.socket() as other, pytest.raises(OSError) as taken:
            other.bind(("127.0.0.1", port))
        seen.append(taken.value.errno)
        store = dist.TCPStore("127.0.0.1", port, 1, is_master=True,
                              wait_for_workers=False)  # what rank 0 creates
        store.set("rank 0", "listens")
        seen.append(store.get("rank 0"))

    monkeypatch.setattr(launching, "_spawn_gloo", spawn)
    launching.launch(print, 2, backend="gloo", dist_url="auto")
    assert seen == [errno.EADDRINUSE, b"listens"]


def test_the_nccl_path_destroys_its_process_group(monkeypatch):
    """detectron2 0.6's worker leaves the group to the interpreter's exit (a leak NCCL warns
    of, a hang when a peer is gone). Its worker is run here in this process, on gloo."""
    import torch.distributed as dist

    launching = importlib.import_module("e3va_d2.engine.launch")

    def d2_launch(worker, n, num_machines, machine_rank, dist_url, args, timeout):
        dist.init_process_group("gloo", init_method=dist_url, world_size=1, rank=0)
        worker(*args)

    monkeypatch.setattr(launching, "d2_launch", d2_launch)
    monkeypatch.setattr(launching, "die_with_parent", lambda pid: None)
    seen = []
    try:
        launching.launch(lambda: seen.append(dist.is_initialized()), 2, backend="nccl")
        assert seen == [True] and not dist.is_initialized()
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def test_a_timeout_that_is_no_number_of_minutes_is_refused():
    import train_net
    from e3va_d2.config import ConfigError

    args = train_net.parse_args(["--num-gpus", "2", "--config-file", DEMO,
                                 "train.dist_timeout_minutes=-1"])
    with pytest.raises(ConfigError, match="train.dist_timeout_minutes=-1"):
        train_net.dist_timeout(args)


@pytest.mark.slow
def test_sigterm_to_the_launcher_stops_both_processes_at_one_saved_iteration(tmp_path):
    import torch

    cmd = [sys.executable, os.path.join(ROOT, "train_net.py"), "--num-gpus", "2",
           "--config-file", DEMO, f"train.output_dir={tmp_path}", "train.max_iter=1000",
           "train.eval_period=0", "train.log_period=1", "train.checkpointer.period=1000",
           "train.device=cpu", "dataloader.train.dataset.names=shapes_mini_train",
           "dataloader.test.dataset.names=shapes_mini_val", "dataloader.train.num_workers=0",
           "dataloader.train.total_batch_size=2"]
    launcher = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
    try:
        metrics = tmp_path / "metrics.json"
        assert wait_until(lambda: metrics.exists() and metrics.stat().st_size > 0, 400)
        launcher.send_signal(signal.SIGTERM)  # a scheduler preempting the job
        err, _ = launcher.communicate(timeout=200)
    finally:
        launcher.kill()
    assert launcher.returncode == 128 + signal.SIGTERM, err[-3000:]
    assert "Stopped by SIGTERM after iteration" in err, err[-3000:]
    saved = (tmp_path / "last_checkpoint").read_text()
    ranks = torch.load(tmp_path / saved, weights_only=True)["trainer"]["resume"]
    assert len(ranks) == 2  # both ranks' data positions and RNGs, gathered at that iteration
    assert saved == f"model_{torch.load(tmp_path / saved, weights_only=True)['iteration']:07d}.pth"
