"""Orbax checkpoints of a whole training state, with fallback past unreadable ones.

A checkpoint holds the program's full `TrainState`: parameters, optimiser and controller state,
the rng key, the update counter and the environments. Its step is the number of updates done, always
the end of a compiled chunk. So restoring one and running the remaining chunks gives the same
numbers, bit for bit on CPU, as a run that was never stopped.

Orbax writes each step to a temporary directory and renames it when complete, so a process killed
mid-save leaves no half step behind. A step that is listed but cannot be read (a disk error, a file
removed by hand) is reported, moved aside to ``WORKDIR/unreadable_checkpoints/STEP`` (never
deleted), and the step before it is used.

A step that is readable but was written with another state layout (its stored tree has other
leaves, shapes or dtypes than the program's state, e.g. a checkpoint of an older kltrust whose β
controller state had other fields) is not unreadable: setting it aside would set aside every step
of the run and silently start it over. Restoring it raises `LayoutMismatch` instead, one line
naming the directory and what differs, and leaves the checkpoints as they are.
"""

from __future__ import annotations

import pathlib
import shutil
import warnings
from typing import TYPE_CHECKING, Any

import jax
import numpy as np

from kltrust import processes
from kltrust.errors import ConfigError

if TYPE_CHECKING:
    import orbax.checkpoint as ocp


def _orbax():
    """``orbax.checkpoint``, imported on first use: a run without a workdir never checkpoints, and
    importing orbax (about 230 modules) added 25 MiB to such a run's resident memory."""
    import orbax.checkpoint as ocp  # noqa: PLC0415

    return ocp

UNREADABLE = "unreadable_checkpoints"

Layout = dict[str, tuple[tuple[int, ...], str]]  # "a.b.c" -> (shape, dtype) of each array leaf


class LayoutMismatch(ConfigError):
    """A checkpoint written with a different state layout than the program restoring it has."""


def _path(keys: tuple[Any, ...]) -> str:
    """A tree path as dotted text, whatever kind of key each step is (dict key, attribute, index)."""
    names = []
    for key in keys:
        for attr in ("key", "name", "idx"):
            if hasattr(key, attr):
                key = getattr(key, attr)
                break
        names.append(str(key))
    return ".".join(names)


def template_layout(template: Any) -> Layout:
    """The array leaves of a state (or of its `jax.ShapeDtypeStruct`s): path → (shape, dtype)."""
    leaves = jax.tree_util.tree_flatten_with_path(template)[0]
    return {_path(keys): (tuple(x.shape), str(np.dtype(x.dtype))) for keys, x in leaves}


class Checkpoints:
    """The checkpoints of one run directory (``WORKDIR/checkpoints``)."""

    def __init__(self, workdir: str | pathlib.Path, keep: int):
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self._manager = self._open(keep)
        self._keep = keep

    def _open(self, keep: int) -> ocp.CheckpointManager:
        # The handler is named so that a freshly opened manager can read a step's tree metadata
        # (`stored_layout`) before anything is restored.
        ocp = _orbax()
        return ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
            item_handlers=ocp.StandardCheckpointHandler())

    def steps(self) -> list[int]:
        """The steps that have a checkpoint, oldest first."""
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Starts writing ``state`` as ``step`` (asynchronously; `wait` or `close` to finish)."""
        self._manager.save(step, args=_orbax().args.StandardSave(state))

    def wait(self) -> None:
        """Blocks until every asynchronous save has finished writing."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves, then releases the manager (no saves after this)."""
        self._manager.wait_until_finished()
        self._manager.close()

    def restore_latest(self, template: Any) -> tuple[int | None, Any]:
        """(step, state) of the newest readable checkpoint, laid out like ``template`` (a state of
        the same program, e.g. a fresh one); (None, None) when there is none.

        Unreadable steps are reported with a warning and moved aside, newest first, until one
        restores. Across processes the steps listed and each step's readability are agreed on:
        a step unreadable on any process is set aside by all of them.

        Raises:
          LayoutMismatch: the newest step whose tree can be read was written with another state
            layout than ``template``'s (nothing is moved aside; see the module docstring).
        """
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
        expected = template_layout(abstract)
        for step in reversed(processes.agree("checkpoint.steps", self.steps())):
            stored = self.stored_layout(step)
            differs = stored is not None and stored != expected
            if processes.any_process(differs):
                raise LayoutMismatch(self._mismatch(step, stored, expected))
            error = None
            try:
                state = self._manager.restore(step, args=_orbax().args.StandardRestore(abstract))
            except Exception as caught:  # noqa: BLE001  (any failure to read: use an older one)
                error = caught
            if processes.any_process(error is not None):
                self._set_aside(step, error or RuntimeError("unreadable on another process"))
                continue
            return step, state
        return None, None

    def stored_layout(self, step: int) -> Layout | None:
        """The array leaves ``step`` holds, path → (shape, dtype), read from its metadata alone;
        None when that cannot be read (the step is then tried, and set aside if unreadable)."""
        try:
            metadata = self._manager.item_metadata(step)
            tree = metadata.tree
            return {".".join(str(k) for k in keys): (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
                    for keys, leaf in _orbax().tree.to_flat_dict(tree).items() if leaf is not None}
        except Exception:  # noqa: BLE001  (unreadable metadata: let the restore decide)
            return None

    def _mismatch(self, step: int, stored: Layout | None, expected: Layout) -> str:
        where = self.directory / str(step)
        details = ""
        if stored is not None:
            parts = []
            for what, keys in (("stored only", sorted(set(stored) - set(expected))),
                               ("expected only", sorted(set(expected) - set(stored))),
                               ("other shape or dtype", sorted(
                                   k for k in set(stored) & set(expected)
                                   if stored[k] != expected[k]))):
                if keys:
                    more = f" and {len(keys) - 3} more" if len(keys) > 3 else ""
                    parts.append(f"{what}: {', '.join(keys[:3])}{more}")
            details = f" ({'; '.join(parts)})"
        return (f"checkpoint {where} was written with a different state layout than this "
                f"program's, e.g. by an older kltrust{details}; it cannot be resumed. Rerun with "
                "--overwrite to start the run over (or resume it with the kltrust that wrote it).")

    def _set_aside(self, step: int, error: Exception) -> None:
        target = self.workdir / UNREADABLE / str(step)
        copies = 1
        while target.exists():  # the same step was set aside before: keep both
            copies += 1
            target = self.workdir / UNREADABLE / f"{step}-{copies}"
        warnings.warn(f"checkpoint {self.directory / str(step)} is unreadable "
                      f"({type(error).__name__}: {str(error)[:200]}); moved to {target}, "
                      "trying the one before it.", RuntimeWarning, stacklevel=3)
        processes.sync(f"checkpoint.unreadable.{step}")
        if processes.is_primary():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(self.directory / str(step)), str(target))
        processes.sync(f"checkpoint.moved.{step}")
        # The manager caches its list of steps: reopen it on what is left.
        self._manager.close()
        self._manager = self._open(self._keep)
