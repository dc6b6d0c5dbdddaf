"""KTO (Ethayarajh et al. 2024, "KTO: Model Alignment as Prospect Theoretic Optimization", eq. 8)
on preference pairs: the chosen response is a desirable example and the rejected one an undesirable
example, each valued against a reference point z0 instead of against the other,

    ℓ = λ_D·(1 − σ(β·(u_w − z0))) + λ_U·(1 − σ(β·(z0 − u_l))),   u = log π_θ(y|x) − log π_ref(y|x),

with z0 an estimate of KL(π_θ‖π_ref), held constant and clipped at 0 (the paper's z_ref).
`kltrust.objectives.preference` supplies z0 = max(0, stop_gradient(mean over the batch of
½(u_w + u_l))): the batch's own log-ratios, where the paper (and TRL) score each prompt with another
prompt's completion. On pairs drawn from π_ref that mean estimates −KL(π_ref‖π_θ) ≤ 0, so z0 is
mostly 0 offline; on the policy's own samples (online) it estimates KL(π_θ‖π_ref). The loss is
bounded (each term in [0, λ]), unlike DPO's: a pair already far apart stops pulling.
λ_D = λ_U = 1 is the paper's default for balanced data (it asks λ_D·n_D / (λ_U·n_U) ∈ [1, 4/3]).
"""

from __future__ import annotations

from typing import Any

import jax

from kltrust import components
from kltrust.objectives import preference


@components.hparams
class HParams:
    """KTO's weights of desirable and undesirable examples."""

    lambda_d: jax.Array = components.knob(1.0, "λ_D: weight of the desirable (chosen) term", low=0.0)
    lambda_u: jax.Array = components.knob(1.0, "λ_U: weight of the undesirable (rejected) term",
                                          low=0.0)


@preference.register("kto", hparams=HParams, per_response=True)
def _per_response(u_w: jax.Array, u_l: jax.Array, z0: jax.Array, beta: Any,
                  hp: HParams) -> jax.Array:
    """KTO, Ethayarajh et al. 2024: chosen desirable, rejected undesirable, reference point z0"""
    desirable = 1.0 - jax.nn.sigmoid(beta * (u_w - z0))
    undesirable = 1.0 - jax.nn.sigmoid(beta * (z0 - u_l))
    return hp.lambda_d * desirable + hp.lambda_u * undesirable
