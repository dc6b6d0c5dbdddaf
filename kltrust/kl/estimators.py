"""The registry of per-sample KL estimators, their corrections and clamps (`kltrust.kl`'s docstring
states the value and gradient semantics of each)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from kltrust import components
from kltrust.kl._numerics import _check_same_shape, _expm1_minus_identity

Estimator = str  # the name of a registered estimator: one of `estimators()`
Pair = tuple[float, float]

CORRECTIONS = ("straight_through", "importance")


@dataclasses.dataclass(frozen=True)
class EstimatorInfo:
    """A registered sample estimator and what programs need to know about it.

    Attributes:
      name: its name, the ``estimator`` argument of `estimate`.
      fn: ``fn(logp, logp_ref)``, one estimate per sample, shaped like ``logp`` (`estimate` has
        checked the shapes and the name before calling it). For a corrected estimator, its base's.
      unbiased: E_{x~p}[fn] = KL(p ‖ p_ref) for every pair (p, p_ref).
      nonnegative: every value is ≥ 0, so no mean of it is ever a "negative KL".
      loss_gradient: (a, b) such that, on-policy (x ~ p_θ held fixed),
            E_{x~p_θ}[∇_θ k(x)] = a·∇KL(p_θ ‖ p_ref) + b·∇KL(p_ref ‖ p_θ),
        the expected gradient of ``mean(k)`` as a loss term. With δ = log p_θ − log p_ref and
        r = e^{−δ}, ∇fn = f′(δ)·∇log p_θ, and E_p[∇log p_θ] = 0, E_p[δ·∇log p_θ] = ∇KL(p_θ‖p_ref),
        E_p[r·∇log p_θ] = Σ_x p_ref(x)∇log p_θ(x) = −∇KL(p_ref‖p_θ); so every estimator with
        f′(δ) = c + a·δ − b·r (k1, k2, k3 and their combinations) has this form.
      reward_gradient: (a, b) such that E_{x~p_θ}[k(x)·∇_θ log p_θ(x)] = a·∇KL(p_θ‖p_ref) +
        b·∇KL(p_ref‖p_θ): the expected score-function gradient of −k used as a reward (k held
        constant). k = c + a·δ − b·(r − 1) has it, since E_p[(r − 1)∇log p_θ] = −∇KL(p_ref‖p_θ);
        None where k is not of that form (k2 = ½δ²).
      base, correction: for a corrected estimator (`corrected`), the estimator it wraps and how
        (one of `CORRECTIONS`); None for a plain one.
    """

    name: str
    fn: Callable[[jax.Array, jax.Array], jax.Array]
    unbiased: bool
    nonnegative: bool
    loss_gradient: Pair
    reward_gradient: Pair | None = None
    base: str | None = None
    correction: str | None = None

    @property
    def loss_term(self) -> bool:
        """Whether it belongs in a loss at all: its expected gradient there is not zero (k1's is)."""
        return self.loss_gradient != (0.0, 0.0)

    @property
    def reward_term(self) -> bool:
        """Whether it may be a reward: a correction changes only the gradient of a loss term, and a
        reward is held constant, so a corrected estimator is refused there."""
        return self.correction is None


_REGISTRY: components.Registry[EstimatorInfo] = components.Registry("KL estimator")


def _pair(value: tuple[float, float] | None) -> Pair | None:
    return None if value is None else tuple(float(c) for c in value)


def estimator(
    name: str, *, unbiased: bool, nonnegative: bool, loss_gradient: tuple[float, float],
    reward_gradient: tuple[float, float] | None = None,
) -> Callable[[Callable], Callable]:
    """Decorator: registers ``fn(logp, logp_ref) -> per-sample estimate`` as estimator ``name``
    with its metadata (`EstimatorInfo`; ``tests/test_kl.py`` checks every registered estimator's
    metadata exactly). Returns ``fn`` unchanged. A name registered twice raises ``ValueError``."""

    def register(fn: Callable) -> Callable:
        _REGISTRY.register(name, EstimatorInfo(
            name, fn, bool(unbiased), bool(nonnegative), _pair(loss_gradient),
            _pair(reward_gradient)))
        return fn

    return register


def corrected(name: str, base: str, correction: str) -> EstimatorInfo:
    """Registers estimator ``name``: registered estimator ``base`` under ``correction``, with its
    metadata derived from the base's (the value semantics on-policy are the base's):

    ``"straight_through"`` (verl's ``k1+``/``k3+``): value k, gradient of k2,
        stop_gradient(k) + ½δ² − stop_gradient(½δ²); as a loss, ∇KL(p_θ‖p_ref) on-policy,
        whatever k is.
    ``"importance"`` (DeepSeek-V3.2's unbiased KL, TRL's ``use_bias_correction_kl``): ρ·k with the
        differentiable ratio ρ = p_θ/p_old = exp(log p − stop_gradient(log p_old)), for samples
        x ~ p_old. Value: E_{p_old}[ρk] = E_{p_θ}[k] = KL(p_θ‖p_ref) off-policy too, for an unbiased
        k. Gradient: E_{p_old}[∇(ρk)] = E_{p_θ}[(k + f′(δ))∇log p_θ] = reward_gradient +
        loss_gradient of k, which is (1, 0) for every unbiased k_λ = δ + λ(r − 1): the reverse KL's
        gradient, on- and off-policy. Needs an unbiased base with a reward gradient.
    """
    info = estimator_info(base)
    if correction not in CORRECTIONS or info.correction is not None:
        raise ValueError(f"kltrust.kl.corrected: correction must be one of {CORRECTIONS} of a plain "
                         f"estimator, got {correction!r} of {base!r}.")
    if correction == "straight_through":
        gradient = (1.0, 0.0)
    else:
        if not info.unbiased or info.reward_gradient is None:
            raise ValueError(f"kltrust.kl.corrected: 'importance' needs an unbiased base estimator "
                             f"with a reward gradient, got {base!r}.")
        gradient = tuple(a + b for a, b in zip(info.reward_gradient, info.loss_gradient))
    entry = dataclasses.replace(info, name=name, loss_gradient=gradient, base=base,
                                correction=correction)
    _REGISTRY.register(name, entry)
    return entry


def estimators(
    *, unbiased: bool | None = None, nonnegative: bool | None = None,
    loss_term: bool | None = None, reward_term: bool | None = None,
) -> tuple[str, ...]:
    """Names of the registered estimators, in registration order (read at call time, so an
    estimator registered later is included). A filter that is not None keeps the estimators whose
    `EstimatorInfo` field has that value: ``estimators(loss_term=True)`` are those a loss may use."""
    wanted = {"unbiased": unbiased, "nonnegative": nonnegative, "loss_term": loss_term,
              "reward_term": reward_term}
    return tuple(
        name for name, info in _REGISTRY.items()
        if all(value is None or getattr(info, field) == value for field, value in wanted.items())
    )


def estimator_info(name: str) -> EstimatorInfo:
    """The registered estimator ``name`` and its metadata; ``ValueError`` naming the choices if
    there is none."""
    if name not in _REGISTRY:
        raise ValueError(
            f"kltrust.kl.estimate: estimator must be one of {estimators()}, got {name!r}."
        )
    return _REGISTRY.get(name)


def estimate(
    logp: jax.Array,
    logp_ref: jax.Array,
    estimator: Estimator = "k3",
    *,
    logp_old: jax.Array | None = None,
    log_ratio_clamp: jax.Array | float | None = None,
    value_clamp: jax.Array | float | None = None,
) -> jax.Array:
    """Per-sample estimates of KL(p ‖ p_ref) from samples x ~ p (x ~ p_old for ``"importance"``).

    Args:
      logp: log p(x) at the sampled points, any shape.
      logp_ref: log p_ref(x) at the same points, same shape as ``logp``.
      estimator: the name of a registered estimator (`estimators()`): ``"k1"`` (δ), ``"k2"``
        (½δ²), ``"k3"`` ((r−1) − log r), ``"k3+"`` (k3's value, k2's gradient), ``"k3_is"``
        (ρ·k3), ..., with δ = log p − log p_ref and r = exp(−δ). See the module docstring for
        which is unbiased in value and which gives which gradient.
      logp_old: log p_old(x), the distribution the samples came from, same shape; read only by
        importance-corrected estimators. None: on-policy, p_old = p held constant (ρ = 1 in value,
        ∇ρ = ∇log p).
      log_ratio_clamp: c > 0 (a number or an array broadcasting to ``logp``, e.g. a swept
        hyperparameter): δ is clipped to [−c, c] before the estimator sees it, so a sample whose
        |δ| > c contributes the value at ±c and no gradient through δ. None or inf: no clamp (inf
        is bit-identical to None).
      value_clamp: v > 0, same kinds: the final per-sample term is clipped to [−v, v] (verl's
        ``low_var_kl`` clamps k3 at 10), with no gradient where it is clipped. None or inf: none.

    Returns:
      An array shaped like ``logp``: one estimate per sample. Average it (or use the masked
      reductions) to estimate the KL.

    Raises:
      ValueError: unknown ``estimator`` or mismatched shapes.
    """
    info = estimator_info(estimator)
    _check_same_shape("estimate", logp=logp, logp_ref=logp_ref)
    raw = logp
    if log_ratio_clamp is not None:
        # `where` keeps logp itself (bit for bit, gradient 1) wherever |δ| ≤ c, so c = inf changes
        # nothing; outside, the clipped ratio is a constant offset from logp_ref.
        delta = logp - logp_ref
        c = jnp.asarray(log_ratio_clamp, delta.dtype)
        logp = jnp.where(jnp.abs(delta) <= c, logp, logp_ref + jnp.clip(delta, -c, c))
    k = info.fn(logp, logp_ref)
    if info.correction == "straight_through":
        # k's value exactly and k2's gradient (∇½δ² = δ∇δ), none of k's: sg(δ)·(δ − sg(δ)) is
        # exactly 0 for every finite δ with gradient δ. (k2 − sg(k2)) was the same until ½δ²
        # overflowed: |δ| ≥ 2^64 gave inf − inf = NaN.
        d = logp - logp_ref
        k = jax.lax.stop_gradient(k) + jax.lax.stop_gradient(d) * (d - jax.lax.stop_gradient(d))
    elif info.correction == "importance":
        if logp_old is None:
            logp_old = raw
        else:
            _check_same_shape("estimate", logp=raw, logp_old=logp_old)
        k = jnp.exp(raw - jax.lax.stop_gradient(logp_old)) * k
    if value_clamp is not None:
        v = jnp.asarray(value_clamp, k.dtype)
        k = jnp.clip(k, -v, v)
    return k


@estimator("k1", unbiased=True, nonnegative=False, loss_gradient=(0, 0),
           reward_gradient=(1, 0))
def _k1(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """k1 = δ = log p − log p_ref."""
    return logp - logp_ref


@estimator("k2", unbiased=False, nonnegative=True, loss_gradient=(1, 0))
def _k2(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """k2 = ½δ²."""
    return 0.5 * jnp.square(logp - logp_ref)


@estimator("k3", unbiased=True, nonnegative=True, loss_gradient=(0, 1),
           reward_gradient=(1, -1))
def _k3(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """k3 = (r − 1) − log r = e^{−δ} − 1 + δ, as e^x − 1 − x at x = log r = −δ."""
    return _expm1_minus_identity(-(logp - logp_ref))


@estimator("k_half", unbiased=True, nonnegative=False, loss_gradient=(0, 0.5),
           reward_gradient=(1, -0.5))
def _k_half(logp: jax.Array, logp_ref: jax.Array) -> jax.Array:
    """k_half = ½(r − 1) − log r = ½(k1 + k3): the control-variate estimator k_λ at λ = ½.

    The family. k_λ = λ(r − 1) − log r = (1 − λ)·k1 + λ·k3 is unbiased for every λ, because
    E_p[r − 1] = Σ_x p_ref(x) − 1 = 0 (λ = 0 is k1, λ = 1 is k3). Its variance
    Var[δ] + 2λ·Cov[δ, r] + λ²·Var[r] is least at λ* = −Cov[δ, r]/Var[r], which → 1 as p → p_ref
    (r − 1 ≈ −δ) and falls as r = p_ref/p grows a heavy right tail (p_ref has mass where p has
    little, as for a policy sharper than its reference): for p = N(0, 1), p_ref = N(μ, 1),
    λ* = μ²/(e^{μ²} − 1) with KL = μ²/2. No fixed λ is best everywhere. (The textbook fix, λ̂ from the
    batch's own covariances, is not a per-sample function of (logp, logp_ref): it couples the samples
    and the padding mask and is biased by O(1/N), so it is not offered.)

    Why ½: the midpoint hedge, which needs no knowledge of the regime. Var[k_half] =
    ½(Var[k1] + Var[k3]) − ¼Var[r], always below the mean of k1's and k3's variances. For the
    Gaussian shift it has the least variance of the three for 0.28 < KL < 1.17 nats (λ* = ½ at
    KL = 0.63): std/KL 1.31 at KL = 0.5, against 1.70 for k3 and 2 for k1. The price:
    - near p = p_ref it is much worse than k3: k_half ≈ ½δ to first order, so std/KL ≈ 1/√(2·KL)
      (10.0 at KL = 0.005, where k3 has 1.42). Per-token KLs near the reference live there: use k3.
    - it is not ≥ 0: its minimum is ½ − log 2 ≈ −0.19, at r = 2, so a batch mean can come out
      negative where k3's cannot (unlike k1, it is bounded below).
    - where Var[r] = ∞ (p_ref wider than √2 times p) its variance is infinite, as k3's is; only k1
      is safe there.
    On random categoricals k3 is usually the least variable of the three and k_half wins only where
    r's tail is heavy (``tests/test_kl_half.py`` has one pair of each); ``make kl-table`` measures
    them side by side.

    Gradients (module docstring): as a loss term, ½∇KL(p_ref‖p_θ): β·k_half is β/2·k3 in
    expectation, with other noise (the per-sample gradients differ by the zero-mean ½∇log p_θ); as a
    reward, ∇KL(p_θ‖p_ref) − ½∇KL(p_ref‖p_θ): biased, where k1 is not.

    Numerics: ½(k1 + k3) on k3's accurate e^x − 1 − x, so the absolute error is a few ulps of
    |δ| + k3; finite wherever k3 is.
    """
    return 0.5 * (_k1(logp, logp_ref) + _k3(logp, logp_ref))


# verl's straight-through estimators and DeepSeek-V3.2's importance-corrected k3.
corrected("k1+", "k1", "straight_through")
corrected("k3+", "k3", "straight_through")
corrected("k3_is", "k3", "importance")
