"""The benchmark scripts. Set before torch and detectron2 load, so that their output is about
the benchmark:

- the profiler's tracing library (kineto) logs its stages and, on a CPU-only machine with a
  CUDA build of torch, "gpuGetDeviceCount failed": messages about GPU tracing, which the
  memory measurements on CPU do not use (``KINETO_LOG_LEVEL``, read when torch loads);
- detectron2 0.6 scripts functions with torch.jit at import and its LazyConfig imports
  pkg_resources: deprecation notices about detectron2 (pyproject.toml's test settings name the
  same two).
"""
import os
import warnings

os.environ.setdefault("KINETO_LOG_LEVEL", "6")
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
warnings.filterwarnings("ignore", "pkg_resources is deprecated", UserWarning)
