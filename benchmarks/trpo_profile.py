"""Where one TRPO update's time goes on CartPole (configs/trpo.py:cartpole_trpo), phase by phase.

    python -m benchmarks.trpo_profile [--repeats=7 --updates=40] [--profile]

One compiled chunk of ``--updates`` updates (1 seed, no host loop, no checkpointing) is timed
directly, as `benchmarks.seed_scaling` does (whose ``--repeats``, ``--updates`` and ``--profile``
flags this reuses), for the preset and for variants that change one phase's
size only; the repetitions are interleaved (base, variant 1, variant 2, …, base, …) so that load
from other processes falls on every setting alike, and medians are reported. Each phase's cost
follows from a fit t = t₀ + n·t_phase over its size n:

    CG:           cg_iters 10 vs 1        ⇒ 10 iterations = 10 · (t(10) − t(1)) / 9
    line search:  trpo vs npg (no loop)   ⇒ the loop's 1 + backtracks evaluations = t_trpo − t_npg
    critic fit:   vf_epochs 5 vs 1        ⇒ 5 epochs = 5 · (t(5) − t(1)) / 4
    rollout+GAE:  a chunk of only the rollout and GAE, compiled the same way

and the rest (the surrogate's gradient, the curvature FVP after CG, the re-evaluation of the
accepted step, the reported metrics, the non-finite guard) is what is left of the preset's time.
``--profile`` also counts the operations XLA's CPU runtime executed per update of the preset.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from benchmarks import bench_util
from benchmarks import seed_scaling  # its --repeats, --updates and --profile flags
from configs import trpo as trpo_configs
from kltrust import rollout, sharding, sweep
from kltrust import train as programs
from kltrust.train import control_config, loop

_PRESET = flags.DEFINE_string("preset", "cartpole_trpo", "configs/trpo.py preset.")

# name -> config overrides (one phase resized each); "base" is the preset itself.
SETTINGS: dict[str, dict[str, Any]] = {
    "base": {},
    "cg_iters=1": {"cg_iters": 1},
    "no line search (npg)": {"variant.line_search": False},
    "vf_epochs=1": {"vf_epochs": 1},
}


def make_config(overrides: dict[str, Any]):
    """The preset with one chunk of ``--updates`` updates and ``overrides`` (dotted keys) applied."""
    config = trpo_configs.get_config(_PRESET.value)
    updates = seed_scaling._UPDATES.value
    config.updates_per_chunk = updates
    config.total_timesteps = updates * config.num_envs * config.num_steps
    config.mesh.runs = config.mesh.data = 1
    for key, value in overrides.items():
        sweep.set_field(config, key, value, "trpo_profile")
    return config


def compile_chunk(overrides: dict[str, Any], rollout_only: bool = False
                  ) -> tuple[Callable[[], Any], Any]:
    """(a blocking call of one compiled chunk, its trainer's static config).

    With ``rollout_only`` the chunk runs only each update's rollout and GAE (fixed parameters);
    otherwise it is the training program's own chunk. Successive calls continue from the state the
    previous one left, as a run's chunks do.
    """
    spec = control_config.spec_from_config(make_config(overrides))
    return compile_spec(spec, rollout_only), spec.static


def compile_spec(spec: Any, rollout_only: bool = False) -> Callable[[], Any]:
    """A blocking call of one compiled chunk of the control run ``spec`` (any family, any number
    of seeds; see `compile_chunk`), warmed up; each call returns the chunk's metrics."""
    program = programs.program(spec.algorithm)
    trainer = program.make_trainer(spec.static, sharding.mesh_from_sizes(dict(spec.mesh)))
    hparams = spec.seed_hparams
    init, run_chunk = program.compile_run(trainer)
    if rollout_only:
        state = init(jnp.asarray(spec.seeds), hparams)
        compiled = jax.jit(jax.vmap(lambda s, hp: rollout_chunk(trainer, s, hp)))
    else:
        state, compiled = loop.init_and_compile(init, run_chunk, jnp.asarray(spec.seeds), hparams)
    box = {"state": state, "metrics": None}

    def call() -> Any:
        box["state"], box["metrics"] = jax.block_until_ready(compiled(box["state"], hparams))
        return box["metrics"]

    call()  # compile (rollout_only) / warm up
    return call


def rollout_chunk(trainer: Any, state: Any, hp: Any) -> tuple[Any, jax.Array]:
    """``updates_per_chunk`` rollouts + GAE of one run with its parameters held fixed; returns the
    state with the runner, episodes and key advanced, and each update's Σ advantages (so that
    nothing is dead code)."""
    _, env, env_params = trainer._model_and_env
    policy = trainer.observed_policy(state.obs_stats, hp.obs_clip)

    def body(carry, _):
        runner, episodes, key = carry
        key, key_rollout = jax.random.split(key)
        runner, episodes, traj, last_value = rollout.rollout(
            policy, state.params, runner, episodes, key_rollout, env, env_params,
            trainer.static.num_steps)
        advantage, target = rollout.gae(traj, last_value, hp.gamma, hp.gae_lambda,
                                        hp.reward_scale)
        return (runner, episodes, key), advantage.sum() + target.sum()

    (runner, episodes, key), sums = jax.lax.scan(
        body, (state.runner, state.episodes, state.key), None,
        length=trainer.static.updates_per_chunk)
    return state.replace(runner=runner, episodes=episodes, key=key), sums


def interleaved_ms(calls: dict[str, Callable[[], Any]], repeats: int
                   ) -> dict[str, tuple[float, float, float]]:
    """(median, min, max) ms per update of each chunk, timed round-robin ``repeats`` times."""
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    per_update = 1e3 / seed_scaling._UPDATES.value
    return {name: (per_update * statistics.median(t), per_update * min(t), per_update * max(t))
            for name, t in times.items()}


def phases(ms: dict[str, float], static: Any) -> list[tuple[str, float]]:
    """(phase, ms per update) from the medians of `interleaved_ms` (module docstring's fits)."""
    base = ms["base"]
    cg = static.cg_iters * (base - ms["cg_iters=1"]) / (static.cg_iters - 1)
    critic = static.vf_epochs * (base - ms["vf_epochs=1"]) / (static.vf_epochs - 1)
    line_search = base - ms["no line search (npg)"]
    roll = ms["rollout + GAE only"]
    return [("rollout + GAE", roll), (f"CG ({static.cg_iters} iterations)", cg),
            ("line-search loop", line_search), (f"critic fit ({static.vf_epochs} epochs)", critic),
            ("rest: gradient, curvature FVP, final evaluation, metrics",
             base - roll - cg - line_search - critic)]


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    calls, static = {}, None
    for name, overrides in SETTINGS.items():
        calls[name], settings_static = compile_chunk(overrides)
        static = static or settings_static
    calls["rollout + GAE only"], _ = compile_chunk({}, rollout_only=True)
    with open("/proc/loadavg") as f:
        load_before = " ".join(f.read().split()[:3])
    spread = interleaved_ms(calls, seed_scaling._REPEATS.value)
    ms = {name: median for name, (median, _, _) in spread.items()}
    with open("/proc/loadavg") as f:
        load_after = " ".join(f.read().split()[:3])
    metrics = calls["base"]()
    backtracks = float(np.mean(metrics["backtracks"]))
    accepted = float(np.mean(metrics["accepted"]))
    rel_residual = float(np.nanmedian(metrics["cg_relative_residual"]))
    print(f"{_PRESET.value}: {static.num_envs} envs × {static.num_steps} steps per update, "
          f"{seed_scaling._UPDATES.value} updates per chunk, median of "
          f"{seed_scaling._REPEATS.value} interleaved repeats; load {load_before} / {load_after}")
    print(f"preset: {ms['base']:.2f} ms / update = "
          f"{static.batch_size / ms['base'] * 1e3:,.0f} env steps/s; last chunk: mean backtracks "
          f"{backtracks:.2f}, accepted {accepted:.0%}, median CG ‖r‖/‖g‖ {rel_residual:.2g}\n")
    print("| setting | ms / update (min–max) |\n|---|---|")
    for name, (median, low, high) in spread.items():
        print(f"| {name} | {median:.2f} ({low:.2f}–{high:.2f}) |")
    print("\n| phase | ms / update | share |\n|---|---|---|")
    for name, value in phases(ms, static):
        print(f"| {name} | {value:.2f} | {value / ms['base']:.0%} |")
    print(f"| total (preset) | {ms['base']:.2f} | 100% |")
    if seed_scaling._PROFILE.value:
        ops = bench_util.executed_ops(calls["base"])
        updates = seed_scaling._UPDATES.value
        events = sum(n for n, _ in ops.values()) / updates
        busy = sum(ns for _, ns in ops.values()) / updates / 1e6
        print(f"\npreset: {events:,.0f} operations per update, {busy:.2f} ms of them per update")
        print("| kind | per update | µs per update | µs each |\n|---|---|---|---|")
        for kind, (n, ns) in sorted(ops.items(), key=lambda kv: -kv[1][1])[:10]:
            print(f"| {kind} | {n / updates:,.0f} | {ns / updates / 1e3:,.0f} | "
                  f"{ns / n / 1e3:.2f} |")


if __name__ == "__main__":
    app.run(main)
