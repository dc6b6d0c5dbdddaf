"""DAPO (Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning System at Scale") on
tokens: the GRPO group update with clip-higher (ratio clipped to [1 − ε, 1 + ε_high], ε_high =
``hp.clip_eps_high``, 0.28 in the paper, so that low-probability tokens can still rise), the
token-level loss (preset ``rl.token_average="token"``) and dynamic sampling, here at a fixed batch
shape: a group whose proxy rewards are all equal carries no advantage and is masked out of the
loss rather than replaced by a fresh one (the metric ``kept_groups`` is the fraction kept). DAPO
drops the KL to the reference (placement "none" by default) and its overlong reward shaping is not
implemented (the synthetic task's responses have a fixed maximum length and no truncation penalty).
"""

from __future__ import annotations

from kltrust.train.methods import TokenMethod, register
from kltrust.train.methods.group import update


def _update(trainer, state, hp, frozen):
    return update("grpo", trainer, state, hp, frozen, clip_higher=True, drop_flat_groups=True)


register("dapo", TokenMethod(_update, placements=("none", "loss", "reward"), anchor="controller",
                             min_group=2, kl_in_loss_needs_gradient=True,
                             per_domain=("reward", "loss"),
                             doc="DAPO: clip-higher, token-level loss, flat groups dropped"))
