"""Bad input, the same way in every program of experiments/: one line on stderr, exit status 2.

    _CONFIG = cli.config_file_flag("config", "configs/ppo.py:cartpole_clip", "Run config.")
    ...
    if __name__ == "__main__":
        cli.run(main)

`run` replaces ``absl.app.run``; it also switches on JAX's persistent compilation cache when
``--compilation_cache`` asks for it (`kltrust.compile_cache`), before ``main`` compiles anything.
A flag or config the program cannot run with (an unknown ``--config.KEY``, a value of the wrong
type, a missing config file or preset, a required flag left out, a value the config's checks
refuse) ends the program with one line on stderr,

    error: config.hparams.learnign_rate: unknown key; did you mean 'learning_rate'? the keys ...
    error: config.hparams.learning_rate = inf: must be in (0.0, inf).

and exit status `EXIT_BAD_INPUT` (2), with no traceback, before anything is compiled or written.
Config checks raise `kltrust.errors.ConfigError` (a ``ValueError``); `run` turns one raised
anywhere in ``main`` into that line. Library code that raises a plain ``ValueError`` for bad input
is wrapped in `config_errors` where the programs call it before any work. Anything else (a bug, a
failed run) keeps its traceback.

Config flags are defined by `config_file_flag`, not ``config_flags.DEFINE_config_file`` directly:
ml_collections loads a config flag's *default* while the module is imported, where a bad
``--config.KEY`` override could only fail with a traceback; here the default is put on the command
line instead and loaded while `run` parses the flags.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import pathlib
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from absl import app, flags
from ml_collections import config_flags

from kltrust import compile_cache
from kltrust.errors import ConfigError, did_you_mean, one_line, unknown_key

EXIT_BAD_INPUT = 2
# A run stopped by SIGTERM exits with 128 + 15, as if killed by it, after writing its checkpoint:
# a script that chains runs must not mistake it for a finished one.
EXIT_PREEMPTED = 143
FLAGS = flags.FLAGS

_CONFIG_DEFAULTS: dict[str, str | None] = {}  # config flag name -> its default FILE.py[:PRESET]

# Every program here takes it: JAX's persistent compilation cache (kltrust.compile_cache), opt-in.
_COMPILATION_CACHE = flags.DEFINE_string(
    "compilation_cache", compile_cache.OFF,
    "Keep compiled programs on disk and reuse them in later runs: 'off', 'user' "
    "($KLTRUST_CACHE/xla or ~/.cache/kltrust/xla) or a directory.")


def fail(message: str) -> NoReturn:
    """Prints ``error: MESSAGE`` (one line) to stderr and exits with status 2."""
    sys.stderr.write(f"error: {one_line(message)}\n")
    sys.stderr.flush()
    sys.exit(EXIT_BAD_INPUT)


def exit_preempted(where: str) -> NoReturn:
    """Says that the run stopped on SIGTERM after ``where`` (its checkpoint written) and exits with
    `EXIT_PREEMPTED`."""
    print(f"stopped by SIGTERM after {where}; a checkpoint was written. Run the same command to "
          "resume.", flush=True)
    sys.exit(EXIT_PREEMPTED)


@contextlib.contextmanager
def config_errors() -> Iterator[None]:
    """A ``ValueError`` raised inside is bad input: it leaves as a `ConfigError` (same message).

    For checks done before any work by library code that raises plain ``ValueError`` (mesh shapes,
    sweep expansion, config file loading); do not wrap work that could fail for other reasons.
    """
    try:
        yield
    except ConfigError:
        raise
    except ValueError as error:
        raise ConfigError(one_line(str(error))) from error


def config_file_flag(name: str, default: str | None, help_text: str) -> flags.FlagHolder:
    """``--NAME=FILE.py[:PRESET]`` with ``--NAME.KEY=VALUE`` overrides (a locked ConfigDict, as
    ``config_flags.DEFINE_config_file``), whose errors `run` reports in one line. ``default`` is
    used when the command line has no ``--NAME``; None makes the flag's value None then."""
    if default is not None:
        help_text = f"{help_text} (default: {default})"
    holder = config_flags.DEFINE_config_file(name, None, help_text, lock_config=True)
    _CONFIG_DEFAULTS[name] = default
    return holder


