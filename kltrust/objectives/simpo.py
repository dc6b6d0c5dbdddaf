"""SimPO (Meng, Xia & Chen 2024, "SimPO: Simple Preference Optimization with a Reference-Free
Reward", eq. 6): a reference-free, length-normalised preference loss,

    ℓ = −log σ( β·(log π_θ(y_w|x)/|y_w| − log π_θ(y_l|x)/|y_l|) − γ ),

i.e. `kltrust.objectives.preference` with the score s(y) = log π_θ(y|x)/|y| and the margin
h = s(y_w) − s(y_l): ℓ = −log σ(βh − γ). The implicit reward is β·s(y); γ ≥ 0 is the target reward
margin a chosen response must beat the rejected one by. No reference model appears anywhere, so
nothing anchors the policy to π_ref: what keeps it close is only the data, β and early stopping —
which is why the KL it ends at (measured exactly by the programs) is worth reading beside DPO's.
Its population optimum is *not* π*_β ∝ π_ref·exp(r/β).

The paper's settings: β ∈ [2, 2.5] and γ/β ≈ 0.5 on instruction-tuned 7-8B models; the token
preset here uses β = 2, γ = 1.
"""

from __future__ import annotations

from typing import Any

import jax

from kltrust import components
from kltrust.objectives import preference


@components.hparams
class HParams:
    """SimPO's knob beyond β."""

    gamma: jax.Array = components.knob(0.5, "γ: the target reward margin", low=0.0)


@preference.register(
    "simpo", hparams=HParams, reference_free=True, length_normalised=True,
    token_presets={"simpo": dict(method="dpo", kl_placement="implicit", kl_estimator="exact",
                                 batch_prompts=64, epochs=1, minibatches=1,
                                 hparams=dict(beta=2.0, learning_rate=1e-4,
                                              preference=dict(simpo=dict(gamma=1.0))))},
    bandit_runs={"simpo_exact": dict(method="dpo", preferences="exact")})
def simpo(h: jax.Array, beta: Any, hp: HParams) -> jax.Array:
    """SimPO, Meng et al. 2024: reference-free, length-normalised, margin gamma"""
    return -jax.nn.log_sigmoid(beta * h - hp.gamma)
