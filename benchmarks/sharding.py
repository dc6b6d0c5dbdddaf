"""The PPO and token-PPO update on 1 device vs 8 devices (a sanity figure, not a speed claim).

    python -m benchmarks.sharding [--repeats=3 --devices=8]

On a CPU-only machine the 8 devices are forced host devices (``--xla_force_host_platform_device_count``,
set here before JAX starts): they share the machine's cores, so this measures what splitting and
the collectives cost, not a speed-up. On a GPU or TPU host the real devices are used. Meshes timed:
one device; ``data`` = 8 (the batch split); for token PPO also ``fsdp`` = 8 (weights split) and, for
control PPO, ``runs`` = 8 (8 seeds, one per device, against 8 seeds on one device).

Prints a Markdown table: compile seconds and milliseconds per update (median and range of
``repeats`` timed programs, each after its compilation).
"""

from __future__ import annotations

import os
import sys

if "--xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
    count = next((a.split("=")[1] for a in sys.argv if a.startswith("--devices=")), "8")
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               f" --xla_force_host_platform_device_count={count}").strip()

import pathlib  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Sequence  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags, logging  # noqa: E402

import kltrust  # noqa: E402,F401  (its XLA flags must be set before JAX starts a backend)
from configs import ppo as ppo_configs  # noqa: E402
from configs import rlhf as rlhf_configs  # noqa: E402
from kltrust import sharding  # noqa: E402
from kltrust.train import control_config, loop, pipeline, reward_model  # noqa: E402
from kltrust.train import tokens as tok  # noqa: E402

_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed programs per setting; the median is shown.")
_DEVICES = flags.DEFINE_integer("devices", 8, "Devices of the many-device meshes.")


def _median_range(values: list[float]) -> str:
    v = np.asarray(values) * 1e3
    return f"{np.median(v):.1f} ({v.min():.1f}–{v.max():.1f})"


def control_rows(n: int, repeats: int) -> list[str]:
    rows = []
    for label, seeds, mesh in [("1 device", 1, dict(runs=1, data=1)),
                               (f"data = {n}", 1, dict(runs=1, data=n)),
                               (f"{n} seeds, 1 device", n, dict(runs=1, data=1)),
                               (f"{n} seeds, runs = {n}", n, dict(runs=n, data=1))]:
        config = ppo_configs.get_config("cartpole_clip")
        config.num_envs, config.num_seeds = 8, seeds  # 8 environments: one per device
        config.total_timesteps, config.updates_per_chunk = 8 * 128 * 20, 20
        config.mesh.update(mesh, fsdp=1)
        spec = control_config.spec_from_config(config)  # the config is read here, once
        results = [loop.train(spec, progress=False) for _ in range(repeats)]
        per_update = [r.run_seconds / r.metrics["kl_old"].shape[1] for r in results]
        rows.append(f"| PPO CartPole (8 envs × 128 steps, 4 epochs × 4 minibatches) | {label} | "
                    f"{results[0].compile_seconds:.1f} | {_median_range(per_update)} |")
    return rows


def token_rows(n: int, repeats: int) -> list[str]:
    config = rlhf_configs.get_config("ppo")
    config.num_seeds = 1
    config.rl.update(num_updates=10, updates_per_eval=10)
    spec = pipeline.spec_from_config(config)
    ref_params = tok.Policy(spec.policy).init(jax.random.PRNGKey(1))
    pairs = {"prompt": np.zeros((1, config.task.prompt_len), np.int32),
             "chosen": np.zeros((1, config.task.response_len), np.int32)}
    rm_params = reward_model.init_params(spec.reward_model, pairs, 2)
    rows = []
    root = pathlib.Path(tempfile.mkdtemp(prefix="kltrust_bench_"))
    for label, mesh in [("1 device", dict(data=1, fsdp=1)), (f"data = {n}", dict(data=n, fsdp=1)),
                        (f"fsdp = {n}", dict(data=1, fsdp=n))]:
        config.mesh.update(mesh, runs=1)
        results = [pipeline.run_policy(pipeline.spec_from_config(config), root, ref_params,
                                       rm_params, write=False)
                   for _ in range(repeats)]
        per_update = [r.run_seconds / config.rl.num_updates for r in results]
        rows.append(f"| token PPO (64 prompts × 12 tokens, 2 layers × 64 wide, 2 epochs × 4 "
                    f"minibatches) | {label} | {results[0].compile_seconds:.1f} | "
                    f"{_median_range(per_update)} |")
    return rows


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.ERROR)
    n = _DEVICES.value
    if jax.device_count() < n:
        raise app.UsageError(f"--devices={n} but JAX sees {jax.device_count()} devices.")
    rows = ["| update | mesh | compile s | ms per update, median (range) |", "|---|---|---|---|"]
    rows += control_rows(n, _REPEATS.value)
    rows += token_rows(n, _REPEATS.value)
    print(f"{jax.device_count()} × {jax.devices()[0].device_kind} ({jax.default_backend()}), "
          f"{_REPEATS.value} repeats")
    print("\n".join(rows))


if __name__ == "__main__":
    app.run(main)
