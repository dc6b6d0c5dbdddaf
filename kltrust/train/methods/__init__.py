"""Token RLHF methods: each registers itself in ``METHODS`` with everything a program needs.

A `TokenMethod` says how the method samples and updates (``update``, a pure function of the
trainer, state, hyperparameters and frozen inputs), where its KL to the reference may go
(``placements``, the first is its default), how the KL guard strengthens it (``anchor``), and its
own config checks (``validate``). The trainer (`kltrust.train.rlhf`), the pipeline's checks and
stage (`kltrust.train.pipeline`) and the sweeps read these fields; none of them compares method
names. A new method is a new module in this package (found on first lookup).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from kltrust import components

ANCHORS = ("controller", "preference_beta", "trust_region", "none")


@dataclasses.dataclass(frozen=True)
class TokenMethod:
    """A registered token method.

    Attributes:
      update: ``update(trainer, state, hp, frozen) -> (state, metrics)``, one jitted update; None
        for a method that does not train (best-of-n).
      placements: the allowed ``rl.kl_placement`` values, the default first.
      anchor: what the KL guard strengthens after a rollback: "controller" (the controller's β,
        or the learning rate where β is 0 or no KL is applied), "preference_beta" (the preference
        loss's β; the learning rate for a reference-free loss), "trust_region" (TRPO's δ).
      critic: the policy carries a value head (``model.critic`` applies).
      offline_pairs: trains on the preference data set rather than on its own samples.
      pairs_per_prompt: consecutive samples form preference pairs (online DPO): the batch is
        counted in pairs.
      min_group: the fewest samples per prompt it accepts (``rl.group_size``); ``exact_group``
        if it needs exactly that many.
      kl_in_loss_needs_gradient: a KL placed in this method's loss must be an estimator whose
        expected gradient is the KL's (not k1, not the exact value).
      chunked_stats: it runs after a chunked rollout (``rl.stats_chunk`` > 0, no [B, L, V]
        logits kept), recomputing what full distributions it needs per minibatch.
      per_domain: the placements under which it supports one KL envelope per prompt domain
        (``domains.control = "per_domain"``, `kltrust.domains`): per-domain β where the
        controller's β is applied per sequence, per-domain budgets for TRPO; () for none.
      validate: extra checks of the ``rl`` group, raising `ConfigError`.
      doc: one line.
    """

    update: Callable[..., Any] | None
    placements: tuple[str, ...]
    anchor: str = "controller"
    critic: bool = False
    offline_pairs: bool = False
    pairs_per_prompt: bool = False
    min_group: int = 1
    exact_group: bool = False
    kl_in_loss_needs_gradient: bool = False
    chunked_stats: bool = True
    per_domain: tuple[str, ...] = ()
    validate: Callable[[Any], None] | None = None
    doc: str = ""

    @property
    def trains(self) -> bool:
        return self.update is not None


METHODS: components.Registry[TokenMethod] = components.Registry("token method",
                                                                 "kltrust.train.methods")


def register(name: str, method: TokenMethod) -> TokenMethod:
    """Registers ``method`` as token method ``name``."""
    if method.anchor not in ANCHORS:
        raise ValueError(f"token method {name!r}: anchor must be one of {ANCHORS}.")
    return METHODS.register(name, method)
