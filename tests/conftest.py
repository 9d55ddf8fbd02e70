"""Shared test settings: the CPU only, tiny Swins that run in milliseconds on it."""
import os

# The suite is a CPU suite, also on a GPU machine: hidden before torch first touches CUDA, the
# GPUs cannot pull a test (or a benchmark run with its default `--device auto`, or a launch's
# backend) onto CUDA, and subprocesses inherit it. `make gpu-check` is what exercises CUDA.
os.environ["CUDA_VISIBLE_DEVICES"] = ""

import pytest  # noqa: E402
import torch  # noqa: E402

# One share of the cores per xdist worker: with 2 workers on 2 cores, two intra-op threads each
# slow a tiny model's many small ops down by an order of magnitude (measured: 10 s -> 200 s).
# OMP_NUM_THREADS, when set, wins: with other jobs on the cores, even two threads per worker
# oversubscribe them (measured: a 0.5 s training step took 17 s).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", 0))
                      or max(1, min(2, (os.cpu_count() or 1) // _WORKERS)))


def pytest_configure(config):
    """Refuse the pytest/xdist pair whose `--dist loadgroup` does not group (pytest 9.2 keeps
    node ids where xdist 3.8 cannot suffix them): the tests marked `xdist_group` share one
    expensive run, which each worker would otherwise repeat."""
    from importlib.metadata import version

    def release(name):
        return tuple(int(p) for p in version(name).split(".")[:2] if p.isdigit())

    if getattr(config.option, "dist", "no") == "loadgroup" and release("pytest") >= (9, 2) \
            and release("pytest-xdist") <= (3, 8):
        raise pytest.UsageError(
            f"pytest {version('pytest')} with pytest-xdist {version('pytest-xdist')}: "
            "--dist loadgroup would not keep a group on one worker; install the pair "
            "pyproject.toml names (make setup), or run with --dist loadfile")


TINY_SWIN = dict(embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=7)


@pytest.fixture
def tiny_swin_kwargs():
    return dict(TINY_SWIN)
