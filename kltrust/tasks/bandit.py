"""Contextual bandits with a known reward and reference: the KL-regularised optimum in closed form.

A bandit is a context distribution ρ(x) over C contexts, a reward table r(x, y) over A actions and a
reference policy π_ref(y|x). For β > 0 the KL-regularised objective

    J_β(π) = E_{x~ρ}[ E_{y~π(·|x)} r(x, y) − β·KL(π(·|x) ‖ π_ref(·|x)) ]

is maximised by the Gibbs policy π*_β(y|x) = π_ref(y|x)·exp(r(x,y)/β) / Z_β(x), with value
J_β(π*_β) = β·E_x log Z_β(x) = β·E_x log E_{π_ref}[exp(r/β)] (``optimal_value``). The Gibbs
variational principle gives, for *every* π,

    J_β(π) = J_β(π*_β) − β·E_x KL(π(·|x) ‖ π*_β(·|x)),

so ``kl_to_optimum`` is exactly the regularised objective a policy leaves on the table (÷ β).

Reward–KL frontier. The same Gibbs family with one β shared by all contexts solves
max_π E[r] s.t. E_x KL(π‖π_ref) ≤ k (β is the Lagrange multiplier), so the curve
β ↦ (E_x KL(π*_β‖π_ref), E_{π*_β}[r]) is the exact frontier of reward against KL. Writing t = 1/β,
d KL/dt = t·E_x Var_{π*}(r) ≥ 0 and d E[r]/dt = E_x Var_{π*}(r) ≥ 0: both grow with t, so the
frontier is monotone and ``frontier_reward_at_kl`` inverts it by bisection on log t. The gap
``frontier_reward_at_kl(KL(π_θ‖π_ref)) − E_{π_θ}[r] ≥ 0`` is how much reward a method leaves at
the KL it actually spent.

Preferences follow Bradley–Terry with the true reward: P(y1 ≻ y2 | x) = σ(r(x,y1) − r(x,y2)),
optionally flipped with probability η (label noise). DPO on such preferences has the population
optimum π*_β (Rafailov et al. 2023), which is what makes this a testbed with an exact answer.

Best-of-n from π_ref has an exact law and KL too, ties included (``best_of_n_kl``, from
``kltrust.tasks.best_of_n``). Every KL here comes from ``kltrust.kl.categorical``. Arrays are
small tables ([C, A]); every function evaluates all contexts at once and is safe under
``jit``/``vmap``/``grad``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kltrust import kl
from kltrust.tasks.best_of_n import bandit_best_of_n_kl, best_of_n_kl, best_of_n_policy

POLICY_KINDS: tuple[str, ...] = ("tabular", "mlp")
ACTIVATIONS: tuple[str, ...] = ("tanh", "relu")

# Bisection range for t = 1/β in frontier_reward_at_kl: e^-20 is indistinguishable from π_ref and
# e^20 from the greedy policy for rewards of order 1e-6 and up; 64 halvings exhaust float32.
_LOG_T_RANGE = (-20.0, 20.0)
_BISECTION_STEPS = 64

__all__ = [
    "Bandit",
    "Policy",
    "PolicySpec",
    "Preferences",
    "bandit_best_of_n_kl",
    "best_of_n_kl",
    "best_of_n_policy",
    "exact_metrics",
    "exact_preferences",
    "expected_reward",
    "frontier",
    "frontier_reward_at_kl",
    "ipo_optimal_policy",
    "kl_to_optimum",
    "kl_to_reference",
    "make",
    "make_policy",
    "optimal_policy",
    "optimal_value",
    "preference_probabilities",
    "regularised_objective",
    "sample_preferences",
]


@flax.struct.dataclass
class Bandit:
    """A contextual bandit with known reward and reference policy.

    Attributes:
      rewards: r(x, y), shape [C, A].
      ref_logits: logits of π_ref(·|x), shape [C, A].
      context_probs: ρ(x), shape [C], summing to 1.
    """

    rewards: jax.Array
    ref_logits: jax.Array
    context_probs: jax.Array

    @property
    def num_contexts(self) -> int:
        return self.rewards.shape[-2]

    @property
    def num_actions(self) -> int:
        return self.rewards.shape[-1]


def make(
    seed: int,
    num_contexts: int = 4,
    num_actions: int = 6,
    reward_scale: float = 1.0,
    ref_scale: float = 1.0,
    context_scale: float = 0.5,
) -> Bandit:
    """A random tabular bandit, a deterministic function of its arguments.

    r(x, y) ~ reward_scale·N(0, 1), π_ref = softmax(ref_scale·N(0, I)) per context and
    ρ = softmax(context_scale·N(0, I)), all drawn from ``jax.random.key(seed)``.

    Raises:
      ValueError: sizes < 1 (< 2 actions) or negative scales.
    """
    if not (isinstance(num_contexts, int) and num_contexts >= 1):
        raise ValueError(f"kltrust.tasks.bandit.make: num_contexts must be an integer >= 1, got {num_contexts!r}.")
    if not (isinstance(num_actions, int) and num_actions >= 2):
        raise ValueError(f"kltrust.tasks.bandit.make: num_actions must be an integer >= 2, got {num_actions!r}.")
    for name, value in (("reward_scale", reward_scale), ("ref_scale", ref_scale),
                        ("context_scale", context_scale)):
        if not (np.isfinite(value) and value >= 0):
            raise ValueError(f"kltrust.tasks.bandit.make: {name} must be finite and >= 0, got {value!r}.")
    k_reward, k_ref, k_context = jax.random.split(jax.random.key(seed), 3)
    shape = (num_contexts, num_actions)
    return Bandit(
        rewards=reward_scale * jax.random.normal(k_reward, shape),
        ref_logits=ref_scale * jax.random.normal(k_ref, shape),
        context_probs=jax.nn.softmax(context_scale * jax.random.normal(k_context, (num_contexts,))),
    )


# ---------------------------------------------------------------- closed forms


def _context_mean(bandit: Bandit, per_context: jax.Array) -> jax.Array:
    return jnp.sum(bandit.context_probs * per_context, axis=-1)


def _gibbs_logits(bandit: Bandit, inv_beta: jax.Array) -> jax.Array:
    return jax.nn.log_softmax(bandit.ref_logits, axis=-1) + inv_beta * bandit.rewards


def optimal_policy(bandit: Bandit, beta: jax.Array | float) -> jax.Array:
    """log π*_β(y|x) = log π_ref(y|x) + r(x,y)/β − log Z_β(x), shape [C, A]; β a positive scalar."""
    return jax.nn.log_softmax(_gibbs_logits(bandit, 1.0 / jnp.asarray(beta)), axis=-1)


def optimal_value(bandit: Bandit, beta: jax.Array | float) -> jax.Array:
    """max_π J_β(π) = β·E_x log Σ_y π_ref(y|x)·exp(r(x,y)/β), a scalar (logsumexp, overflow-safe)."""
    beta = jnp.asarray(beta)
    log_z = jax.nn.logsumexp(_gibbs_logits(bandit, 1.0 / beta), axis=-1)
    return beta * _context_mean(bandit, log_z)


def expected_reward(bandit: Bandit, logits: jax.Array) -> jax.Array:
    """E_{x~ρ, y~π(·|x)} r(x, y) for π = softmax(logits), logits [C, A]; a scalar."""
    return _context_mean(bandit, jnp.sum(jax.nn.softmax(logits, axis=-1) * bandit.rewards, axis=-1))


def kl_to_reference(bandit: Bandit, logits: jax.Array) -> jax.Array:
    """E_x KL(π(·|x) ‖ π_ref(·|x)), a scalar."""
    return _context_mean(bandit, kl.categorical(logits, bandit.ref_logits))


def kl_to_optimum(bandit: Bandit, logits: jax.Array, beta: jax.Array | float) -> jax.Array:
    """E_x KL(π(·|x) ‖ π*_β(·|x)), a scalar: (J_β(π*_β) − J_β(π))/β by the Gibbs principle."""
    return _context_mean(bandit, kl.categorical(logits, optimal_policy(bandit, beta)))


def regularised_objective(bandit: Bandit, logits: jax.Array, beta: jax.Array | float) -> jax.Array:
    """J_β(π) = E[r] − β·E_x KL(π‖π_ref), a scalar."""
    return expected_reward(bandit, logits) - beta * kl_to_reference(bandit, logits)


def _frontier_point(bandit: Bandit, inv_beta: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = _gibbs_logits(bandit, inv_beta)
    return kl_to_reference(bandit, logits), expected_reward(bandit, logits)


def frontier(bandit: Bandit, betas: jax.Array | Sequence[float]) -> tuple[jax.Array, jax.Array]:
    """The exact reward–KL frontier at each β: (KL(π*_β‖π_ref), E_{π*_β}[r]), each shaped like betas."""
    betas = jnp.asarray(betas, bandit.rewards.dtype)
    flat = jax.vmap(lambda b: _frontier_point(bandit, 1.0 / b))(betas.reshape(-1))
    return tuple(v.reshape(betas.shape) for v in flat)


def frontier_reward_at_kl(bandit: Bandit, kl_value: jax.Array | float) -> jax.Array:
    """The largest E[r] any policy reaches with E_x KL(π‖π_ref) ≤ ``kl_value``, shaped like kl_value.

    Bisection on log(1/β) over [e^-20, e^20]: a KL at or below 0 gives E_{π_ref}[r]; a KL beyond
    the greedy policy's gives (to float precision) the greedy reward E_x max_y r. Targets below
    the rounding noise of the KL (about 1e-8 in float32, 1e-16 in float64) are answered only to
    the reward change that noise allows, of order sqrt(2·Var_{π_ref}(r)·noise).
    """

    def one(target: jax.Array) -> jax.Array:
        def halve(_, bounds):
            lo, hi = bounds
            mid = 0.5 * (lo + hi)
            too_far = _frontier_point(bandit, jnp.exp(mid))[0] > target
            return jnp.where(too_far, lo, mid), jnp.where(too_far, mid, hi)

        lo, hi = (jnp.asarray(v, bandit.rewards.dtype) for v in _LOG_T_RANGE)
        lo, hi = jax.lax.fori_loop(0, _BISECTION_STEPS, halve, (lo, hi))
        reward = _frontier_point(bandit, jnp.exp(0.5 * (lo + hi)))[1]
        # Rounding makes tiny KLs noisy (~1e-8 in float32), so KL ≤ 0 is answered exactly.
        return jnp.where(target > 0, reward, expected_reward(bandit, bandit.ref_logits))

    kl_value = jnp.asarray(kl_value, bandit.rewards.dtype)
    return jax.vmap(one)(kl_value.reshape(-1)).reshape(kl_value.shape)


def preference_probabilities(bandit: Bandit, label_noise: jax.Array | float = 0.0) -> jax.Array:
    """P(y1 labelled ≻ y2 | x) = (1−η)·σ(r1 − r2) + η·σ(r2 − r1), shape [C, A, A] (y1, y2)."""
    diff = bandit.rewards[:, :, None] - bandit.rewards[:, None, :]
    return (1.0 - label_noise) * jax.nn.sigmoid(diff) + label_noise * jax.nn.sigmoid(-diff)


def ipo_optimal_policy(
    bandit: Bandit, beta: jax.Array | float, label_noise: jax.Array | float = 0.0
) -> jax.Array:
    """log-probs of the tabular IPO optimum (Azar et al. 2023, eq. 14) with both responses ~ π_ref.

    log π(y|x) = log π_ref(y|x) + E_{y'~π_ref}[p(y ≻ y'|x)]/β − log normaliser, where β is IPO's τ
    (``kltrust.objectives.dpo`` convention) and p the labelled preference probability.
    """
    win_rate = jnp.einsum("cab,cb->ca", preference_probabilities(bandit, label_noise),
                          jax.nn.softmax(bandit.ref_logits, axis=-1))
    return jax.nn.log_softmax(jax.nn.log_softmax(bandit.ref_logits, axis=-1) + win_rate / beta, axis=-1)


def exact_metrics(bandit: Bandit, logits: jax.Array, beta: jax.Array | float) -> dict[str, jax.Array]:
    """The testbed's exact report of a policy (scalars).

    ``kl_to_optimum`` E_x KL(π‖π*_β); ``expected_reward`` E[r]; ``kl_to_reference`` E_x KL(π‖π_ref);
    ``frontier_reward`` the best E[r] at that KL; ``frontier_gap`` = frontier_reward − E[r] (≥ 0 up
    to float error); ``objective`` J_β(π); ``optimal_value`` J_β(π*_β).
    """
    reward = expected_reward(bandit, logits)
    kl_ref = kl_to_reference(bandit, logits)
    best = frontier_reward_at_kl(bandit, kl_ref)
    return {
        "kl_to_optimum": kl_to_optimum(bandit, logits, beta),
        "expected_reward": reward,
        "kl_to_reference": kl_ref,
        "frontier_reward": best,
        "frontier_gap": best - reward,
        "objective": reward - beta * kl_ref,
        "optimal_value": optimal_value(bandit, beta),
    }


# ---------------------------------------------------------------- preferences


@flax.struct.dataclass
class Preferences:
    """Preference pairs over the bandit's actions, each [N].

    Attributes:
      context: x.
      chosen: the action labelled better (y_w).
      rejected: the other action (y_l); may equal ``chosen`` when both draws coincide.
      weight: 1 for sampled pairs; the probability of the triple for exact enumeration.
    """

    context: jax.Array
    chosen: jax.Array
    rejected: jax.Array
    weight: jax.Array


def sample_preferences(
    key: jax.Array,
    bandit: Bandit,
    num_pairs: int,
    label_noise: jax.Array | float = 0.0,
    policy_logits: jax.Array | None = None,
) -> Preferences:
    """Bradley–Terry pairs: x ~ ρ, y1, y2 ~ π(·|x) independently, label y1 ≻ y2 w.p. σ(r1 − r2).

    Each label is then flipped with probability ``label_noise`` η. π is π_ref unless
    ``policy_logits`` [C, A] is given (online DPO samples from the current policy; pass them through
    ``jax.lax.stop_gradient``). ``num_pairs`` is static; η may be traced.
    """
    k_context, k_y1, k_y2, k_label, k_flip = jax.random.split(key, 5)
    logits = bandit.ref_logits if policy_logits is None else policy_logits
    context = jax.random.categorical(k_context, jnp.log(bandit.context_probs), shape=(num_pairs,))
    y1 = jax.random.categorical(k_y1, logits[context])
    y2 = jax.random.categorical(k_y2, logits[context])
    p_y1 = jax.nn.sigmoid(bandit.rewards[context, y1] - bandit.rewards[context, y2])
    y1_wins = jax.random.uniform(k_label, (num_pairs,)) < p_y1
    flipped = jax.random.uniform(k_flip, (num_pairs,)) < label_noise
    y1_wins = y1_wins != flipped
    return Preferences(
        context=context.astype(jnp.int32),
        chosen=jnp.where(y1_wins, y1, y2).astype(jnp.int32),
        rejected=jnp.where(y1_wins, y2, y1).astype(jnp.int32),
        weight=jnp.ones((num_pairs,), bandit.rewards.dtype),
    )


def exact_preferences(
    bandit: Bandit, label_noise: jax.Array | float = 0.0, policy_logits: jax.Array | None = None
) -> Preferences:
    """Every triple (x, y_w, y_l), C·A·A of them, weighted by its probability under the sampler.

    weight = 2·ρ(x)·π(y_w|x)·π(y_l|x)·P(y_w labelled ≻ y_l | x): the factor 2 because the sampler
    yields (y_w, y_l) = (a, b) from the draw (y1, y2) = (a, b) and from (b, a). (For a = b, P = ½
    and the weight is ρπ(a)², as it should be.) The weights sum to 1, so a weighted mean over these
    pairs is the sampler's population expectation, with no Monte Carlo error.
    """
    c, a = bandit.num_contexts, bandit.num_actions
    logits = bandit.ref_logits if policy_logits is None else policy_logits
    probs = jax.nn.softmax(logits, axis=-1)
    weight = (2.0 * bandit.context_probs[:, None, None] * probs[:, :, None] * probs[:, None, :]
              * preference_probabilities(bandit, label_noise))
    context, chosen, rejected = jnp.meshgrid(jnp.arange(c), jnp.arange(a), jnp.arange(a), indexing="ij")
    return Preferences(
        context=context.reshape(-1).astype(jnp.int32),
        chosen=chosen.reshape(-1).astype(jnp.int32),
        rejected=rejected.reshape(-1).astype(jnp.int32),
        weight=weight.reshape(-1),
    )


# ---------------------------------------------------------------- policies


@dataclasses.dataclass(frozen=True)
class PolicySpec:
    """How the policy is parameterised (static).

    ``"tabular"``: free logits per context, initialised at π_ref's; the class contains every π*_β.
    ``"mlp"``: logits(x) = ref_logits(x) + MLP(one-hot(x)), last layer zero-initialised so the policy
    starts at π_ref. The change from π_ref passes through the last hidden layer, so a width below
    A − 1 cannot in general represent r/β: the class may not contain π*_β.
    """

    kind: str = "tabular"
    hidden: tuple[int, ...] = (8,)
    activation: str = "tanh"

    def __post_init__(self):
        if self.kind not in POLICY_KINDS:
            raise ValueError(f"policy.kind must be one of {POLICY_KINDS}, got {self.kind!r}.")
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"policy.activation must be one of {ACTIVATIONS}, got {self.activation!r}.")
        if self.kind == "mlp" and not (
            len(self.hidden) >= 1 and all(isinstance(h, int) and h >= 1 for h in self.hidden)
        ):
            raise ValueError(f"policy.hidden must be a non-empty tuple of widths >= 1, got {self.hidden!r}.")


class Policy(NamedTuple):
    """A policy over the bandit as pure functions.

    Attributes:
      init: ``init(key, bandit) -> params``.
      apply: ``apply(params, bandit) -> logits`` [C, A] for every context.
    """

    init: Callable[[jax.Array, Bandit], Any]
    apply: Callable[[Any, Bandit], jax.Array]


class _ContextMLP(nn.Module):
    num_actions: int
    hidden: Sequence[int]
    activation: str

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        act = {"tanh": nn.tanh, "relu": nn.relu}[self.activation]
        for width in self.hidden:
            x = act(nn.Dense(width)(x))
        return nn.Dense(self.num_actions, kernel_init=nn.initializers.zeros)(x)


def make_policy(spec: PolicySpec) -> Policy:
    """The tabular or MLP policy of ``spec``; both start exactly at π_ref."""
    if spec.kind == "tabular":
        return Policy(
            init=lambda key, bandit: {"logits": jnp.asarray(bandit.ref_logits)},
            apply=lambda params, bandit: params["logits"],
        )

    def module(bandit: Bandit) -> _ContextMLP:
        return _ContextMLP(bandit.num_actions, tuple(spec.hidden), spec.activation)

    def init(key: jax.Array, bandit: Bandit) -> Any:
        return module(bandit).init(key, jnp.eye(bandit.num_contexts))

    def apply(params: Any, bandit: Bandit) -> jax.Array:
        return bandit.ref_logits + module(bandit).apply(params, jnp.eye(bandit.num_contexts))

    return Policy(init, apply)
