"""Why vmapping seeds gains little on CartPole PPO: a decomposition, not just a rate.

    python -m benchmarks.seed_scaling [--seeds=1,2,4,8 --epochs=1,10 --repeats=3] [--profile]

At rejax's CartPole settings (4 envs × 128 steps, 4 minibatches, lr 3e-4 not annealed, no entropy
bonus; epochs 10, and 1 to separate the parts), for each number of vmapped seeds: one compiled
chunk of updates is timed directly (no host loop, no checkpointing; median of ``--repeats``), and
the dense layers' floating-point operations are counted from the widths (XLA's cost analysis
counts a while loop's body once, so it cannot count a scanned program). The update time then
splits into the rollout (+ GAE) and one epoch of minibatch gradient steps,

    t(E epochs) = t_rollout + E · t_epoch  ⇒  t_epoch = (t(10) − t(1)) / 9,

and the achieved FLOP rate of the whole chunk is compared with the rate of one large f32 matmul
compiled the same way (one thread: kltrust turns XLA's multi-threaded Eigen off, see
kltrust/__init__.py; ``KLTRUST_EIGEN_THREADS=1`` runs it with Eigen's threads). A program whose
time grows in proportion to the seeds is throughput-bound and vmapping cannot beat the number of
cores; one whose time stays flat was paying a fixed cost per operation that vmapping amortises.

``--profile`` also traces one chunk per number of seeds (10 epochs) with ``jax.profiler`` and
counts what XLA's CPU runtime executed: operations (thunks) per update, their summed time, and the
kinds that took longest. Run with ``KLTRUST_ROLLED_THREEFRY=1`` to see JAX's default lowering of
the random-number hash (`kltrust.threefry_cpu`).
"""

from __future__ import annotations

import os
import re
import statistics
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags, logging

from benchmarks import bench_util
from configs import ppo as ppo_configs
from kltrust import sharding
from kltrust import train as programs
from kltrust.train import common, control_config, loop

_SEEDS = flags.DEFINE_list("seeds", ["1", "2", "4", "8"], "Numbers of vmapped seeds.")
_EPOCHS = flags.DEFINE_list("epochs", ["1", "10"], "Epochs per update (two values split the time).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed chunks per setting; the median is reported.")
_UPDATES = flags.DEFINE_integer("updates", 40, "Updates per timed chunk.")
_MESH_RUNS = flags.DEFINE_integer(
    "mesh_runs", 1, "Devices the seeds are split over (config.mesh.runs); with more than one, start "
    "with XLA_FLAGS=--xla_force_host_platform_device_count=N to give each CPU core a device.")
_PROFILE = flags.DEFINE_bool("profile", False, "Also count the executed operations per update.")


def rejax_config(num_seeds: int, num_epochs: int):
    """cartpole_clip at rejax's PPO CartPole settings."""
    config = ppo_configs.get_config("cartpole_clip")
    config.num_seeds = num_seeds
    config.num_epochs = num_epochs
    config.num_minibatches = 4
    config.anneal_lr = False
    config.updates_per_chunk = _UPDATES.value
    config.total_timesteps = _UPDATES.value * config.num_envs * config.num_steps
    config.hparams.learning_rate = 3e-4
    config.hparams.ent_coef = 0.0
    config.mesh.runs = _MESH_RUNS.value
    config.mesh.data = 1
    return config


def time_chunk(num_seeds: int, num_epochs: int, profile: bool = False) -> dict:
    """Compile one chunk, run it once to warm up, then time ``--repeats`` runs of it (and trace
    one more when ``profile``)."""
    spec = control_config.spec_from_config(rejax_config(num_seeds, num_epochs))
    mesh = sharding.mesh_from_sizes(dict(spec.mesh))
    program = programs.program(spec.algorithm)
    trainer = program.make_trainer(spec.static, mesh)
    seeds = spec.seeds
    hparams = spec.seed_hparams
    init, run_chunk = program.compile_run(trainer)
    start = time.perf_counter()
    state, compiled = loop.init_and_compile(init, run_chunk, jnp.asarray(seeds), hparams)
    compile_s = time.perf_counter() - start
    state, _ = compiled(state, hparams)  # warm-up
    jax.block_until_ready(state)
    times = []
    for _ in range(_REPEATS.value):
        t = time.perf_counter()
        state, metrics = compiled(state, hparams)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t)
    seconds = statistics.median(times)
    steps = _UPDATES.value * spec.static.batch_size * num_seeds
    ops = (bench_util.executed_ops(lambda: jax.block_until_ready(compiled(state, hparams)))
           if profile else None)
    return {"ops": ops, "seeds": num_seeds, "epochs": num_epochs, "compile_s": compile_s,
            "chunk_s": seconds, "per_update_ms": 1e3 * seconds / _UPDATES.value, "steps_per_s": steps / seconds,
            "gflops": dense_flops(spec.static) * _UPDATES.value * num_seeds / seconds / 1e9}


