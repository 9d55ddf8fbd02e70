"""Errors raised by several layers, at the bottom of the package so that any of them can.

:class:`ConfigError` is what a user gets for a config (LazyConfig file, override, yacs key) or
an option that cannot be used; the message says how to fix it. ``e3va_d2.config`` re-exports
it; tuning methods raise its subclass ``OptionError`` for their own options.
"""

__all__ = ["ConfigError"]


class ConfigError(ValueError):
    """A config file, override or option that cannot be used; the message says how to fix it."""
