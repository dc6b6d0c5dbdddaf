"""TRPO on tokens: the trust region KL(π_old‖π_θ) ≤ δ plus, with placement "budget", the hard
budget KL(π_θ‖π_ref) ≤ kl_budget_per_token (per-token mean exact KLs), on RLOO sequence advantages;
with per-domain envelopes (``Static.per_domain``), one budget per prompt domain,
KL_ref,d ≤ s_d·kl_budget_per_token (`kltrust.objectives.trpo`'s grouped budgets).

The flat vector θ that the gradient, the Fisher-vector products, conjugate gradient and the line
search work on holds only the leaves the policy trains: a policy with the optional
``param_labels(params)`` member (the one `kltrust.train.tokens.adam` reads: "train" / "frozen" per
leaf, e.g. a LoRA model's base is frozen) has its frozen leaves left out of θ and put back
unchanged after the step (`ravel_trainable`). A policy without it trains every leaf.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kltrust import domains
from kltrust.distributions import Categorical
from kltrust.objectives import grpo, trpo
from kltrust.train.methods import TokenMethod, register

LABELS = ("train", "frozen")


def ravel_trainable(params: Any, param_labels: Callable[[Any], Any] | None = None
                    ) -> tuple[jax.Array, Callable[[jax.Array], Any]]:
    """(θ, to_params): the leaves of ``params`` that ``param_labels(params)`` labels "train",
    ravelled into one vector θ, and the map from such a vector to the whole tree, whose frozen
    leaves are ``params``' own arrays.

    Without ``param_labels`` this is `ravel_pytree(params)` itself (every leaf trained; the same
    vector and the same numbers as before labels were read). With it, a LoRA model's θ has the
    adapters' size, not base + adapters: the step on the base was exactly 0 anyway (the model puts
    the base under ``stop_gradient``), but every Fisher product, CG vector and line-search candidate
    was base-sized. Inside a jitted update the frozen leaves ``to_params`` closes over are that
    program's traced arguments, not constants baked into it.
    """
    if param_labels is None:
        return ravel_pytree(params)
    leaves, treedef = jax.tree.flatten(params)
    # ``flatten_up_to`` also checks that the labels tree has the params' structure.
    labels = treedef.flatten_up_to(param_labels(params))
    if not set(labels) <= set(LABELS):
        raise ValueError(f"param_labels must give one of {LABELS} per leaf, got {set(labels)}.")
    flat, unravel = ravel_pytree([x for x, label in zip(leaves, labels) if label == "train"])

    def to_params(flat_params: jax.Array) -> Any:
        trained = iter(unravel(flat_params))
        return treedef.unflatten([next(trained) if label == "train" else x
                                  for x, label in zip(leaves, labels)])

    return flat, to_params


def update(trainer, state, hp, frozen):
    """One TRPO update of the token policy: sample and score groups, RLOO advantages, then the
    conjugate-gradient step inside the KL trust region with its line search.
    """
    s = trainer.static
    key, _, prompts, ro, proxy = trainer.sample_and_score(state, frozen, 3, s.uses_reference)
    advantage = grpo.group_advantages(proxy, s.group_size, baseline="rloo")
    flat, to_params = ravel_trainable(state.params, trainer.param_labels)
    prompt_len = prompts.shape[1]

    def policy_fn(flat_params, tokens):
        logits, _ = trainer.logits(to_params(flat_params), tokens[:, :prompt_len],
                                 tokens[:, prompt_len:])
        return Categorical(logits)

    batch = trpo.Batch(
        obs=jnp.concatenate([prompts, ro.response], axis=1), action=ro.response,
        log_prob=ro.log_prob, policy=Categorical(ro.logits),
        advantage=advantage[:, None] * ro.mask,
        reference=Categorical(ro.ref_logits) if s.uses_reference else None,
        weight=ro.mask)
    # Backtracking factor and CG tolerance: Spinning Up's values, as in the control TRPO.
    budget = hp.kl_budget_per_token
    if s.per_domain:  # one budget per prompt domain, s_d·kl_budget_per_token (`kltrust.domains`)
        batch = batch.replace(group=domains.prompt_domains(frozen.task, prompts))
        budget = budget * frozen.domain_kl_scale
    coefs = trpo.StepCoefs(hp.delta, budget, hp.damping, jnp.float32(0.8),
                           jnp.float32(1e-10))
    variant = trpo.Variant(kl_anchor="reference" if s.kl_placement == "budget" else "old",
                           normalize_advantages=True, recovery=s.trpo_recovery)
    new_flat, step_metrics = trpo.step(policy_fn, flat, batch, coefs, variant=variant,
                                       cg_iters=s.cg_iters, max_backtracks=s.max_backtracks)
    by_domain = step_metrics.pop("kl_ref_groups", None)  # [D] per-token KL_ref,d after the step
    metrics = {**trainer.common_metrics(ro, proxy, frozen, state.controller.beta, hp),
               **{f"trpo_{k}": v for k, v in step_metrics.items()}}
    if by_domain is not None:
        metrics.update({f"trpo_kl_ref{domains.SUFFIX}{d}": by_domain[d]
                        for d in range(by_domain.shape[0])})
    metrics["kl_optimised"] = step_metrics.get("kl_ref", step_metrics["kl_old"])
    return trainer.finish(state, to_params(new_flat), state.opt_state, key, metrics, None)


# chunked_stats=False: the Fisher products and the line search take KL(π_old‖π_θ) over the whole
# batch at once, so a chunked rollout would save nothing (its logits would be recomputed whole).
register("trpo", TokenMethod(update, placements=("budget", "none"), anchor="trust_region",
                             min_group=2, chunked_stats=False, per_domain=("budget",),
                             doc="TRPO with a hard KL budget to the reference"))