def dense_flops(static) -> float:
    """Floating-point operations of the dense layers in one update of one run: the rollout's
    forward passes (2 per multiply-add) and each epoch's forward + backward (3 × forward) over the
    batch. Elementwise work (tanh, the environment, sampling, Adam) is left out, so this is a lower
    bound on the work done."""
    model, env, env_params = common.model_and_env(static.env_name, static.hidden, static.activation)
    obs_dim = int(np.prod(env.observation_space(env_params).shape))
    widths = [obs_dim, *static.hidden]
    body = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    macs = 2 * body + widths[-1] * (model.action_dim + 1)  # actor and critic trunks, two heads
    return static.batch_size * 2 * macs * (1 + 3 * static.num_epochs)


def matmul_rate(n: int = 512, repeats: int = 20) -> float:
    """GFLOP/s of one n×n×n f32 matmul, compiled and run as the training programs are."""
    a = jax.random.normal(jax.random.PRNGKey(0), (n, n))
    f = jax.jit(lambda x: x @ x)
    jax.block_until_ready(f(a))
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a)
    jax.block_until_ready(out)
    return 2 * n ** 3 * repeats / (time.perf_counter() - t) / 1e9


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    threads = "Eigen threads on" if os.environ.get("KLTRUST_EIGEN_THREADS") == "1" else "one thread"
    threads += f", seeds over {_MESH_RUNS.value} device(s)"
    rows = {}
    for num_epochs in map(int, _EPOCHS.value):
        for num_seeds in map(int, _SEEDS.value):
            rows[num_seeds, num_epochs] = time_chunk(num_seeds, num_epochs,
                                                     _PROFILE.value and num_epochs == 10)
    peak = matmul_rate()
    print(f"rejax CartPole settings, {threads}; 512³ f32 matmul: {peak:.1f} GFLOP/s")
    print("| seeds | epochs | compile s | ms / update | env steps/s (total) | × one seed | "
          "dense GFLOP/s | share of matmul rate |")
    print("|---|---|---|---|---|---|---|---|")
    for (num_seeds, num_epochs), r in rows.items():
        base = rows[min(map(int, _SEEDS.value)), num_epochs]["steps_per_s"]
        print(f"| {num_seeds} | {num_epochs} | {r['compile_s']:.1f} | {r['per_update_ms']:.2f} | "
              f"{r['steps_per_s']:,.0f} | {r['steps_per_s'] / base:.2f} | {r['gflops']:.1f} | "
              f"{r['gflops'] / peak:.0%} |")
    epochs = sorted(map(int, _EPOCHS.value))
    if len(epochs) >= 2:
        lo, hi = epochs[0], epochs[-1]
        print(f"\nsplit from {lo} and {hi} epochs: t = t_rollout + E · t_epoch (ms per update)")
        print("| seeds | rollout + GAE | one epoch | share of a 10-epoch update in epochs |")
        print("|---|---|---|---|")
        for num_seeds in map(int, _SEEDS.value):
            t_lo = rows[num_seeds, lo]["per_update_ms"]
            t_hi = rows[num_seeds, hi]["per_update_ms"]
            epoch = (t_hi - t_lo) / (hi - lo)
            rollout = t_lo - lo * epoch
            print(f"| {num_seeds} | {rollout:.2f} | {epoch:.2f} | "
                  f"{10 * epoch / (rollout + 10 * epoch):.0%} |")
    if _PROFILE.value:
        print_profiles(rows)


def print_profiles(rows: dict) -> None:
    """Executed operations per update (`bench_util.executed_ops`), per number of seeds."""
    for (num_seeds, _), r in rows.items():
        if r["ops"] is None:
            continue
        ops = r["ops"]
        events = sum(n for n, _ in ops.values()) / _UPDATES.value
        busy = sum(ns for _, ns in ops.values()) / _UPDATES.value / 1e6
        print(f"\n{num_seeds} seed(s), 10 epochs: {events:,.0f} operations per update, "
              f"{busy:.2f} ms of them per update")
        print("| kind | per update | µs per update | µs each |")
        print("|---|---|---|---|")
        top = sorted(ops.items(), key=lambda kv: -kv[1][1])[:8]
        for kind, (n, ns) in top:
            print(f"| {kind} | {n / _UPDATES.value:,.0f} | {ns / _UPDATES.value / 1e3:,.0f} | "
                  f"{ns / n / 1e3:.2f} |")


if __name__ == "__main__":
    app.run(main)
