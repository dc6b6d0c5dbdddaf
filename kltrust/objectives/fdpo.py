"""f-DPO (Wang et al. 2023, "Beyond Reverse KL: Generalizing Direct Preference Optimization with
Diverse Divergence Constraints"): DPO with the reverse KL replaced by an f-divergence.

For a convex f with f(1) = 0, the f-regularised objective E_π[r] − β·E_{π_ref}[f(π/π_ref)] has the
stationarity condition f′(π(y)/π_ref(y)) = (r(y) − λ)/β, so under Bradley–Terry preferences the
implicit reward of y is β·f′(π/π_ref) and the loss is DPO's with that score,

    ℓ = −log σ(β·(ψ(u_w) − ψ(u_l))),   u = log π_θ(y|x) − log π_ref(y|x),   ψ(u) = f′(e^u)

(`kltrust.objectives.preference`'s ``score`` hook; constants in ψ cancel in the margin):

    reverse KL   f(t) = t log t                   ψ(u) = u            (DPO itself: ``sigmoid``)
    forward KL   f(t) = −log t                    ψ(u) = −e^{−u}      ``fdpo_forward_kl``
    JS           f(t) = t log t − (t + 1) log((t + 1)/2)
                                                  ψ(u) = log 2 − softplus(−u)   ``fdpo_js``
    α-divergence f(t) = (t^{1−α} − (1 − α)t − α)/(α(α − 1)), 0 < α < 1
                                                  ψ(u) = (1 − e^{−αu})/α          ``fdpo_alpha``

(α → 0 is the reverse KL, α → 1 the forward KL: ψ differs from −e^{−u} by the constant 1.)
Population optimum on exact Bradley–Terry preferences: π(y) = π_ref(y)·e^{ψ⁻¹(r(y)/β + c)} with c
normalising (`tests/test_fdpo.py` checks it on the bandit); for the forward KL that is
π = β·π_ref/(λ − r), the forward-KL optimum.

Numerics: ψ is evaluated on the whole sequence's log-ratio, as in the paper; the forward-KL and α
scores are exponentials of −u, so a sequence whose log-ratio is below about −88/α overflows float32
(the loss is then inf and the update is skipped by the programs' non-finite guard).
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp

from kltrust import components
from kltrust.objectives import preference


@components.hparams
class NoKnobs:
    """No knob beyond β."""


@components.hparams
class AlphaHParams:
    """The α-divergence's α."""

    alpha: jax.Array = components.knob(0.5, "α of the α-divergence (0: reverse KL, 1: forward KL)",
                                       low=0.0, high=1.0, low_open=True, high_open=True)


def _sigmoid_loss(h: jax.Array, beta: Any, hp: Any) -> jax.Array:
    del hp
    return -jax.nn.log_sigmoid(beta * h)


def _forward_kl(u: jax.Array, hp: Any) -> jax.Array:
    del hp
    return -jnp.exp(-u)


def _js(u: jax.Array, hp: Any) -> jax.Array:
    del hp
    return math.log(2.0) - jax.nn.softplus(-u)


def _alpha(u: jax.Array, hp: AlphaHParams) -> jax.Array:
    alpha = jnp.asarray(hp.alpha, u.dtype)
    return -jnp.expm1(-alpha * u) / alpha  # (1 − e^{−αu})/α without cancellation near u = 0


for _name, _score, _hparams, _doc in (
    ("fdpo_forward_kl", _forward_kl, NoKnobs, "f-DPO with the forward KL, Wang et al. 2023"),
    ("fdpo_js", _js, NoKnobs, "f-DPO with the Jensen-Shannon divergence, Wang et al. 2023"),
    ("fdpo_alpha", _alpha, AlphaHParams, "f-DPO with an alpha-divergence, Wang et al. 2023"),
):
    def _per_pair(h: jax.Array, beta: Any, hp: Any) -> jax.Array:
        return _sigmoid_loss(h, beta, hp)

    _per_pair.__doc__ = _doc
    # No bandit_runs or token_presets: they would join every default run list (configs/bandit.py
    # runs every declared run), whose recorded tables do not have them. Select one by name:
    # run_specs.NAME.preference_loss=fdpo_js, or rl.preference_loss=fdpo_js.
    preference.register(_name, hparams=_hparams, score=_score)(_per_pair)
