"""What every tuning method is: a small config that, at build time, may add modules to a Swin
trunk and decides which parameters train.

The contract, as :class:`~e3va_d2.modeling.backbone.TunedSwin` uses it:

1. ``attach(trunk)`` runs once. It may insert modules into the trunk in place (LoRA, adapters)
   and may return a :class:`~e3va_d2.modeling.highway.Highway` (E3VA's), stored as
   ``TunedSwin.highway`` and run instead of the trunk.
2. ``trainable_parameters(trunk, highway)`` names what trains (``trunk.…`` / ``highway.…``);
   everything else is frozen.
3. ``trunk_runs_without_grad``: nothing of the trunk but its output norms trains, so it runs
   under ``torch.no_grad()`` and in eval mode, storing no activations.

Options are dataclass fields, checked in one place, :func:`check_options` (called by
``__post_init__``), from their annotations and ``option(...)`` metadata; config layers (yacs
keys, LazyConfig overrides) pass options through and report its :class:`OptionError`.

A method's ``name`` is what the config said: ``build_tuning("e3va", rank=12).name == "e3va"``.
An instance built from its class without a name takes the name of the registered preset whose
options it has (``E3VATuning(rank=16)`` is ``"e3va_plus"``), else the class's default preset
(``E3VATuning(rank=12)`` is ``"e3va"``).
"""
from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Dict, Iterator, List, Optional, Tuple, Type, Union

from torch import nn

from ...errors import ConfigError
from ..highway import Highway
from ..swin import SwinTransformer

__all__ = [
    "OptionError",
    "TuningMethod",
    "TUNING_METHODS",
    "register_tuning",
    "build_tuning",
    "check_options",
    "option",
    "option_names",
]


class OptionError(ConfigError):
    """An option of a tuning method that cannot be used.

    ``owner`` (the class), ``option`` (the field) and ``problem`` (the rest of the message,
    with its leading separator) are kept apart so that a config layer can name the option as
    its user wrote it: ``MODEL.TUNING.RANK must be an integer >= 1, got 0``.
    """

    def __init__(self, owner: str, option: str, problem: str):
        super().__init__(owner, option, problem)  # args as given: picklable across processes
        self.owner, self.option, self.problem = owner, option, problem

    def __str__(self) -> str:
        return f"{self.owner}.{self.option}{self.problem}"

    def named(self, key: str) -> str:
        """The message with the option spelled ``key``."""
        return f"{key}{self.problem}"


def option(default: Any, *, minimum: Optional[int] = None,
           choices: Optional[Tuple[Any, ...]] = None) -> Any:
    """A dataclass field with what :func:`check_options` needs beyond its type: the smallest
    integer allowed, or the allowed values."""
    metadata = {k: v for k, v in (("minimum", minimum), ("choices", choices)) if v is not None}
    return field(default=default, metadata=metadata)


@dataclass
class TuningMethod:
    """Base class. Subclasses are dataclasses whose fields are the method's options; each
    subclass ``__post_init__`` calls ``super().__post_init__()`` first.

    ``trunk_runs_without_grad``: the whole trunk (except its output norms) is frozen, so it runs
    under ``torch.no_grad()`` and in eval mode; nothing of its activations is kept.
    """

    trunk_runs_without_grad: ClassVar[bool] = False

    # The registered name the config asked for (None: see the module docstring). Not an option:
    # it changes nothing the method computes, so equal options compare equal.
    name: Optional[str] = field(default=None, compare=False)

    def __post_init__(self):
        check_options(self)
        names = [n for n, _ in _PRESETS.get(type(self), [])]
        if self.name is None:
            self.name = _default_name(self)
        elif names and self.name not in names:
            raise OptionError(type(self).__name__, "name",
                              f"={self.name!r} is not a name of this method; its names: {names}")

    def attach(self, trunk: SwinTransformer) -> Optional[Highway]:
        """Insert the method's modules into ``trunk`` (in place) and/or return a highway that
        runs beside it. Called once, before ``trainable_parameters``."""
        return None

    def trainable_parameters(
        self, trunk: SwinTransformer, highway: Optional[Highway]
    ) -> Iterator[Tuple[str, nn.Parameter]]:
        """(name, parameter) pairs that train; names are relative to the tuned backbone
        (``trunk.…`` / ``highway.…``)."""
        raise NotImplementedError


TUNING_METHODS: Dict[str, Callable[..., TuningMethod]] = {}
_CLASSES: Dict[str, Type[TuningMethod]] = {}  # registered name -> its class
_PRESETS: Dict[type, List[Tuple[str, dict]]] = {}  # class -> (registered name, preset options)


