"""Experiment tracking: TensorBoard always, Weights & Biases beside it when the config asks.

A run's host loop writes its scalars through one `Tracker`, so every tracker it feeds receives the
same names, values and steps: TensorBoard (tensorboardX, ``DIR/tensorboard``) always, and W&B when
``config.logging.wandb.enabled``. W&B also gets the run's config (a plain dict, the one recorded
in ``config.json``) and, at the end, the run's plots as images.

    config.logging.wandb = dict(enabled=False, project="kltrust", mode="offline", entity="",
                                name="", tags=())

``mode`` "offline" (the default) writes the run under ``DIR/wandb`` and needs no network or
account (``wandb sync DIR/wandb/offline-run-*`` uploads it later); "online" streams it; "disabled"
keeps W&B's calls as no-ops. W&B's files stay under the run's directory. The ``wandb`` package is
the ``wandb`` extra (``pip install 'kltrust[wandb]'``); it is imported only when switched on, and
its absence is a `ConfigError` at validation, before anything compiles.

The logging options do not change what a run computes, so they are not part of the config a
workdir is claimed with (`identity_json`): switching W&B on to resume a run is not "another
config". A resumed run is a new W&B run holding the updates run after the restored checkpoint.
Only the primary process (`kltrust.processes.is_primary`) opens a tracker.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import pathlib
from collections.abc import Mapping
from typing import Any

import ml_collections

from kltrust.errors import ConfigError, check, check_choice

MODES = ("offline", "online", "disabled")
INSTALL_HINT = "pip install 'kltrust[wandb]'"


@dataclasses.dataclass(frozen=True)
class WandbSpec:
    """``config.logging.wandb``, read once: whether and where a run goes to Weights & Biases."""

    enabled: bool = False
    project: str = "kltrust"
    mode: str = "offline"  # one of MODES
    entity: str = ""  # "": the account's default entity (online only)
    name: str = ""  # "": the run directory's name
    tags: tuple[str, ...] = ()

    @property
    def active(self) -> bool:
        """Whether W&B is opened at all (mode "disabled" opens nothing, as W&B's own switch)."""
        return self.enabled and self.mode != "disabled"


def defaults() -> ml_collections.ConfigDict:
    """``config.logging`` of every program that tracks scalars (control and token runs)."""
    return ml_collections.ConfigDict(dict(wandb=dict(
        enabled=False, project="kltrust", mode="offline", entity="", name="", tags=())))


def _not_installed() -> ConfigError:
    return ConfigError(f"config.logging.wandb.enabled = True: needs the wandb package, which is "
                       f"not installed; {INSTALL_HINT}, or set it False.")


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks ``config.logging`` (absent: the defaults) with one `ConfigError` line naming the key;
    W&B switched on without the ``wandb`` package installed is refused here too, before anything
    compiles or is written."""
    if "logging" not in config:
        return
    w = config.logging.wandb
    check(isinstance(w.enabled, bool), "logging.wandb.enabled", w.enabled, "True or False")
    check_choice(w.mode, MODES, "logging.wandb.mode")
    check(isinstance(w.project, str) and w.project.strip() != "" and "/" not in w.project,
          "logging.wandb.project", w.project, "a non-empty project name without '/'")
    for key in ("entity", "name"):
        check(isinstance(w[key], str), f"logging.wandb.{key}", w[key], "a string")
    check(all(isinstance(t, str) and t for t in w.tags), "logging.wandb.tags", w.tags,
          "a tuple of non-empty strings")
    if w.enabled and w.mode != "disabled" and importlib.util.find_spec("wandb") is None:
        raise _not_installed()


def spec_from_config(config: ml_collections.ConfigDict) -> WandbSpec:
    """The `WandbSpec` of a validated config (the defaults when it has no ``logging``)."""
    if "logging" not in config:
        return WandbSpec()
    w = config.logging.wandb
    return WandbSpec(enabled=bool(w.enabled), project=w.project, mode=w.mode, entity=w.entity,
                     name=w.name, tags=tuple(w.tags))


def identity_json(config: ml_collections.ConfigDict) -> str:
    """The config a run directory is claimed with: all of it but ``logging`` (which changes where
    scalars go, not what is computed), as canonical JSON."""
    if "logging" not in config:
        return config.to_json_best_effort(indent=2, sort_keys=True)
    trimmed = ml_collections.ConfigDict(config.to_dict())
    del trimmed["logging"]
    return trimmed.to_json_best_effort(indent=2, sort_keys=True)


class Tracker:
    """One run's scalars, config and plots, to TensorBoard and (when on) a W&B run.

    Built by `open_tracker`; the writers call `log` once per step with every scalar of that step,
    so both receive the same keys at the same steps (W&B's history step is TensorBoard's step).
    """

    def __init__(self, board: Any, run: Any = None):
        self._board = board  # a tensorboardX SummaryWriter
        self._run = run  # a wandb Run, or None

    @property
    def wandb_run(self) -> Any:
        """The W&B run (None when W&B is off)."""
        return self._run

    def log(self, scalars: Mapping[str, float], step: int) -> None:
        """``scalars`` (name -> value) at ``step``; steps must not go back within a run (W&B
        drops a step below its last)."""
        for name, value in scalars.items():
            self._board.add_scalar(name, value, step)
        if self._run is not None and scalars:
            self._run.log({k: float(v) for k, v in scalars.items()}, step=int(step))

    def flush(self) -> None:
        """Writes TensorBoard's buffered events (W&B's service writes as it goes)."""
        self._board.flush()

    def images(self, paths: Mapping[str, pathlib.Path]) -> None:
        """The run's plots (name -> PNG path) as W&B images, with the last step logged; the
        files themselves stay where they are for TensorBoard users. Missing files are skipped."""
        if self._run is None:
            return
        import wandb

        found = {name: wandb.Image(str(path)) for name, path in paths.items()
                 if pathlib.Path(path).exists()}
        if found:
            self._run.log({f"plots/{name}": image for name, image in found.items()})

    def close(self, failed: bool = False) -> None:
        """Closes TensorBoard and finishes the W&B run (marked failed when ``failed``), so its
        service has written everything before the program goes on."""
        self._board.close()
        if self._run is not None:
            self._run.finish(exit_code=1 if failed else 0)
            self._run = None


def open_tracker(directory: pathlib.Path, spec: WandbSpec, config_json: str) -> Tracker:
    """A tracker writing TensorBoard under ``directory/tensorboard`` and, when ``spec`` is
    active, a W&B run under ``directory/wandb`` with the config ``config_json`` (a plain dict).
    Call on the primary process only."""
    from tensorboardX import SummaryWriter

    board = SummaryWriter(str(directory / "tensorboard"))
    if not spec.active:
        return Tracker(board)
    try:
        import wandb
    except ImportError:  # validate refuses this earlier; a spec built by hand may not have been
        board.close()
        raise _not_installed() from None
    run = wandb.init(
        project=spec.project, entity=spec.entity or None, name=spec.name or directory.name,
        tags=list(spec.tags), mode=spec.mode, dir=str(directory), config=json.loads(config_json),
        reinit="create_new",  # a sweep or a test may open several runs in one process
        # Only what this run logs: no console capture, system metrics, code, git or requirements
        # snapshots (quicker, and nothing of the machine leaves it unasked). Quiet but online,
        # where W&B's lines carry the run's address.
        settings=wandb.Settings(console="off", x_disable_stats=True, x_disable_meta=True,
                                x_disable_machine_info=True, save_code=False, disable_git=True,
                                x_save_requirements=False, disable_job_creation=True,
                                silent=spec.mode != "online"))
    return Tracker(board, run)
