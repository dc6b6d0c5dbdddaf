"""`jax.random.permutation(key, n)`, bit for bit, at about a third of its cost on CPU.

JAX draws a permutation as ``r`` rounds (2 for 2,048 ≤ n ≤ 65,536) of a *stable* key–value sort
of the current order by fresh uint32 random keys. XLA's CPU runtime sorts one uint32 operand fast
(2,048 values in about 63 µs on the 2-core machine) but a key–value pair through its generic
comparator about five times slower (343 µs), so the permutations of the training programs'
minibatch shuffles cost 15% of a TRPO update on CartPole (5 epochs × 2 rounds over 2,048 states:
`benchmarks/trpo_profile.py`). The stable argsort of uint32 keys is done here instead as a
least-significant-digit radix sort with two 16-bit digits, each pass one single-operand uint32
sort of ``digit << 16 | position``: the position in the low half makes every value distinct and
breaks ties by position, so each pass is stable, and two stable passes (low half, then high
half) order by (key, original index), which is exactly what a stable sort by key gives. Hence
the same permutation as JAX's, for any key (tests/test_shuffle.py checks both against JAX and
NumPy).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

MAX_FAST = 1 << 16  # positions must fit the low 16 bits of a uint32


def stable_argsort_u32(keys: jax.Array) -> jax.Array:
    """The stable argsort of uint32 ``keys`` [n] (n ≤ 65,536): int32 indices ``o`` with keys[o]
    ascending and equal keys in index order, as ``np.argsort(keys, kind="stable")``.

    Two single-operand sorts: ``lo`` = positions sorted by (keys mod 2¹⁶, position), then the
    order of ``lo`` by (keys[lo] div 2¹⁶, rank in ``lo``); the second pass keeps the first's order
    among equal high halves, so the result orders by the whole key, then by position.
    """
    n = keys.shape[-1]
    if keys.ndim != 1 or keys.dtype != jnp.uint32 or n > MAX_FAST:
        raise ValueError(f"stable_argsort_u32: keys must be uint32 [n] with n ≤ {MAX_FAST}; got "
                         f"{keys.dtype} {keys.shape}")
    position = lax.iota(jnp.uint32, n)
    low = lax.sort(((keys & 0xFFFF) << 16) | position) & 0xFFFF
    high = jnp.take(keys, low, unique_indices=True) >> 16
    rank = lax.sort((high << 16) | position) & 0xFFFF
    return jnp.take(low, rank, unique_indices=True).astype(jnp.int32)


def permutation(key: jax.Array, n: int) -> jax.Array:
    """A random permutation of ``arange(n)`` (int32), equal to ``jax.random.permutation(key, n)``.

    Follows JAX's construction (its module `jax._src.random.core`, ``_shuffle``): ⌈3·ln n / ln
    (2³² − 1)⌉ rounds, each splitting the key and stably sorting the current order by 32 fresh
    random bits per element, with `stable_argsort_u32` in place of the key–value sort. Above
    65,536 elements it is JAX's own function.
    """
    if n > MAX_FAST:
        return jax.random.permutation(key, n)
    rounds = math.ceil(3 * np.log(max(1, n)) / np.log(np.iinfo(np.uint32).max))
    order = jnp.arange(n, dtype=jnp.int32)
    for _ in range(rounds):
        key, subkey = jax.random.split(key)
        sort_keys = jax.random.bits(subkey, (n,), jnp.uint32)
        order = jnp.take(order, stable_argsort_u32(sort_keys), unique_indices=True)
    return order
