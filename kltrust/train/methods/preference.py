"""Preference optimisation on tokens with any registered preference loss
(`kltrust.objectives.preference`: DPO, IPO, rDPO, SLiC, SimPO, ...): offline on the preference
data set (``dpo``; Rafailov et al. 2023) or on pairs sampled from the current policy and labelled
by the proxy (``dpo_online``; iterative / online DPO, Guo et al. 2024). The KL is implicit."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from kltrust import kl
from kltrust import rollout as rollouts
from kltrust.models import chunked
from kltrust.objectives import preference
from kltrust.train.methods import TokenMethod, register


def _dpo_loss(trainer, hp, params, prompts, chosen, chosen_mask, rejected, rejected_mask,
              ref_chosen, ref_rejected):
    """The preference loss ``Static.preference_loss`` on sequence log-probabilities (summed
    over each response; a length-normalised loss divides by the response lengths)."""
    def seq_logp(response, mask):
        logits, _ = trainer.logits(params, prompts, response)
        return jnp.sum(rollouts.token_log_probs(logits, response, mask), axis=-1)

    return preference.loss(seq_logp(chosen, chosen_mask), seq_logp(rejected, rejected_mask),
                           ref_chosen, ref_rejected, hp.beta, trainer.static.preference_loss,
                           hp.preference, chosen_lengths=chosen_mask.sum(-1),
                           rejected_lengths=rejected_mask.sum(-1))


def _ref_seq_logp(trainer, frozen, prompts, response, mask):
    """Σ_t log π_ref(y_t | x, y_<t) per pair; ``stats_chunk`` rows at a time if set."""
    chunk = trainer.static.stats_chunk
    if chunk:
        stats = chunked.response_stats(trainer.reference.sequence, frozen.ref_params, prompts,
                                       response, mask, max_rows=chunk)
        return jnp.sum(stats.log_prob, axis=-1)
    logits, _ = rollouts.response_logits(trainer.reference.sequence, frozen.ref_params, prompts,
                                         response)
    return jnp.sum(rollouts.token_log_probs(logits, response, mask), axis=-1)


def _update_dpo_online(trainer, state, hp, frozen):
    # group_size = 2: a pair per prompt; the reference scores both responses.
    key, (k_sgd,), prompts, ro, proxy = trainer.sample_and_score(state, frozen, 4, True)
    ref_logp = kl.sum_per_sequence(ro.ref_log_prob, ro.mask)
    first_wins = (proxy[0::2] >= proxy[1::2])[:, None]

    def pick(x, winner):
        a, b = x[0::2], x[1::2]
        cond = first_wins if x.ndim == 2 else first_wins[:, 0]
        return jnp.where(cond, a, b) if winner else jnp.where(cond, b, a)

    batch = {"prompt": prompts[0::2],
             "chosen": pick(ro.response, True), "chosen_mask": pick(ro.mask, True),
             "rejected": pick(ro.response, False), "rejected_mask": pick(ro.mask, False),
             "ref_chosen": pick(ref_logp, True), "ref_rejected": pick(ref_logp, False)}

    def loss_fn(params, mb):
        return _dpo_loss(trainer, hp, params, mb["prompt"], mb["chosen"], mb["chosen_mask"],
                              mb["rejected"], mb["rejected_mask"], mb["ref_chosen"],
                              mb["ref_rejected"])

    params, opt_state, sgd = trainer.minibatch_sgd(state, batch, loss_fn, k_sgd)
    metrics = {**trainer.common_metrics(ro, proxy, frozen, hp.beta, hp), **sgd}
    metrics["kl_optimised"] = metrics["kl_k1"] = kl.sum_per_sequence(
        kl.estimate(ro.log_prob, ro.ref_log_prob, "k1"), ro.mask).mean()
    return trainer.finish(state, params, opt_state, key, metrics, None)


def _update_dpo_offline(trainer, state, hp, frozen):
    """One Adam step on ``batch_prompts`` pairs drawn from the preference data set."""
    pairs = frozen.pairs
    key, k_idx = jax.random.split(state.key)
    idx = jax.random.randint(k_idx, (trainer.static.batch_prompts,), 0, pairs["prompt"].shape[0])
    mb = trainer.constrain_batch(jax.tree.map(lambda x: x[idx], pairs))
    ref_c = ref_r = None  # a reference-free loss (SimPO) never runs the reference in training
    if not preference.LOSSES.get(trainer.static.preference_loss).reference_free:
        ref_c = _ref_seq_logp(trainer, frozen, mb["prompt"], mb["chosen"], mb["chosen_mask"])
        ref_r = _ref_seq_logp(trainer, frozen, mb["prompt"], mb["rejected"], mb["rejected_mask"])

    def loss_fn(params):
        return _dpo_loss(trainer, hp, params, mb["prompt"], mb["chosen"], mb["chosen_mask"],
                              mb["rejected"], mb["rejected_mask"], ref_c, ref_r)

    (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    optimizer = trainer.optimizer()
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    metrics["grad_norm"] = optax.tree.norm(grads)
    params = optax.apply_updates(state.params, updates)
    return trainer.finish(state, params, opt_state, key, metrics, None)


register("dpo", TokenMethod(_update_dpo_offline, placements=("implicit",),
                            anchor="preference_beta", offline_pairs=True,
                            doc="offline preference optimisation on the preference data set"))
register("dpo_online", TokenMethod(_update_dpo_online, placements=("implicit",),
                                   anchor="preference_beta", pairs_per_prompt=True, min_group=2,
                                   exact_group=True,
                                   doc="online preference optimisation, pairs from the policy"))
