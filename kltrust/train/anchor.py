"""What the KL guard does to a run it rolls back: restore, then strengthen the anchor.

`back_off` is pure (jitted and vmapped over runs by `kltrust.train.kl_guard`); which knob it
strengthens is the method's registered ``anchor`` (`kltrust.train.methods.TokenMethod`).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from kltrust.objectives import preference
from kltrust.train import tokens as tok
from kltrust.train.methods import METHODS


def back_off(static: Any, state: Any, hp: Any, good: Any, rolled: jax.Array,
             factor: jax.Array) -> tuple[Any, Any]:
    """Where ``rolled`` (this run broke its KL guard): the learning state of ``good`` (the last
    evaluation that passed), then a stronger anchor. β × ``factor`` where the method applies a
    positive β (the controller's, or DPO's); TRPO's δ ÷ ``factor``; otherwise (no KL applied,
    or β = 0) the learning rate ÷ ``factor``. The rng key and the update counter go on.

    ``factor`` may be one per domain [D] (the per-domain KL guard: > 1 where a domain fired,
    1 elsewhere): a per-domain β_d is multiplied by its own factor, so only the domains that
    fired are strengthened; δ and the learning rate, which all domains share, by the largest."""
    s = static
    keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(rolled, o, n), old, new)  # noqa: E731
    params, opt_state, controller, bad = keep(
        (good.params, good.opt_state, good.controller, good.bad_updates),
        (state.params, state.opt_state, state.controller, state.bad_updates))
    # The anchor only ever strengthens: β and the learning rate continue from their current
    # values (earlier rollbacks included), not from the restored state's.
    beta, lr = state.controller.beta, state.opt_state.hyperparams["learning_rate"]
    shrink_lr = jnp.array(False)
    shared = jnp.max(factor)  # what all domains share is strengthened by the largest factor
    anchor = METHODS.get(s.method).anchor
    if anchor == "preference_beta" and preference.LOSSES.get(s.preference_loss).reference_free:
        anchor = "none"  # β does not anchor a reference-free loss: slow the learning instead
    if anchor == "preference_beta":
        hp = hp.replace(beta=jnp.where(rolled, hp.beta * shared, hp.beta))
    elif anchor == "trust_region":
        hp = hp.replace(delta=jnp.where(rolled, hp.delta / shared, hp.delta))
    elif anchor == "controller" and s.uses_reference:
        fired = rolled & (factor > 1)
        raise_beta = fired & (beta > 0)
        beta = jnp.where(raise_beta, beta * factor, beta)
        shrink_lr = jnp.any(fired & ~raise_beta)
    else:
        shrink_lr = rolled
    controller = controller.replace(beta=beta)
    opt_state = tok.set_learning_rate(opt_state, jnp.where(shrink_lr, lr / shared, lr))
    hp = hp.replace(learning_rate=jnp.where(shrink_lr, hp.learning_rate / shared,
                                            hp.learning_rate))
    ref_params = state.ref_params if good.ref_params is None else keep(good.ref_params,
                                                                       state.ref_params)
    return state.replace(params=params, opt_state=opt_state, controller=controller,
                         bad_updates=bad, ref_params=ref_params), hp
