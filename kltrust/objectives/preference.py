"""Pairwise preference losses as components: DPO's family, SimPO, and whatever registers next.

A preference loss is a function of one number per pair, the *score margin*

    h = s(y_w) − s(y_l),

with y_w the chosen and y_l the rejected response and s a per-response score that the loss declares:

    reference-based (DPO, IPO, rDPO, SLiC):   s(y) = log π_θ(y|x) − log π_ref(y|x)
    reference-free, length-normalised (SimPO): s(y) = log π_θ(y|x) / |y|
    f-DPO: s(y) = ψ(log π_θ(y|x) − log π_ref(y|x)), ψ(u) = f′(e^u) (the loss's ``score``)

β·s(y) is the loss's *implicit reward* of y. A loss registers itself in its own module:

    @preference.register("simpo", hparams=HParams, reference_free=True, length_normalised=True)
    def simpo(h, beta, hp):          # per-pair losses from the margins h, β and its own knobs
        return -jax.nn.log_sigmoid(beta * h - hp.gamma)

Every program that trains on preference pairs (the bandit testbed's ``dpo`` and ``dpo_online``
methods, the token pipeline's ``dpo`` and ``dpo_online``) calls `loss` with the loss's name and
its knobs; the registry (``LOSSES``) finds the modules of ``kltrust.objectives`` on first use, so a
new loss is one new file there. A loss may also declare example runs (``token_presets``,
``bandit_runs``) that the preset files (configs/rlhf.py, configs/bandit.py) pick up by themselves.

``beta`` and every knob may be traced arrays (swept by ``vmap``): nothing branches on their values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import chex
import jax
import jax.numpy as jnp

from kltrust import components
from kltrust.objectives.reduce import weighted_mean

PerPair = Callable[[jax.Array, jax.Array, Any], jax.Array]
Score = Callable[[jax.Array, Any], jax.Array]
# per_response(s_w, s_l, z0, beta, hp) -> per-pair losses, for losses that are not a function of
# the margin alone (KTO: each response against a reference point z0).
PerResponse = Callable[[jax.Array, jax.Array, jax.Array, Any, Any], jax.Array]

__all__ = ["LOSSES", "PreferenceLoss", "loss", "register"]


@dataclasses.dataclass(frozen=True)
class PreferenceLoss:
    """A registered preference loss.

    Attributes:
      per_pair: ``per_pair(h, beta, hp) -> losses``, elementwise in the margins ``h``; None for a
        loss registered with ``per_response`` instead.
      hparams: its knobs (a `components.hparams` class; may have no fields).
      reference_free: the score ignores π_ref (programs then need not evaluate the reference).
      length_normalised: the score divides the sequence log-probability by the response length.
      token_presets: preset name → fields of a token RLHF config's ``rl`` group (``hparams`` as a
        nested dict), added to configs/rlhf.py's presets.
      bandit_runs: run name → fields of a bandit config's run spec, added to configs/bandit.py.
      doc: one line for listings.
      score: optional ``score(s, hp)`` applied to each response's score before the margin is
        taken, h = ψ(s_w) − ψ(s_l) (f-DPO's ψ(u) = f′(e^u), `kltrust.objectives.fdpo`); None: ψ = id.
      per_response: optional ``per_response(s_w, s_l, z0, beta, hp)``, used instead of
        ``per_pair`` for a loss that scores each response against a reference point z0 (KTO,
        `kltrust.objectives.kto`): z0 = max(0, stop_gradient(weighted mean of ½(s_w + s_l))), the
        batch's estimate of KL(π_θ‖π_ref).
    """

    per_pair: PerPair | None
    hparams: type
    reference_free: bool = False
    length_normalised: bool = False
    token_presets: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    bandit_runs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    doc: str = ""
    score: Score | None = None
    per_response: PerResponse | None = None


LOSSES: components.Registry[PreferenceLoss] = components.Registry("preference loss",
                                                                   "kltrust.objectives")


def register(name: str, *, hparams: type, reference_free: bool = False,
             length_normalised: bool = False, token_presets: Mapping | None = None,
             bandit_runs: Mapping | None = None, score: Score | None = None,
             per_response: bool = False) -> Callable[[Callable], Callable]:
    """Decorator: registers the function it decorates as the preference loss ``name`` (see
    `PreferenceLoss`): its ``per_pair`` or, with ``per_response=True``, its ``per_response``. The
    first line of the function's docstring is the loss's ``doc``."""

    def decorate(fn: Callable) -> Callable:
        doc = (fn.__doc__ or "").strip().splitlines()
        LOSSES.register(name, PreferenceLoss(
            None if per_response else fn, hparams, reference_free, length_normalised,
            dict(token_presets or {}), dict(bandit_runs or {}), doc[0] if doc else "", score,
            fn if per_response else None))
        return fn

    return decorate


def loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array | None,
    ref_rejected_logps: jax.Array | None,
    beta: jax.Array | float,
    name: str,
    hp: Any = None,
    weights: jax.Array | None = None,
    chosen_lengths: jax.Array | None = None,
    rejected_lengths: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The (weighted) mean loss ``name`` over a batch of pairs, and its metrics.

    Args:
      policy_chosen_logps: log π_θ(y|x) summed over each chosen response, [B].
      policy_rejected_logps: the same for each rejected response, [B].
      ref_chosen_logps: ``policy_chosen_logps`` under π_ref, [B], a constant (no gradient);
        may be None for a reference-free loss.
      ref_rejected_logps: ``policy_rejected_logps`` under π_ref, [B], likewise.
      beta: β (Python number or a possibly traced scalar).
      name: a registered loss (``LOSSES``).
      hp: the loss's knobs (an instance of its ``hparams``); None = its defaults.
      weights: optional non-negative weight per pair; means become Σ w·ℓ / Σ w (with exact
        enumeration weights, population expectations).
      chosen_lengths: chosen response lengths [B] for length-normalised losses (None:
        length 1, e.g. a bandit's single action).
      rejected_lengths: rejected response lengths [B], likewise.

    Returns:
      (loss, metrics): ``rewards_chosen``/``rewards_rejected`` (mean implicit reward β·s),
      ``reward_accuracy``, ``reward_margin`` (mean β·h), ``logps_chosen``/``logps_rejected``, and
      whenever the reference log-probabilities are given, ``logratio_chosen``/``_rejected``/``_mean``
      (mean log π_θ − log π_ref: not KLs; see `kltrust.objectives.dpo`).
    """
    entry = LOSSES.get(name)
    hp = components.create(entry.hparams) if hp is None else hp
    arrays = dict(policy_chosen_logps=policy_chosen_logps,
                  policy_rejected_logps=policy_rejected_logps)
    has_ref = ref_chosen_logps is not None and ref_rejected_logps is not None
    if has_ref:
        arrays.update(ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    elif not entry.reference_free:
        raise ValueError(f"kltrust.objectives.preference.loss: {name!r} needs the reference "
                         "log-probabilities.")
    if weights is not None:
        arrays["weights"] = weights
    try:  # chex's check, re-raised as this API's ValueError naming every argument
        chex.assert_equal_shape([jnp.asarray(a) for a in arrays.values()])
    except AssertionError:
        listed = ", ".join(f"{key} {jnp.shape(a)}" for key, a in arrays.items())
        raise ValueError(f"kltrust.objectives.preference.loss: arguments must have identical "
                         f"shapes, got {listed}.") from None

    if has_ref:
        logratio_c = policy_chosen_logps - jax.lax.stop_gradient(ref_chosen_logps)
        logratio_r = policy_rejected_logps - jax.lax.stop_gradient(ref_rejected_logps)
    if entry.reference_free:
        score_c, score_r = policy_chosen_logps, policy_rejected_logps
    else:
        score_c, score_r = logratio_c, logratio_r
    if entry.length_normalised and chosen_lengths is not None:
        score_c = score_c / jnp.maximum(chosen_lengths, 1).astype(score_c.dtype)
        score_r = score_r / jnp.maximum(rejected_lengths, 1).astype(score_r.dtype)
    if entry.score is not None:
        score_c, score_r = entry.score(score_c, hp), entry.score(score_r, hp)
    h = score_c - score_r
    w = None if weights is None else jax.lax.stop_gradient(weights).astype(h.dtype)
    mean = lambda v: weighted_mean(v, w)  # noqa: E731
    if entry.per_response is None:
        losses = entry.per_pair(h, beta, hp)
    else:
        z0 = jnp.maximum(jax.lax.stop_gradient(mean(0.5 * (score_c + score_r))), 0.0)
        losses = entry.per_response(score_c, score_r, z0, beta, hp)
    beta = jnp.asarray(beta, losses.dtype)
    metrics = {
        "loss": mean(losses),
        "rewards_chosen": beta * mean(score_c),
        "rewards_rejected": beta * mean(score_r),
        "reward_accuracy": mean((score_c > score_r).astype(losses.dtype)),
        "reward_margin": beta * mean(h),
        "logps_chosen": mean(policy_chosen_logps),
        "logps_rejected": mean(policy_rejected_logps),
    }
    if has_ref:
        metrics.update(logratio_chosen=mean(logratio_c), logratio_rejected=mean(logratio_r),
                       logratio_mean=0.5 * (mean(logratio_c) + mean(logratio_r)))
    metrics = {k: jax.lax.stop_gradient(v) for k, v in metrics.items()}
    return mean(losses), metrics
