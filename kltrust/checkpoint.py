"""Orbax checkpoints of a whole training state, with fallback past unreadable ones.

A checkpoint holds the program's full `TrainState`: parameters, optimiser and controller state,
the rng key, the update counter and the environments. Its step is the number of updates done, always
the end of a compiled chunk. So restoring one and running the remaining chunks gives the same
numbers, bit for bit on CPU, as a run that was never stopped.

Orbax writes each step to a temporary directory and renames it when complete, so a process killed
mid-save leaves no half step behind. A step that is listed but cannot be read (a disk error, a file
removed by hand) is reported, moved aside to ``WORKDIR/unreadable_checkpoints/STEP`` (never
deleted), and the step before it is used.
"""

from __future__ import annotations

import pathlib
import shutil
import warnings
from typing import Any

import jax
import orbax.checkpoint as ocp

from kltrust import processes

UNREADABLE = "unreadable_checkpoints"


class Checkpoints:
    """The checkpoints of one run directory (``WORKDIR/checkpoints``)."""

    def __init__(self, workdir: str | pathlib.Path, keep: int):
        self.workdir = pathlib.Path(workdir).absolute()
        self.directory = self.workdir / "checkpoints"
        self._manager = self._open(keep)
        self._keep = keep

    def _open(self, keep: int) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def steps(self) -> list[int]:
        return sorted(self._manager.all_steps())

    def save(self, step: int, state: Any) -> None:
        """Starts writing ``state`` as ``step`` (asynchronously; `wait` or `close` to finish)."""
        self._manager.save(step, args=ocp.args.StandardSave(state))

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.wait_until_finished()
        self._manager.close()

    def restore_latest(self, template: Any) -> tuple[int | None, Any]:
        """(step, state) of the newest readable checkpoint, laid out like ``template`` (a state of
        the same program, e.g. a fresh one); (None, None) when there is none.

        Unreadable steps are reported with a warning and moved aside, newest first, until one
        restores. Across processes the steps listed and each step's readability are agreed on:
        a step unreadable on any process is set aside by all of them.
        """
        abstract = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), template)
        for step in reversed(processes.agree("checkpoint.steps", self.steps())):
            error = None
            try:
                state = self._manager.restore(step, args=ocp.args.StandardRestore(abstract))
            except Exception as caught:  # noqa: BLE001  (any failure to read: use an older one)
                error = caught
            if processes.any_process(error is not None):
                self._set_aside(step, error or RuntimeError("unreadable on another process"))
                continue
            return step, state
        return None, None

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
