"""Group-baseline policy gradients on token sequences (GRPO, RLOO) with the KL in the loss, and best-of-n.

Setting. For each prompt x a group of G responses o_1..o_G is sampled from π_old and scored with one
scalar reward each. Batches are laid out *group-major*: B = num_groups·G sequences, and consecutive
runs of G entries share a prompt. Token-level inputs are [B, T] log-probabilities of the sampled
tokens, with ``mask`` 1 on real response tokens and 0 on padding.

Advantages (``group_advantages``), one per sequence, broadcast over its tokens:

``"grpo"`` (Shao et al. 2024, "DeepSeekMath: Pushing the Limits of Mathematical Reasoning in Open
Language Models", §4.1.2, outcome supervision)
    A_i = (r_i − mean_j r_j) / (std_j r_j + eps),
    with the *population* standard deviation of the group (divide by G, not G − 1; some
    implementations, e.g. TRL, use the sample std, which differs by √(G/(G−1))). ``scale_by_std=False``
    drops the division, as Dr. GRPO does (Liu et al. 2025, "Understanding R1-Zero-Like Training"):
    dividing by the std up-weights groups whose rewards barely differ, a question-level difficulty
    bias.
``"rloo"`` (REINFORCE leave-one-out: Kool et al. 2019, "Buy 4 REINFORCE Samples, Get a Baseline for
Free!"; Ahmadian et al. 2024, "Back to Basics: Revisiting REINFORCE Style Optimization for Learning
from Human Feedback in LLMs", eq. 7)
    A_i = r_i − 1/(G−1) Σ_{j≠i} r_j = G/(G−1) · (r_i − mean_j r_j).
    The baseline excludes r_i, so it is independent of o_i and the gradient stays unbiased. No std
    scaling unless asked for (``scale_by_std=True`` divides by the same population std + eps).

Loss (``loss``), per token t of sequence i, with ρ_it = π_θ(o_it|·)/π_old(o_it|·) = exp(new − old):

    ℓ_it = −S_it + β·k(log π_θ(o_it|·), log π_ref(o_it|·)),
    S_it = min(ρ_it·A_i, clip(ρ_it, 1−ε, 1+ε)·A_i)   if ``variant.clip``,   else ρ_it·A_i,

aggregated (``variant.token_average``) as
    "sequence":  (1/B) Σ_i (1/|o_i|) Σ_t ℓ_it   — GRPO's eq. (3) (`kl.mean_per_sequence`, then a mean;
                 an all-padding sequence contributes 0 but still counts in B);
    "token":     Σ_{i,t} ℓ_it / Σ_i |o_i|        — every real token of the batch weighs the same
                 (`kl.mean_per_token`), DAPO's token-level loss (Yu et al. 2025). Dr. GRPO divides the
                 token sum by a constant generation budget instead of the token count; for a fixed
                 batch that is this loss times a constant.

The KL term. GRPO puts β·KL(π_θ‖π_ref) into the loss, estimated per token with Schulman's k3
(DeepSeekMath eq. 4: π_ref/π_θ − log(π_ref/π_θ) − 1), rather than into the reward as PPO-RLHF does.
``variant.kl_estimator`` picks any registered estimator (`kltrust.kl.estimators()`; k3 by default).
What the *gradient* of that term is, on-policy (tokens drawn from π_θ and held fixed; see `kltrust.kl`'s docstring, which
`tests/test_kl.py` and `tests/test_grpo.py` check exactly):
    k3: E[∇k3] = ∇ KL(π_ref‖π_θ) — the **forward** KL's gradient, although its value estimates the
        reverse KL. This is what GRPO actually optimises.
    k2: E[∇k2] = ∇ KL(π_θ‖π_ref) — the reverse KL's gradient (its value is biased, its gradient not).
    k1: E[∇k1] = E[∇ log π_θ] = 0 — k1 in a loss adds only noise. ``Variant`` warns when an
        estimator whose expected gradient as a loss term is zero (k1; `kl.EstimatorInfo.loss_term`) is
        put in the loss; k1 belongs in the reward (score-function gradient), where it is unbiased.
    k1+, k3+ (verl's straight-through) and k3_is (DeepSeek-V3.2's ρ·k3): ∇ KL(π_θ‖π_ref), as k2.
Off-policy (later minibatches, π_θ ≠ π_old) the tokens come from π_old and these hold only
approximately; GRPO does not importance-weight the KL term, and neither does this loss unless the
estimator is k3_is, which is weighted by ρ = π_θ/π_old and so stays unbiased in value and gradient.
``coefs.kl_log_ratio_clamp``/``kl_value_clamp`` clamp the estimator (`kltrust.kl.estimate`).

Variants of the surrogate. ``coefs.clip_eps_high`` (DAPO's clip-higher, Yu et al. 2025) makes the
range asymmetric, clip(ρ, 1 − ε, 1 + ε_high). ``variant.ratio_level="sequence"`` is GSPO (Zheng et
al. 2025, "Group Sequence Policy Optimization", eq. 5–7): one ratio per sequence,
s_i = (π_θ(o_i)/π_old(o_i))^{1/|o_i|} = exp(mean_t (log π_θ − log π_old)), clipped per sequence,
S_it = min(s_i·A_i, clip(s_i, 1 − ε, 1 + ε)·A_i) on every token of o_i; with "sequence"
aggregation the loss is GSPO's (1/B) Σ_i min(s_i A_i, clip(s_i)A_i) exactly.

``variant.kl_in_loss=False`` removes the KL term entirely — β is then never read, ``ref_logp`` may be
None, and the metrics carry no ``kl_penalty`` — so a trainer that puts the KL into the reward instead
(as RLOO and PPO-RLHF do) can never apply it twice.

Hyperparameters. ``LossCoefs`` holds ε and β as arrays (possibly traced), so sweeps vmap over them;
nothing branches on their values. Ranges (ε > 0 when clipping, β ≥ 0) are checked only when they are
Python numbers. ``old_logp``, ``ref_logp`` and ``advantage`` are constants (``stop_gradient``).

Padding. Values at positions with ``mask`` 0 are replaced before any arithmetic, so whatever the
caller leaves there (even inf or NaN) changes neither the loss nor its gradient, which is exactly 0
at padded positions.

Metrics (scalars, no gradient):
    ``policy_loss``: the aggregated −S (same aggregation as the loss);
    ``kl_penalty``: the aggregated estimator value that was penalised (same aggregation), so that
        loss = policy_loss + β·kl_penalty; present only when the KL is in the loss;
    ``kl_estimator_NAME`` for every registered plain estimator NAME (``kl_estimator_k1``, ``_k2``,
        ``_k3``, ...; a corrected one's on-policy value is its base's): per-token masked means of
        each estimator of KL(π_θ‖π_ref) (whenever ``ref_logp`` is given). On-policy the unbiased ones (k1, k3) estimate the average per-token KL over visited
        prefixes; k2 is biased upwards;
    ``kl_exact_token`` / ``kl_exact_sequence`` (when ``exact_kl`` is given): the per-token masked
        mean of the exact per-token KL (from full logits via `kl.categorical`), and the mean over
        sequences of its per-sequence sum — the KL between the response distributions, the
        quantity an RLHF KL budget refers to;
    ``clip_frac``: the fraction of real tokens with ρ outside [1 − ε, 1 + ε_high] (reported with or
        without clipping);
    ``ratio_mean``: the per-token masked mean of ρ.
Diagnostics other than ``policy_loss`` and ``kl_penalty`` are per-token means whatever the
aggregation, so they compare across variants.

Best-of-n. ``best_of_n_select`` picks the highest-reward sample of each prompt, and
``best_of_n_kl_bound`` (old name ``best_of_n_kl``) is log n − (n−1)/n (Stiennon et al. 2020,
"Learning to summarize from human feedback", appendix), an *upper bound* on KL(π_bon‖π_ref): Beirami
et al. 2024, "Theoretical guarantees on the best-of-n alignment policy" (arXiv 2401.01879), show
that it is reached only for continuous, untied rewards. For a discrete π_ref the exact law is
π_bon(y) = π_ref(y)/π_ref(C) · [F(r(y))^n − F(r(y)⁻)^n] (F the reward CDF under π_ref, C the tie
class of y) and its KL is below the bound, far below with ties or a concentrated π_ref; the exact
value is `kltrust.tasks.best_of_n.best_of_n_kl` (docs/best_of_n.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import numbers
import warnings

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kltrust import kl

BASELINES: tuple[str, ...] = ("grpo", "rloo")
TOKEN_AVERAGES: tuple[str, ...] = ("sequence", "token")
RATIO_LEVELS: tuple[str, ...] = ("token", "sequence")

__all__ = [
    "BASELINES",
    "TOKEN_AVERAGES",
    "LossCoefs",
    "Variant",
    "best_of_n_kl",
    "best_of_n_kl_bound",
    "best_of_n_select",
    "group_advantages",
    "loss",
]


# ---------------------------------------------------------------- advantages


def group_advantages(
    rewards: jax.Array,
    group_size: int,
    *,
    baseline: str = "grpo",
    scale_by_std: bool | None = None,
    eps: float = 1e-6,
) -> jax.Array:
    """Per-sequence advantages from a group baseline (see the module docstring).

    Args:
      rewards: one scalar reward per sequence, shape [B], group-major (entries
        ``[g·G, (g+1)·G)`` share prompt g).
      group_size: G ≥ 2, a Python int dividing B.
      baseline: ``"grpo"`` (group mean, optionally divided by the group's population std) or
        ``"rloo"`` (leave-one-out mean of the other G − 1 rewards).
      scale_by_std: divide by (population std of the group + ``eps``). None (default) means the
        paper's choice: True for "grpo", False for "rloo". False for "grpo" is Dr. GRPO.
      eps: added to the std before dividing.

    Returns:
      Advantages, shape [B], same layout as ``rewards``. A group of equal rewards gets 0.

    Raises:
      ValueError: unknown ``baseline``, ``group_size`` < 2, ``rewards`` not 1-D, or B not divisible
        by ``group_size``.
    """
    if baseline not in BASELINES:
        raise ValueError(
            f"kltrust.objectives.grpo.group_advantages: baseline must be one of {BASELINES}, "
            f"got {baseline!r}."
        )
    if not isinstance(group_size, numbers.Integral) or group_size < 2:
        raise ValueError(
            "kltrust.objectives.grpo.group_advantages: group_size must be an int ≥ 2 (a baseline "
            f"needs at least one other sample), got {group_size!r}."
        )
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 1 or rewards.shape[0] % group_size:
        raise ValueError(
            "kltrust.objectives.grpo.group_advantages: rewards must be 1-D with a length divisible by "
            f"group_size={group_size}, got shape {rewards.shape}."
        )
    if scale_by_std is None:
        scale_by_std = baseline == "grpo"
    rewards = rewards.astype(jnp.promote_types(rewards.dtype, jnp.float32))
    groups = rewards.reshape(-1, group_size)
    # Advantages depend on the rewards only through their differences, so each group is first shifted
    # by its first reward: a group of equal rewards then has exactly zero deviations and std (a float32
    # mean of equal rewards is not always that reward, and (r − mean)/(std + eps) of two round-offs
    # was ±1, not 0), and a large common offset no longer costs precision relative to the spread.
    groups = groups - groups[:, :1]
    mean = jnp.mean(groups, axis=1, keepdims=True)
    if baseline == "grpo":
        advantages = groups - mean
    else:
        # r_i − (Σ_j r_j − r_i)/(G − 1) = G/(G − 1)·(r_i − mean).
        advantages = (group_size / (group_size - 1)) * (groups - mean)
    if scale_by_std:
        scale = jnp.std(groups, axis=1, keepdims=True) + eps  # population std
        # eps = 0 with equal rewards: 0/0; the deviations are exactly 0 there, so divide by 1 instead.
        advantages = advantages / jnp.where(scale > 0, scale, 1.0)
    return advantages.reshape(-1)


def groups_with_signal(rewards: jax.Array, group_size: int) -> jax.Array:
    """DAPO's dynamic-sampling filter (Yu et al. 2025, eq. 11): True for every sequence whose group
    has at least two different rewards, False for all G members of a group whose rewards are all
    equal (its advantages are exactly 0, so it only dilutes a token-averaged loss).

    Args:
      rewards: shape [B], group-major as in `group_advantages`.
      group_size: G, a Python int dividing B.

    Returns:
      bool, shape [B].
    """
    groups = jnp.asarray(rewards).reshape(-1, group_size)
    return jnp.repeat(jnp.any(groups != groups[:, :1], axis=1), group_size)


# ---------------------------------------------------------------- the loss


@dataclasses.dataclass(frozen=True)
class Variant:
    """The static choices of a group policy-gradient loss (they change the compiled program).

    ``kl_estimator`` is the estimator of the in-loss KL term (ignored when ``kl_in_loss`` is False);
    ``token_average`` is "sequence" (GRPO) or "token" (DAPO); ``clip`` toggles PPO's ratio clipping
    (off with ``kl_in_loss=False`` and a single update per batch is RLOO's REINFORCE).
    """

    kl_estimator: str = "k3"
    kl_in_loss: bool = True
    token_average: str = "sequence"
    clip: bool = True
    ratio_level: str = "token"  # "sequence": GSPO's length-normalised sequence ratio

    def __post_init__(self):
        for name, allowed in (("kl_estimator", kl.estimators()), ("token_average", TOKEN_AVERAGES),
                              ("ratio_level", RATIO_LEVELS)):
            value = getattr(self, name)
            if value not in allowed:
                raise ValueError(f"variant.{name} must be one of {allowed}, got {value!r}.")
        if self.kl_in_loss and not kl.estimator_info(self.kl_estimator).loss_term:
            warnings.warn(
                f"kltrust.objectives.grpo.Variant: {self.kl_estimator} in the loss has zero expected "
                "gradient (k1's is E[∇ log π_θ] = 0), so the KL term only adds noise. Use one of "
                f"{kl.estimators(loss_term=True)} in the loss (k3: gradient of KL(π_ref‖π_θ); k2: of "
                "KL(π_θ‖π_ref)), or put it into the reward with kl_in_loss=False.",
                UserWarning,
                stacklevel=3,
            )


@flax.struct.dataclass
class LossCoefs:
    """ε (PPO clip range of the ratio) and β (coefficient of the in-loss KL), scalars or arrays;
    the in-loss estimator's clamps (`kltrust.kl.estimate`'s ``log_ratio_clamp``/``value_clamp``;
    None or inf: none)."""

    clip_eps: jax.Array
    beta: jax.Array
    kl_log_ratio_clamp: jax.Array | None = None
    kl_value_clamp: jax.Array | None = None
    clip_eps_high: jax.Array | None = None  # DAPO's ε_high: the range [1 − ε, 1 + ε_high]; None: ε


def _check_coefs(coefs: LossCoefs, variant: Variant) -> None:
    if variant.clip and isinstance(coefs.clip_eps, numbers.Real) and not coefs.clip_eps > 0:
        raise ValueError(f"kltrust.objectives.grpo.loss: clip_eps must be > 0, got {coefs.clip_eps!r}.")
    if variant.kl_in_loss and isinstance(coefs.beta, numbers.Real) and not coefs.beta >= 0:
        raise ValueError(f"kltrust.objectives.grpo.loss: beta must be ≥ 0, got {coefs.beta!r}.")


@contextlib.contextmanager
def _as_value_error(message: str):
    """chex's shape asserts raise ``AssertionError`` with numbered arrays; this public API raises
    ``ValueError`` naming the arguments. (Shapes are static: the checks run once, at trace time.)"""
    try:
        yield
    except AssertionError:
        raise ValueError(f"kltrust.objectives.grpo.loss: {message}") from None


def _check_shapes(new_logp, advantage, **token_arrays) -> None:
    # chex reads ``.shape``, which Python lists lack: give them one.
    shaped = lambda a: a if hasattr(a, "shape") else np.asarray(a)
    arrays = {"new_logp": shaped(new_logp)}
    arrays.update({name: shaped(a) for name, a in token_arrays.items() if a is not None})
    with _as_value_error(f"new_logp must be [B, T], got shape {arrays['new_logp'].shape}."):
        chex.assert_rank(arrays["new_logp"], 2)
    listed = ", ".join(f"{name} {a.shape}" for name, a in arrays.items())
    with _as_value_error(f"token arrays must have identical shapes, got {listed}."):
        chex.assert_equal_shape(list(arrays.values()))
    advantage = shaped(advantage)
    with _as_value_error(
        f"advantage must be [B] (one per sequence), got shape {advantage.shape} for new_logp "
        f"{arrays['new_logp'].shape}."
    ):
        chex.assert_shape(advantage, arrays["new_logp"].shape[:1])


def loss(
    new_logp: jax.Array,
    old_logp: jax.Array,
    advantage: jax.Array,
    mask: jax.Array,
    coefs: LossCoefs,
    *,
    variant: Variant,
    ref_logp: jax.Array | None = None,
    exact_kl: jax.Array | None = None,
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The GRPO-style clipped group policy-gradient loss with the KL in the loss (module docstring).

    Args:
      new_logp: log π_θ of each sampled token, [B, T] (differentiated).
      old_logp: log π_old of the same tokens (the sampling policy), [B, T]; constant.
      advantage: one advantage per sequence, [B] (e.g. from ``group_advantages``); constant.
      mask: 1 (or True) for real response tokens, 0 for padding, [B, T].
      coefs: ``LossCoefs(clip_eps, beta)``; β is read only when ``variant.kl_in_loss``: a scalar,
        or one β per sequence [B] (per-domain control, `kltrust.domains`), applied inside the
        reduction: reduce(β_i·k_it), which is β·reduce(k) for a scalar.
      variant: the static ``Variant``.
      ref_logp: log π_ref of the same tokens, [B, T]; constant. Required when ``variant.kl_in_loss``;
        otherwise optional and used only for the ``kl_estimator_*`` diagnostics.
      exact_kl: optional exact per-token KL(π_θ‖π_ref) from full logits (``kl.categorical``), [B, T],
        for the ``kl_exact_*`` metrics only (it never enters the loss).

    Returns:
      (loss, metrics): the scalar loss and a dict of scalar metrics (module docstring).

    Raises:
      ValueError: mismatched shapes, ``ref_logp`` missing while the KL is in the loss, or a Python
        ``clip_eps`` ≤ 0 / ``beta`` < 0.
    """
    _check_coefs(coefs, variant)
    _check_shapes(
        new_logp, advantage, old_logp=old_logp, mask=mask, ref_logp=ref_logp, exact_kl=exact_kl
    )
    if variant.kl_in_loss and ref_logp is None:
        raise ValueError(
            "kltrust.objectives.grpo.loss: ref_logp is required when variant.kl_in_loss is True."
        )

    real = mask > 0
    # Padding is replaced *before* any arithmetic (not only masked in the reduction), so garbage
    # there — inf, NaN — cannot reach the value or, through 0·inf, the gradient.
    clean = lambda x: jnp.where(real, x, 0.0)
    new = clean(new_logp)
    old = clean(jax.lax.stop_gradient(old_logp))
    adv = jax.lax.stop_gradient(advantage).astype(new.dtype)[:, None]
    if variant.token_average == "sequence":
        reduce = lambda v: jnp.mean(kl.mean_per_sequence(v, mask))
    else:
        reduce = lambda v: kl.mean_per_token(v, mask)
    token_mean = lambda v: jax.lax.stop_gradient(kl.mean_per_token(v, mask))

    if variant.ratio_level == "sequence":  # GSPO: one ratio per sequence, on each of its tokens
        per_sequence = jnp.exp(kl.mean_per_sequence(new - old, mask))
        ratio = jnp.broadcast_to(per_sequence[:, None], new.shape)
    else:
        ratio = jnp.exp(new - old)
    clip_eps = jnp.asarray(coefs.clip_eps, new.dtype)
    clip_high = clip_eps if coefs.clip_eps_high is None else jnp.asarray(coefs.clip_eps_high,
                                                                        new.dtype)
    if variant.clip:
        clipped = jnp.clip(ratio, 1.0 - clip_eps, 1.0 + clip_high)
        surrogate = jnp.minimum(ratio * adv, clipped * adv)
    else:
        surrogate = ratio * adv
    policy_loss = reduce(-surrogate)
    total = policy_loss

    metrics = {
        "policy_loss": jax.lax.stop_gradient(policy_loss),
        "clip_frac": token_mean(((ratio < 1.0 - clip_eps) | (ratio > 1.0 + clip_high))
                                .astype(new.dtype)),
        "ratio_mean": token_mean(ratio),
    }
    if ref_logp is not None:
        ref = clean(jax.lax.stop_gradient(ref_logp))
        for estimator in kl.estimators(reward_term=True):  # corrected ones: the same values
            metrics[f"kl_estimator_{estimator}"] = token_mean(kl.estimate(new, ref, estimator))
        if variant.kl_in_loss:
            # Tokens come from π_old: an importance-corrected estimator weighs by π_θ/π_old.
            kl_terms = kl.estimate(
                new, ref, variant.kl_estimator, logp_old=old,
                log_ratio_clamp=coefs.kl_log_ratio_clamp, value_clamp=coefs.kl_value_clamp)
            kl_penalty = reduce(kl_terms)
            beta = jnp.asarray(coefs.beta, new.dtype)
            if beta.ndim == 0:
                total = total + beta * kl_penalty
            else:  # one β per sequence [B] (per-domain control): inside the reduction
                total = total + reduce(beta[:, None] * kl_terms)
            metrics["kl_penalty"] = jax.lax.stop_gradient(kl_penalty)
    if exact_kl is not None:
        exact = jax.lax.stop_gradient(exact_kl)
        metrics["kl_exact_token"] = kl.mean_per_token(exact, mask)
        metrics["kl_exact_sequence"] = jnp.mean(kl.sum_per_sequence(exact, mask))
    return total, metrics


# ---------------------------------------------------------------- best-of-n


def best_of_n_kl_bound(n):
    """The upper bound log n − (n − 1)/n on KL(π_bon‖π_ref) of best-of-n sampling (module docstring).

    Equal to the KL only for continuous rewards (no ties); an upper bound in general (Beirami et al.
    2024), for the exact value on a categorical reference see `kltrust.tasks.best_of_n.best_of_n_kl`.
    0 for n = 1. A Python number gives a float (n ≥ 1 is checked); an array gives an array.
    """
    if isinstance(n, numbers.Real):
        if not n >= 1:
            raise ValueError(f"kltrust.objectives.grpo.best_of_n_kl_bound: n must be ≥ 1, got {n!r}.")
        return math.log(n) - (n - 1) / n
    n = jnp.asarray(n, jnp.promote_types(jnp.asarray(n).dtype, jnp.float32))
    return jnp.log(n) - (n - 1.0) / n


# The old name: the same upper bound (not the exact KL), kept for existing callers.
best_of_n_kl = best_of_n_kl_bound


def best_of_n_select(rewards: jax.Array) -> jax.Array:
    """Index of the best of n samples per prompt: argmax over the last axis, ties to the lowest index.

    Args:
      rewards: [num_prompts, n] rewards of n samples per prompt.

    Returns:
      int indices, shape [num_prompts].
    """
    rewards = jnp.asarray(rewards)
    if rewards.ndim != 2:
        raise ValueError(
            "kltrust.objectives.grpo.best_of_n_select: rewards must be [num_prompts, n], got shape "
            f"{rewards.shape}."
        )
    return jnp.argmax(rewards, axis=-1)  # jnp.argmax returns the first maximal index
