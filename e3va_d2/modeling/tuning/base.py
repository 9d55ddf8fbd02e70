"""What every tuning method is: a small config that, at build time, may add modules to a Swin
trunk and decides which parameters train."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, Iterator, Optional, Tuple, Type, Union

from torch import nn

from ..swin import SwinTransformer

__all__ = ["TuningMethod", "TUNING_METHODS", "register_tuning", "build_tuning"]


@dataclass
class TuningMethod:
    """Base class. Subclasses are dataclasses whose fields are the method's options.

    ``trunk_runs_without_grad``: the whole trunk (except its output norms) is frozen, so it runs
    under ``torch.no_grad()`` and in eval mode; nothing of its activations is kept.
    """

    name: ClassVar[str] = ""
    trunk_runs_without_grad: ClassVar[bool] = False

    def attach(self, trunk: SwinTransformer) -> Optional[nn.Module]:
        """Insert the method's modules into ``trunk`` (in place) or return a module that runs
        beside it (E3VA's highway). Called once, before ``trainable_parameters``."""
        return None

    def trainable_parameters(
        self, trunk: SwinTransformer, extra: Optional[nn.Module]
    ) -> Iterator[Tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that train; names are relative to the tuned backbone
        (``trunk.…`` / ``highway.…``)."""
        raise NotImplementedError



TUNING_METHODS: Dict[str, Callable[..., TuningMethod]] = {}


def register_tuning(*names: str, **preset) -> Callable[[Type[TuningMethod]], Type[TuningMethod]]:
    """Class decorator: ``@register_tuning("e3va")``; extra names may carry preset options,
    e.g. ``register_tuning("e3va_plus", rank=16)`` on the same class."""

    def wrap(cls: Type[TuningMethod]) -> Type[TuningMethod]:
        for name in names:
            if name in TUNING_METHODS:
                raise KeyError(f"Tuning method {name!r} is registered twice")
            TUNING_METHODS[name] = _preset(cls, name, preset)
        return cls

    return wrap


def _preset(cls: Type[TuningMethod], name: str, preset: dict) -> Callable[..., TuningMethod]:
    def make(**options) -> TuningMethod:
        return cls(**{**preset, **options})

    make.__name__ = make.__qualname__ = name
    return make


def build_tuning(method: Union[str, TuningMethod], **options) -> TuningMethod:
    """A method from its registered name (with optional overrides) or an instance as is."""
    if isinstance(method, TuningMethod):
        if options:
            raise ValueError("Options can only be given together with a method name")
        return method
    if method not in TUNING_METHODS:
        raise KeyError(
            f"Unknown tuning method {method!r}. Registered methods: {sorted(TUNING_METHODS)}"
        )
    return TUNING_METHODS[method](**options)


def check_positive_int(option: str, value) -> None:
    """Integer options (ranks, widths) must be integers >= 1: ``rank=2.5`` or ``rank=0`` fail
    here, naming the option, instead of deep inside a layer's constructor."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{option} must be an integer >= 1, got {value!r}")


def output_norm_parameters(trunk: SwinTransformer) -> Iterator[Tuple[str, nn.Parameter]]:
    """The norms between trunk and neck: not pre-trained, so most methods train them."""
    for i in trunk.out_indices:
        for name, param in getattr(trunk, f"norm{i}").named_parameters():
            yield f"trunk.norm{i}.{name}", param
