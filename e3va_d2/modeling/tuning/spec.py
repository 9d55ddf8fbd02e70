"""A tuning method written on one line, as command lines and run folders name it.

``name`` or ``name:key=value[:key=value]``: ``e3va:saved_input_dtype=bfloat16:rank=4``. Values
are Python literals where they parse as one (``rank=4``, ``conv_kernels=(3,5,7)``), else
strings. Several specs are separated by commas; a comma inside brackets belongs to a value.

Errors are ``ValueError``\\ s that name the spec and what is wrong with it; a command line turns
them into its usage error (``parser.error``).
"""
from __future__ import annotations

import ast
from typing import Any, Dict, List, Tuple

from .base import TUNING_METHODS, build_tuning

__all__ = ["parse_method_spec", "parse_method_specs", "read_method_spec", "split_method_specs"]


def split_method_specs(text: str) -> List[str]:
    """Comma-separated method specs; a comma inside brackets belongs to an option's value, as
    in ``e3va_spatial:conv_kernels=(3,5,7)``."""
    specs, depth, current = [], 0, ""
    for char in text:
        depth += (char in "([") - (char in ")]")
        if char == "," and depth == 0:
            specs.append(current)
            current = ""
        else:
            current += char
    return [s.strip() for s in [*specs, current] if s.strip()]


def read_method_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"e3va:rank=4"`` -> ``("e3va", {"rank": 4})`` as written, not checked against the
    registered methods: for reading the names of runs recorded by other versions."""
    name, *pairs = spec.split(":")
    options: Dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"bad option {pair!r} in {spec!r}; expected key=value, as in "
                             "e3va:rank=8")
        try:
            options[key] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            options[key] = value
    return name, options


def parse_method_spec(spec: str) -> Tuple[str, Dict[str, Any]]:
    """``"e3va:saved_input_dtype=bfloat16"`` -> ``("e3va", {"saved_input_dtype": "bfloat16"})``,
    checked by building the method (an unknown method, option or value is a ``ValueError``)."""
    name = spec.split(":")[0]
    if name not in TUNING_METHODS:
        raise ValueError(f"unknown tuning method {name!r} in {spec!r}; registered: "
                         f"{', '.join(sorted(TUNING_METHODS))}")
    name, options = read_method_spec(spec)
    try:
        build_tuning(name, **options)
    except (TypeError, ValueError) as e:
        raise ValueError(f"bad options in {spec!r}: {e}") from None
    return name, options


def parse_method_specs(text: str) -> List[str]:
    """The specs of a comma-separated list, each checked (the first bad one raises)."""
    specs = split_method_specs(text)
    if not specs:
        raise ValueError(f"no tuning method in {text!r}; expected e.g. full,e3va:rank=8")
    for spec in specs:
        parse_method_spec(spec)
    return specs
