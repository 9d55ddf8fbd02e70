"""The accuracy study (its runs go through projects/transfer/run_executor.py) stops with its
runs: SIGTERM reaches every run, which saves where it is, and no queued run starts; a study
killed outright takes its runs with it instead of leaving them training into the output
folder."""
import glob
import os
import signal
import subprocess
import sys

import pytest

from .test_processes import ENV, ROOT, alive, wait_until
from .test_transfer import TINY

pytestmark = pytest.mark.slow  # real spawned training processes


def workers(pid: int):
    """The pool's worker processes of ``pid`` (not multiprocessing's resource tracker)."""
    found = []
    for tasks in glob.glob(f"/proc/{pid}/task/*/children"):
        with open(tasks) as f:
            for child in f.read().split():
                with open(f"/proc/{child}/cmdline", "rb") as g:
                    command = g.read().replace(b"\0", b" ")
                if b"spawn_main" in command and b"resource_tracker" not in command:
                    found.append(int(child))
    return found


def start(output):
    """e3va then fixed (one seed each, far regime), one at a time, far longer than the test; its
    records and tables would go under ``output``, never into docs/."""
    command = [sys.executable, "-m", "projects.transfer.study", "--regimes", "far", "--rows",
               "e3va,fixed", "--seeds", "0", "--jobs", "1", "--threads", "1", "--output",
               str(output), "--records", str(output / "records"), "--doc",
               str(output / "ACCURACY.md"), *TINY, "train.max_iter=100000"]
    return subprocess.Popen(command, cwd=ROOT, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def training(output, times: int = 1) -> bool:
    """Whether the e3va run has started training ``times`` times (a resumed run logs again)."""
    log = output / "far" / "runs" / "e3va" / "seed0" / "log.txt"
    return log.is_file() and log.read_text().count("Starting training from iteration") >= times


def test_sigterm_stops_every_run_at_a_checkpoint_and_sigkill_takes_them_along(tmp_path):
    started = []
    try:
        runner = start(tmp_path)
        started.append(runner)
        assert wait_until(lambda: training(tmp_path), 240), "the first run never started training"
        (run,) = workers(runner.pid)
        runner.send_signal(signal.SIGTERM)
        assert runner.wait(120) == 128 + signal.SIGTERM, runner.stderr.read()[-2000:]
        assert wait_until(lambda: not alive(run), 10)
        folder = tmp_path / "far" / "runs" / "e3va" / "seed0"
        saved = (folder / "last_checkpoint").read_text().strip()
        assert saved.startswith("model_") and (folder / saved).is_file()
        assert not (tmp_path / "far" / "runs" / "fixed").exists(), \
            "a queued run started after the stop"

        runner = start(tmp_path)  # it resumes the stopped run
        started.append(runner)
        assert wait_until(lambda: training(tmp_path, times=2), 240), "the run did not resume"
        (run,) = workers(runner.pid)
        runner.kill()
        runner.wait()
        assert wait_until(lambda: not alive(run), 10), "the run outlived its study"
    finally:  # a failed assertion leaves no training behind
        for process in started:
            for pid in workers(process.pid) if alive(process.pid) else []:
                os.kill(pid, signal.SIGKILL)
            process.kill()
