"""PPO objectives (Schulman et al. 2017): clipped surrogate, KL penalty, value loss, entropy bonus.

One pure loss serves every variant of the PPO paper's comparison; the variant is static
(`Variant`), the coefficients are arrays (`LossCoefs`), so sweeps over ε and β vmap.

    L(θ) = −E[S_t(θ)] + β·E[KL_t(θ)] + c_v·E[L^V_t(θ)] − c_e·E[H(π_θ(·|s_t))]

with ρ_t = π_θ(a_t|s_t)/π_old(a_t|s_t) and
    S_t = min(ρ_t·A_t, clip(ρ_t, 1−ε, 1+ε)·A_t)   if ``variant.clip``,   else ρ_t·A_t,
    L^V_t = ½(V_θ(s_t) − R_t)², or with ``variant.clip_value`` (OpenAI baselines' ``ppo2``)
    L^V_t = ½·max((V_θ − R_t)², (V_old + clip(V_θ − V_old, −ε_v, ε_v) − R_t)²),
where V_old is the rollout's value prediction and ε_v = ``coefs.vf_clip_eps``.

The KL term (only if ``variant.kl_penalty != "none"``) is, by ``variant.kl_anchor``:
    "old":        KL(π_old(·|s) ‖ π_θ(·|s)), the PPO paper's penalty (eq. 8), trust-region style;
    "reference":  KL(π_θ(·|s) ‖ π_ref(·|s)), the RLHF-style anchor to a frozen reference policy.
``variant.kl_estimator`` = "exact" uses the analytic/full-distribution KL from `kltrust.kl`; "k1",
"k2", "k3" use `kltrust.kl.estimate` at the sampled actions (drawn from π_old). For the old anchor the
samples come from the first argument, so k1 and k3 give unbiased values *and* gradients; for the
reference anchor π_old stands in for π_θ (exactly so on the first minibatch), as in RLHF practice.

The metrics always carry both the KL that was penalised (``kl_penalty``: the estimator's value) and
the exact KLs to the old policy and the reference, so the two can never be confused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from kltrust import controllers, kl
from kltrust.distributions import Distribution
from kltrust.objectives.reduce import weighted_mean

KL_ANCHORS = ("old", "reference")


def kl_estimators() -> tuple[str, ...]:
    """``variant.kl_estimator``'s choices: "exact" and every registered `kl` estimator, read when
    a Variant is checked (so one registered after this import counts)."""
    return ("exact",) + kl.estimators()


def kl_penalties() -> tuple[str, ...]:
    """The allowed ``Variant.kl_penalty``: "none" or any registered β controller."""
    return ("none",) + controllers.kinds()


@dataclasses.dataclass(frozen=True)
class Variant:
    """The static choices that define a PPO variant (they change the compiled program)."""

    clip: bool = True
    kl_penalty: str = "none"  # "none" or a β controller kind (`kl_penalties`)
    kl_anchor: str = "old"
    kl_estimator: str = "exact"
    normalize_advantages: bool = True
    clip_value: bool = False  # the value loss clipped around the rollout's values (docstring)

    def __post_init__(self):
        for name, allowed in (
            ("kl_penalty", kl_penalties()),
            ("kl_anchor", KL_ANCHORS),
            ("kl_estimator", kl_estimators()),
        ):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"variant.{name} must be one of {allowed}, got {value!r}.")
        corrected = self.kl_estimator != "exact" and kl.estimator_info(self.kl_estimator).correction
        if corrected and self.kl_anchor == "old":
            # KL(π_old‖π_θ) differentiates the second argument; corrections are defined for the first.
            plain = ("exact",) + kl.estimators(reward_term=True)
            raise ValueError(
                f"variant.kl_estimator {self.kl_estimator!r} ({corrected}) needs "
                f"kl_anchor='reference'; with 'old' use one of {plain}.")

    @property
    def controller(self) -> str:
        """The β controller the program runs: the penalty's, or ``fixed`` for "none" (whose β is
        then never read)."""
        return "fixed" if self.kl_penalty == "none" else self.kl_penalty

    @property
    def uses_reference(self) -> bool:
        """Whether a frozen reference policy must be kept (and evaluated) at all."""
        return self.kl_penalty != "none" and self.kl_anchor == "reference"


@flax.struct.dataclass
class LossCoefs:
    clip_eps: jax.Array
    beta: jax.Array
    vf_coef: jax.Array
    ent_coef: jax.Array
    vf_clip_eps: jax.Array | None = None  # ε_v, read only if ``variant.clip_value``
    # `kltrust.kl.estimate`'s clamps of a sample estimator's penalty; None or inf: none.
    kl_log_ratio_clamp: jax.Array | None = None
    kl_value_clamp: jax.Array | None = None


@flax.struct.dataclass
class Batch:
    """Flat [B] training batch. ``reference`` is π_ref's distribution, or None when unused."""

    obs: jax.Array
    action: jax.Array
    log_prob: jax.Array  # log π_old(a|s)
    policy: Distribution  # π_old(·|s)
    advantage: jax.Array
    target: jax.Array  # value target R_t
    reference: Distribution | None
    # Optional 0/1 (or non-negative) weights shaped like ``action``'s batch axes: the token programs
    # pass the response mask, so padding after EOS counts for nothing. None = plain means.
    weight: jax.Array | None = None
    value: jax.Array | None = None  # V_old(s), the rollout's; needed only if variant.clip_value


