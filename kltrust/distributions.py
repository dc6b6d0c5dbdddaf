"""Action distributions as pytrees. Their KLs delegate to `kltrust.kl`; nothing here computes one."""

from __future__ import annotations

import math

import flax.struct
import jax
import jax.numpy as jnp

from kltrust import kl


@flax.struct.dataclass
class Categorical:
    """Categorical over the last axis of ``logits`` [..., K]."""

    logits: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        """One action per batch entry, drawn with ``key``."""
        return jax.random.categorical(key, self.logits)

    def log_prob(self, action: jax.Array) -> jax.Array:
        """log π(a) for integer actions ``action`` (shape: the logits' batch shape)."""
        logp = jax.nn.log_softmax(self.logits)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self) -> jax.Array:
        """H(π) = −Σ_a π(a) log π(a); masked (−inf) logits contribute 0, with a finite gradient."""
        logp = jax.nn.log_softmax(self.logits)
        present = logp > -jnp.inf
        # Double `where`: at a masked (−inf) entry exp(logp)·logp is 0·(−inf) = NaN, and masking only the
        # product still sends that NaN into the gradient, so logp is made finite there first.
        safe_logp = jnp.where(present, logp, 0.0)
        return -jnp.sum(jnp.where(present, jnp.exp(safe_logp) * safe_logp, 0.0), axis=-1)

    def kl(self, other: Categorical) -> jax.Array:
        """Exact KL(self ‖ other)."""
        return kl.categorical(self.logits, other.logits)


@flax.struct.dataclass
class DiagGaussian:
    """Diagonal Gaussian over the last axis; ``log_std`` has the shape of ``mean``."""

    mean: jax.Array
    log_std: jax.Array

    def sample(self, key: jax.Array) -> jax.Array:
        """One action per batch entry: mean + σ·ε, ε ~ N(0, I)."""
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape)

    def log_prob(self, action: jax.Array) -> jax.Array:
        """log N(a; μ, diag σ²) = Σ_i [−z_i²/2 − log σ_i − log(2π)/2], z = (a − μ)/σ."""
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z * z - self.log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def entropy(self) -> jax.Array:
        """H = Σ_i [log σ_i + log(2πe)/2] (independent of the mean)."""
        return jnp.sum(self.log_std + 0.5 * math.log(2 * math.pi * math.e), axis=-1)

    def kl(self, other: DiagGaussian) -> jax.Array:
        """Analytic KL(self ‖ other)."""
        return kl.gaussian(self.mean, self.log_std, other.mean, other.log_std)


Distribution = Categorical | DiagGaussian
