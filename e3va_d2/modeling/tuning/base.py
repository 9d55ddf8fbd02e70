"""What every tuning method is: a small config that, at build time, may add modules to a Swin
trunk and decides which parameters train.

The contract, as :class:`~e3va_d2.modeling.backbone.TunedSwin` uses it:

1. ``attach(trunk)`` runs once. It may insert modules into the trunk in place (LoRA, adapters)
   and may return a :class:`~e3va_d2.modeling.side.SideNetwork` (E3VA's highway), stored as
   ``TunedSwin.side`` and run instead of the trunk.
2. ``trainable_parameters(trunk, side)`` names what trains (``trunk.…`` / ``side.…``);
   everything else is frozen.
3. ``trunk_runs_without_grad``: nothing of the trunk but its output norms trains, so it runs
   under ``torch.no_grad()`` and in eval mode, storing no activations.

Options are dataclass fields, validated once, in ``__post_init__``. A method's ``name`` is the
name it is registered under: ``E3VATuning(rank=16).name == "e3va_plus"``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable, ClassVar, Dict, Iterator, List, Optional, Tuple, Type, Union

from torch import nn

from ..side import SideNetwork
from ..swin import SwinTransformer

__all__ = ["TuningMethod", "TUNING_METHODS", "register_tuning", "build_tuning"]


@dataclass
class TuningMethod:
    """Base class. Subclasses are dataclasses whose fields are the method's options.

    ``trunk_runs_without_grad``: the whole trunk (except its output norms) is frozen, so it runs
    under ``torch.no_grad()`` and in eval mode; nothing of its activations is kept.
    """

    trunk_runs_without_grad: ClassVar[bool] = False

    @property
    def name(self) -> str:
        """The registered name whose preset these options are; options that match no preset
        report the name whose preset differs in the fewest of them (``E3VATuning(rank=8,
        zero_init=True)`` is an ``"e3va"``)."""
        presets = _PRESETS.get(type(self), [])
        if not presets:
            return type(self).__name__
        mine = dataclasses.asdict(self)

        def differences(preset: dict) -> int:
            theirs = dataclasses.asdict(type(self)(**preset))
            return sum(mine[k] != theirs[k] for k in mine)

        return min(presets, key=lambda entry: differences(entry[1]))[0]

    def attach(self, trunk: SwinTransformer) -> Optional[SideNetwork]:
        """Insert the method's modules into ``trunk`` (in place) and/or return a side network
        that runs beside it. Called once, before ``trainable_parameters``."""
        return None

    def trainable_parameters(
        self, trunk: SwinTransformer, side: Optional[SideNetwork]
    ) -> Iterator[Tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that train; names are relative to the tuned backbone
        (``trunk.…`` / ``side.…``)."""
        raise NotImplementedError


TUNING_METHODS: Dict[str, Callable[..., TuningMethod]] = {}
_PRESETS: Dict[type, List[Tuple[str, dict]]] = {}  # class -> (registered name, preset options)


def register_tuning(*names: str, **preset) -> Callable[[Type[TuningMethod]], Type[TuningMethod]]:
    """Class decorator: ``@register_tuning("e3va")``; extra names may carry preset options,
    e.g. ``register_tuning("e3va_plus", rank=16)`` on the same class."""

    def wrap(cls: Type[TuningMethod]) -> Type[TuningMethod]:
        for name in names:
            if name in TUNING_METHODS:
                raise KeyError(f"Tuning method {name!r} is registered twice")
            TUNING_METHODS[name] = _preset(cls, name, preset)
            _PRESETS.setdefault(cls, []).append((name, dict(preset)))
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
