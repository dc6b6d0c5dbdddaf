"""Preference losses over per-sequence log-probabilities: DPO and its IPO, robust and hinge relatives.

Every loss here is a function of one number per preference pair, the *log-ratio difference*

    h = [log π_θ(y_w|x) − log π_ref(y_w|x)] − [log π_θ(y_l|x) − log π_ref(y_l|x)],

with y_w the chosen and y_l the rejected response. β·(log π_θ(y|x) − log π_ref(y|x)) is DPO's
*implicit reward* of y, so βh is the implicit reward margin. Variants (ε = ``label_smoothing``):

``"sigmoid"`` (DPO, Rafailov et al. 2023, "Direct Preference Optimization", eq. 7)
    ℓ = −(1−ε)·log σ(βh) − ε·log σ(−βh).
    ε = 0 is DPO; ε > 0 is conservative DPO (cDPO, Mitchell 2023): the expected DPO loss when each
    label is assumed flipped with probability ε (binary cross-entropy with target 1−ε). With exact
    Bradley–Terry preferences P(y_w ≻ y_l) = σ(r_w − r_l) and ε = 0 its population optimum is
    π*_β ∝ π_ref·exp(r/β), the optimum of the KL-regularised objective E[r] − β·KL(π‖π_ref).

``"ipo"`` (IPO / Ψ-PO with Ψ = identity, Azar et al. 2023, "A General Theoretical Paradigm to
Understand Learning from Human Preferences", eq. 17)
    ℓ = (1−ε)·(h − 1/(2β))² + ε·(−h − 1/(2β))².
    β convention: β is the paper's τ, the coefficient of KL(π‖π_ref) in the IPO objective
    E[p(y ≻ μ)] − τ·KL(π‖π_ref) (TRL also uses τ = β). Fixed point: for one pair whose label says
    y ≻ y' with probability p, minimising p·ℓ(h) + (1−p)·ℓ(−h) over h gives (with ε = 0)
        h* = (2p − 1)/(2β) = (p − ½)/β,
    and with both responses drawn from μ a tabular policy's optimum is Azar et al.'s
        log π*(y) − log π_ref(y) = E_{y'~μ}[p(y ≻ y')]/β + const.
    Unlike DPO the target margin is finite, so a pair that is always won cannot push h to infinity.

``"robust"`` (rDPO, Chowdhury et al. 2024, "Provably Robust DPO", eq. 9)
    ℓ = [(1−ε)·(−log σ(βh)) − ε·(−log σ(−βh))] / (1−2ε),   0 ≤ ε < ½.
    ε is the known label-flip rate. The loss is an unbiased estimate of the *clean* DPO loss under
    labels flipped with probability ε, so its population optimum is π*_β again. Individual terms are
    unbounded below (−ε/(1−2ε)·βh as h → ∞); only its expectation is a proper loss.

``"hinge"`` (SLiC-HF, Zhao et al. 2023, "SLiC-HF: Sequence Likelihood Calibration with Human
Feedback", with the reference log-ratio as in later DPO comparisons)
    ℓ = (1−ε)·relu(1 − βh) + ε·relu(1 + βh).
    1/β is the margin the log-ratio difference must exceed.

For "sigmoid", "ipo" and "hinge", ε is the same label-smoothing mixture ℓ_ε(h) = (1−ε)ℓ(h) + εℓ(−h),
the expected loss when each label is flipped with probability ε; "robust" instead *corrects* for
flips. ε = 0 gives each paper's loss exactly.

Each variant registers itself as a preference loss (`kltrust.objectives.preference`), with ε as its
knob; programs reach it through that registry.

``beta`` and ``label_smoothing`` may be traced arrays (they are swept by ``vmap``): nothing branches
on their values. Their ranges (β > 0; 0 ≤ ε ≤ ½, or < ½ for "robust") are checked only when they are
Python numbers; validate swept arrays on the host before tracing.

Metrics (all scalars, weighted like the loss) make the implicit KL visible:
    ``rewards_chosen`` / ``rewards_rejected``: mean implicit reward β·(log π_θ − log π_ref);
    ``reward_accuracy``: fraction of pairs whose chosen implicit reward is strictly larger;
    ``reward_margin``: mean β·h;
    ``logratio_chosen`` / ``logratio_rejected`` / ``logratio_mean``: mean log π_θ − log π_ref of the
    chosen, the rejected, and both responses. These are log-ratios, not KLs: if the responses were
    drawn from π_θ (online DPO) ``logratio_mean`` is the k1 estimate of KL(π_θ‖π_ref); if they were
    drawn from π_ref (offline DPO), −``logratio_mean`` is the k1 estimate of the forward
    KL(π_ref‖π_θ). Offline, preference data are not samples of π_θ, so compute the actual KL with
    ``kltrust.kl`` wherever the policy's distribution is available (as the bandit testbed does).
    ``logps_chosen`` / ``logps_rejected``: mean policy log-probabilities (the "likelihood
    displacement" of the chosen response shows up as this one falling).
"""

from __future__ import annotations

import numbers
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kltrust import components
from kltrust.objectives import preference

VARIANTS: tuple[str, ...] = ("sigmoid", "ipo", "robust", "hinge")

__all__ = ["VARIANTS", "loss", "per_pair_loss"]


