"""Prompt domains: per-domain statistics and per-domain KL control (β controllers, envelopes).

A token task may tag each prompt with a domain id in [0, D) (the optional `TokenTask` members
``num_domains`` and ``domain_ids(prompts) -> int32 [B]``; `num_domains` / `prompt_domains` read them,
and a task without them has one domain). Practice keeps a policy inside different KL envelopes for
different kinds of prompt — tight where the stakes are high, loose where adaptation is cheap — so a
run may give each domain its own envelope, a multiple s_d of the global one (``kl_scale``):

    controller  one β_d per domain, steered to s_d · kl_target by the run's controller kind, fed
                KL_d, the mean exact sequence KL over the batch's prompts of domain d; a sequence
                of domain d is penalised with β_d (`per_row`);
    TRPO        one hard budget per domain, KL_ref,d ≤ s_d · kl_budget_per_token
                (`kltrust.objectives.trpo`'s grouped budgets);
    KL guard    domain d breaks its budget when KL_d > s_d · max_sequence_kl.

A domain with no prompt in a batch leaves its β_d unchanged (`update_controller`): there is no
measurement to steer by. With every s_d = 1 and the domains' KLs equal, the per-domain controllers
of a rule that ignores the batch size (adaptive, PID, dual ascent) move exactly as one global
controller would; ``proportional`` scales its step by each domain's own sequence count, so a small
domain's β moves more slowly than a global β would.

Everything here is jax.numpy, safe under ``jit`` and ``vmap``.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kltrust import controllers

__all__ = ["SUFFIX", "domain_means", "init_controller", "is_domain_metric", "metrics",
           "num_domains", "per_row", "prompt_domains", "update_controller"]

SUFFIX = "_d"  # a per-domain metric is NAME_dD: kl_d0, gold_d2, beta_d1


def num_domains(task: Any) -> int:
    """D, the task's number of prompt domains (its optional ``num_domains``; 1 without it)."""
    return int(getattr(task, "num_domains", 1))


def prompt_domains(task: Any, prompts: jax.Array) -> jax.Array:
    """The domain id of each prompt, int32 [B] (all 0 for a task without domains; −1 for a prompt
    the task cannot place, which then counts in no domain's statistics)."""
    hook = getattr(task, "domain_ids", None)
    if hook is None or num_domains(task) == 1:
        return jnp.zeros(prompts.shape[:1], jnp.int32)
    return hook(prompts).astype(jnp.int32)


def domain_means(values: jax.Array, domains: jax.Array, count: int
                 ) -> tuple[jax.Array, jax.Array]:
    """(means [D], counts [D]): the mean of ``values`` [B] over the rows of each domain, and how
    many rows each has; a domain without rows has mean 0 (not NaN):

        mean_d = Σ_i [d_i = d]·v_i / max(n_d, 1),   n_d = Σ_i [d_i = d].
    """
    # A scatter-add, as `kltrust.objectives.trpo`'s grouped budgets, not a one-hot matmul: an
    # accelerator may run an f32 matmul at reduced (TF32) precision, too coarse for the KL a
    # controller steers by. Ids outside [0, D) (−1: a prompt the task cannot place) are dropped.
    counts = jax.ops.segment_sum(jnp.ones_like(values), domains, count)
    return jax.ops.segment_sum(values, domains, count) / jnp.maximum(counts, 1), counts


def per_row(per_domain: jax.Array, domains: jax.Array) -> jax.Array:
    """Each row's value of its domain: ``per_domain`` [D] read at ``domains`` [B] → [B]. A scalar
    (one global value) is returned as it is, so a global β broadcasts unchanged."""
    if jnp.ndim(per_domain) == 0:
        return per_domain
    return per_domain[domains]


def init_controller(controller: controllers.Controller, beta: jax.Array, hparams: Any,
                    kl_scale: jax.Array) -> controllers.ControllerState:
    """One ``controller`` state per domain, [D]: β_d = ``beta`` for every domain and, for a kind
    with a ``kl_target`` knob (every kind that steers to a target), the target s_d·kl_target; the
    other knobs are shared. A kind without a target (``fixed``) gets D copies of its state."""
    kl_scale = jnp.asarray(kl_scale, jnp.float32)
    if hasattr(hparams, "kl_target"):
        hparams = hparams.replace(kl_target=hparams.kl_target * kl_scale)
    state = controller.init(beta, hparams)
    return jax.tree.map(lambda x: jnp.broadcast_to(x, kl_scale.shape), state)


def update_controller(controller: controllers.Controller, state: controllers.ControllerState,
                      observed: jax.Array, counts: jax.Array) -> controllers.ControllerState:
    """Each domain's controller stepped on its own KL ``observed`` [D] measured over ``counts`` [D]
    sequences; a domain with no sequence keeps its state (β, knobs and memory) as it was."""
    new = controller.update(state, observed, counts)
    seen = counts > 0
    return jax.tree.map(lambda n, o: jnp.where(seen, n, o), new, state)


def metrics(values: dict[str, jax.Array], domains: jax.Array, count: int
            ) -> dict[str, jax.Array]:
    """``{NAME_dD: mean of values[NAME] over domain D's rows}`` for each [B] array in ``values``
    and each domain (the per-domain curves of metrics, evaluation, TensorBoard and plots); NaN for
    a domain with no row in the batch (no measurement, not a zero); ``{}`` with one domain."""
    if count == 1:
        return {}
    out = {}
    for name, value in values.items():
        means, counts = domain_means(value.astype(jnp.float32), domains, count)
        means = jnp.where(counts > 0, means, jnp.nan)
        out.update({f"{name}{SUFFIX}{d}": means[d] for d in range(count)})
    return out


def is_domain_metric(name: str) -> bool:
    """Whether metric ``name`` is a per-domain one of `metrics` (``NAME_dD``): NaN there means an
    empty domain, not a failed update, so the non-finite guard does not watch it."""
    head, sep, tail = name.rpartition(SUFFIX)
    return bool(head and sep and tail.isdigit())
