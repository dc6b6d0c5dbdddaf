"""The one host loop: compiled chunks, metric rows, guards, checkpoints, resume, SIGTERM.

On the host every training program is the same thin loop around a compiled function that runs a
chunk of updates (`lax.scan` inside) on a carried state. `run` is that loop; a program describes
itself with `Chunks`:

    resume?   restore the newest readable checkpoint, agree on its step, read the rows written up
              to it (every process), then let process 0 cut the rows written after it
    between(first chunk)                      e.g. the token stage's evaluation and KL guard
    for every chunk left:
        progress mark                          the hung-peer watchdog (`processes.progress`)
        carry, metrics = chunk(carry)          metrics to the host, padding runs dropped
        stop = SIGTERM seen by any process     never after the last chunk
        metric rows -> files (process 0)       before the checkpoint: a run killed in between
                                               has rows past it, which resuming drops
        non-finite streak check                `guards.check_streak`
        checkpoint                             every k chunks, after the last, and on a stop
        progress bar, on_chunk
        between(chunks done)                   unless stopping

Without a workdir nothing is written, checkpointed or resumed, and SIGTERM keeps its default
meaning (a sweep's group, a notebook). With several processes every decision above is taken by all
of them alike (`kltrust.processes`): the resume step is agreed, a stop is any process's, and only
process 0 writes rows (every process writes its checkpoint shards, as orbax requires).

A program that evaluates between chunks does it in ``between``: it receives the carry after ``i``
chunks and returns it (a guard may roll it back). The token stage (`kltrust.train.pipeline`) and
the bandit testbed (`kltrust.train.bandit_run`: ``advance`` = ``steps_per_eval`` steps vmapped over
runs, ``between`` = its exact evaluation) both do; the control loop (`kltrust.train.loop`) does not.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from kltrust import checkpoint as ckpt
from kltrust import guards, processes, sharding
from kltrust.metrics import read_update_rows, truncate_update_rows


def _same(x: Any) -> Any:
    return x


@dataclasses.dataclass(frozen=True)
class RowsFile:
    """A JSON-lines file of rows, besides the per-update metrics, that resuming cuts back."""

    name: str  # under the workdir
    key: str  # the integer field that orders the rows ("update", "evaluation")
    last_kept: Callable[[int], int]  # updates done at the checkpoint -> the largest key kept
    resumed: Callable[[list[dict]], None]  # receives the kept rows (every process, before the cut)


@dataclasses.dataclass
class Chunks:
    """A training program as the host loop sees it.

    ``advance(carry) -> (carry, metrics)`` is the compiled chunk: metrics are name -> [runs
    (padded), updates], of which the first ``len(seeds)`` runs are real. The carry is whatever the
    program threads through chunks (a train state; the token stage adds its hyperparameters).
    """

    name: str  # names the progress marks and agreement points ("loop", "policy")
    advance: Callable[[Any], tuple[Any, Any]]
    num_chunks: int
    updates_per_chunk: int
    seeds: np.ndarray  # of the real runs, in order
    # guards.max_nonfinite_updates; None: the program has no non-finite guard (no streak metric).
    max_nonfinite_updates: int | None = None
    # Process 0 writes one chunk's rows: (host metrics [runs, updates], updates before the chunk).
    write_rows: Callable[[dict[str, np.ndarray], int], None] | None = None
    metrics_file: str = "metrics.jsonl"  # the per-update rows, read back as arrays on resume
    rows_files: tuple[RowsFile, ...] = ()  # other rows a resume cuts back
    saved: Callable[[Any], Any] = _same  # carry -> what a checkpoint holds (a pytree of arrays)
    restored: Callable[[Any], Any] = _same  # a restored checkpoint -> carry
    between: Callable[[int, Any], Any] | None = None  # (chunks done, carry) -> carry
    checkpoint_every: int = 1  # chunks; the last chunk and a stop always checkpoint
    keep_checkpoints: int = 2
    title: str = ""  # the progress bar's
    postfix: Callable[[dict[str, np.ndarray]], dict[str, str] | None] | None = None  # bar's tail


@dataclasses.dataclass
class Ran:
    """What `run` ends with."""

    carry: Any  # after the last chunk run (and ``between``), padding runs included
    metrics: dict[str, np.ndarray]  # name -> [runs, updates]: every update, restored ones too
    resumed_from: int  # updates restored from a checkpoint (0: a fresh run)
    preempted: bool  # stopped by SIGTERM after writing a checkpoint
    chunk_seconds: float  # inside the compiled chunks (with their metrics' transfer)
    loop_seconds: float  # the whole loop: rows, checkpoints and ``between`` included


def read_rows(path: pathlib.Path, key: str, last: int) -> list[dict]:
    """The rows of a JSON-lines file whose ``key`` is at most ``last`` ([] without the file)."""
    if not path.exists():
        return []
    return [row for row in map(json.loads, path.read_text().splitlines()) if row[key] <= last]


def _resume(chunks: Chunks, carry: Any, workdir: pathlib.Path, checkpoints: ckpt.Checkpoints
            ) -> tuple[Any, int, dict[str, list[np.ndarray]]]:
    """(carry, updates done, metric history) from the newest readable checkpoint; rows written
    after it are cut, once every process has read what it keeps."""
    done = 0
    step, restored = checkpoints.restore_latest(chunks.saved(carry))
    if step is not None:
        carry, done = chunks.restored(restored), step
    processes.agree(f"{chunks.name}.resume_step", done)
    history = {k: [v] for k, v in read_update_rows(workdir / chunks.metrics_file, done).items()}
    for rows in chunks.rows_files:
        rows.resumed(read_rows(workdir / rows.name, rows.key, rows.last_kept(done)))
    processes.sync(f"{chunks.name}.rows_read")  # every process has read before rows are cut
    if processes.is_primary():
        truncate_update_rows(workdir / chunks.metrics_file, done)
        for rows in chunks.rows_files:
            truncate_update_rows(workdir / rows.name, rows.last_kept(done), key=rows.key)
    processes.sync(f"{chunks.name}.resumed")
    return carry, done, history


def run(chunks: Chunks, carry: Any, *, workdir: str | pathlib.Path | None = None,
        resume: bool = False, progress: bool = False,
        on_chunk: Callable[[int], None] | None = None) -> Ran:
    """Runs the chunks left from ``carry`` (or from the workdir's checkpoint when ``resume``).

    With a ``workdir`` (already claimed, `kltrust.workdir`) rows are written there, checkpoints
    saved under ``workdir/checkpoints`` and SIGTERM stops the loop after the current chunk.
    ``on_chunk(updates)`` is called after every chunk. Checkpoints are closed (the saves already
    started finished) whether the loop ends or fails.
    """
    workdir = None if workdir is None else pathlib.Path(workdir)
    checkpoints = None if workdir is None else ckpt.Checkpoints(workdir, chunks.keep_checkpoints)
    per_chunk, num_runs = chunks.updates_per_chunk, len(chunks.seeds)
    history: dict[str, list[np.ndarray]] = {}
    done, preempted, chunk_seconds = 0, False, 0.0
    try:
        if resume and checkpoints is not None:
            carry, done, history = _resume(chunks, carry, workdir, checkpoints)
        bar = tqdm(total=chunks.num_chunks * per_chunk, initial=done, unit="update",
                   disable=not progress, desc=chunks.title)
        start = time.perf_counter()
        first = done // per_chunk
        if chunks.between is not None:
            carry = chunks.between(first, carry)
        with processes.StopOnSigterm(enabled=workdir is not None) as stop:
            for chunk in range(first, chunks.num_chunks):
                processes.progress(f"{chunks.name}.chunk")
                t = time.perf_counter()
                carry, metrics = chunks.advance(carry)
                metrics = {k: np.asarray(v[:num_runs])
                           for k, v in sharding.to_host(metrics).items()}
                chunk_seconds += time.perf_counter() - t
                for name, values in metrics.items():
                    history.setdefault(name, []).append(values)
                updates_before = chunk * per_chunk
                last = chunk + 1 == chunks.num_chunks
                # Every process stops at the same chunk, whichever of them got the signal.
                preempted = processes.any_process(stop.requested) and not last
                if workdir is not None and processes.is_primary() and chunks.write_rows:
                    chunks.write_rows(metrics, updates_before)
                if chunks.max_nonfinite_updates is not None:
                    guards.check_streak(metrics, chunks.max_nonfinite_updates, updates_before,
                                        chunks.seeds)
                if checkpoints is not None and (
                        (chunk + 1) % chunks.checkpoint_every == 0 or last or preempted):
                    checkpoints.save(updates_before + per_chunk, chunks.saved(carry))
                bar.update(per_chunk)
                if on_chunk is not None:
                    on_chunk(per_chunk)
                shown = chunks.postfix(metrics) if chunks.postfix is not None else None
                if shown:
                    bar.set_postfix(**shown)
                if preempted:
                    break
                if chunks.between is not None:
                    carry = chunks.between(chunk + 1, carry)
        jax.block_until_ready(carry)
        loop_seconds = time.perf_counter() - start
        bar.close()
    finally:
        if checkpoints is not None:
            checkpoints.close()  # finish the checkpoints already started; they stay usable
    return Ran(carry, {k: np.concatenate(v, axis=1) for k, v in history.items()}, done, preempted,
               chunk_seconds, loop_seconds)
