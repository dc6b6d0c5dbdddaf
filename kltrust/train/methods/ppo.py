"""PPO on tokens (Ziegler et al. 2019): the KL to the reference in the per-token reward (default),
in PPO's loss, or nowhere; GAE over tokens with a value head."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust import rollout as rollouts
from kltrust.distributions import Categorical
from kltrust.objectives import ppo
from kltrust.train.methods import TokenMethod, register


def update(trainer, state, hp, frozen):
    """One PPO update of the token policy: sample and score responses, place the KL (reward or
    loss), token-level GAE, then the clipped-surrogate epochs over minibatches.
    """
    s = trainer.static
    key, (k_sgd,), prompts, ro, proxy = trainer.sample_and_score(state, frozen, 4,
                                                                 s.uses_reference)
    beta = trainer.row_beta(state, ro, frozen)  # a scalar, or [B] with per-domain β
    last = jnp.sum(ro.mask, axis=-1).astype(jnp.int32) - 1
    reward = jax.nn.one_hot(last, ro.mask.shape[1]) * proxy[:, None]
    if s.kl_placement == "reward":
        reward = reward - jnp.reshape(beta, (-1, 1)) * trainer.token_kl(ro, hp)
    advantage, target = rollouts.token_gae(reward, ro.value, ro.mask, hp.gamma, hp.gae_lambda)
    in_loss = s.kl_placement == "loss"
    batch = ppo.Batch(
        obs=jnp.concatenate([prompts, ro.response], axis=1), action=ro.response,
        log_prob=ro.log_prob, policy=_categorical(ro.logits), advantage=advantage,
        target=target, reference=_categorical(ro.ref_logits) if in_loss else None,
        weight=ro.mask)
    variant = ppo.Variant(clip=True, kl_penalty="fixed" if in_loss else "none",
                          kl_anchor="reference",
                          kl_estimator=s.kl_estimator if in_loss else "exact")
    coefs = ppo.LossCoefs(hp.clip_eps, beta if in_loss else jnp.zeros_like(beta),
                          hp.vf_coef, hp.ent_coef, kl_log_ratio_clamp=hp.kl_log_ratio_clamp,
                          kl_value_clamp=hp.kl_value_clamp)
    prompt_len = prompts.shape[1]

    def apply_fn(params, tokens):
        logits, values = trainer.logits(params, tokens[:, :prompt_len], tokens[:, prompt_len:])
        return Categorical(logits), values

    def loss_fn(params, mb):
        if ro.logits is None:  # a chunked rollout (``stats_chunk``) kept no logits: recomputed
            mb = _with_distributions(trainer, state, frozen, mb, prompt_len, in_loss)
        return ppo.loss(params, mb, coefs, apply_fn=apply_fn, variant=variant)

    params, opt_state, sgd = trainer.minibatch_sgd(state, batch, loss_fn, k_sgd)
    metrics = {**trainer.common_metrics(ro, proxy, frozen, state.controller.beta, hp), **sgd}
    observed = trainer.observed_kl(ro, frozen) if ro.kl is not None else None
    return trainer.finish(state, params, opt_state, key, metrics, observed)


def _categorical(logits):
    return None if logits is None else Categorical(logits)


def _with_distributions(trainer, state, frozen, mb: ppo.Batch, prompt_len: int,
                        in_loss: bool) -> ppo.Batch:
    """The minibatch with π_old (for the reported KL(π_old‖π_θ)) and, when the KL is in the loss,
    π_ref as full distributions over its rows, recomputed (constants) from the sampling params and
    the reference: after a chunked rollout only [minibatch, L, V] of each exists."""
    prompt, response = mb.obs[:, :prompt_len], mb.obs[:, prompt_len:]
    old = trainer.full_logits(state.params, frozen, prompt, response, reference=False)
    ref = None
    if in_loss:
        ref = Categorical(trainer.full_logits(None, frozen, prompt, response, reference=True))
    return mb.replace(policy=Categorical(old), reference=ref)


register("ppo", TokenMethod(update, placements=("reward", "loss", "none"), anchor="controller",
                            critic=True, per_domain=("reward",),
                            doc="PPO, Ziegler et al. 2019"))
