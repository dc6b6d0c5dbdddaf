"""Env steps/s of the PPO program's update on gymnax and brax tasks, one compiled chunk at a time.

    python -m benchmarks.control_steps [--presets=cartpole_clip,inverted_pendulum_clip,hopper_clip]
        [--seeds=1,3] [--updates=4] [--repeats=3]

For each preset (configs/ppo.py) and number of vmapped seeds: the time to compile the program
(`kltrust.train.common.compile_run`, init included), then ``--repeats`` timed calls of the compiled
chunk of ``--updates`` updates (rollout + GAE + every epoch and minibatch), each from the same
initial state; env steps/s = updates × batch × seeds / median call time. The MuJoCo presets run
the PPO paper's Table 3 update (one env × 2048 steps, 10 epochs × 32 minibatches); CartPole its
own preset's (4 envs × 128 steps, 4 × 4). Prints a Markdown table; with ``--json_out`` also
writes the rows as one JSON object (a row of `benchmarks.peers`' ``brax`` part).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks import bench_util
from configs import ppo as ppo_configs
from kltrust import train as programs
from kltrust.train import control_config

_PRESETS = flags.DEFINE_list("presets", ["cartpole_clip", "inverted_pendulum_clip", "hopper_clip"],
                             "PPO presets (configs/ppo.py).")
_SEEDS = flags.DEFINE_list("seeds", ["1"], "Numbers of vmapped seeds to time.")
_UPDATES = flags.DEFINE_integer("updates", 4, "Updates per timed call (one compiled chunk).")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed calls per setting; the median is reported.")


def measure(preset: str, num_seeds: int, updates: int, repeats: int) -> dict[str, float]:
    """Compile seconds, median call seconds and env steps/s of ``updates`` updates of ``preset``."""
    config = ppo_configs.get_config(preset)
    batch = config.num_envs * config.num_steps
    config.total_timesteps, config.updates_per_chunk = batch * updates, updates
    config.num_seeds = num_seeds
    spec = control_config.spec_from_config(config)
    trainer = programs.program(spec.algorithm).make_trainer(spec.static)
    hparams = jax.tree.map(lambda x: np.broadcast_to(x, (num_seeds,) + x.shape), spec.hparams)
    start = time.perf_counter()
    init, run_chunk = programs.program(spec.algorithm).compile_run(trainer)
    state = jax.block_until_ready(init(spec.seeds, hparams))
    chunk = run_chunk.lower(state, hparams).compile()
    compile_seconds = time.perf_counter() - start
    calls = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(chunk(state, hparams))
        calls.append(time.perf_counter() - start)
    median = float(np.median(calls))
    return dict(batch=batch, compile=compile_seconds, call=median,
                steps_per_s=updates * batch * num_seeds / median)


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    threads = bench_util.apply_threads(None)
    measured = []
    rows = ["| preset | env | seeds | batch per update | compile+init s | s per update | "
            "env steps/s |", "|---|---|---|---|---|---|---|"]
    for preset in _PRESETS.value:
        env_name = ppo_configs.get_config(preset).env_name
        for num_seeds in map(int, _SEEDS.value):
            m = measure(preset, num_seeds, _UPDATES.value, _REPEATS.value)
            measured.append(dict(m, preset=preset, env=env_name, seeds=num_seeds,
                                 updates=_UPDATES.value))
            rows.append(f"| {preset} | {env_name} | {num_seeds} | {m['batch']} | "
                        f"{m['compile']:.1f} | {m['call'] / _UPDATES.value:.3f} | "
                        f"{m['steps_per_s']:,.0f} |")
            print(rows[-1], flush=True)
    print("\n".join(rows))
    if bench_util.JSON_OUT.value:
        bench_util.emit({"bench": "control_steps", "threads": threads,
                         "versions": bench_util.versions(), "rows": measured})


if __name__ == "__main__":
    app.run(main)
