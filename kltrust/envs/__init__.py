"""The environment families the control programs run on, as one small registry.

An ``env_name`` belongs to exactly one family, found by `family`: the gymnax names
(``"CartPole-v1"``, …) or a name with the ``brax:`` prefix. Everything that turns a name into an
environment (`make`, used by `kltrust.train.common.model_and_env` and ``random_policy_score``) or
checks one (`check`, the config layer's) goes through this registry, so adding a family is one
entry here and no string dispatch elsewhere.

Brax names: ``brax:NAME`` with optional ``,backend=B`` and ``,episode_length=N`` options, e.g.
``"brax:hopper"`` (the mjx backend, truncated at 1000 steps) or
``"brax:swimmer,backend=generalized"``; NAME is any environment brax's registry holds, and the
backends are `brax_env.BACKENDS`. brax is optional: it is imported only when a brax name is
checked or made (`kltrust.envs.brax_env`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kltrust.envs.lazy_imports import import_gymnax

import_gymnax()  # first: brax_env (and every later gymnax import) then finds seaborn deferred

from kltrust.errors import ConfigError, check, check_choice, did_you_mean  # noqa: E402
from kltrust.envs import brax_env  # noqa: E402

GYMNAX_NAMES = ("CartPole-v1", "Acrobot-v1", "Pendulum-v1", "MountainCarContinuous-v0")
BRAX_PREFIX = "brax:"
BRAX_FORM = "'brax:NAME[,backend=B][,episode_length=N]'"


@dataclasses.dataclass(frozen=True)
class Family:
    """One kind of environment name: which names it owns, how to make and check one."""

    name: str
    owns: Callable[[str], bool]
    make: Callable[[str], tuple[Any, Any]]  # env_name -> (env, env params), gymnax interface
    check: Callable[[str, str], None]  # (env_name, config key) -> None or a ConfigError
    allowed: str  # what the family accepts, for the error naming every family


def _make_gymnax(env_name: str) -> tuple[Any, Any]:
    return import_gymnax().make(env_name)


def _check_gymnax(env_name: str, key: str) -> None:
    check_choice(env_name, GYMNAX_NAMES, key)


@dataclasses.dataclass(frozen=True)
class BraxName:
    """A parsed brax env_name."""

    task: str
    backend: str = brax_env.DEFAULT_BACKEND
    episode_length: int = brax_env.DEFAULT_EPISODE_LENGTH


def parse_brax(env_name: str, key: str = "env_name") -> BraxName:
    """``brax:NAME[,backend=B][,episode_length=N]`` as a `BraxName`; a `ConfigError` naming
    ``key`` for a malformed name (brax itself is not imported here)."""
    task, *options = env_name[len(BRAX_PREFIX):].split(",")
    fields: dict[str, Any] = {}
    for option in options:
        name, sep, value = option.partition("=")
        check(sep == "=" and name in ("backend", "episode_length") and name not in fields, key,
              env_name, f"{BRAX_FORM}: options are backend= and episode_length=, each once")
        fields[name] = value
    if "backend" in fields:
        check(fields["backend"] in brax_env.BACKENDS, key, env_name,
              f"{BRAX_FORM} with backend one of {brax_env.BACKENDS}")
    if "episode_length" in fields:
        length = fields["episode_length"]
        check(length.isdigit() and int(length) >= 1, key, env_name,
              f"{BRAX_FORM} with episode_length an integer >= 1")
        fields["episode_length"] = int(length)
    check(bool(task), key, env_name, f"{BRAX_FORM} with a brax environment NAME")
    return BraxName(task, **fields)


def _make_brax(env_name: str) -> tuple[Any, Any]:
    parsed = parse_brax(env_name)
    env = brax_env.BraxEnv.make(parsed.task, parsed.backend, parsed.episode_length)
    return env, env.default_params


def _check_brax(env_name: str, key: str) -> None:
    parsed = parse_brax(env_name, key)
    try:
        names = brax_env.brax_names()
    except ImportError as error:
        raise ConfigError(f"config.{key} = {env_name!r}: {error}") from None
    if parsed.task not in names:
        hint = did_you_mean(parsed.task, names).strip()
        raise ConfigError(f"config.{key} = {env_name!r}: must be {BRAX_FORM} with NAME one of "
                          f"brax's environments {names}" + (f"; {hint}" if hint else "."))
    # Building the environment loads its model (no compilation) and is where brax refuses a
    # backend the task lacks (swimmer exists only on 'generalized').
    try:
        brax_env.BraxEnv.make(parsed.task, parsed.backend, parsed.episode_length)
    except ValueError as error:
        reason = str(error).rstrip(".")
        raise ConfigError(f"config.{key} = {env_name!r}: brax refuses it: {reason} (choose "
                          f"another with ',backend=B', B in {brax_env.BACKENDS}).") from None


FAMILIES = (
    Family("gymnax", lambda name: name in GYMNAX_NAMES, _make_gymnax, _check_gymnax,
           f"one of {GYMNAX_NAMES}"),
    Family("brax", lambda name: name.startswith(BRAX_PREFIX), _make_brax, _check_brax,
           f"{BRAX_FORM} (any brax environment, e.g. 'brax:inverted_pendulum'; backends "
           f"{brax_env.BACKENDS}, default {brax_env.DEFAULT_BACKEND!r})"),
)


def family(env_name: Any, key: str = "env_name") -> Family:
    """The family that owns ``env_name``; a one-line `ConfigError` naming ``key``, the value and
    every family's names if none does."""
    if isinstance(env_name, str):
        for fam in FAMILIES:
            if fam.owns(env_name):
                return fam
    hint = did_you_mean(env_name, GYMNAX_NAMES).strip() if isinstance(env_name, str) else ""
    allowed = " or ".join(fam.allowed for fam in FAMILIES)
    raise ConfigError(f"config.{key} = {env_name!r}: must be {allowed}"
                      + (f"; {hint}" if hint else "."))


def check_name(env_name: Any, key: str = "env_name") -> None:
    """Refuses an ``env_name`` no family can make, with one `ConfigError` line, before anything
    is compiled."""
    family(env_name, key).check(env_name, key)


def make(env_name: str) -> tuple[Any, Any]:
    """(env, env params) of ``env_name`` with the gymnax 1.x interface `kltrust.rollout` uses."""
    return family(env_name).make(env_name)
