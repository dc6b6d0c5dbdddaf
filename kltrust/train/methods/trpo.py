"""TRPO on tokens: the trust region KL(π_old‖π_θ) ≤ δ plus, with placement "budget", the hard
budget KL(π_θ‖π_ref) ≤ kl_budget_per_token (per-token mean exact KLs), on RLOO sequence advantages."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax.flatten_util import ravel_pytree

from kltrust.distributions import Categorical
from kltrust.objectives import grpo, trpo
from kltrust.train.methods import TokenMethod, register


def update(trainer, state, hp, frozen):
    s = trainer.static
    key, _, prompts, ro, proxy = trainer.sample_and_score(state, frozen, 3, s.uses_reference)
    advantage = grpo.group_advantages(proxy, s.group_size, baseline="rloo")
    flat, unravel = ravel_pytree(state.params)
    prompt_len = prompts.shape[1]

    def policy_fn(flat_params, tokens):
        logits, _ = trainer.logits(unravel(flat_params), tokens[:, :prompt_len],
                                 tokens[:, prompt_len:])
        return Categorical(logits)

    batch = trpo.Batch(
        obs=jnp.concatenate([prompts, ro.response], axis=1), action=ro.response,
        log_prob=ro.log_prob, policy=Categorical(ro.logits),
        advantage=advantage[:, None] * ro.mask,
        reference=Categorical(ro.ref_logits) if s.uses_reference else None,
        weight=ro.mask)
    # Backtracking factor and CG tolerance: Spinning Up's values, as in the control TRPO.
    coefs = trpo.StepCoefs(hp.delta, hp.kl_budget_per_token, hp.damping, jnp.float32(0.8),
                           jnp.float32(1e-10))
    variant = trpo.Variant(kl_anchor="reference" if s.kl_placement == "budget" else "old",
                           normalize_advantages=True)
    new_flat, step_metrics = trpo.step(policy_fn, flat, batch, coefs, variant=variant,
                                       cg_iters=s.cg_iters, max_backtracks=s.max_backtracks)
    metrics = {**trainer.common_metrics(ro, proxy, frozen, state.controller.beta),
               **{f"trpo_{k}": v for k, v in step_metrics.items()}}
    metrics["kl_optimised"] = step_metrics.get("kl_ref", step_metrics["kl_old"])
    return trainer.finish(state, unravel(new_flat), state.opt_state, key, metrics, None)


# chunked_stats=False: the Fisher products and the line search take KL(π_old‖π_θ) over the whole
# batch at once, so a chunked rollout would save nothing (its logits would be recomputed whole).
register("trpo", TokenMethod(update, placements=("budget", "none"), anchor="trust_region",
                             min_group=2, chunked_stats=False,
                             doc="TRPO with a hard KL budget to the reference"))
