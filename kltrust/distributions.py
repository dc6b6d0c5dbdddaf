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
        return jax.random.categorical(key, self.logits)

    def log_prob(self, action: jax.Array) -> jax.Array:
        logp = jax.nn.log_softmax(self.logits)
        return jnp.take_along_axis(logp, action[..., None].astype(jnp.int32), axis=-1)[..., 0]

    def entropy(self) -> jax.Array:
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
        return self.mean + jnp.exp(self.log_std) * jax.random.normal(key, self.mean.shape)

    def log_prob(self, action: jax.Array) -> jax.Array:
        z = (action - self.mean) * jnp.exp(-self.log_std)
        return jnp.sum(-0.5 * z * z - self.log_std - 0.5 * math.log(2 * math.pi), axis=-1)

    def entropy(self) -> jax.Array:
        return jnp.sum(self.log_std + 0.5 * math.log(2 * math.pi * math.e), axis=-1)

    def kl(self, other: DiagGaussian) -> jax.Array:
        """Analytic KL(self ‖ other)."""
        return kl.gaussian(self.mean, self.log_std, other.mean, other.log_std)


Distribution = Categorical | DiagGaussian
