"""The one error type and message format of a bad kltrust config.

Every check of a config (`kltrust.train.config_checks`, the programs' ``validate``, the token
pipeline's and the bandit's) raises `ConfigError`, a ``ValueError``, with a one-line message in one
of two forms::

    config.KEY = VALUE: must be ALLOWED.
    config.KEY: unknown key; did you mean 'NEAR'? the keys here are [...].

Checks run on the host before anything is compiled or written. The command-line programs in
``experiments/`` print that line and exit with status 2 (``experiments/cli.py``). Light on purpose
(numpy, no JAX): the CLIs import it before anything else.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Iterable
from typing import Any

import numpy as np


class ConfigError(ValueError):
    """A config key or value (or command-line flag) a program cannot run with.

    Raised before anything is compiled or written; its message is one line naming the key, the value
    and what is allowed.
    """


def did_you_mean(name: Any, candidates: Iterable[Any]) -> str:
    """``"did you mean 'NEAR'? "`` for the closest of ``candidates`` to ``name``, or ``""``."""
    names = [str(c) for c in candidates]
    close = difflib.get_close_matches(str(name), names, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def unknown_key(name: str, keys: Iterable[str]) -> ConfigError:
    """The error for ``config.{name}`` not being one of ``keys`` (the last part of ``name`` is
    matched against them)."""
    keys = sorted(keys)
    hint = did_you_mean(name.rsplit(".", 1)[-1], keys)
    return ConfigError(f"config.{name}: unknown key; {hint}the keys here are {keys}.")


def unknown_preset(family: str, preset: str, presets: Iterable[str]) -> ConfigError:
    """The error of a config file's ``get_config`` for a preset it does not have."""
    presets = tuple(presets)
    hint = did_you_mean(preset, presets).strip()
    end = f"; {hint}" if hint else "."
    return ConfigError(f"Unknown {family} preset {preset!r}; known presets: "
                       f"{', '.join(presets)}{end}")


def check(ok: bool, key: str, value: Any, allowed: str) -> None:
    """Raises ``config.{key} = {value!r}: must be {allowed}.`` unless ``ok``."""
    if not ok:
        raise ConfigError(f"config.{key} = {value!r}: must be {allowed}.")


def check_choice(value: Any, choices: Iterable[Any], key: str, condition: str = "") -> None:
    """Refuses a ``value`` that is not one of the strings ``choices`` (``condition`` is appended
    to "one of ...", e.g. "for method 'ppo'"), with a did-you-mean for a near miss."""
    choices = tuple(choices)
    if isinstance(value, str) and value in choices:
        return
    hint = did_you_mean(value, choices).strip() if isinstance(value, str) else ""
    suffix = f" {condition}" if condition else ""
    end = f"; {hint}" if hint else "."
    raise ConfigError(f"config.{key} = {value!r}: must be one of {choices}{suffix}{end}")


def is_number(value: Any) -> bool:
    """A real number (int or float, numpy's too), not a bool."""
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_))


def is_finite(value: Any) -> bool:
    """A finite real number (nan and ±inf are not)."""
    return is_number(value) and math.isfinite(float(value))


def is_int(value: Any, low: int | None = None) -> bool:
    """An integer (numpy's too, not a bool), at least ``low`` if given."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    return ok and (low is None or value >= low)


_FIELD_MESSAGE = re.compile(r"^(?:[\w.]+\.)?(?P<name>\w+) must be (?P<allowed>.*?),? got "
                            r"(?P<value>.*?)\.?$", re.S)


def from_field_error(error: Exception, prefix: str) -> ConfigError:
    """A dataclass's own check (``"NAME must be ALLOWED, got VALUE."``, e.g. `text.LanguageSpec`'s)
    as a `ConfigError` naming ``config.{prefix}.NAME``."""
    message = " ".join(str(error).split())
    match = _FIELD_MESSAGE.match(message)
    if match:
        return ConfigError(f"config.{prefix}.{match['name']} = {match['value']}: must be "
                           f"{match['allowed']}.")
    return ConfigError(f"config.{prefix}: {message}")


def one_line(message: str) -> str:
    """``message`` with every run of whitespace (newlines too) as one space."""
    return " ".join(str(message).split())
