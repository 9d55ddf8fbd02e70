"""What the repository holds: code, configs, docs and records, not run state.

A clone downloads every tracked file: a checkpoint or a parked run committed "for now" costs every
user its size. The shipped pre-trained trunks are the one exception (``e3va_d2/model_zoo``).
"""
import fnmatch
import os
import shutil
import subprocess

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
LIMIT = 2 * 2**20  # bytes
SHIPPED = "e3va_d2/model_zoo/weights/*.pth"


def tracked_files(root: str):
    """Paths git tracks under ``root``, relative to it."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=root, capture_output=True, check=True)
    return [p for p in listed.stdout.decode().split("\0") if p]


def too_large(root: str, limit: int = LIMIT):
    """Tracked files over ``limit`` bytes, but the shipped weights: ``{path: bytes}``."""
    found = {}
    for path in tracked_files(root):
        full = os.path.join(root, path)
        if os.path.isfile(full) and not fnmatch.fnmatch(path, SHIPPED):
            size = os.path.getsize(full)
            if size > limit:
                found[path] = size
    return found


needs_git = pytest.mark.skipif(
    shutil.which("git") is None or not os.path.exists(os.path.join(ROOT, ".git")),
    reason="not a git checkout")


@needs_git
def test_no_tracked_file_but_the_shipped_weights_exceeds_2_mb():
    assert too_large(ROOT) == {}, (
        "run state (checkpoints, parked runs) stays out of git: commit the run's record "
        "(small JSON under docs/records/), not its files")


@needs_git
def test_the_size_check_finds_a_large_file_and_spares_the_shipped_weights(tmp_path):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    weights = tmp_path / "e3va_d2" / "model_zoo" / "weights"
    weights.mkdir(parents=True)
    (weights / "swin.pth").write_bytes(bytes(LIMIT + 1))
    (tmp_path / "last_checkpoint.pth").write_bytes(bytes(LIMIT + 1))
    (tmp_path / "small.json").write_bytes(bytes(LIMIT))
    subprocess.run(["git", "add", "-f", "."], cwd=tmp_path, check=True)
    assert too_large(str(tmp_path)) == {"last_checkpoint.pth": LIMIT + 1}
