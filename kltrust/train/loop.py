"""The thin host loop: call the compiled chunk, write metrics, checkpoint, draw, repeat.

Resuming: the same command on a workdir that holds an interrupted run of the same config restores
the newest readable checkpoint (`kltrust.checkpoint`), drops the metric rows written after it and
runs the remaining chunks: the run ends bit-identical (CPU) to one that was never stopped. SIGTERM
makes the loop checkpoint after the current chunk and return with ``preempted`` set.

Outputs in ``workdir``: ``config.json``, ``metrics.jsonl`` (one object per update and seed, with
``step`` = environment steps so far), TensorBoard events (seed means), orbax checkpoints of the full
training state (params, optimiser and controller state, rng, step, environments) under
``checkpoints/``, and ``learning_curve.png``.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import shutil
import time
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from tqdm import tqdm

from kltrust import checkpoint as ckpt
from kltrust import guards, processes, sharding
from kltrust.errors import ConfigError
from kltrust.metrics import read_update_rows, truncate_update_rows, write_text_atomic
from kltrust import train as programs


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


RUN_OUTPUTS = ("metrics.jsonl", "checkpoints", "tensorboard", "learning_curve.png", ckpt.UNREADABLE)


def _check_workdir(workdir: pathlib.Path, config_json: str, overwrite: bool) -> bool:
    """Whether to resume: True when ``workdir`` holds outputs of this very config (and not
    ``overwrite``). A run of a different config is refused unless ``overwrite``.

    Called only after the config has been validated, so a bad config never touches earlier results.
    """
    existing = workdir / "config.json"
    if not existing.exists() or overwrite:
        return False
    if existing.read_text() != config_json:
        raise ConfigError(
            f"workdir {workdir} holds a run of a different config; choose another --workdir or "
            "pass --overwrite to replace it."
        )
    return any((workdir / name).exists() for name in RUN_OUTPUTS)


def _prepare_workdir(workdir: pathlib.Path, overwrite: bool) -> None:
    """Creates the workdir and, with ``overwrite``, clears an earlier run's outputs."""
    workdir.mkdir(parents=True, exist_ok=True)
    if overwrite:
        for name in RUN_OUTPUTS:
            path = workdir / name
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)


def _to_json_value(x: Any) -> Any:
    x = float(x)
    return x if np.isfinite(x) else None


