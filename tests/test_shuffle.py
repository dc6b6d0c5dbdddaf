"""`kltrust.shuffle`: the radix-sorted permutation equals JAX's and NumPy's stable argsort exactly.

References: `jax.random.permutation` itself (the function replaced, same keys) and
`np.argsort(kind="stable")`. Integer results: equality is exact, no tolerance.
"""

from __future__ import annotations

import functools

import hypothesis
import hypothesis.strategies as st
import jax
import numpy as np
import pytest

from kltrust import shuffle

KEYS = jax.random.split(jax.random.PRNGKey(7), 16)


@functools.cache
def _both(n: int):
    """(kltrust's, JAX's) permutations of n for a batch of keys, each one compiled program."""
    ours = jax.jit(jax.vmap(lambda k: shuffle.permutation(k, n)))
    theirs = jax.jit(jax.vmap(lambda k: jax.random.permutation(k, n)))
    return ours, theirs


# 1 and 2: JAX's round count is 0 and 1; 2,048 (the TRPO critic's batch) and 65,536 (the largest
# radix case) take 2 rounds; 65,537 is JAX's own function.
@pytest.mark.parametrize("n", [1, 2, 3, 100, 2048, 65536, 65537])
def test_permutation_equals_jax_random_permutation_bit_for_bit(n):
    ours, theirs = _both(n)
    mine, reference = np.asarray(ours(KEYS)), np.asarray(theirs(KEYS))
    assert mine.shape == (len(KEYS), n)
    np.testing.assert_array_equal(mine, reference)
    np.testing.assert_array_equal(np.sort(mine, axis=1), np.broadcast_to(np.arange(n), mine.shape))


_argsort64 = jax.jit(shuffle.stable_argsort_u32)
# Values that differ only in the low or only in the high 16 bits, and the extremes, so that ties
# and the two radix passes are both exercised (random 32-bit keys almost never tie).
_EDGES = [0, 1, 0xFFFF, 0x10000, 0x10001, 0x1FFFF, 0xFFFF0000, 0xFFFF0001, 0xFFFFFFFF]


@hypothesis.settings(max_examples=200, deadline=None)
@hypothesis.given(st.lists(st.one_of(st.sampled_from(_EDGES), st.integers(0, 2**32 - 1)),
                           min_size=64, max_size=64))
def test_stable_argsort_equals_numpys_stable_argsort_with_ties(values):
    keys = np.asarray(values, np.uint32)
    np.testing.assert_array_equal(np.asarray(_argsort64(keys)), np.argsort(keys, kind="stable"))


def test_stable_argsort_at_its_largest_size_with_many_ties():
    keys = np.random.default_rng(0).integers(0, 3000, size=65536).astype(np.uint32) * 40503
    np.testing.assert_array_equal(np.asarray(jax.jit(shuffle.stable_argsort_u32)(keys)),
                                  np.argsort(keys, kind="stable"))


def test_stable_argsort_refuses_what_its_positions_cannot_hold():
    with pytest.raises(ValueError, match="uint32"):
        shuffle.stable_argsort_u32(np.zeros(65537, np.uint32))
    with pytest.raises(ValueError, match="uint32"):
        shuffle.stable_argsort_u32(np.zeros(8, np.int32))