def _check_python_scalars(variant: str, beta, label_smoothing) -> None:
    if variant not in VARIANTS:
        raise ValueError(
            f"kltrust.objectives.dpo: variant must be one of {VARIANTS}, got {variant!r}."
        )
    if isinstance(beta, numbers.Real) and not beta > 0:
        raise ValueError(f"kltrust.objectives.dpo: beta must be > 0, got {beta!r}.")
    if isinstance(label_smoothing, numbers.Real):
        if variant == "robust" and not 0.0 <= label_smoothing < 0.5:
            raise ValueError(
                "kltrust.objectives.dpo: label_smoothing must be in [0, 0.5) for variant 'robust' "
                f"(it divides by 1 − 2ε), got {label_smoothing!r}."
            )
        if not 0.0 <= label_smoothing <= 0.5:
            raise ValueError(
                f"kltrust.objectives.dpo: label_smoothing must be in [0, 0.5], got {label_smoothing!r}."
            )


def per_pair_loss(
    logratio_diff: jax.Array,
    beta: jax.Array | float,
    variant: str = "sigmoid",
    label_smoothing: jax.Array | float = 0.0,
) -> jax.Array:
    """The loss of each pair as a function of its log-ratio difference h (see the module docstring).

    Args:
      logratio_diff: h per pair, any shape.
      beta: β, a positive scalar (Python number or array, possibly traced).
      variant: one of ``VARIANTS``.
      label_smoothing: ε, a scalar in [0, ½] ([0, ½) for "robust").

    Returns:
      ℓ(h), shaped like ``logratio_diff``.
    """
    _check_python_scalars(variant, beta, label_smoothing)
    h = logratio_diff
    eps = jnp.asarray(label_smoothing, h.dtype)
    beta = jnp.asarray(beta, h.dtype)
    if variant == "sigmoid":
        # Binary cross-entropy of the logit βh against the target 1 − ε is exactly cDPO.
        return optax.losses.sigmoid_binary_cross_entropy(beta * h, jnp.broadcast_to(1.0 - eps, h.shape))
    if variant == "robust":
        won, lost = -jax.nn.log_sigmoid(beta * h), -jax.nn.log_sigmoid(-beta * h)
        return ((1.0 - eps) * won - eps * lost) / (1.0 - 2.0 * eps)
    if variant == "ipo":
        target = jnp.broadcast_to(1.0 / (2.0 * beta), h.shape)
        return (1.0 - eps) * optax.losses.squared_error(h, target) + eps * optax.losses.squared_error(
            -h, target
        )
    ones = jnp.ones_like(h)
    return (1.0 - eps) * optax.losses.hinge_loss(beta * h, ones) + eps * optax.losses.hinge_loss(
        -beta * h, ones
    )


@components.hparams
class HParams:
    """The knobs of the DPO family's sigmoid, IPO and hinge losses."""

    label_smoothing: jax.Array = components.knob(
        0.0, "ε: each label taken as flipped with probability ε (cDPO)", low=0.0, high=0.5)


@components.hparams
class RobustHParams:
    """rDPO's knob: its ε divides by 1 − 2ε."""

    label_smoothing: jax.Array = components.knob(
        0.0, "ε: the known label-flip rate the loss corrects for", low=0.0, high=0.5,
        high_open=True)


def _register(variant: str, hparams: type, doc: str) -> None:
    def per_pair(h: jax.Array, beta: jax.Array, hp: Any) -> jax.Array:
        return per_pair_loss(h, beta, variant, hp.label_smoothing)

    per_pair.__doc__ = doc
    preference.register(variant, hparams=hparams)(per_pair)


_register("sigmoid", HParams, "DPO (cDPO with label smoothing), Rafailov et al. 2023")
_register("ipo", HParams, "IPO, Azar et al. 2023 (beta is their tau)")
_register("robust", RobustHParams, "robust DPO, Chowdhury et al. 2024")
_register("hinge", HParams, "SLiC-HF hinge, Zhao et al. 2023")


def loss(
    policy_chosen_logps: jax.Array,
    policy_rejected_logps: jax.Array,
    ref_chosen_logps: jax.Array,
    ref_rejected_logps: jax.Array,
    beta: jax.Array | float,
    variant: str = "sigmoid",
    label_smoothing: jax.Array | float = 0.0,
    weights: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The mean preference loss of a batch of pairs, and its metrics (`preference.loss` with the
    DPO family's knob ε).

    Args:
      policy_chosen_logps: log π_θ(y|x) of the chosen response of each pair, summed over the
        sequence, shape [B].
      policy_rejected_logps: the same for the rejected response, shape [B].
      ref_chosen_logps: ``policy_chosen_logps`` under π_ref, shape [B] (treated as a constant:
        no gradient flows into it).
      ref_rejected_logps: ``policy_rejected_logps`` under π_ref, shape [B] (a constant too).
      beta: β > 0 (Python number or possibly traced scalar array).
      variant: "sigmoid" (DPO/cDPO), "ipo", "robust" (rDPO) or "hinge" (SLiC).
      label_smoothing: ε (see the module docstring).
      weights: optional non-negative weight per pair, shape [B]. The loss and metrics are then the
        weighted means Σ w·ℓ / Σ w. With the weights of exact preference enumeration (every
        (x, y_w, y_l) with its probability) the "mean" is the population expectation.

    Returns:
      (loss, metrics): the (weighted) mean loss and a dict of scalar metrics (module docstring).

    Raises:
      ValueError: unknown ``variant``, a Python ``beta`` ≤ 0 or a Python ``label_smoothing`` out of
        range, or arrays of different shapes.
    """
    _check_python_scalars(variant, beta, label_smoothing)
    hp = preference.LOSSES.get(variant).hparams(label_smoothing=label_smoothing)
    return preference.loss(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
                           ref_rejected_logps, beta, variant, hp, weights)
