"""Control PPO / TRPO on the host: claim the workdir, compile, run the chunks, draw.

The chunks run in the one host loop (`kltrust.train.host`: metric rows, guards, checkpoints,
resume, SIGTERM); the workdir is claimed by `kltrust.workdir` (refuse, resume or overwrite).
Resuming: the same command on a workdir that holds an interrupted run of the same config restores
the newest readable checkpoint (`kltrust.checkpoint`), drops the metric rows written after it and
runs the remaining chunks: the run ends bit-identical (CPU) to one that was never stopped. SIGTERM
makes the loop checkpoint after the current chunk and return with ``preempted`` set.

Outputs in ``workdir``: ``config.json``, ``metrics.jsonl`` (one object per update and seed, with
``step`` = environment steps so far), TensorBoard events (seed means), orbax checkpoints of the full
training state (params, optimiser and controller state, rng, step, environments) under
``checkpoints/``, and ``learning_curve.png``; with ``config.logging.wandb`` on, a W&B run under
``wandb/`` with the same seed means at the same steps, the config and the plot (`kltrust.tracking`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import pathlib
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kltrust import checkpoint as ckpt
from kltrust import processes, program_cache, sharding, tracking
from kltrust import train as programs
from kltrust import workdir as workdirs
from kltrust.train import host


@dataclasses.dataclass(frozen=True)
class ControlSpec:
    """Everything a control run reads, typed and frozen: built once from a validated config at the
    boundary (`kltrust.train.control_config.spec_from_config`); nothing below reads the config."""

    algorithm: str  # "ppo" or "trpo": the program module (`kltrust.train.program`)
    static: Any  # the program's Static: shapes, variant, environment
    hparams: Any  # the program's HParams, scalar float32 leaves (broadcast over the seeds)
    seed: int  # the seeds are seed, seed + 1, …, seed + num_seeds - 1
    num_seeds: int
    mesh: tuple[tuple[str, int], ...]  # axis sizes (`sharding.mesh_from_sizes`; -1: the rest)
    max_nonfinite_updates: int  # consecutive skipped updates that stop the run (`kltrust.guards`)
    checkpoint_every_chunks: int
    keep_checkpoints: int
    config_json: str  # the canonical config, recorded in (and compared with) workdir/config.json
    title: str  # the progress bar's and the plot's
    wandb: tracking.WandbSpec = tracking.WandbSpec()  # W&B beside TensorBoard (off by default)

    @property
    def seeds(self) -> np.ndarray:
        return np.arange(self.seed, self.seed + self.num_seeds, dtype=np.int32)

    @property
    def seed_hparams(self) -> Any:
        """``hparams`` with each leaf broadcast over the seeds ([num_seeds]): the run axis the
        compiled programs take (`kltrust.train.common.compile_run`)."""
        return jax.tree.map(lambda x: np.broadcast_to(x, (self.num_seeds,) + np.shape(x)),
                            self.hparams)


@dataclasses.dataclass
class RunResult:
    """What a run leaves in memory: final state (leading axis = seed), per-update metrics, timings."""

    state: Any  # the program's TrainState (`kltrust.train.ppo` / `trpo`)
    metrics: dict[str, np.ndarray]  # name -> [num_seeds, num_updates]
    seeds: np.ndarray
    env_steps_per_update: int
    compile_seconds: float
    run_seconds: float
    resumed_from: int = 0  # updates restored from a checkpoint (0: a fresh run)
    preempted: bool = False  # stopped early by SIGTERM, after writing a checkpoint
    program_cached: bool = False  # chunk and initial state loaded (`kltrust.program_cache`)


RUN_OUTPUTS = ("metrics.jsonl", "checkpoints", "tensorboard", "wandb", "learning_curve.png",
               ckpt.UNREADABLE)
# A workdir of this config with any of its outputs resumes (a finished run resumes with nothing
# left to run); one holding another config's outputs is refused. Called only after the config has
# been validated, so a bad config never touches earlier results.
WORKDIR_RULES = workdirs.Rules(
    different="workdir {path} holds a run of a different config; choose another --workdir or "
              "pass --overwrite to replace it.",
    outputs=RUN_OUTPUTS)


def _to_json_value(x: Any) -> Any:
    x = float(x)
    return x if np.isfinite(x) else None


def _same_placement(a: Any, b: Any, like: Any) -> bool:
    """Whether the sharding trees ``a`` and ``b`` place every array of ``like`` the same way."""
    return all(x.is_equivalent_to(y, leaf.ndim) for x, y, leaf in
               zip(jax.tree.leaves(a), jax.tree.leaves(b), jax.tree.leaves(like)))


def init_and_compile(init: Callable, run_chunk: Any, seeds: jax.Array,
                     hparams: Any) -> tuple[Any, Any]:
    """(initial state, the chunk compiled for it) from `kltrust.train.common.compile_run`'s pair.

    A chunk's output state is the next chunk's input. Where XLA placed an output otherwise than
    the input it was compiled for, chunk 2 would refuse chunk 1's output; so the state starts from
    the chunk's own output placement and the chunk is compiled again for it. That was the case
    with runs > 1 and data = 1 (init left the per-run optimiser counters replicated, the chunk
    returned them split over ``runs``) until `compile_run`'s init placed every leaf's run axis on
    ``runs`` (`sharding.split_runs`); the check stays for placements nothing here foresaw. On one
    device the two always agree.

    On one device the chunk is traced and compiled on a second thread from the state's shapes
    (`jax.eval_shape`) while this thread computes the state, most of it the eager parameter init
    (`kltrust.train.common.initial_params`): XLA compiles on one core, and the init's small
    programs can use the other. Same programs, same numbers; only the wall time shrinks.
    """
    if jax.device_count() == 1:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kltrust-compile") as pool:
            pending = pool.submit(
                lambda: run_chunk.lower(jax.eval_shape(init, seeds, hparams), hparams).compile())
            state = init(seeds, hparams)
            compiled = pending.result()
        return state, compiled
    state = init(seeds, hparams)
    compiled = run_chunk.lower(state, hparams).compile()
    placed = compiled.output_shardings[0]
    if not _same_placement(compiled.input_shardings[0][0], placed, state):
        state = jax.device_put(state, placed)
        compiled = run_chunk.lower(state, hparams).compile()
    return state, compiled


def train(
    spec: ControlSpec,
    workdir: str | pathlib.Path | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    overwrite: bool = False,
    runs: tuple[np.ndarray, Any] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> RunResult:
    """Trains the ``spec.num_seeds`` seeds of one run spec (PPO or TRPO) vmapped in one program.

    ``spec`` comes from `kltrust.train.control_config.spec_from_config(config)`, which validated
    the config. ``mesh`` replaces the spec's. ``runs = (seeds [R], HParams with leaves [R])``
    replaces the spec's seeds and hyperparameters by R arbitrary (seed, hyperparameter) runs of the
    same static spec, still one program: this is how a sweep runs a group. ``on_chunk(updates)``
    is called after every compiled chunk.
    """
    if not isinstance(spec, ControlSpec):  # e.g. a config: read it at the boundary first
        raise TypeError(f"loop.train takes a ControlSpec (kltrust.train.control_config."
                        f"spec_from_config(config)), not a {type(spec).__name__}.")
    mesh = mesh or sharding.mesh_from_sizes(dict(spec.mesh))
    program = programs.program(spec.algorithm)
    trainer = program.make_trainer(spec.static, mesh)  # checks the mesh before anything compiles
    static = trainer.static
    if runs is None:
        seeds, hparams = spec.seeds, spec.seed_hparams
    else:
        seeds, hparams = np.asarray(runs[0], np.int32), runs[1]
    # The run axis is split over the mesh's ``runs`` axis: pad it to a multiple (copies of the last
    # run, dropped again below).
    index = sharding.padded_run_index(len(seeds), mesh)
    num_runs = len(seeds)
    padded_seeds = seeds[index]
    hparams = jax.tree.map(lambda x: np.asarray(x)[index], hparams)

    resume = False
    if workdir is not None:
        workdir = pathlib.Path(workdir)
        resume = workdirs.claim_workdir("loop.workdir", workdir, spec.config_json, WORKDIR_RULES,
                                        overwrite=overwrite) is workdirs.Claim.RESUME

    start = time.perf_counter()

    def compile_fn():
        init, run_chunk = program.compile_run(trainer)
        return init_and_compile(init, run_chunk, jnp.asarray(padded_seeds), hparams)

    # With --compilation_cache on, a run seen before loads its chunk and initial state instead.
    state, compiled_chunk, cached = program_cache.init_and_compile(
        compile_fn, spec.algorithm, static, mesh, padded_seeds, hparams)
    compile_seconds = time.perf_counter() - start

    # The tracker (TensorBoard, W&B): process 0 of a run with a workdir, opened once compiled so
    # that a program that fails to compile leaves no W&B run behind.
    writer = None
    if workdir is not None and processes.is_primary():
        writer = tracking.open_tracker(workdir, spec.wandb, spec.config_json)
    write_rows = None
    if writer is not None:
        def write_rows(metrics, updates_before):
            _write_metrics(workdir, writer, metrics, seeds, updates_before, static.batch_size)

    chunks = host.Chunks(
        name="loop", advance=lambda s: compiled_chunk(s, hparams),
        num_chunks=static.num_updates // static.updates_per_chunk,
        updates_per_chunk=static.updates_per_chunk, seeds=seeds,
        max_nonfinite_updates=spec.max_nonfinite_updates, write_rows=write_rows,
        checkpoint_every=spec.checkpoint_every_chunks, keep_checkpoints=spec.keep_checkpoints,
        title=spec.title, postfix=_postfix)
    try:
        ran = host.run(chunks, state, workdir=workdir, resume=resume, progress=progress,
                       on_chunk=on_chunk)
    except BaseException:
        if writer is not None:  # the W&B run ends marked failed, its service not left waiting
            writer.close(failed=True)
        raise
    state = ran.carry
    if len(index) > num_runs:
        state = jax.tree.map(lambda x: x[:num_runs], state)

    result = RunResult(
        state=state,
        metrics=ran.metrics,
        seeds=seeds,
        env_steps_per_update=static.batch_size,
        compile_seconds=compile_seconds,
        run_seconds=ran.loop_seconds,
        program_cached=cached,
        resumed_from=ran.resumed_from,
        preempted=ran.preempted,
    )
    if writer is not None:  # process 0 of a run with a workdir
        plot_learning_curves(result, workdir / "learning_curve.png", title=static.env_name)
        writer.images({"learning_curve": workdir / "learning_curve.png"})
        writer.close()
    return result


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean over non-NaN entries; NaN (without numpy's warning) where every seed is NaN, e.g. the
    episode return before any episode has finished."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _postfix(metrics: dict[str, np.ndarray]) -> dict[str, str] | None:
    """The progress bar's tail: the latest mean return and KL (once an episode has finished)."""
    latest_return = metrics["episode_return"][:, -1]
    if not np.isfinite(latest_return).any():
        return None
    return dict(ret=f"{np.nanmean(latest_return):.1f}",
                kl=f"{np.mean(metrics['kl_old'][:, -1]):.4f}")