def run(main: Callable[[list[str]], Any]) -> None:
    """``absl.app.run(main)``, with bad flags and `ConfigError` (and ``app.UsageError``) from
    ``main`` reported as one line and exit status 2 (see the module docstring)."""

    def guarded(argv: list[str]) -> Any:
        try:
            compile_cache.configure(_COMPILATION_CACHE.value)  # before anything is compiled
            return main(argv)
        except (ConfigError, app.UsageError) as error:
            fail(str(error))

    app.run(guarded, flags_parser=parse_flags)


def parse_flags(argv: Sequence[str]) -> list[str]:
    """Parses ``argv`` into ``FLAGS``; a bad flag ends the program (`fail`). Returns the
    arguments left over, program name first."""
    argv = _with_config_defaults(list(argv))
    sys.argv[:] = argv  # ml_collections reads the overrides from sys.argv
    try:
        rest = FLAGS(argv)
    except (flags.Error, AttributeError, KeyError, OSError) as error:
        message = _flag_error(argv, error)
        if message is None:
            raise
        fail(message)
    for name in _CONFIG_DEFAULTS:
        value = FLAGS[name].value
        try:
            getattr(value, "keys", None)  # a config file that failed to load raises here
        except OSError as error:
            fail(_load_error(argv, name) or str(error))
    return rest


# ---------------------------------------------------------------- messages


def _with_config_defaults(argv: list[str]) -> list[str]:
    """``argv`` with ``--NAME=DEFAULT`` right after the program name for each config flag the
    command line does not set (before any override, as ml_collections requires)."""
    for name, default in _CONFIG_DEFAULTS.items():
        if default is not None and _config_spec(argv, name) is None:
            argv = argv[:1] + [f"--{name}={default}"] + argv[1:]
    return argv


def _config_spec(argv: Sequence[str], name: str) -> str | None:
    """The ``FILE.py[:PRESET]`` given for config flag ``name`` in ``argv`` (the last), if any."""
    spec = None
    for i, arg in enumerate(argv):
        match = re.fullmatch(rf"--?{re.escape(name)}(=(?P<value>.*))?", arg)
        if match:
            spec = match["value"] if match["value"] is not None else (
                argv[i + 1] if i + 1 < len(argv) else None)
    return spec


def _overrides(argv: Sequence[str], name: str) -> list[tuple[str, str | None]]:
    """(dotted path, value) of every ``--NAME.PATH[=VALUE]`` override of config flag ``name``."""
    out = []
    for arg in argv:
        match = re.fullmatch(rf"--?(no)?{re.escape(name)}\.(?P<path>[^=]+)(=(?P<value>.*))?", arg)
        if match:
            out.append((match["path"], match["value"]))
    return out


def _load_config(argv: Sequence[str], name: str) -> Any:
    """The config flag ``name``'s config as the command line names it (before overrides), or None
    if it does not load."""
    spec = _config_spec(argv, name)
    if spec is None:
        return None
    try:
        config = FLAGS[name].parser.parse(spec)
        getattr(config, "keys")  # a failed load is an object that raises on any use
    except Exception:  # noqa: BLE001 (reported by _load_error or absl's message instead)
        return None
    return config


def lookup(config: Any, name: str, path: str) -> tuple[Any, str | None]:
    """(the value at dotted ``path`` in ``config``, None), or (None, the one-line error naming
    ``{name}.{path}``, with a did-you-mean) where a part of ``path`` does not exist."""
    node, done = config, []
    for part in path.split("."):
        where = ".".join([name, *done])
        if not hasattr(node, "keys"):
            return None, (f"{where} = {node!r}: has no field {part!r} (it is a value, not a "
                          "group of fields).")
        if part not in node:
            message = str(unknown_key(".".join([*done, part]), node.keys()))
            return None, f"{name}." + message.removeprefix("config.")
        node = node[part]
        done.append(part)
    return node, None


def _innermost(error: BaseException) -> BaseException:
    """The first exception of ``error``'s chain (what a config file's get_config raised)."""
    seen = set()
    while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return error


