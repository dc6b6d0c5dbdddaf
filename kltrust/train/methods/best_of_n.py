"""Best-of-n: no training; n samples of the reference per prompt, the proxy's favourite kept
(`sample`). Its KL to the reference is the analytic log n − (n−1)/n."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from kltrust import rollout as rollouts
from kltrust.models.interface import LanguageModel, RewardModel
from kltrust.objectives import grpo
from kltrust.tasks import interface as tasks
from kltrust.train import tokens as tok
from kltrust.train.methods import TokenMethod, register

register("best_of_n", TokenMethod(None, placements=("none",), anchor="none",
                                  doc="best-of-n sampling from the reference against the proxy"))


def sample(reference: LanguageModel, reward: RewardModel, frozen: tok.Frozen,
           key: jax.Array, n: int, stats_chunk: int = 0) -> dict[str, jax.Array]:
    """Best-of-n against the proxy: n samples of the reference per held-out prompt, keep the one
    the proxy scores highest. Its reported ``"kl"`` is the upper bound log n − (n−1)/n on the
    KL to the reference (`grpo.best_of_n_kl_bound`; equal to the KL only when rewards never tie,
    docs/best_of_n.md), not the exact KL. ``stats_chunk``: as
    `Static.stats_chunk` (the M·n rows' teacher-forced pass, chunked)."""
    task = frozen.task
    prompts = jnp.repeat(frozen.eval_prompts, n, axis=0)
    ro = rollouts.token_rollout(
        reference.decode, reference.sequence, frozen.ref_params, prompts,
        reference.empty_cache(prompts.shape[0]), key, max_new_tokens=task.response_len,
        eos_id=task.eos_id, pad_id=task.pad_id, stats_chunk=stats_chunk)
    proxy = reward.score(frozen.rm_params, prompts, ro.response, ro.mask)
    gold = tasks.gold_reward(task, prompts, ro.response, ro.mask)
    pick = grpo.best_of_n_select(proxy.reshape(-1, n))
    rows = jnp.arange(pick.shape[0]) * n + pick
    return {"gold": gold[rows].mean(), "proxy": proxy[rows].mean(),
            "kl": jnp.asarray(grpo.best_of_n_kl_bound(n), jnp.float32),  # a bound
            "responses": ro.response[rows] * ro.mask[rows].astype(ro.response.dtype)}
