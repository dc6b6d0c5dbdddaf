"""GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization") on tokens: the GRPO group update
with one importance ratio per sequence, s_i = exp(mean_t(log π_θ − log π_old)), clipped per
sequence (`kltrust.objectives.grpo`, ``ratio_level="sequence"``), group-normalised advantages and
a sequence-level mean. The paper's clip range is tiny and asymmetric ([1 − 3e-4, 1 + 4e-4]): the
preset sets ``clip_eps`` and ``clip_eps_high`` to it. No KL to the reference by default.
"""

from __future__ import annotations

from kltrust.train.methods import TokenMethod, register
from kltrust.train.methods.group import update


def _update(trainer, state, hp, frozen):
    return update("grpo", trainer, state, hp, frozen, ratio_level="sequence", clip_higher=True)


register("gspo", TokenMethod(_update, placements=("none", "loss", "reward"), anchor="controller",
                             min_group=2, kl_in_loss_needs_gradient=True,
                             per_domain=("reward", "loss"),
                             doc="GSPO: sequence-level ratio and clipping"))
