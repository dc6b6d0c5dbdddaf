"""Observation normalisation: a running mean and variance of everything the policy has observed.

The PPO paper's MuJoCo runs (OpenAI baselines' ``ppo1``) feed the networks

    z = clip((o − μ) / sqrt(σ² + ε), −c, c),

with μ, σ² the running per-dimension mean and variance of every observation collected so far and
c = 5. Here the statistics are a `RunningStats` pytree inside a control program's train state:
checkpointed with it, vmapped per run (each seed and hyperparameter point keeps its own), and
updated once per update from the rollout's raw observations, *after* that rollout. The batch an
update optimises holds the observations normalised exactly as the behaviour policy saw them, so
π_θ/π_old starts at 1 and every KL the program reports compares the two policies on the same
inputs.

The update is the exact pooled formula (Chan, Golub & LeVeque 1979) for merging a batch of n
observations with batch mean m_b and (population) variance v_b into (count c, mean μ, variance v):

    c' = c + n,   δ = m_b − μ,   μ' = μ + δ·n/c',   v' = (v·c + v_b·n + δ²·c·n/c') / c',

so after any sequence of batches (μ, v) equal the mean and population variance of all the
observations together (tested against NumPy in float64). The count starts at 0, where the formula
gives the first batch's own statistics; before any update (μ, v) = (0, 1), so the very first
rollout sees the raw observations, clipped. The count is float32: exact up to 2²⁴ ≈ 16.8M
observations per run, and beyond that its rounding only perturbs the weight n/c' of new batches.
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

EPSILON = 1e-8  # ε under the square root: a constant dimension (σ² = 0) maps to 0, not NaN


@flax.struct.dataclass
class RunningStats:
    """Running per-dimension statistics of the observations: count, mean μ, variance σ²."""

    count: jax.Array  # float32 []
    mean: jax.Array  # [*obs_shape]
    var: jax.Array  # [*obs_shape], population variance

    @classmethod
    def init(cls, obs_shape: tuple[int, ...]) -> RunningStats:
        """No observations yet: count 0, μ = 0, σ² = 1 (normalisation is then the identity)."""
        return cls(jnp.zeros((), jnp.float32), jnp.zeros(obs_shape, jnp.float32),
                   jnp.ones(obs_shape, jnp.float32))

    def update(self, obs: jax.Array) -> RunningStats:
        """Merges a batch ``obs`` [..., *obs_shape] (every leading axis is a sample axis)."""
        sample_axes = tuple(range(obs.ndim - self.mean.ndim))
        obs = obs.astype(jnp.float32)
        n = jnp.asarray(obs.size // max(self.mean.size, 1), jnp.float32)
        batch_mean = obs.mean(axis=sample_axes)
        batch_var = obs.var(axis=sample_axes)
        total = self.count + n
        delta = batch_mean - self.mean
        mean = self.mean + delta * (n / total)
        m2 = self.var * self.count + batch_var * n + jnp.square(delta) * (self.count * n / total)
        return RunningStats(total, mean, m2 / total)

    def normalize(self, obs: jax.Array, clip: jax.Array | float) -> jax.Array:
        """clip((obs − μ) / sqrt(σ² + ε), −clip, clip); ``clip`` = inf disables the clipping."""
        z = (obs - self.mean) / jnp.sqrt(self.var + EPSILON)
        return jnp.clip(z, -clip, clip)