def train(
    config: ml_collections.ConfigDict,
    workdir: str | pathlib.Path | None = None,
    *,
    mesh: jax.sharding.Mesh | None = None,
    progress: bool = True,
    overwrite: bool = False,
    runs: tuple[np.ndarray, Any] | None = None,
    on_chunk: Callable[[int], None] | None = None,
) -> RunResult:
    """Trains ``config.num_seeds`` seeds of one config (PPO or TRPO) vmapped in one program.

    ``runs = (seeds [R], HParams with leaves [R])`` replaces the config's seeds and hyperparameters
    by R arbitrary (seed, hyperparameter) runs of the same static config, still one program: this is
    how a sweep runs a group. ``on_chunk(updates)`` is called after every compiled chunk.
    """
    mesh = mesh or sharding.mesh_from_config(config)
    program = programs.program(config)
    trainer = program.make_trainer(config, mesh)  # validates before anything is compiled
    static = trainer.static
    if runs is None:
        seeds = np.arange(config.seed, config.seed + config.num_seeds, dtype=np.int32)
        hparams = jax.tree.map(
            lambda x: np.broadcast_to(x, (len(seeds),) + x.shape),
            program.HParams.from_config(config),
        )
    else:
        seeds, hparams = np.asarray(runs[0], np.int32), runs[1]
    # The run axis is split over the mesh's ``runs`` axis: pad it to a multiple (copies of the last
    # run, dropped again below).
    index = sharding.padded_run_index(len(seeds), mesh)
    num_runs = len(seeds)
    padded_seeds = seeds[index]
    hparams = jax.tree.map(lambda x: np.asarray(x)[index], hparams)

    # Every process reads the workdir and the processes agree on what they saw (a claim) before
    # process 0 changes anything in it; only then does process 0 write.
    writer = checkpoints = None
    resume = False
    primary = processes.is_primary()
    if workdir is not None:
        workdir = pathlib.Path(workdir)
        config_json = config.to_json_best_effort(indent=2, sort_keys=True) + "\n"
        resume = processes.claim("loop.workdir",
                                 lambda: _check_workdir(workdir, config_json, overwrite), workdir)
        if primary:
            _prepare_workdir(workdir, overwrite)
            write_text_atomic(workdir / "config.json", config_json)
            from tensorboardX import SummaryWriter

            writer = SummaryWriter(str(workdir / "tensorboard"))
        processes.sync("loop.workdir.written")
        checkpoints = ckpt.Checkpoints(workdir, config.keep_checkpoints)

    init, run_chunk = program.compile_run(trainer)
    start = time.perf_counter()
    state = init(jnp.asarray(padded_seeds), hparams)
    compiled_chunk = run_chunk.lower(state, hparams).compile()
    compile_seconds = time.perf_counter() - start

    history: dict[str, list[np.ndarray]] = {}
    done = 0  # updates already done (by an earlier, interrupted process)
    if resume:
        step, restored = checkpoints.restore_latest(state)
        if step is not None:
            state, done = restored, step
        processes.agree("loop.resume_step", done)
        history = {k: [v] for k, v in read_update_rows(workdir / "metrics.jsonl", done).items()}
        processes.sync("loop.rows_read")  # every process has read the rows before they are cut
        if primary:
            truncate_update_rows(workdir / "metrics.jsonl", done)
        processes.sync("loop.resumed")
    num_chunks = static.num_updates // static.updates_per_chunk
    bar = tqdm(total=static.num_updates, initial=done, unit="update", disable=not progress,
               desc=f"{static.env_name} {config.get('algorithm', 'ppo')} {_describe(static.variant)}")
    preempted = False
    start = time.perf_counter()
    try:
        with processes.StopOnSigterm(enabled=workdir is not None) as stop:
            for chunk in range(done // static.updates_per_chunk, num_chunks):
                processes.progress("loop.chunk")
                state, metrics = compiled_chunk(state, hparams)
                metrics = {k: v[:num_runs] for k, v in sharding.to_host(metrics).items()}
                for name, values in metrics.items():
                    history.setdefault(name, []).append(np.asarray(values))
                first_update = chunk * static.updates_per_chunk
                last = chunk + 1 == num_chunks
                # Every process stops at the same chunk, whichever of them got the signal.
                preempted = processes.any_process(stop.requested) and not last
                # Metrics before the checkpoint: a run killed in between has rows past its last
                # checkpoint, which resuming drops.
                if workdir is not None and primary:
                    _write_metrics(workdir, writer, metrics, seeds, first_update, static.batch_size)
                guards.check_streak(metrics, config.guards.max_nonfinite_updates, first_update,
                                    seeds)
                if workdir is not None and (
                        (chunk + 1) % config.checkpoint_every_chunks == 0 or last or preempted):
                    checkpoints.save(first_update + static.updates_per_chunk, state)
                bar.update(static.updates_per_chunk)
                if on_chunk is not None:
                    on_chunk(static.updates_per_chunk)
                latest_return = metrics["episode_return"][:, -1]
                if np.isfinite(latest_return).any():
                    bar.set_postfix(ret=f"{np.nanmean(latest_return):.1f}",
                                    kl=f"{np.mean(metrics['kl_old'][:, -1]):.4f}")
                if preempted:
                    break
    except BaseException:
        if checkpoints is not None:
            checkpoints.close()  # finish the checkpoints already started; they stay usable
        raise
    jax.block_until_ready(state)
    run_seconds = time.perf_counter() - start
    bar.close()
    if len(index) > num_runs:
        state = jax.tree.map(lambda x: x[:num_runs], state)

    result = RunResult(
        state=state,
        metrics={k: np.concatenate(v, axis=1) for k, v in history.items()},
        seeds=seeds,
        env_steps_per_update=static.batch_size,
        compile_seconds=compile_seconds,
        run_seconds=run_seconds,
        resumed_from=done,
        preempted=preempted,
    )
    if workdir is not None:
        checkpoints.close()
        if primary:
            writer.close()
            plot_learning_curves(result, workdir / "learning_curve.png", title=static.env_name)
    return result


def _nanmean(values: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean over non-NaN entries; NaN (without numpy's warning) where every seed is NaN, e.g. the
    episode return before any episode has finished."""
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(values, axis=axis)


def _describe(variant: Any) -> str:
    return " ".join(f"{f.name}={getattr(variant, f.name)}" for f in dataclasses.fields(variant)
                    if f.name != "normalize_advantages")


def _write_metrics(workdir, writer, metrics, seeds, first_update, batch_size) -> None:
    lines = []
    num_updates = next(iter(metrics.values())).shape[1]
    for u in range(num_updates):
        update = first_update + u + 1
        step = update * batch_size
        for r, seed in enumerate(seeds):
            record = {"step": step, "update": update, "seed": int(seed)}
            record.update({k: _to_json_value(v[r, u]) for k, v in metrics.items()})
            lines.append(json.dumps(record))
        for name, values in metrics.items():
            writer.add_scalar(name, float(_nanmean(values[:, u])), step)
    with open(workdir / "metrics.jsonl", "a") as f:
        f.write("\n".join(lines) + "\n")
    writer.flush()


def plot_learning_curves(result: RunResult, path: pathlib.Path, title: str = "") -> None:
    """Return, KL to the old policy and β (PPO) or line-search backtracks (TRPO) per update.

    One thin line per seed, their mean bold.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, result.metrics["kl_old"].shape[1] + 1) * result.env_steps_per_update
    third = ("beta", "β") if "beta" in result.metrics else ("backtracks", "line-search backtracks")
    panels = [("episode_return", "mean episode return"), ("kl_old", "KL(π_old ‖ π_θ) per update"),
              third]
    fig, axes = plt.subplots(1, len(panels), figsize=(14, 3.6))
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
    plt.close(fig)
