"""kltrust's CPU lowering of Threefry (`kltrust.threefry_cpu`): unrolled, and the same bits.

References: Random123's published Threefry-2x32 (20 rounds) known-answer vectors (Salmon et al.
2011; the same three vectors JAX's own tests use), and JAX's rolled CPU lowering on random inputs.
Integer arithmetic: equality is exact, no tolerance.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from kltrust import threefry_cpu

KNOWN_ANSWERS = [  # (key, counter) -> output, Random123 kat_vectors, threefry2x32_20
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


def _hash(key, count):
    # A fresh function each call: jit's caches are per function, so each is lowered anew with
    # whichever CPU rule is registered at that moment.
    return jax.jit(lambda k, c: threefry_2x32(k, c))(key, count)


@pytest.mark.parametrize("key,counter,expected", KNOWN_ANSWERS)
def test_the_unrolled_lowering_gives_random123s_known_answers(key, counter, expected):
    assert threefry_cpu.install()
    out = _hash(np.uint32(key), np.uint32(counter))
    assert [int(v) for v in np.asarray(out)] == list(expected)


def test_the_unrolled_lowering_has_no_loop_and_equals_the_rolled_one_bit_for_bit():
    rng = np.random.default_rng(0)
    key = rng.integers(0, 2**32, size=2, dtype=np.uint32)
    count = rng.integers(0, 2**32, size=4096, dtype=np.uint32)
    hlo = lambda: jax.jit(lambda k, c: threefry_2x32(k, c)).lower(key, count).as_text()
    assert threefry_cpu.install()
    assert "while" not in hlo()  # the switch is in force: no rolled loop left
    unrolled = np.asarray(_hash(key, count))
    normal = np.asarray(jax.jit(lambda k: jax.random.normal(k, (257,)))(jax.random.key(7)))
    try:
        threefry_cpu.rolled()
        assert "while" in hlo()  # JAX's CPU default is the rolled loop
        rolled = np.asarray(_hash(key, count))
        normal_rolled = np.asarray(
            jax.jit(lambda k: jax.random.normal(k, (257,)))(jax.random.key(7)))
    finally:
        threefry_cpu.install()
    np.testing.assert_array_equal(unrolled, rolled)
    np.testing.assert_array_equal(normal, normal_rolled)  # what the programs draw: same floats
    assert unrolled.dtype == np.uint32 and len(np.unique(unrolled)) > 4000  # not a constant
