"""JAX's persistent compilation cache, as one opt-in switch.

Compiling dominates a short run on CPU (a CartPole preset spends seconds in XLA before its first
update). JAX can keep every compiled program on disk and load it instead of compiling again when a
later process builds the same program (same computation, shapes, flags, jax/jaxlib version and
device); the loaded executable is the one that was compiled, so the numbers are bit-identical.
It is off by default because the directory grows with every distinct program and is the user's
disk to spend. Every program in ``experiments/`` takes ``--compilation_cache``:

- ``off`` (default): nothing is written;
- ``user``: ``$KLTRUST_CACHE/xla`` if ``KLTRUST_CACHE`` is set, else ``~/.cache/kltrust/xla``
  (shared by all runs of this user; the pretrained-model cache lives beside it);
- any other value: that directory (created if missing), e.g. one under the run's workdir.

With the cache on, control runs (`kltrust.train.loop`) also keep their compiled chunk and initial
state in ``kltrust-programs`` inside it (`kltrust.program_cache`): a warm run loads both without
tracing or initialising anything. ``KLTRUST_PROGRAM_CACHE=off`` keeps JAX's cache alone.

JAX's own thresholds are lowered to zero so that every program is kept, not only those that took
over a second to compile: on CPU the many small programs (initialisation, evaluation) add up.
"""

from __future__ import annotations

import os
import pathlib

import jax

from kltrust import program_cache
from kltrust.errors import ConfigError

OFF, USER = "off", "user"


def user_dir() -> pathlib.Path:
    """The per-user cache directory: ``$KLTRUST_CACHE/xla`` or ``~/.cache/kltrust/xla``."""
    root = os.environ.get("KLTRUST_CACHE")
    base = pathlib.Path(root) if root else pathlib.Path.home() / ".cache" / "kltrust"
    return base / "xla"


def resolve(setting: str) -> pathlib.Path | None:
    """The directory ``setting`` names (see the module docstring), or None for ``off``.

    Raises `ConfigError` (one line, naming the flag) for an empty value or a path that exists and
    is not a directory, before anything is compiled.
    """
    if setting == OFF:
        return None
    if setting == USER:
        return user_dir()
    if not setting.strip():
        raise ConfigError("--compilation_cache='': must be 'off', 'user' or a directory")
    path = pathlib.Path(setting).expanduser()
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--compilation_cache={setting!r}: exists and is not a directory; "
                          "must be 'off', 'user' or a directory")
    return path


def enable(directory: pathlib.Path | str) -> pathlib.Path:
    """Keeps every program this process compiles from now on in ``directory`` and loads it from
    there when a later process compiles the same program. Call before the first compilation: JAX
    sets its cache up once, at the first compile. Returns the directory."""
    path = pathlib.Path(directory).expanduser()
    path.mkdir(parents=True, exist_ok=True)
    jax.config.update("jax_compilation_cache_dir", str(path))
    # JAX's defaults keep only programs that took >= 1 s to compile; on CPU most of a small run's
    # compile time is in programs below that, so keep all of them.
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path


def configure(setting: str) -> pathlib.Path | None:
    """`resolve` then `enable`: the directory in use, or None when ``setting`` is ``off``. With the
    cache on, a bad ``KLTRUST_PROGRAM_CACHE`` is refused here too, before anything is compiled."""
    path = resolve(setting)
    if path is None:
        return None
    program_cache.switched_on()  # raises the one-line ConfigError for a value other than on/off
    return enable(path)
