"""The cold start of one control preset, stage by stage, then two calls of its compiled chunk.

    python -m benchmarks.cold_start [--preset=ppo:cartpole_clip --updates=61]

One process, nothing cached: imports and the config check, the eager parameter init
(`kltrust.train.common.initial_params`), the jitted init, tracing and lowering the chunk of
``--updates`` updates, XLA compiling it (and the number of instructions in the optimized
program), then two timed calls of the compiled chunk (the second
without first-call effects). Each line is one stage's wall time; compare settings by running
this interleaved. Used for docs/results/speed.md, "Compile time and the compilation cache".
"""

from __future__ import annotations

import re
import time

_START = time.perf_counter()

import jax  # noqa: E402  (timed from the interpreter's start)
import jax.numpy as jnp  # noqa: E402
from absl import app, flags  # noqa: E402

from configs import ppo as ppo_configs  # noqa: E402
from configs import trpo as trpo_configs  # noqa: E402
from kltrust import sharding  # noqa: E402
from kltrust import train as programs  # noqa: E402
from kltrust.train import control_config  # noqa: E402

_PRESET = flags.DEFINE_string("preset", "ppo:cartpole_clip", "FAMILY:PRESET, family ppo or trpo.")
_UPDATES = flags.DEFINE_integer("updates", 61, "Updates per compiled chunk.")


def _stage(name: str, since: float) -> float:
    now = time.perf_counter()
    print(f"{name}: {now - since:.2f} s", flush=True)
    return now


def main(argv) -> None:
    del argv
    family, preset = _PRESET.value.split(":")
    if family not in ("ppo", "trpo"):
        raise app.UsageError(f"--preset: family {family!r}; allowed: ppo, trpo")
    config = (ppo_configs if family == "ppo" else trpo_configs).get_config(preset)
    config.updates_per_chunk = _UPDATES.value
    config.total_timesteps = config.num_envs * config.num_steps * _UPDATES.value
    spec = control_config.spec_from_config(config)
    t = _stage("imports and config check", _START)
    program = programs.program(spec.algorithm)
    trainer = program.make_trainer(spec.static, sharding.mesh_from_sizes(dict(spec.mesh)))
    seeds = jnp.asarray(spec.seeds)
    hparams = spec.seed_hparams
    init, run_chunk = program.compile_run(trainer)
    jax.block_until_ready(trainer.initial_params(seeds))
    t = _stage("eager parameter init", t)
    state = jax.block_until_ready(init(seeds, hparams))  # its params now come from the cache
    t = _stage("jitted init", t)
    lowered = run_chunk.lower(state, hparams)
    t = _stage("trace and lower the chunk", t)
    chunk = lowered.compile()
    t = _stage("XLA compile the chunk", t)
    # XLA's optimized program, counted as instructions "%name = TYPE opcode(" of its HLO text
    instructions = len(re.findall(r"= \S+ \w[\w-]*\(", chunk.as_text()))
    print(f"optimized HLO instructions of the chunk: {instructions:,}", flush=True)
    t = time.perf_counter()
    for call in (1, 2):
        state, _ = jax.block_until_ready(chunk(state, hparams))
        t = _stage(f"chunk call {call} ({_UPDATES.value} updates)", t)


if __name__ == "__main__":
    app.run(main)