def option_names(cls: Type[TuningMethod]) -> List[str]:
    """The options of a method class (its dataclass fields but ``name``)."""
    return [f.name for f in dataclasses.fields(cls) if f.name != "name"]


def _default_name(method: TuningMethod) -> str:
    """The name of a method built without one (see the module docstring)."""
    presets = _PRESETS.get(type(method), [])
    for name, preset in presets:
        if all(getattr(method, k) == v for k, v in preset.items()):
            return name
    defaults = {f.name: f.default for f in dataclasses.fields(method)}
    for name, preset in presets:
        if all(defaults[k] == v for k, v in preset.items()):
            return name
    return presets[0][0] if presets else type(method).__name__


def check_options(method: TuningMethod) -> None:
    """Check every option of ``method`` against its annotation (bool, int, float, str, or
    Optional of one) and its ``option(...)`` metadata; raise :class:`OptionError`."""
    owner = type(method).__name__
    hints = typing.get_type_hints(type(method))
    for f in dataclasses.fields(method):
        if f.name == "name":
            continue
        problem = _problem(getattr(method, f.name), hints.get(f.name), f.metadata)
        if problem:
            raise OptionError(owner, f.name, problem)


def _problem(value: Any, annotation: Any, metadata: typing.Mapping[str, Any]) -> Optional[str]:
    """What is wrong with ``value`` for a field so annotated, or None."""
    kinds = typing.get_args(annotation) if typing.get_origin(annotation) is Union else (annotation,)
    if value is None and type(None) in kinds:
        return None
    kind = next((k for k in kinds if k is not type(None)), None)
    choices, minimum = metadata.get("choices"), metadata.get("minimum")
    if choices is not None and value not in choices:
        return f"={value!r} is not one of {tuple(choices)}"
    if kind is bool and not isinstance(value, bool):
        return f" is a bool (True or False), got {value!r}"
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)
                        or (minimum is not None and value < minimum)):
        bound = f" >= {minimum}" if minimum is not None else ""
        return f" must be an integer{bound}, got {value!r}"
    if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
        return f" is a number, got {value!r}"
    if kind is str and not isinstance(value, str):
        return f" is a string, got {value!r}"
    return None


def register_tuning(*names: str, **preset) -> Callable[[Type[TuningMethod]], Type[TuningMethod]]:
    """Class decorator: ``@register_tuning("e3va")``; extra names may carry preset options,
    e.g. ``register_tuning("e3va_plus", rank=16)`` on the same class."""

    def wrap(cls: Type[TuningMethod]) -> Type[TuningMethod]:
        for name in names:
            if name in TUNING_METHODS:
                raise KeyError(f"Tuning method {name!r} is registered twice")
            TUNING_METHODS[name] = _preset(cls, name, preset)
            _CLASSES[name] = cls
        # Stacked decorators apply bottom-up: keep the presets in the order they are written.
        _PRESETS.setdefault(cls, [])[0:0] = [(name, dict(preset)) for name in names]
        return cls

    return wrap


def _preset(cls: Type[TuningMethod], name: str, preset: dict) -> Callable[..., TuningMethod]:
    def make(**options) -> TuningMethod:
        return cls(**{**preset, **options, "name": name})

    make.__name__ = make.__qualname__ = name
    return make


def build_tuning(method: Union[str, TuningMethod], **options) -> TuningMethod:
    """A method from its registered name (with optional overrides) or an instance as is.

    An option the method does not have is an :class:`OptionError` naming the method's options
    (and the closest, for a typo)."""
    if isinstance(method, TuningMethod):
        if options:
            raise ValueError("Options can only be given together with a method name")
        return method
    if method not in TUNING_METHODS:
        raise KeyError(
            f"Unknown tuning method {method!r}. Registered methods: {sorted(TUNING_METHODS)}"
        )
    cls = _CLASSES[method]
    own = option_names(cls)
    for key in options:
        if key not in own:
            close = difflib.get_close_matches(key, own, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise OptionError(cls.__name__, key,
                              f" is not an option of {method!r} (its options: "
                              f"{', '.join(own) or 'none'}){hint}")
    return TUNING_METHODS[method](**options)


def output_norm_parameters(trunk: SwinTransformer) -> Iterator[Tuple[str, nn.Parameter]]:
    """The norms between trunk and neck: not pre-trained, so most methods train them."""
    for i in trunk.out_indices:
        for name, param in getattr(trunk, f"norm{i}").named_parameters():
            yield f"trunk.norm{i}.{name}", param
