"""GRPO and RLOO on tokens: group baselines over ``group_size`` samples per prompt, no critic; the
KL to the reference in the loss (GRPO's default, Shao et al. 2024: β·k3 per token), in the sequence
reward (RLOO's default, Ahmadian et al. 2024), or nowhere. The two differ in the baseline.

`update` is the group update every group method shares: DAPO (methods/dapo.py) and GSPO
(methods/gspo.py) are it with other loss variants and, for DAPO, groups without signal dropped."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust import kl
from kltrust import rollout as rollouts
from kltrust.objectives import grpo
from kltrust.train.methods import TokenMethod, register


def update(baseline: str, trainer, state, hp, frozen, *, ratio_level: str = "token",
           clip_higher: bool = False, drop_flat_groups: bool = False):
    """One group update. ``ratio_level``: the loss's ratio ("sequence": GSPO); ``clip_higher``:
    the clip range [1 − ε, 1 + ε_high] with ``hp.clip_eps_high``; ``drop_flat_groups``: groups
    whose rewards are all equal (zero advantage everywhere, no learning signal) are masked out of
    the loss (DAPO's dynamic sampling, at a fixed batch shape: the batch is not refilled)."""
    s = trainer.static
    key, (k_sgd,), prompts, ro, proxy = trainer.sample_and_score(state, frozen, 4,
                                                                 s.uses_reference)
    beta = trainer.row_beta(state, ro, frozen)  # a scalar, or [B] with per-domain β
    reward = proxy
    if s.kl_placement == "reward":
        reward = proxy - beta * kl.sum_per_sequence(trainer.token_kl(ro, hp), ro.mask)
    advantage = grpo.group_advantages(reward, s.group_size, baseline=baseline)
    in_loss = s.kl_placement == "loss"
    variant = grpo.Variant(kl_estimator=s.kl_estimator if in_loss else "k3",
                           kl_in_loss=in_loss, token_average=s.token_average,
                           ratio_level=ratio_level)
    coefs = grpo.LossCoefs(hp.clip_eps, state.controller.beta, hp.kl_log_ratio_clamp,
                           hp.kl_value_clamp, hp.clip_eps_high if clip_higher else None)
    mask = ro.mask
    extra = {}
    if drop_flat_groups:
        signal = grpo.groups_with_signal(proxy, s.group_size)  # the task's reward, as DAPO's accuracy
        mask = mask * signal[:, None].astype(mask.dtype)
        extra["kept_groups"] = signal.astype(jnp.float32).mean()
    batch = {"prompt": prompts, "response": ro.response, "mask": mask,
             "old_logp": ro.log_prob, "advantage": advantage}
    if s.uses_reference:
        batch.update(ref_logp=ro.ref_log_prob)
    if in_loss and jnp.ndim(beta):  # per-domain β travels with its sequence into the minibatch
        batch.update(beta=beta)
    if ro.ref_logits is not None:  # only for the kl_exact_* diagnostics: not recomputed if chunked
        batch.update(ref_logits=ro.ref_logits)

    def loss_fn(params, mb):
        logits, _ = trainer.logits(params, mb["prompt"], mb["response"])
        new_logp = rollouts.token_log_probs(logits, mb["response"], mb["mask"])
        exact = None
        if "ref_logits" in mb:
            exact = jax.lax.stop_gradient(kl.categorical(logits, mb["ref_logits"]))
        mb_coefs = coefs.replace(beta=mb["beta"]) if "beta" in mb else coefs
        return grpo.loss(new_logp, mb["old_logp"], mb["advantage"], mb["mask"], mb_coefs,
                         variant=variant, ref_logp=mb.get("ref_logp"), exact_kl=exact)

    params, opt_state, sgd = trainer.minibatch_sgd(state, batch, loss_fn, k_sgd)
    metrics = {**trainer.common_metrics(ro, proxy, frozen, state.controller.beta, hp), **sgd,
               **extra}
    observed = trainer.observed_kl(ro, frozen) if ro.kl is not None else None
    return trainer.finish(state, params, opt_state, key, metrics, observed)


for _name, _placements in (("grpo", ("loss", "reward", "none")), ("rloo", ("reward", "loss", "none"))):
    register(_name, TokenMethod(
        lambda trainer, state, hp, frozen, _b=_name: update(_b, trainer, state, hp, frozen),
        placements=_placements, anchor="controller", min_group=2,
        kl_in_loss_needs_gradient=True, per_domain=("reward", "loss"),
        doc=f"{_name.upper()}: group baseline, no critic"))