def _write_metrics(workdir: pathlib.Path, writer: tracking.Tracker,
                   metrics: dict[str, np.ndarray], seeds: np.ndarray, first_update: int,
                   batch_size: int) -> None:
    """One chunk's rows: every seed's values to metrics.jsonl, their means to the tracker (one
    call per update, so TensorBoard and W&B get the same scalars at the same step)."""
    lines = []
    num_updates = next(iter(metrics.values())).shape[1]
    for u in range(num_updates):
        update = first_update + u + 1
        step = update * batch_size
        for r, seed in enumerate(seeds):
            record = {"step": step, "update": update, "seed": int(seed)}
            record.update({k: _to_json_value(v[r, u]) for k, v in metrics.items()})
            lines.append(json.dumps(record))
        writer.log({name: float(_nanmean(values[:, u])) for name, values in metrics.items()},
                   step)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write("\n".join(lines) + "\n")
    writer.flush()


def plot_learning_curves(result: RunResult, path: pathlib.Path, title: str = "") -> None:
    """Return, KL to the old policy and β (PPO) or line-search backtracks (TRPO) per update.

    One thin line per seed, their mean bold.
    """
    from matplotlib.figure import Figure  # no pyplot: a user's backend (a notebook's) is left alone

    steps = np.arange(1, result.metrics["kl_old"].shape[1] + 1) * result.env_steps_per_update
    third = ("beta", "β") if "beta" in result.metrics else ("backtracks", "line-search backtracks")
    panels = [("episode_return", "mean episode return"), ("kl_old", "KL(π_old ‖ π_θ) per update"),
              third]
    fig = Figure(figsize=(14, 3.6))
    axes = fig.subplots(1, len(panels))
    for ax, (name, label) in zip(axes, panels):
        values = result.metrics[name]
        for row in values:
            ax.plot(steps, row, lw=0.6, alpha=0.5)
        ax.plot(steps, _nanmean(values, axis=0), lw=1.8, color="k", label="seed mean")
        ax.set_xlabel("environment steps")
        ax.set_title(label)
        if name == "kl_old":
            ax.set_yscale("log")
    axes[0].legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
