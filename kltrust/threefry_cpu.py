"""Threefry on CPU as one fused kernel instead of a rolled loop (same bits, fewer dispatched ops).

JAX lowers its Threefry-2x32 hash (every ``jax.random`` call with the default key type) on CPU as
a ``fori_loop`` over its 5 groups of 4 rounds, to keep compile time down; on other platforms it
unrolls the 20 rounds. A rolled loop costs XLA's CPU runtime a dispatch and copies of the loop
state for each of its ~16 small operations in each of the 5 iterations, on arrays of a few
elements in a control rollout. Measured on CartPole PPO with `benchmarks.seed_scaling --profile`
(2 CPU cores, 2026-12-01, rejax's settings, one seed): 30,226 operations executed per update with
the rolled loop, 14,605 unrolled, and 45.6k against 35.7k env steps/s (one run each; numbers in
docs/results/speed.md). `install` registers JAX's own unrolled lowering (the one it
uses off CPU) for CPU too; XLA then fuses the whole hash into one elementwise kernel. It is the
same integer arithmetic in the same order, so every random number is unchanged: the tests check
Random123's published known-answer vectors and the rolled lowering's bits.

Set ``KLTRUST_ROLLED_THREEFRY=1`` before importing kltrust to keep JAX's CPU default.
"""

from __future__ import annotations

import os

from jax._src.interpreters import mlir
from jax._src.random import threefry2x32 as _threefry

_installed = False


def install() -> bool:
    """Makes CPU lowerings of ``threefry2x32`` unrolled (see the module docstring). Idempotent;
    returns whether the unrolled lowering is in place. Programs compiled before the call keep the
    lowering they were compiled with."""
    global _installed
    if os.environ.get("KLTRUST_ROLLED_THREEFRY") == "1":
        return False
    if not _installed:
        # JAX's module-private rules: the unrolled one is what it registers for every platform but
        # CPU (pinned jax 0.10.2; tests/test_threefry_cpu.py fails loudly if a release renames them).
        mlir.register_lowering(_threefry.threefry2x32_p, _threefry._threefry2x32_lowering_rule,
                               platform="cpu")
        _installed = True
    return True


def rolled() -> None:
    """Puts JAX's CPU default (the rolled loop) back; for comparisons and tests."""
    global _installed
    mlir.register_lowering(_threefry.threefry2x32_p, _threefry._threefry2x32_cpu_lowering_rule,
                           platform="cpu")
    _installed = False
