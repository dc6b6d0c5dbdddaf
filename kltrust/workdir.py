"""Claiming a run directory: refuse, resume, start afresh or reuse, decided once for every process.

Every program that writes into a directory (the control loop's workdir, a token pipeline's stages,
a sweep's run directories) first records its config there, and a later run of the same command must
tell what it finds:

* nothing of another config, no outputs: **fresh** (a new run);
* outputs of this very config, unfinished: **resume** them (programs that can), or start afresh;
* a finished run of this very config: **done** (reuse it as it is), or refuse to run it again;
* outputs of another config, or outputs with no recorded config: **refuse** with a `ConfigError`
  naming the directory, unless ``overwrite``.

``overwrite`` always starts afresh. A config file of another config with no outputs beside it
holds nothing to lose and is simply replaced. "This very config" is the same text, or the same
JSON value (a file rewritten with other spacing).

`claim_workdir` applies the multi-process rules of `kltrust.processes`: every process decides from
what it sees (`decide`, which only reads), the outcomes are exchanged and must agree
(`processes.claim`), only then does process 0 write (`take`: clear the outputs of a fresh start,
record the config atomically), and every process waits for that (`processes.sync`). A caller that
decides many directories at once (a sweep) calls `decide` inside its own claim and `take` later.

The rules of one kind of directory are a `Rules`: which files are its outputs, which config file,
whether a run can be finished and what then, whether an unfinished one resumes, and the messages.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import pathlib
import shutil
from collections.abc import Callable

from kltrust import processes
from kltrust.errors import ConfigError
from kltrust.metrics import write_text_atomic


class Claim(enum.StrEnum):
    """What a claimed directory holds for this run (a string, so processes can exchange it)."""

    FRESH = "fresh"  # start from nothing: outputs cleared, the config recorded
    RESUME = "resume"  # carry on from this config's unfinished outputs
    DONE = "done"  # this config's finished run: reuse it, nothing is written


@dataclasses.dataclass(frozen=True)
class Rules:
    """How one kind of directory is claimed. Messages are templates of ``{path}``."""

    different: str  # refusal: outputs of another config (or of no recorded config)
    # The names a run writes (cleared on a fresh start); None: everything but the config file.
    outputs: tuple[str, ...] | None = None
    config_file: str = "config.json"
    # Whether a finished run is there; None: runs of this kind are never "finished" (resuming a
    # completed one finds no work left).
    finished: Callable[[pathlib.Path], bool] | None = None
    # A finished run of this config is reused (DONE) or, with this message, refused.
    refuse_finished: str | None = None
    resumable: bool = True  # an unfinished run of this config resumes (else starts afresh)


def _same_config(recorded: str, config_text: str) -> bool:
    if recorded == config_text:
        return True
    try:
        return json.loads(recorded) == json.loads(config_text)
    except ValueError:
        return False


def _entries(directory: pathlib.Path, rules: Rules) -> list[pathlib.Path]:
    """The outputs present in ``directory``."""
    if rules.outputs is None:
        if not directory.is_dir():
            return []
        return sorted(p for p in directory.iterdir() if p.name != rules.config_file)
    return [directory / name for name in rules.outputs if (directory / name).exists()
            or (directory / name).is_symlink()]


def decide(directory: str | pathlib.Path, config_text: str, rules: Rules,
           overwrite: bool = False) -> Claim:
    """What ``directory`` holds for a run of ``config_text`` (reads only; see the module doc).

    Raises `ConfigError` naming the directory for outputs of another config, or a finished run
    that ``rules`` refuses to repeat, unless ``overwrite``.
    """
    directory = pathlib.Path(directory)
    if overwrite:
        return Claim.FRESH
    recorded = directory / rules.config_file
    same = recorded.exists() and _same_config(recorded.read_text(), config_text)
    finished = rules.finished is not None and rules.finished(directory)
    holds = finished or bool(_entries(directory, rules))
    if not same:
        if holds:
            raise ConfigError(rules.different.format(path=directory))
        return Claim.FRESH
    if finished:
        if rules.refuse_finished is not None:
            raise ConfigError(rules.refuse_finished.format(path=directory))
        return Claim.DONE
    return Claim.RESUME if holds and rules.resumable else Claim.FRESH


def take(directory: str | pathlib.Path, config_text: str, rules: Rules, claim: Claim) -> None:
    """Process 0's writes for a decided ``claim``: on a fresh start, create the directory, remove
    its outputs and record the config (atomically); nothing otherwise."""
    if claim is not Claim.FRESH:
        return
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for path in _entries(directory, rules):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
    write_text_atomic(directory / rules.config_file, config_text)


def claim_workdir(name: str, directory: str | pathlib.Path, config_text: str, rules: Rules, *,
                  overwrite: bool = False) -> Claim:
    """Decides on every process, agrees, lets process 0 write, then waits for it; returns the
    claim. ``name`` names the decision point (in a disagreement or a timeout)."""
    directory = pathlib.Path(directory)
    claim = Claim(processes.claim(name, lambda: decide(directory, config_text, rules, overwrite),
                                  str(directory)))
    if processes.is_primary():
        take(directory, config_text, rules, claim)
    processes.sync(f"{name}.written")
    return claim

