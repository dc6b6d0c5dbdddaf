"""Warm starts that skip tracing and the parameter init: a run's compiled chunk and its initial
state kept on disk, under a key of everything that determines them.

JAX's persistent cache (`kltrust.compile_cache`) keys a program by its lowered HLO, so a warm run
still traces and lowers its chunk and runs the eager parameter init before it can look anything
up: 2.3 s of a warm CartPole PPO start (docs/results/speed.md). This cache keys a control run
(`kltrust.train.loop`) instead by what the chunk and the initial state are functions of:

- the run: its program name, its Static's repr, the mesh (axis sizes and device ids), the seeds and
  every hyperparameter array (their bytes, dtypes and shapes);
- the code: every source file of the ``kltrust`` package and of every other imported module that
  lives outside the standard library and site-packages (``configs``, ``experiments``, a user's own
  component files), by content;
- the toolchain: the Python version, the installed versions of `DISTRIBUTIONS` (jax, jaxlib,
  flax, optax, numpy, gymnax, brax, mujoco, ...), the devices' platform, kind and ids, and the
  environment variables that steer XLA, JAX or kltrust (``XLA_*``, ``JAX_*``, ``KLTRUST_*``).

On a hit the executable is deserialised (`jax.experimental.serialize_executable`) and the stored
state placed as it expects: nothing is traced, initialised or compiled. The executable is the one
that was compiled and the state the one that was computed, so the run's numbers are bit-identical
to the run that stored them (tests/test_program_cache.py). A miss compiles as usual and stores
both. An entry that cannot be read is reported in one line and replaced.

The cache is on exactly when the persistent compilation cache is (``--compilation_cache``), in the
directory ``kltrust-programs`` inside it, and only in single-process runs (a multi-process run's
processes would have to agree on a hit; they compile as before) whose main program is a file: in
a notebook, the REPL or ``python -c``, code typed there has no file for the key to cover, so
nothing is kept (JAX's own cache still is). ``KLTRUST_PROGRAM_CACHE=off`` in the environment keeps
JAX's cache alone: each run then traces, initialises and compiles as without any cache, loading
only XLA's output (the test suite runs so, to exercise the path a default run takes).

What the key cannot see: an installed package outside `DISTRIBUTIONS` that a run's code calls
into, or one edited in place without a version change (an editable install of gymnax, say). Clear
the directory after such a change. Entries are pickles: the directory is the user's own, like
JAX's cache beside it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import pathlib
import pickle
import shutil
import sys
import sysconfig
import tempfile
import warnings
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np

from kltrust.errors import ConfigError

SUBDIR = "kltrust-programs"
SWITCH = "KLTRUST_PROGRAM_CACHE"  # the environment variable that turns this cache off
_ENV_PREFIXES = ("XLA_", "JAX_", "KLTRUST_")
# The installed packages a control program's chunk or initial state can depend on. A fixed list,
# not "whatever is imported": the key must not change with what else a process happened to load.
DISTRIBUTIONS = ("jax", "jaxlib", "flax", "optax", "chex", "numpy", "gymnax", "brax", "mujoco",
                 "mujoco-mjx", "ml-collections", "orbax-checkpoint")


def directory() -> pathlib.Path | None:
    """Where entries live: ``kltrust-programs`` inside JAX's compilation cache directory, or None
    (no cache) when that cache is off, ``KLTRUST_PROGRAM_CACHE=off`` (`switched_on`), the run spans
    several processes, or the process runs code typed interactively
    (`interactive_code_is_hashed`)."""
    base = jax.config.jax_compilation_cache_dir
    if not base or not switched_on() or jax.process_count() > 1 or not interactive_code_is_hashed():
        return None
    return pathlib.Path(base) / SUBDIR


def switched_on() -> bool:
    """False when the environment says ``KLTRUST_PROGRAM_CACHE=off`` (JAX's cache alone); True
    when it is unset or ``on``. Any other value is a `ConfigError` naming the variable."""
    value = os.environ.get(SWITCH, "on")
    if value not in ("on", "off"):
        raise ConfigError(f"{SWITCH}={value!r}: must be 'on' or 'off'")
    return value == "on"


def interactive_code_is_hashed() -> bool:
    """False in a notebook, the REPL or ``python -c``: code typed there (a component defined in a
    cell, say) has no file whose content the key could cover, so such a process keeps nothing."""
    return bool(getattr(sys.modules.get("__main__"), "__file__", None))


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib") if k in paths}
    return tuple(sorted(os.path.realpath(r) + os.sep for r in roots))


def source_files() -> list[pathlib.Path]:
    """The files whose content enters the key: all of ``kltrust``'s ``.py`` files, and the file of
    every imported module outside the standard library and site-packages."""
    import kltrust  # noqa: PLC0415  (this package itself, wherever it is installed)

    files = set(pathlib.Path(kltrust.__file__).resolve().parent.rglob("*.py"))
    roots = _library_roots()
    for module in list(sys.modules.values()):
        name = getattr(module, "__file__", None)
        if name and name.endswith(".py") and not os.path.realpath(name).startswith(roots):
            files.add(pathlib.Path(name).resolve())
    return sorted(files)


def digest_files(files: Iterable[pathlib.Path]) -> str:
    """sha256 over each file's path and content (a file that vanished counts as empty)."""
    h = hashlib.sha256()
    for path in files:
        h.update(str(path).encode() + b"\0")
        try:
            h.update(path.read_bytes())
        except OSError:
            pass
        h.update(b"\0")
    return h.hexdigest()


def _toolchain() -> str:
    versions = []
    for name in DISTRIBUTIONS:
        try:
            versions.append((name, importlib.metadata.version(name)))
        except importlib.metadata.PackageNotFoundError:
            versions.append((name, None))
    env = sorted((k, v) for k, v in os.environ.items() if k.startswith(_ENV_PREFIXES))
    devices = [(d.platform, d.device_kind, d.id) for d in jax.devices()]
    return repr((sys.version, versions, env, devices))


def key(program: str, static: Any, mesh: jax.sharding.Mesh, seeds: np.ndarray,
        hparams: Any) -> str:
    """The entry's name: a sha256 over the run, the code and the toolchain (module docstring)."""
    h = hashlib.sha256()
    mesh_ids = np.vectorize(lambda d: d.id)(mesh.devices)
    h.update(repr((program, repr(static), dict(mesh.shape), mesh_ids.tolist())).encode())
    leaves, treedef = jax.tree.flatten((np.asarray(seeds), hparams))
    h.update(str(treedef).encode())
    for leaf in leaves:
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(repr((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    h.update(digest_files(source_files()).encode())
    h.update(_toolchain().encode())
    return h.hexdigest()


def load(entry: pathlib.Path) -> tuple[Any, Any] | None:
    """(initial state placed for the executable, the executable) from ``entry``, or None when it
    does not exist or cannot be read (said in one line; the caller compiles and replaces it)."""
    if not entry.is_dir():
        return None
    from jax.experimental import serialize_executable  # noqa: PLC0415  (only on a hit)

    try:
        with open(entry / "program.pkl", "rb") as f:
            payload, in_tree, out_tree = pickle.load(f)
        with open(entry / "state.pkl", "rb") as f:
            treedef, leaves = pickle.load(f)
        compiled = serialize_executable.deserialize_and_load(payload, in_tree, out_tree)
        state = jax.tree.unflatten(treedef, leaves)
        state = jax.device_put(state, compiled.input_shardings[0][0])
    except Exception as error:  # noqa: BLE001  (any damage: fall back to compiling)
        warnings.warn(f"program cache entry {entry} unreadable ({type(error).__name__}: "
                      f"{error}); compiling again and replacing it", stacklevel=2)
        return None
    return state, compiled


def store(entry: pathlib.Path, state: Any, compiled: Any) -> None:
    """Writes ``state`` and ``compiled`` as ``entry``, all at once: built in a temporary directory
    beside it and renamed into place, so a reader sees a whole entry or none. Another process that
    stored the same entry first wins (same key, same content)."""
    from jax.experimental import serialize_executable  # noqa: PLC0415

    entry.parent.mkdir(parents=True, exist_ok=True)
    leaves, treedef = jax.tree.flatten(jax.device_get(state))
    tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{entry.name}.", dir=entry.parent))
    try:
        with open(tmp / "program.pkl", "wb") as f:
            pickle.dump(serialize_executable.serialize(compiled), f)
        with open(tmp / "state.pkl", "wb") as f:
            pickle.dump((treedef, [np.asarray(x) for x in leaves]), f)
        if entry.exists():  # an unreadable entry `load` reported: replaced
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process stored it meanwhile
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def init_and_compile(compile_fn: Callable[[], tuple[Any, Any]], program: str, static: Any,
                     mesh: jax.sharding.Mesh, seeds: np.ndarray, hparams: Any
                     ) -> tuple[Any, Any, bool]:
    """(initial state, compiled chunk, whether they came from the cache): loaded when an entry for
    this run, code and toolchain exists; else ``compile_fn()``, stored when the cache is on. The
    first run of a program with this cache on compiles it in full even where JAX's cache holds it
    (the comment in the body says why): once per key."""
    root = directory()
    if root is None:
        return (*compile_fn(), False)
    entry = root / key(program, static, mesh, seeds, hparams)
    hit = load(entry)
    if hit is not None:
        return (*hit, True)
    # Compiled past JAX's own cache: an executable JAX loaded from there serialises without the
    # code of some of its functions (jax 0.10.2 on CPU: a later process that loads it fails with
    # "Function wrapped_broadcast not found"), so what is stored must be freshly compiled.
    before = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)
    try:
        state, compiled = compile_fn()
    finally:
        jax.config.update("jax_enable_compilation_cache", before)
    try:
        store(entry, state, compiled)
    except Exception as error:  # noqa: BLE001  (a cache that cannot write must not stop the run)
        warnings.warn(f"program cache: could not store {entry} ({type(error).__name__}: "
                      f"{error}); the run goes on uncached", stacklevel=2)
    return state, compiled, False
