"""``python -m projects.gpu_check``: see projects/gpu_check/check.py."""
import sys
import time

_started = time.perf_counter()  # the 10-minute budget counts the imports too

from .check import main  # noqa: E402

sys.exit(main(started=_started))