def _mean(values: jax.Array, batch: Batch) -> jax.Array:
    return weighted_mean(values, batch.weight)


def penalised_kl(
    variant: Variant, exact: jax.Array, new_log_prob: jax.Array, batch: Batch,
    coefs: LossCoefs | None = None,
) -> jax.Array:
    """The per-sample KL value the loss penalises, in the direction of ``variant.kl_anchor``.

    ``exact`` is the exact KL to the anchor (KL(π_old‖π_θ) or KL(π_θ‖π_ref)); it is returned as is for
    ``kl_estimator="exact"``, else the sample estimator is evaluated at the batch's actions.
    """
    if variant.kl_estimator == "exact":
        return exact
    clamps = {} if coefs is None else dict(log_ratio_clamp=coefs.kl_log_ratio_clamp,
                                           value_clamp=coefs.kl_value_clamp)
    if variant.kl_anchor == "old":
        return kl.estimate(batch.log_prob, new_log_prob, variant.kl_estimator, **clamps)
    # The actions come from π_old: an importance-corrected estimator weighs by π_θ/π_old.
    return kl.estimate(new_log_prob, batch.reference.log_prob(batch.action), variant.kl_estimator,
                       logp_old=batch.log_prob, **clamps)


def loss(
    params: Any,
    batch: Batch,
    coefs: LossCoefs,
    *,
    apply_fn: Callable[[Any, jax.Array], tuple[Distribution, jax.Array]],
    variant: Variant,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The PPO loss of ``params`` on ``batch``; returns (scalar loss, metrics of scalars)."""
    new, value = apply_fn(params, batch.obs)
    new_log_prob = new.log_prob(batch.action)
    advantage = batch.advantage
    if variant.normalize_advantages:
        if batch.weight is None:
            advantage = (advantage - advantage.mean()) / (advantage.std() + 1e-8)
        else:
            centred = advantage - _mean(advantage, batch)
            advantage = centred / (jnp.sqrt(_mean(jnp.square(centred), batch)) + 1e-8)

    ratio = jnp.exp(new_log_prob - batch.log_prob)
    if variant.clip:
        clipped = jnp.clip(ratio, 1.0 - coefs.clip_eps, 1.0 + coefs.clip_eps)
        surrogate = jnp.minimum(ratio * advantage, clipped * advantage)
    else:
        surrogate = ratio * advantage
    policy_loss = -_mean(surrogate, batch)
    value_error = jnp.square(value - batch.target)
    if variant.clip_value:
        moved = jnp.clip(value - batch.value, -coefs.vf_clip_eps, coefs.vf_clip_eps)
        value_error = jnp.maximum(value_error, jnp.square(batch.value + moved - batch.target))
    value_loss = 0.5 * _mean(value_error, batch)
    entropy = _mean(new.entropy(), batch)
    total = policy_loss + coefs.vf_coef * value_loss - coefs.ent_coef * entropy

    kl_old = batch.policy.kl(new)  # exact KL(π_old ‖ π_θ), reported whatever is penalised
    metrics = {
        "policy_loss": policy_loss,
        "value_loss": value_loss,
        "entropy": entropy,
        "clip_frac": _mean(jnp.abs(ratio - 1.0) > coefs.clip_eps, batch),
        "kl_old": _mean(kl_old, batch),
    }
    if variant.kl_penalty != "none":
        exact = kl_old if variant.kl_anchor == "old" else new.kl(batch.reference)
        penalised = penalised_kl(variant, exact, new_log_prob, batch, coefs)
        total = total + coefs.beta * _mean(penalised, batch)
        metrics["kl_penalty"] = _mean(penalised, batch)
        if variant.kl_anchor == "reference":
            metrics["kl_ref"] = _mean(exact, batch)
    return total, metrics
