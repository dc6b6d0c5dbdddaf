"""The exact best-of-n law and KL (`kltrust.tasks.best_of_n`) against brute-force enumeration of
n-tuples, against Beirami et al.'s bound log n − (n−1)/n, and against a float64 NumPy restatement for
n up to 1024; and the reproduction's CLI on bad input."""

from __future__ import annotations

import itertools
import math
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import subprocs
from kltrust.objectives import grpo
from kltrust.tasks import bandit, best_of_n

ROOT = pathlib.Path(__file__).resolve().parents[1]
NS = [2**k for k in range(11)]  # 1 … 1024


def _brute_force_law(p: np.ndarray, r: np.ndarray, n: int) -> np.ndarray:
    """P(kept = y) over all A^n tuples, keeping the maximal reward at the lowest sample index (as
    `grpo.best_of_n_select`), in float64."""
    tuples = np.array(list(itertools.product(range(p.size), repeat=n)))
    weight = p[tuples].prod(axis=1)
    kept = tuples[np.arange(len(tuples)), np.argmax(r[tuples], axis=1)]  # first maximal index
    return np.bincount(kept, weights=weight, minlength=p.size)


def _law64(p: np.ndarray, r: np.ndarray, n: int) -> np.ndarray:
    """π_bon = π_ref / m · (F^n − G^n) per outcome, float64 (the module docstring's formula)."""
    le, lt, eq = (op(r[None, :], r[:, None]) for op in (np.less_equal, np.less, np.equal))
    f, g, m = ((mask * p[None, :]).sum(axis=1) for mask in (le, lt, eq))
    return np.where(p > 0, p / np.where(m > 0, m, 1.0) * (f**n - g**n), 0.0)


def _kl64(q: np.ndarray, p: np.ndarray) -> float:
    keep = q > 0
    return float((q[keep] * np.log(q[keep] / p[keep])).sum())


# Rows: distinct rewards, a two-way tie, all rewards equal, a zero-probability outcome (tied with a
# present one), a zero-probability outcome holding the top reward.
P = np.array([[0.1, 0.2, 0.3, 0.4],
              [0.1, 0.2, 0.3, 0.4],
              [0.1, 0.2, 0.3, 0.4],
              [0.25, 0.0, 0.35, 0.4],
              [0.5, 0.3, 0.2, 0.0]])
R = np.array([[1.0, 2.0, 3.0, 0.0],
              [1.0, 2.0, 2.0, 0.0],
              [0.5, 0.5, 0.5, 0.5],
              [1.0, 2.0, 2.0, 0.0],
              [0.0, 1.0, -1.0, 5.0]])


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_exact_law_and_kl_match_brute_force_enumeration_with_ties(n):
    with np.errstate(divide="ignore"):
        logp = jnp.asarray(np.log(P), jnp.float32)
    reward = jnp.asarray(R, jnp.float32)
    law = np.exp(np.asarray(best_of_n.best_of_n_policy(logp, reward, n), np.float64))
    kl = np.asarray(bandit.best_of_n_kl(logp, reward, n))  # the re-export is the same function
    for c in range(len(P)):
        brute = _brute_force_law(P[c], R[c], n)
        # float32 against float64 on probabilities 0.1–0.5 and n ≤ 4: a few ulps (2^-24 ≈ 6e-8)
        # per log-space step, ~1e-6 relative at most; zero-probability outcomes are exactly 0.
        np.testing.assert_allclose(law[c], brute, rtol=1e-5, atol=1e-7, err_msg=f"row {c}")
        assert np.all(law[c][P[c] == 0] == 0.0)
        # KL = Σ q log(q/p) moves by ≲ Σ |Δq|·(|log q/p| + 1) ≈ 1e-6 for the law's 1e-6 errors.
        np.testing.assert_allclose(kl[c], _kl64(brute, P[c]), atol=2e-6, err_msg=f"row {c}")
    assert kl[2] == 0.0  # all rewards equal: π_bon = π_ref for every n (not log n − (n−1)/n)
    if n > 1:
        assert kl[1] < kl[0]  # the tie merges two outcomes: less to gain than with distinct rewards