def _load_error(argv: Sequence[str], name: str) -> str | None:
    """The message for config flag ``name`` naming a file that does not exist."""
    spec = _config_spec(argv, name)
    if spec is None:
        return None
    path = spec.split(":", 1)[0]
    if pathlib.Path(path).is_file():
        return None
    folder = pathlib.Path(path).parent
    files = sorted(str(p) for p in folder.glob("*.py") if p.name != "__init__.py") if (
        folder.is_dir()) else []
    hint = did_you_mean(path, files)
    listed = f"the config files there are {', '.join(files)}" if files else (
        f"there is no folder {str(folder)!r}")
    return (f"--{name} = {spec!r}: no config file {path!r} (relative to {os.getcwd()}); "
            f"{hint}{listed}.")


_TYPE_WORDS = {"int": "an integer", "float": "a number", "bool": "true or false",
               "string": "a string", "comma separated list of strings": "a comma-separated list"}


def _flag_error(argv: Sequence[str], error: BaseException) -> str | None:
    """One line for a flag parsing ``error``, or None where it is not bad input we can name."""
    for name in _CONFIG_DEFAULTS:  # an override naming a key the config does not have
        overrides = _overrides(argv, name)
        if not overrides:
            continue
        if _config_spec(argv, name) is None:
            return (f"--{name}.{overrides[0][0]}: overrides a field of --{name}, which is not "
                    f"given; pass --{name}=FILE.py[:PRESET] first.")
        if (message := _load_error(argv, name)) is not None:
            return message
        config = _load_config(argv, name)
        if config is None:
            continue
        for path, _ in overrides:
            _, message = lookup(config, name, path)
            if message is not None:
                return message
    if isinstance(error, OSError):
        return next((m for n in _CONFIG_DEFAULTS if (m := _load_error(argv, n))), None)
    if not isinstance(error, flags.Error):
        return None  # an AttributeError or KeyError that is not an override: a bug, keep it
    if isinstance(error, flags.UnrecognizedFlagError):
        name = error.flagname
        ours = sorted(f"--{n}" for n in _program_flags())
        near = difflib.get_close_matches(name, list(FLAGS), n=1)
        hint = f"did you mean --{near[0]}? " if near else ""
        return f"--{name}: unknown flag; {hint}this program's flags are {', '.join(ours)}."
    text = str(error)
    match = re.match(r"flag --(?P<name>[^=\s]+)=(?P<value>.*?): (?P<reason>.*)$", text, re.S)
    if not match:
        return text
    name, value, reason = match["name"], match["value"], match["reason"]
    if name in _CONFIG_DEFAULTS:  # the config file's get_config refused the preset
        return f"--{name} = {value!r}: {one_line(str(_innermost(error)))}"
    if "must have a value other than None" in reason:
        help_text = FLAGS[name].help.split(" (default:")[0].rstrip(".") if name in FLAGS else ""
        return f"--{name}: required, not given ({help_text})." if help_text else (
            f"--{name}: required, not given.")
    root, _, path = name.partition(".")
    if root in _CONFIG_DEFAULTS and path:  # an override of the wrong type
        config = _load_config(argv, root)
        default, _ = lookup(config, root, path) if config is not None else (None, None)
        if default is not None:
            return (f"{name} = {value!r}: must be of type {type(default).__name__} (like its "
                    f"default {default!r}).")
    if name in FLAGS and ("invalid literal" in reason or "could not convert" in reason
                          or "Non-boolean" in reason):
        kind = FLAGS[name].flag_type()
        return f"--{name} = {value!r}: must be {_TYPE_WORDS.get(kind, kind)}."
    reason = one_line(reason)
    refused = re.fullmatch(r".* is not (?P<allowed>.+?)\.?", reason)  # absl's bounds
    return f"--{name} = {value!r}: " + (f"must be {refused['allowed']}." if refused else reason)


def _program_flags() -> list[str]:
    """The flags this program defines (its own module's and experiments'), not absl's."""
    names = []
    for module, module_flags in FLAGS.flags_by_module_dict().items():
        if module.startswith("experiments") or module in ("__main__", sys.argv[0]) or (
                module.endswith(".py") and "experiments" in module):
            names += [f.name for f in module_flags]
    return sorted(set(names))
