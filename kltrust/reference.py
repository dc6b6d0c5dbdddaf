"""A reference that moves: periodic hard or soft synchronisation to the policy, and its EMA.

TR-DPO (Gorbatovski et al. 2024, "Learn Your Reference Model for Real Good Alignment") and TRL's
``sync_ref_model`` replace the frozen reference π_ref by one that follows the policy: every τ
updates,

    θ_ref ← α·θ + (1 − α)·θ_ref                                         (soft; α = 1: hard)

and an exponential moving average is the same rule with τ = 1 and a small α (θ_ref after k
updates is Σ_j α(1 − α)^{k−j} θ_j + (1 − α)^k θ_ref,0). The KL a method applies is then the KL to
this moving reference; the KL to the *initial* reference (the one an RLHF budget is about) is what
evaluation reports.

τ and α are arrays (hyperparameters that sweep), so the rule is a `where` on ``step mod τ = 0``
evaluated every update, never a Python branch. ``α = 1`` gives ``1·θ + 0·θ_ref``, which is θ
bit for bit (0·x = 0 for finite x).

A policy's parameters may hold more than its reference's (the small decoder's value head): the
reference is refreshed from the policy's leaves at the reference's own paths (`as_reference`);
a policy without them (a LoRA policy keeps the base and adapters under other paths) is refused.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["as_reference", "refresh"]


def as_reference(params: Any, ref_params: Any) -> Any:
    """The policy's leaves at the reference's paths, in the reference's tree structure.

    Raises:
      ValueError: naming the first reference path the policy lacks or holds with another shape.
    """
    by_path = {jax.tree_util.keystr(path): leaf
               for path, leaf in jax.tree_util.tree_leaves_with_path(params)}
    picked = []
    for path, ref_leaf in jax.tree_util.tree_leaves_with_path(ref_params):
        name = jax.tree_util.keystr(path)
        leaf = by_path.get(name)
        if leaf is None or jnp.shape(leaf) != jnp.shape(ref_leaf):
            found = "missing" if leaf is None else f"shape {jnp.shape(leaf)}"
            raise ValueError(
                f"kltrust.reference: the policy's parameters must hold the reference's at the same "
                f"paths to refresh it; reference {name} has shape {jnp.shape(ref_leaf)}, the "
                f"policy's is {found} (a LoRA policy cannot refresh its reference).")
        picked.append(leaf)
    return jax.tree_util.tree_unflatten(jax.tree_util.tree_structure(ref_params), picked)


def refresh(ref_params: Any, params: Any, step: jax.Array, every: jax.Array,
            alpha: jax.Array) -> Any:
    """θ_ref after the update that made ``step`` updates in all: α·θ + (1 − α)·θ_ref where
    ``step`` mod ``every`` = 0, else θ_ref unchanged.

    Args:
      ref_params: θ_ref, the current reference.
      params: θ, the policy after the update (may hold more leaves: `as_reference`).
      step: the number of updates done, counting this one (an integer array).
      every: τ ≥ 1 (an array; a float holding an integer is fine, exact below 2²⁴).
      alpha: α in (0, 1] (an array).

    Returns:
      The new reference, each leaf in its own dtype.
    """
    policy = as_reference(params, ref_params)
    due = jnp.mod(jnp.asarray(step, jnp.float32), jnp.asarray(every, jnp.float32)) == 0

    def mix(ref, new):
        a = jnp.asarray(alpha, ref.dtype)
        return jnp.where(due, a * new.astype(ref.dtype) + (1 - a) * ref, ref)

    return jax.tree.map(mix, ref_params, policy)