def test_n_one_is_the_reference_exactly():
    logp = jnp.log(jnp.asarray([[0.1, 0.2, 0.3, 0.4], [0.25, 0.0, 0.35, 0.4]]))
    reward = jnp.asarray([[1.0, 2.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    np.testing.assert_array_equal(best_of_n.best_of_n_kl(logp, reward, 1), [0.0, 0.0])
    # log π_bon is π_ref's log_softmax, compiled inside the module: equal up to XLA's fusion.
    np.testing.assert_allclose(best_of_n.best_of_n_policy(logp, reward, 1),
                               jax.nn.log_softmax(logp), rtol=1e-6)


def test_distinct_rewards_on_a_large_support_approach_the_bound_from_below():
    # Beirami et al.: KL(π_bon‖π_ref) ≤ log n − (n−1)/n, with equality in the continuous limit.
    # float64, so that "never above" is a statement about the maths, not about float32 rounding.
    rng = np.random.default_rng(0)
    ns = np.array(NS)
    bound = np.array([grpo.best_of_n_kl_bound(int(n)) for n in NS])
    gaps = {}
    with jax.enable_x64(True):
        for size in (200, 20_000):
            p = rng.gamma(2.0, size=size)
            p /= p.sum()
            logp = jnp.broadcast_to(jnp.log(jnp.asarray(p)), (len(NS), size))
            reward = jnp.broadcast_to(jnp.asarray(rng.normal(size=size)), (len(NS), size))
            exact = np.asarray(best_of_n.best_of_n_kl(logp, reward, jnp.asarray(ns)))  # n per row
            gaps[size] = bound - exact
    for size, gap in gaps.items():
        # 1e-12: float64 round-off of a KL of at most ~6 nats summed over ≤ 20,000 terms.
        assert np.all(gap >= -1e-12), (size, gap)
    assert gaps[200][0] == gaps[20_000][0] == 0.0  # n = 1
    # No outcome above ~1e-3 (200) or ~1e-5 (20,000) of the mass: the gap shrinks with the largest
    # mass times n; measured 2.2e-4 at n = 1024 on 20,000 outcomes (and 3e-2 on 200).
    assert np.all(gaps[20_000] < 1e-3), gaps[20_000]
    assert np.all(gaps[20_000][1:] < gaps[200][1:])


def test_float32_matches_a_float64_restatement_up_to_n_1024():
    # A concentrated reference (logits 3·N(0,1) over 64 outcomes: masses from ~0.3 down to ~1e-9),
    # rewards on a 0.1 grid (many ties), one zero-probability outcome.
    rng = np.random.default_rng(1)
    logits = (3.0 * rng.normal(size=(3, 64))).astype(np.float32)
    logits[1, 5] = -np.inf
    reward = np.round(rng.normal(size=(3, 64)), 1).astype(np.float32)
    got = {n: np.asarray(best_of_n.best_of_n_kl(jnp.asarray(logits), jnp.asarray(reward), n))
           for n in NS}
    for n in NS:
        want = []
        for c in range(3):
            p = np.exp(logits[c].astype(np.float64) - logits[c].max())
            p /= p.sum()
            want.append(_kl64(_law64(p, reward[c].astype(np.float64), n), p))
        # Tolerance: every log-space quantity (log F, log G, log m) carries a few float32 ulps
        # (2^-24 ≈ 6e-8) relative; n·log F multiplies log F's error by n·|log F|, which is O(10) at
        # most where π_bon has mass (F^n is negligible beyond), so log π_bon is off by ≲ 1e-6 and
        # the KL, E_bon[log π_bon − log π_ref], by ≲ 1e-6 per nat. Measured: ≤ 6e-7 relative.
        np.testing.assert_allclose(got[n], want, rtol=1e-5, atol=1e-6, err_msg=f"n = {n}")
        assert np.all(got[n] <= grpo.best_of_n_kl_bound(n) + 1e-5)  # same float32 budget


def test_jit_and_vmap_agree_with_eager():
    logp = jnp.log(jnp.asarray([[0.1, 0.2, 0.3, 0.4], [0.25, 0.0, 0.35, 0.4]]))
    reward = jnp.asarray([[1.0, 2.0, 2.0, 0.0], [3.0, 1.0, 2.0, 0.0]])
    ns = jnp.asarray([1, 8])
    eager = best_of_n.best_of_n_kl(logp, reward, ns)
    # Same float32 operations, possibly fused differently by XLA: a few ulps of a KL below 1.
    np.testing.assert_allclose(jax.jit(best_of_n.best_of_n_kl)(logp, reward, ns), eager, atol=1e-6)
    np.testing.assert_allclose(jax.vmap(best_of_n.best_of_n_kl)(logp, reward, ns), eager, atol=1e-6)


def test_bandit_average_is_the_context_weighted_kl():
    task = bandit.make(0, num_contexts=3, num_actions=5)
    per_context = bandit.best_of_n_kl(task.ref_logits, task.rewards, 4)
    # The same float32 numbers summed in one order: round-off of a sum of three terms.
    np.testing.assert_allclose(bandit.bandit_best_of_n_kl(task, 4),
                               np.sum(np.asarray(task.context_probs) * np.asarray(per_context)),
                               rtol=1e-6)


@pytest.mark.parametrize("kwargs,message", [
    (dict(n=0), r"n must be an integer >= 1, got 0"),
    (dict(n=2.5), r"n must be an integer >= 1, got 2.5"),
    (dict(n=True), r"n must be an integer >= 1 or an array of them, got True"),
    (dict(n=np.array([1, 0])), r"n must hold integers >= 1"),
    (dict(n=np.array([1, 2, 4])), r"n must be a scalar or broadcast to the context shape \(2,\)"),
    (dict(reward=np.zeros((2, 3))), r"reward must have the shape of logp_ref \(2, 4\), got shape"),
    (dict(logp_ref=np.float32(0.0), reward=np.float32(0.0)), r"logp_ref must have shape \[..., A\]"),
])
def test_bad_arguments_raise_value_error_naming_them(kwargs, message):
    args = dict(logp_ref=np.zeros((2, 4), np.float32), reward=np.zeros((2, 4), np.float32), n=2)
    args.update(kwargs)
    with pytest.raises(ValueError, match=r"kltrust.tasks.best_of_n: " + message):
        best_of_n.best_of_n_kl(**args)


def test_cli_refuses_bad_input_with_one_line_and_exit_status_2(tmp_path):
    # Refused while the flags are checked, before anything is compiled or written.
    out = tmp_path / "out"
    result = subprocs.run([sys.executable, "-m", "experiments.best_of_n_kl", "--ns=1,0",
                           f"--out={out}"], cwd=ROOT, timeout=120)
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.splitlines() == [
        "error: --ns = '1,0': must be comma-separated integers >= 1 (e.g. 1,2,4)."]
    assert result.stdout == ""
    assert not out.exists()
