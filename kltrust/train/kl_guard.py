"""The token policy stage's KL guard: roll a run back when its KL to the reference runs away.

Off by default (the `GuardSpec`'s ``max_sequence_kl`` and ``kl_jump``, from ``config.guards``, are
0). After each evaluation a run whose exact sequence KL to the reference exceeds
``max_sequence_kl``, or grows more than ``kl_jump``-fold over its last passing evaluation (once
that was at least ``kl_jump_from`` nats), or is not finite, goes back to the state of its last
passing evaluation with a stronger anchor (`rlhf.Trainer.back_off`, by ``kl_backoff``). Each
rollback is an event (a warning, and a row of ``events.jsonl``); more than ``max_rollbacks`` for
one run stop the stage with `KLGuardError`.

The last passing state is kept in memory and carried in the stage's checkpoints (`carry` /
`uncarry`), so a resumed stage rolls back exactly as an uninterrupted one would.
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kltrust import guards, sharding
from kltrust.train import rlhf
from kltrust.train.token_spec import GuardSpec


class KLGuard:
    """The KL guard of one policy stage (all its runs at once; see the module doc)."""

    def __init__(self, g: GuardSpec, trainer: rlhf.Trainer, state, state_shardings,
                 num_runs: int):
        self.budget, self.jump, self.jump_from = g.max_sequence_kl, g.kl_jump, g.kl_jump_from
        self.backoff, self.max_rollbacks = g.kl_backoff, g.max_rollbacks
        self.active = g.kl_guard_active
        self.num_runs, self.events = num_runs, []
        if not self.active:
            return
        self.good, self.good_kl = state, np.zeros(len(jax.tree.leaves(state)[0]))
        self.rollbacks = np.zeros_like(self.good_kl, dtype=int)
        self._back_off = jax.jit(sharding.vmap_runs(trainer.back_off, in_axes=(0, 0, 0, 0, None)),
                                 out_shardings=(state_shardings, None))
        self._keep = jax.jit(
            lambda keep, new, old: jax.tree.map(
                lambda n, o: jnp.where(keep.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old),
            out_shardings=state_shardings)

    def check(self, state, hp, kl: np.ndarray, i: int, seeds: np.ndarray):
        """(state, hp, whether any run was rolled back) after the evaluation of chunk ``i``."""
        kl = np.asarray(kl, np.float64)
        over = (self.budget > 0) & (kl > self.budget)
        jumped = ((self.jump > 0) & (self.good_kl >= self.jump_from)
                  & (kl > self.jump * self.good_kl))
        bad = over | jumped | ~np.isfinite(kl)
        if bad.any():
            self.rollbacks += bad
            for r in np.flatnonzero(bad[:self.num_runs]):
                event = {"evaluation": i, "seed": int(seeds[r]), "index": int(r),
                         "kl": float(kl[r]) if np.isfinite(kl[r]) else None,
                         "last_passing_kl": float(self.good_kl[r]),
                         "reason": "budget" if over[r] else ("jump" if jumped[r] else
                                                             "non-finite"),
                         "rollback": int(self.rollbacks[r])}
                self.events.append(event)
                warnings.warn(f"KL guard: {event}; rolled back to the last passing evaluation "
                              f"and strengthened the anchor by {self.backoff}×.", RuntimeWarning,
                              stacklevel=3)
            worst = int(np.argmax(self.rollbacks[:self.num_runs]))
            if self.rollbacks[worst] > self.max_rollbacks:
                raise guards.KLGuardError(
                    f"evaluation {i} (run {worst}, seed {int(seeds[worst])}): the KL guard rolled "
                    f"back more than guards.max_rollbacks = {self.max_rollbacks} times; last KL "
                    f"{kl[worst]:.4g} against guards.max_sequence_kl = {self.budget}.")
            state, hp = self._back_off(state, hp, self.good, jnp.asarray(bad),
                                       jnp.float32(self.backoff))
            hp = jax.tree.map(np.asarray, sharding.to_host(hp))  # host arrays, as chunks expect
        self.good = self._keep(jnp.asarray(~bad), state, self.good)
        self.good_kl = np.where(bad, self.good_kl, kl)
        return state, hp, bool(bad.any())

    def carry(self) -> dict[str, Any]:
        """The guard's part of a checkpoint ({} when off): last passing state, its KL, rollbacks."""
        if not self.active:
            return {}
        return {"guard": {"good": self.good, "good_kl": jnp.asarray(self.good_kl),
                          "rollbacks": jnp.asarray(self.rollbacks)}}

    def uncarry(self, carry: dict[str, Any]) -> None:
        """Takes the guard's part back from a restored checkpoint."""
        if self.active:
            self.good = carry["guard"]["good"]
            self.good_kl = np.asarray(carry["guard"]["good_kl"])
            # A copy: a restored array's NumPy view is read-only, and `check` adds to it in place.
            self.rollbacks = np.array(carry["guard"]["rollbacks"])
