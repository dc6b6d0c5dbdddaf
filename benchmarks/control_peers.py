"""One control benchmark row: kltrust vs Stable-Baselines3 / sb3-contrib on CartPole-v1.

    python -m benchmarks.control_peers --impl=kltrust|sb3 --algo=ppo|trpo \
        --mode=throughput|threshold [--steps=100000 --seeds=1 --devices=1 --seed=0 \
        --json_out=row.json]

``--mode=throughput``: wall time of a fixed budget of ``--steps`` environment steps (rounded to
whole updates). kltrust: `kltrust.train.loop.train` on the preset, ``--seeds`` seeds vmapped in one
program (split over ``--devices`` host CPU devices, still one program); its compile time (init +
lowering + XLA compilation, as ``RunResult.compile_seconds``) is reported apart from the run.
SB3: ``model.learn(steps)``; its setup (building the model and the vector environment) is
reported apart in the same way.

``--mode=threshold``: wall time and environment steps until the mean return of the last 100
episodes first reaches ``--threshold`` (475), one seed, at most ``--max_steps`` steps. SB3: a
callback checks ``ep_info_buffer`` after every vector step and stops training. kltrust: the same
statistic (``episode_return``, last 100 episodes) is computed inside the compiled program after every
update, but the host sees it only after each compiled chunk of ``--chunk_updates`` updates, and
`loop.train` has no early stop: the time recorded is the end of the chunk in which the return first
reached the threshold (an upper bound, resolution ``chunk_updates × batch`` steps); the steps are
exact (the update where it was reached).

Matched hyperparameters (kltrust preset → SB3 argument): `MATCHED` and `sb3_kwargs`; what cannot be
matched is listed in benchmarks/README.md.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags

from benchmarks import bench_util

_IMPL = flags.DEFINE_enum("impl", "kltrust", ["kltrust", "sb3"], "Implementation.")
_ALGO = flags.DEFINE_enum("algo", "ppo", ["ppo", "trpo"], "Algorithm.")
_MODE = flags.DEFINE_enum("mode", "throughput", ["throughput", "threshold"], "What to measure.")
_STEPS = flags.DEFINE_integer("steps", 100_000, "Environment steps per seed (throughput mode).")
_SEEDS = flags.DEFINE_integer("seeds", 1, "kltrust: seeds vmapped in one program (throughput).")
_DEVICES = flags.DEFINE_integer(
    "devices", 1, "kltrust, throughput: split the vmapped seeds over this many host CPU devices "
    "(config.mesh.runs; JAX's jax_num_cpu_devices, set before its backend starts). One program, "
    "one jit: each device runs its share of the seeds on its own thread.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed (the first seed for vmapped kltrust runs).")
_THRESHOLD = flags.DEFINE_float("threshold", 475.0, "Return threshold (threshold mode).")
_MAX_STEPS = flags.DEFINE_integer("max_steps", None,
                                  "Threshold mode: give up after this many steps (default: the "
                                  "preset's total_timesteps, 500k).")
_CHUNK_STEPS = flags.DEFINE_integer(
    "chunk_steps", 8192, "kltrust, threshold mode: environment steps per compiled chunk at most "
    "(the resolution of the time to threshold); the largest divisor of the update count that fits.")

PRESETS = {"ppo": ("configs/ppo.py", "cartpole_clip"), "trpo": ("configs/trpo.py", "cartpole_trpo")}


def kltrust_config(algo: str):
    if algo == "ppo":
        from configs import ppo as family
    else:
        from configs import trpo as family
    return family.get_config(PRESETS[algo][1])


def _divisor_at_most(n: int, limit: int) -> int:
    return max(d for d in range(1, min(n, max(limit, 1)) + 1) if n % d == 0)


# The presets' hyperparameters that the SB3 side needs, written out so that the SB3 process does not
# import kltrust (and JAX): its peak memory is then its own. Every kltrust row checks this table
# against the preset (`matched_from_config`) and fails if a preset has changed.
MATCHED = {
    "ppo": dict(num_envs=4, num_steps=128, total_timesteps=500_000, hidden=[64, 64],
                activation="tanh", num_epochs=4, num_minibatches=4, anneal_lr=True,
                learning_rate=2.5e-4, gamma=0.99, gae_lambda=0.95, clip_eps=0.2, ent_coef=0.01,
                vf_coef=0.5, max_grad_norm=0.5, normalize_advantages=True, early_stop=False,
                target_kl=0.015),
    "trpo": dict(num_envs=4, num_steps=512, total_timesteps=499_712, hidden=[64, 64],
                 activation="tanh", vf_epochs=5, vf_minibatches=8, vf_learning_rate=1e-3,
                 gamma=0.99, gae_lambda=0.97, delta=0.01, cg_iters=10, damping=0.1,
                 backtrack_factor=0.8, max_backtracks=10, fvp_subsample=1,
                 normalize_advantages=True, line_search=True, kl_anchor="old"),
}


def matched_from_config(algo: str, config) -> dict[str, Any]:
    """The `MATCHED` entry as read from the kltrust preset."""
    keys = MATCHED[algo]
    out = {}
    for key in keys:
        if key in config.hparams:
            out[key] = float(config.hparams[key])
        elif key in config.variant:
            out[key] = config.variant[key]
        elif key in ("hidden", "activation"):
            out[key] = list(config.model.hidden) if key == "hidden" else config.model.activation
        else:
            out[key] = config[key]
    return out


def sb3_kwargs(algo: str) -> dict[str, Any]:
    """SB3 / sb3-contrib constructor arguments matching the kltrust preset (`MATCHED`)."""
    import torch

    m = MATCHED[algo]
    activation = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}[m["activation"]]
    # Separate actor and critic MLPs, orthogonal init with gains √2 / 0.01 / 1: as kltrust's.
    policy_kwargs = dict(net_arch=dict(pi=m["hidden"], vf=m["hidden"]), activation_fn=activation,
                         ortho_init=True)
    batch = m["num_envs"] * m["num_steps"]
    if algo == "ppo":
        lr = m["learning_rate"]
        return dict(
            n_steps=m["num_steps"], batch_size=batch // m["num_minibatches"],
            n_epochs=m["num_epochs"],
            # kltrust anneals linearly to 0 over the run's updates (anneal_lr); SB3's
            # progress_remaining goes 1 → 0 over learn()'s total_timesteps, set to the same total.
            learning_rate=(lambda progress: lr * progress) if m["anneal_lr"] else lr,
            gamma=m["gamma"], gae_lambda=m["gae_lambda"], clip_range=m["clip_eps"],
            ent_coef=m["ent_coef"],
            # kltrust's value loss is ½·MSE (times vf_coef), SB3's is MSE: half the coefficient.
            vf_coef=m["vf_coef"] / 2, max_grad_norm=m["max_grad_norm"],
            normalize_advantage=m["normalize_advantages"],
            target_kl=m["target_kl"] if m["early_stop"] else None,
            # kltrust: optax.adam(eps=1e-5) after global-norm clipping, as SB3.
            policy_kwargs={**policy_kwargs, "optimizer_kwargs": dict(eps=1e-5)},
        )
    assert m["line_search"] and m["kl_anchor"] == "old"
    return dict(
        n_steps=m["num_steps"], batch_size=batch // m["vf_minibatches"],
        n_critic_updates=m["vf_epochs"], learning_rate=m["vf_learning_rate"],
        gamma=m["gamma"], gae_lambda=m["gae_lambda"], target_kl=m["delta"],
        cg_max_steps=m["cg_iters"], cg_damping=m["damping"],
        line_search_shrinking_factor=m["backtrack_factor"],
        line_search_max_iter=m["max_backtracks"], sub_sampling_factor=m["fvp_subsample"],
        normalize_advantage=m["normalize_advantages"],
        # kltrust's critic uses optax.adam (eps 1e-8); SB3's policies default to eps 1e-5.
        policy_kwargs={**policy_kwargs, "optimizer_kwargs": dict(eps=1e-8)},
    )


# ---------------------------------------------------------------- kltrust


def run_kltrust() -> dict[str, Any]:
    from absl import logging

    from kltrust.train import control_config, loop

    logging.set_verbosity(logging.WARNING)
    config = kltrust_config(_ALGO.value)
    matched = matched_from_config(_ALGO.value, config)
    if matched != MATCHED[_ALGO.value]:
        raise SystemExit(f"preset {PRESETS[_ALGO.value]} no longer matches MATCHED (update the SB3 "
                         f"side): {matched} != {MATCHED[_ALGO.value]}")
    batch = config.num_envs * config.num_steps
    row: dict[str, Any] = {"preset": PRESETS[_ALGO.value][1], "env_steps_per_update": batch}
    if _MODE.value == "throughput":
        updates = max(1, round(_STEPS.value / batch))
        config.total_timesteps = updates * batch
        config.updates_per_chunk = _divisor_at_most(updates, config.updates_per_chunk)
        config.num_seeds = _SEEDS.value
        config.mesh.runs = _DEVICES.value
    else:
        if _MAX_STEPS.value:
            config.total_timesteps = max(1, _MAX_STEPS.value // batch) * batch
        updates = config.total_timesteps // batch
        config.updates_per_chunk = _divisor_at_most(updates, _CHUNK_STEPS.value // batch)
        config.num_seeds = 1
    config.seed = _SEED.value
    chunk_ends: list[float] = []
    start = time.perf_counter()
    result = loop.train(control_config.spec_from_config(config), progress=False,
                        on_chunk=lambda _: chunk_ends.append(time.perf_counter()))
    wall = time.perf_counter() - start
    seeds = config.num_seeds
    steps = updates * batch * seeds
    returns = result.metrics["episode_return"]  # [seeds, updates]
    row.update(
        seeds=seeds, devices=config.mesh.runs, updates=updates,
        updates_per_chunk=config.updates_per_chunk,
        env_steps=steps, compile_s=result.compile_seconds, run_s=result.run_seconds, wall_s=wall,
        steps_per_s_run=steps / result.run_seconds,
        steps_per_s_total=steps / (result.compile_seconds + result.run_seconds),
        final_return=float(np.nanmean(returns[:, -1])),
    )
    if _MODE.value == "threshold":
        hit = np.flatnonzero(returns[0] >= _THRESHOLD.value)
        row.update(threshold=_THRESHOLD.value, reached=bool(hit.size), resolution_steps=(
            config.updates_per_chunk * batch))
        if hit.size:
            update = int(hit[0])
            chunk_end = chunk_ends[update // config.updates_per_chunk] - start
            row.update(steps_to_threshold=(update + 1) * batch, time_to_threshold_total_s=chunk_end,
                       time_to_threshold_run_s=chunk_end - result.compile_seconds)
    return row


# ---------------------------------------------------------------- Stable-Baselines3


def run_sb3() -> dict[str, Any]:
    import torch
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from sb3_contrib import TRPO

    m = MATCHED[_ALGO.value]
    batch = m["num_envs"] * m["num_steps"]
    kwargs = sb3_kwargs(_ALGO.value)
    start = time.perf_counter()
    env = make_vec_env("CartPole-v1", n_envs=m["num_envs"], seed=_SEED.value)
    cls = PPO if _ALGO.value == "ppo" else TRPO
    model = cls("MlpPolicy", env, seed=_SEED.value, device="cpu", verbose=0, **kwargs)
    setup = time.perf_counter() - start
    row: dict[str, Any] = {"sb3_class": cls.__name__, "env_steps_per_update": batch,
                           "compile_s": setup, "torch_threads": torch.get_num_threads(),
                           "vec_env": type(env).__name__}

    if _MODE.value == "throughput":
        updates = max(1, round(_STEPS.value / batch))
        t = time.perf_counter()
        model.learn(total_timesteps=updates * batch)
        run = time.perf_counter() - t
        steps = model.num_timesteps
        row.update(seeds=1, updates=updates, env_steps=steps, run_s=run, wall_s=setup + run,
                   steps_per_s_run=steps / run, steps_per_s_total=steps / (setup + run))
    else:
        max_steps = _MAX_STEPS.value or m["total_timesteps"]
        threshold = _THRESHOLD.value

        class StopAtThreshold(BaseCallback):
            """Stops learn() once the last-100-episode mean return reaches the threshold."""

            reached_at: tuple[int, float] | None = None

            def _on_step(self) -> bool:
                if not np.any(self.locals["dones"]):  # the statistic changes only when one ends
                    return True
                buffer = self.model.ep_info_buffer
                if buffer and np.mean([e["r"] for e in buffer]) >= threshold:
                    self.reached_at = (self.num_timesteps, time.perf_counter())
                    return False
                return True

        callback = StopAtThreshold()
        t = time.perf_counter()
        # total_timesteps = the kltrust preset's, so the linear learning-rate schedule matches.
        model.learn(total_timesteps=max_steps, callback=callback)
        run = time.perf_counter() - t
        row.update(seeds=1, env_steps=model.num_timesteps, run_s=run, wall_s=setup + run,
                   threshold=threshold, reached=callback.reached_at is not None,
                   resolution_steps=m["num_envs"])
        if callback.reached_at is not None:
            steps, when = callback.reached_at
            row.update(steps_to_threshold=steps, time_to_threshold_run_s=when - t,
                       time_to_threshold_total_s=when - start)
    buffer = model.ep_info_buffer
    row["final_return"] = float(np.mean([e["r"] for e in buffer])) if buffer else float("nan")
    return row


def main(argv: Sequence[str]) -> None:
    del argv
    torch = None
    if _IMPL.value == "sb3":
        import torch
    threads = bench_util.apply_threads(torch)
    if _DEVICES.value != 1:
        if _IMPL.value != "kltrust" or _MODE.value != "throughput" or _SEEDS.value % _DEVICES.value:
            # One line and status 2, as the project's CLIs answer bad input (absl's UsageError
            # would print the whole help text).
            print(f"--devices={_DEVICES.value}: more than one device is for --impl=kltrust "
                  "--mode=throughput with --seeds a multiple of it", file=sys.stderr)
            raise SystemExit(2)
        import jax
        jax.config.update("jax_num_cpu_devices", _DEVICES.value)
    row = {"bench": f"control_{_MODE.value}", "impl": _IMPL.value, "algo": _ALGO.value,
           "mode": _MODE.value, "seed": _SEED.value, "threads": threads}
    row.update(run_kltrust() if _IMPL.value == "kltrust" else run_sb3())
    row["versions"] = bench_util.versions()
    bench_util.emit(row)


if __name__ == "__main__":
    app.run(main)
