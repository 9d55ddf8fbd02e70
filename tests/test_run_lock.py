"""One run per output folder: a live run's lock is a clear error naming its pid and the folder;
the lock a killed run left is taken over; train_net.py refuses a folder in use before it writes
anything there."""
import logging
import os
import signal
import subprocess
import sys

import pytest

from e3va_d2.engine.run_lock import (
    LOCK_NAME,
    LinkedLockError,
    OutputDirLock,
    OutputDirLockedError,
)

ROOT = os.path.join(os.path.dirname(__file__), "..")
DEMO = os.path.join(ROOT, "configs/Shapes/mask_rcnn_swin_demo_e3va.py")

# Loads run_lock.py alone (stdlib only), so the holder starts in a fraction of a second.
HOLDER = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("run_lock", sys.argv[1])
run_lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(run_lock)
run_lock.OutputDirLock(sys.argv[2]).acquire()
print("locked", flush=True)
time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    """Another process holding the lock of ``tmp_path``."""
    path = os.path.join(ROOT, "e3va_d2", "engine", "run_lock.py")
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield proc
    proc.kill()
    proc.wait()


def test_a_live_run_holds_the_folder(holder, tmp_path):
    with pytest.raises(OutputDirLockedError, match=f"pid {holder.pid} ") as info:
        OutputDirLock(str(tmp_path)).acquire()
    assert str(tmp_path) in str(info.value)


def test_the_lock_of_a_killed_run_is_taken_over(holder, tmp_path, caplog):
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    assert (tmp_path / LOCK_NAME).exists()  # what a killed run leaves behind
    with caplog.at_level(logging.WARNING, logger="e3va_d2.trainer"):
        with OutputDirLock(str(tmp_path)):
            assert f"pid {holder.pid} " in caplog.text and "no longer running" in caplog.text
    assert not (tmp_path / LOCK_NAME).exists()  # released cleanly: nothing left to take over


def test_a_released_lock_can_be_taken_again_without_a_warning(tmp_path, caplog):
    with OutputDirLock(str(tmp_path)):
        with pytest.raises(OutputDirLockedError):
            OutputDirLock(str(tmp_path)).acquire()
    with caplog.at_level(logging.WARNING, logger="e3va_d2.trainer"):
        with OutputDirLock(str(tmp_path)):
            pass
    assert "Taking over" not in caplog.text


@pytest.mark.parametrize("config", [DEMO, DEMO.replace(".py", ".yaml")])
def test_train_net_refuses_a_folder_in_use_before_writing_to_it(holder, tmp_path, config):
    import train_net

    out = ["OUTPUT_DIR", str(tmp_path)] if config.endswith(".yaml") else [
        f"train.output_dir={tmp_path}"]
    args = train_net.parse_args(["--config-file", config, *out])
    with pytest.raises(OutputDirLockedError, match=f"pid {holder.pid} "):
        train_net.main(args)
    assert os.listdir(tmp_path) == [LOCK_NAME]  # no config.yaml, no log.txt of a second run


def test_a_planted_link_is_refused_and_the_file_it_points_to_kept(tmp_path):
    """`ln -s victim.txt OUT/.run.lock` made the run truncate victim.txt and write its lock
    JSON into it."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).symlink_to(victim)
    with pytest.raises(LinkedLockError, match=f"{out / LOCK_NAME} is a symbolic link"):
        OutputDirLock(str(out)).acquire()
    assert victim.read_text() == "precious"
