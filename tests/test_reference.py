"""The moving reference (`kltrust.reference`) against hand-computed parameters."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import reference


def _trees(seed=0):
    rng = np.random.default_rng(seed)
    ref = {"a": rng.normal(size=(3,)).astype(np.float32), "b": {"c": rng.normal(size=(2, 2))
                                                                .astype(np.float32)}}
    policy = {"a": rng.normal(size=(3,)).astype(np.float32),
              "b": {"c": rng.normal(size=(2, 2)).astype(np.float32)},
              "value_head": np.ones((4,), np.float32)}  # a leaf the reference does not have
    return ref, policy


def test_periodic_soft_sync_against_hand_computation():
    """τ = 3, α = 0.25 over 7 updates with a policy that moves every update: the reference changes
    after updates 3 and 6 only, each time to ¼·θ + ¾·θ_ref, computed here in float64."""
    ref, _ = _trees()
    expected = {k: np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(ref)}
    current = jax.tree.map(jnp.asarray, ref)
    for step in range(1, 8):
        _, policy = _trees(seed=step)
        current = reference.refresh(current, policy, jnp.int32(step), jnp.float32(3),
                                    jnp.float32(0.25))
        picked = {k: np.asarray(v, np.float64)
                  for k, v in jax.tree_util.tree_leaves_with_path(reference.as_reference(policy, ref))}
        if step % 3 == 0:
            expected = {k: 0.25 * picked[k] + 0.75 * expected[k] for k in expected}
        got = {k: np.asarray(v, np.float64) for k, v in jax.tree_util.tree_leaves_with_path(current)}
        for k in expected:
            # Two float32 roundings per sync, two syncs, values of order 1: 1e-6 is ~8 ulps.
            np.testing.assert_allclose(got[k], expected[k], rtol=0, atol=1e-6, err_msg=str(k))


def test_hard_sync_is_the_policy_bit_for_bit_and_ema_has_its_closed_form():
    ref, policy = _trees()
    synced = reference.refresh(ref, policy, jnp.int32(4), jnp.float32(4), jnp.float32(1.0))
    for got, want in zip(jax.tree.leaves(synced), jax.tree.leaves(reference.as_reference(policy, ref))):
        np.testing.assert_array_equal(got, want)
    # EMA (τ = 1): after k updates with a constant policy θ, θ_ref = θ + (1 − α)^k (θ_ref,0 − θ).
    alpha, k = 0.1, 20
    current = ref
    for step in range(1, k + 1):
        current = reference.refresh(current, policy, jnp.int32(step), jnp.float32(1),
                                    jnp.float32(alpha))
    theta = np.asarray(policy["a"], np.float64)
    want = theta + (1 - alpha) ** k * (np.asarray(ref["a"], np.float64) - theta)
    # 20 float32 updates of values of order 1, each within 2 ulps: 20·2·2⁻²³ ≈ 5e-6.
    np.testing.assert_allclose(current["a"], want, rtol=0, atol=5e-6)


def test_swept_every_and_alpha_are_arrays_in_one_program():
    ref, policy = _trees()
    traces = []

    @jax.jit
    def sweep(every, alpha):
        traces.append(1)
        return jax.vmap(lambda e, a: reference.refresh(ref, policy, jnp.int32(6), e, a))(every, alpha)

    out = sweep(jnp.array([2.0, 4.0, 6.0]), jnp.array([1.0, 1.0, 0.5]))
    np.testing.assert_array_equal(out["a"][0], policy["a"])  # 6 mod 2 = 0: hard sync
    np.testing.assert_array_equal(out["a"][1], ref["a"])  # 6 mod 4 ≠ 0: unchanged
    np.testing.assert_allclose(out["a"][2], 0.5 * policy["a"] + 0.5 * ref["a"], rtol=1e-6)
    sweep(jnp.array([3.0, 5.0, 7.0]), jnp.array([0.1, 0.2, 0.3]))
    assert len(traces) == 1


def test_a_policy_without_the_references_leaves_is_refused_by_path():
    ref, policy = _trees()
    del policy["b"]
    with pytest.raises(ValueError, match=r"reference \['b'\]\['c'\] has shape \(2, 2\).*missing"):
        reference.refresh(ref, policy, jnp.int32(1), jnp.float32(1), jnp.float32(1))
