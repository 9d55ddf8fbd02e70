"""Checkpoints of E3VA models: pre-trained Swin weights in, crash-safe files and deltas out.

- :mod:`.files`: atomic writes (temp file, fsync, rename);
- :mod:`.checkpointer`: :class:`E3VACheckpointer` (Swin layouts in, strict about frozen
  weights) and the :class:`PeriodicCheckpointer` hook;
- :mod:`.delta`: :func:`export_delta` / :func:`load_delta`.

Converting Swin checkpoint layouts is :mod:`e3va_d2.modeling.swin_weights`.
"""
from .checkpointer import CheckpointReadError, E3VACheckpointer, PeriodicCheckpointer
from .delta import DeltaMismatchError, base_fingerprint, export_delta, load_delta
from .files import atomic_save, atomic_write, remove_stale_temporaries

__all__ = [
    "CheckpointReadError",
    "DeltaMismatchError",
    "E3VACheckpointer",
    "PeriodicCheckpointer",
    "atomic_save",
    "atomic_write",
    "base_fingerprint",
    "export_delta",
    "load_delta",
    "remove_stale_temporaries",
]
