"""The minibatch shuffles' cost: JAX's permutation against `kltrust.shuffle`'s, in the real chunks.

    python -m benchmarks.shuffle_ab [--repeats=7 --updates=40 --rounds=2]

For TRPO's cartpole_trpo (5 critic epochs over 2,048 states per update) and PPO at rejax's
CartPole settings (10 epochs over 512 states; 1 seed and 8 vmapped seeds), each training chunk is
compiled twice in one process: once with `jax.random.permutation` drawing the minibatch orders
(as before `kltrust.shuffle`) and once with `kltrust.shuffle.permutation`. Both chunks start from
the same state and the script first checks that one call of each returns bit-identical metrics;
then ``--rounds`` × ``--repeats`` chunk calls are timed round-robin (A, B, A, B, …) so that load
falls on both alike, and the medians per update are printed with their ratio.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import app, flags, logging

from benchmarks import seed_scaling, trpo_profile  # their --repeats and --updates flags
from kltrust import shuffle
from kltrust.train import control_config

_ROUNDS = flags.DEFINE_integer("rounds", 2, "Interleaved timing rounds of --repeats calls each.")


def _ppo_chunk(num_seeds: int) -> Callable[[], Any]:
    """A blocking call of one PPO chunk at rejax's settings (`seed_scaling.rejax_config`)."""
    spec = control_config.spec_from_config(seed_scaling.rejax_config(num_seeds, 10))
    return trpo_profile.compile_spec(spec)


def _trpo_chunk() -> Callable[[], Any]:
    spec = control_config.spec_from_config(trpo_profile.make_config({}))
    return trpo_profile.compile_spec(spec)


SETTINGS: dict[str, tuple[Callable[[], Callable[[], Any]], int]] = {
    # name -> (compile one chunk, env steps per update over all seeds)
    "TRPO cartpole_trpo, 1 seed": (_trpo_chunk, 2048),
    "PPO rejax settings, 1 seed": (lambda: _ppo_chunk(1), 512),
    "PPO rejax settings, 8 seeds": (lambda: _ppo_chunk(8), 8 * 512),
}


def compile_both(make: Callable[[], Callable[[], Any]]) -> dict[str, Callable[[], Any]]:
    """The chunk compiled with JAX's permutation and with kltrust's (the trainers read
    ``shuffle.permutation`` when they are traced); refuses if one call of each differs."""
    ours = shuffle.permutation
    shuffle.permutation = jax.random.permutation
    try:
        calls = {"jax.random.permutation": make()}
    finally:
        shuffle.permutation = ours
    calls["kltrust.shuffle.permutation"] = make()
    first, second = (jax.tree.map(np.asarray, call()) for call in calls.values())
    leaves_a, leaves_b = jax.tree.leaves(first), jax.tree.leaves(second)
    if len(leaves_a) != len(leaves_b) or not all(
            np.array_equal(a, b, equal_nan=True) for a, b in zip(leaves_a, leaves_b)):
        raise SystemExit("the two chunks' metrics differ: the permutations are not the same")
    return calls


def main(argv: Sequence[str]) -> None:
    del argv
    logging.set_verbosity(logging.WARNING)
    updates, repeats = seed_scaling._UPDATES.value, seed_scaling._REPEATS.value
    with open("/proc/loadavg") as f:
        load_before = " ".join(f.read().split()[:3])
    rows = []
    for name, (make, steps) in SETTINGS.items():
        calls = compile_both(make)
        times: dict[str, list[float]] = {k: [] for k in calls}
        for _ in range(_ROUNDS.value):
            for k, (median, _, _) in trpo_profile.interleaved_ms(calls, repeats).items():
                times[k].append(median)
        rows.append((name, steps, {k: float(np.median(v)) for k, v in times.items()}))
    with open("/proc/loadavg") as f:
        load_after = " ".join(f.read().split()[:3])
    print(f"{updates} updates per chunk, {_ROUNDS.value} rounds × {repeats} interleaved calls, "
          f"median; load {load_before} / {load_after}; metrics bit-identical in every pair\n")
    print("| chunk | jax.random.permutation, ms / update | kltrust.shuffle, ms / update | "
          "speed-up | env steps/s (kltrust.shuffle) |\n|---|---|---|---|---|")
    for name, steps, ms in rows:
        old, new = ms["jax.random.permutation"], ms["kltrust.shuffle.permutation"]
        print(f"| {name} | {old:.2f} | {new:.2f} | {old / new:.2f}× | {steps / new * 1e3:,.0f} |")


if __name__ == "__main__":
    app.run(main)
