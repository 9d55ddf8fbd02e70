"""Reading checkpoint files as data, never as code.

A ``.pth`` is a pickle, and unpickling can call any importable function (``os.system``...). So
every checkpoint this project reads goes through :func:`read_checkpoint_file`:

- ``.pth`` (and anything else torch wrote): ``torch.load(..., weights_only=True)``, torch's
  unpickler that builds tensors and plain containers only;
- ``.pkl`` (detectron2's and Detectron's model zoos): :class:`RestrictedUnpickler`, which allows
  numpy arrays, tensors and plain containers and nothing else.

A file that needs more (a pickled config object, or a payload) is refused with
:class:`UnsafeCheckpointError`, which names the file and the opt-in for a file one trusts:
``train.trust_checkpoint_code=True`` (LazyConfig), ``MODEL.TRUST_CHECKPOINT_CODE True`` (yacs),
``--trust-checkpoint-code`` (train_net.py, demo) or ``E3VA_TRUST_CHECKPOINT_CODE=1`` (any tool,
detectron2's stock ones included). The opt-in reaches loads deep inside model construction (a
backbone's ``weights``) through :func:`trust_checkpoint_code`, a context manager over a context
variable, so no module needs a config object to know it.
"""
from __future__ import annotations

import contextlib
import contextvars
import io
import logging
import os
import pickle
from typing import IO, Any, Iterator, Optional

import torch

__all__ = [
    "OPT_IN",
    "RestrictedUnpickler",
    "UnsafeCheckpointError",
    "checkpoint_code_trusted",
    "read_checkpoint_file",
    "restricted_pickle_load",
    "trust_checkpoint_code",
]

logger = logging.getLogger("e3va_d2.checkpoint")

OPT_IN = (
    "train.trust_checkpoint_code=True (LazyConfig), MODEL.TRUST_CHECKPOINT_CODE True (yacs), "
    "--trust-checkpoint-code (train_net.py, demo) or E3VA_TRUST_CHECKPOINT_CODE=1"
)
ENV_VAR = "E3VA_TRUST_CHECKPOINT_CODE"


class UnsafeCheckpointError(pickle.UnpicklingError):
    """A checkpoint that holds more than tensors, arrays and plain containers: reading it would
    run code the file chooses. Subclasses ``UnpicklingError``, what torch raises for it."""


def _env_default() -> bool:
    return os.environ.get(ENV_VAR, "").strip().lower() in ("1", "true", "yes")


_TRUSTED: contextvars.ContextVar[Optional[bool]] = contextvars.ContextVar(
    "e3va_trust_checkpoint_code", default=None
)


def checkpoint_code_trusted() -> bool:
    """Whether files that need arbitrary unpickling may be read (see the module docstring)."""
    value = _TRUSTED.get()
    return _env_default() if value is None else value


@contextlib.contextmanager
def trust_checkpoint_code(enabled: bool = True) -> Iterator[None]:
    """Within the block, checkpoints that need full unpickling are read (``enabled=True``) or
    refused (``False``); the environment variable is the default outside any block. Entering
    with ``False`` inside a trusting block does not withdraw the user's opt-in."""
    token = _TRUSTED.set(bool(enabled) or checkpoint_code_trusted())
    try:
        yield
    finally:
        _TRUSTED.reset(token)


def _load_bytes_weights_only(data: bytes):
    """What a plain pickle of a tensor stores its storage as (``torch.storage._load_from_bytes``,
    which torch itself reads with ``weights_only=False``), read with ``weights_only=True``."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)


class RestrictedUnpickler(pickle.Unpickler):
    """A pickle reader for weight files: numpy arrays and scalars, torch tensors (as a plain
    ``pickle.dump`` of a state dict writes them), ``OrderedDict`` and the builtin containers and
    numbers pickle needs no import for. Any other global is refused."""

    _ALLOWED = {
        ("collections", "OrderedDict"),
        ("torch._utils", "_rebuild_tensor_v2"),
        ("torch._utils", "_rebuild_parameter"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "scalar"),
    }
    _REPLACED = {
        ("torch.storage", "_load_from_bytes"): _load_bytes_weights_only,
    }

    def __init__(self, file: IO[bytes], *, source: str = "<stream>", **kwargs: Any):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str):
        if (module, name) in self._REPLACED:
            return self._REPLACED[module, name]
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise UnsafeCheckpointError(
            f"{self.source} refers to {module}.{name}, which a weights file does not need: "
            f"reading it would run code the file chooses. Refused. If you trust this file, "
            f"allow it with {OPT_IN}."
        )


def restricted_pickle_load(file: IO[bytes], source: str, encoding: str = "latin1") -> Any:
    """``pickle.load`` through :class:`RestrictedUnpickler`. ``latin1``: Detectron's model zoo
    pickles were written by Python 2."""
    return RestrictedUnpickler(file, source=source, encoding=encoding).load()


def read_checkpoint_file(path_manager, filename: str) -> Any:
    """The object in ``filename``, read as data; with the user's opt-in (see
    :func:`checkpoint_code_trusted`) a file that needs more is read by plain unpickling, with a
    warning. ``path_manager``: detectron2's (for ``e3va://`` and other registered paths)."""
    trusted = checkpoint_code_trusted()
    with path_manager.open(filename, "rb") as f:
        plain_pickle = filename.endswith(".pkl") and not _written_by_torch(f)
        try:
            if plain_pickle:
                return restricted_pickle_load(f, filename)
            return torch.load(f, map_location="cpu", weights_only=True)
        except UnsafeCheckpointError:
            if not trusted:
                raise
        except pickle.UnpicklingError as e:
            # torch words both alike; only a refused global (a function or class to import)
            # means "needs code". Anything else (an unknown opcode: a text file) is corrupt.
            if "GLOBAL" not in str(e):
                raise
            if not trusted:
                raise UnsafeCheckpointError(
                    f"{filename} holds Python objects besides tensors and plain containers, and "
                    f"unpickling them could run code the file chooses: refused. If you trust "
                    f"this file, allow it with {OPT_IN}. torch said: "
                    f"{_last_line(str(e))}"
                ) from None
    logger.warning(
        "%s holds Python objects besides tensors; reading it with full unpickling, as asked "
        "(trust_checkpoint_code): only do this for files you trust.", filename)
    with path_manager.open(filename, "rb") as f:
        if plain_pickle:
            return pickle.load(f, encoding="latin1")
        return torch.load(f, map_location="cpu", weights_only=False)


def _written_by_torch(f: IO[bytes]) -> bool:
    """Whether ``f`` is torch.save's zip archive (a ``.pkl`` may be one, renamed): read it as
    torch reads it, not as a plain pickle."""
    head = f.read(4)
    f.seek(0)
    return head == b"PK\x03\x04"


def _last_line(message: str) -> str:
    lines = [line.strip() for line in message.splitlines() if "GLOBAL" in line]
    line = lines[0] if lines else message.strip().splitlines()[0]
    return line.split(". ")[0].rstrip(".") + "."
