"""MLP actor-critic with the PPO paper's defaults.

Separate actor and critic MLPs (2×64 tanh by default), a categorical head for discrete actions or a
diagonal Gaussian with a state-independent log-std for continuous ones (Schulman et al. 2017, §6.1).
Orthogonal initialisation with gains √2 (hidden), 0.01 (policy head) and 1 (value head), as in the
reference implementations, so the initial policy is near-uniform / near-zero-mean.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kltrust.distributions import Categorical, DiagGaussian, Distribution

_ACTIVATIONS = {"tanh": nn.tanh, "relu": nn.relu}


class _MLP(nn.Module):
    hidden: Sequence[int]
    activation: str
    out_dim: int
    out_scale: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = _ACTIVATIONS[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width, kernel_init=nn.initializers.orthogonal(np.sqrt(2)))(x))
        return nn.Dense(self.out_dim, kernel_init=nn.initializers.orthogonal(self.out_scale))(x)


class ActorCritic(nn.Module):
    """Maps observations [..., obs_dim] to (action distribution, value [...])."""

    action_dim: int
    discrete: bool
    hidden: Sequence[int] = (64, 64)
    activation: str = "tanh"
    initial_log_std: float = 0.0

    @nn.compact
    def __call__(self, obs: jax.Array) -> tuple[Distribution, jax.Array]:
        obs = obs.reshape(obs.shape[: obs.ndim - 1] + (-1,)).astype(jnp.float32)
        head = _MLP(self.hidden, self.activation, self.action_dim, 0.01, name="actor")(obs)
        value = _MLP(self.hidden, self.activation, 1, 1.0, name="critic")(obs)[..., 0]
        if self.discrete:
            return Categorical(logits=head), value
        log_std = self.param(
            "log_std", nn.initializers.constant(self.initial_log_std), (self.action_dim,)
        )
        return DiagGaussian(mean=head, log_std=jnp.broadcast_to(log_std, head.shape)), value
