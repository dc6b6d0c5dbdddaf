"""The token policy stage's KL guard: an alarm when a run's KL to the reference runs away, and
what to do about it.

Off by default (the `GuardSpec`'s ``max_sequence_kl`` and ``kl_jump``, from ``config.guards``, are
0). After each evaluation the alarm fires for a run whose exact sequence KL to the reference
exceeds ``max_sequence_kl``, or grows more than ``kl_jump``-fold over its last passing evaluation
(once that was at least ``kl_jump_from`` nats: a spike), or is not finite. A sudden KL spike is
the usual sign that the policy found a blind spot of the proxy reward (its proxy rises while the
gold falls), so each alarm is an event (a warning, and a row of ``events.jsonl``) holding the
run's KL, its gold and proxy reward at that evaluation and its decoded samples. Then, by
``kl_action``:

- ``"rollback"`` (default): the run goes back to the state of its last passing evaluation with a
  stronger anchor (`rlhf.Trainer.back_off`, by ``kl_backoff``); more than ``max_rollbacks`` for
  one run stop the stage with `KLGuardError`;
- ``"stop"``: the stage stops with `KLGuardError` after writing the event;
- ``"warn"``: training goes on unchanged, and the evaluation that fired becomes the one a later
  jump is measured from (one spike, one alarm).

Per domain (``domain_scale`` given: a task with prompt domains, `kltrust.domains`): each prompt
domain d is watched on its own evaluated KL ``kl_dD`` against its own budget s_d·``max_sequence_kl``
(s_d = 1 under one global envelope) and its own last passing KL, so a blind spot in one domain
fires even while the mean KL looks ordinary. The event names the domains that fired, with their
KL, budget, gold, proxy and the samples of their prompts (``samples_dD`` of the evaluation's
rows). A rollback restores the (shared) policy; with per-domain envelopes (``per_domain_anchor``)
it strengthens only the domains that fired, β_d × ``kl_backoff`` (`rlhf.Trainer.back_off` with a
per-domain factor), the others keeping theirs; with one global β that β is strengthened.

The last passing state is kept in memory and carried in the stage's checkpoints (`saved` /
`restored`), so a resumed stage rolls back exactly as an uninterrupted one would.

Both token policy stages (the synthetic pipeline's, `kltrust.train.pipeline`, and the real-model
program's, `kltrust.train.real_rlhf`) plug the guard into the host loop (`kltrust.train.host`) the
same way, through the methods below: `between` (evaluate, check, write events), `rows_file` (the
events a resume cuts back), `saved` / `restored` (the checkpoint of their carry ``(state, hp)``).
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from kltrust import guards, sharding
from kltrust.train import host, rlhf
from kltrust.train import tokens as tok
from kltrust.train.token_spec import GuardSpec


class KLGuard:
    """The KL guard of one policy stage (all its runs at once; see the module doc).

    ``state_shardings`` pins the layout of the states it returns (jit's ``out_shardings``, as the
    stage's chunks expect); None where the stage has no mesh (one device: where jit puts them).
    """

    def __init__(self, g: GuardSpec, trainer: rlhf.Trainer, state, state_shardings,
                 num_runs: int, domain_scale: np.ndarray | None = None,
                 per_domain_anchor: bool = False):
        self.budget, self.jump, self.jump_from = g.max_sequence_kl, g.kl_jump, g.kl_jump_from
        # s_d per domain (None: the run is watched as a whole).
        self.domain_scale = None if domain_scale is None else np.asarray(domain_scale, np.float64)
        self.per_domain_anchor = per_domain_anchor  # one β_d per domain to strengthen
        self.backoff, self.max_rollbacks = g.kl_backoff, g.max_rollbacks
        self.action = g.kl_action
        self.active = g.kl_guard_active
        self.num_runs, self.events = num_runs, []
        if not self.active:
            return
        self.good, self.good_kl = state, np.zeros(len(jax.tree.leaves(state)[0]))
        self.rollbacks = np.zeros_like(self.good_kl, dtype=int)
        if self.domain_scale is not None:
            self.good_kl_domains = np.zeros((len(self.good_kl), len(self.domain_scale)))
        pinned = lambda out: {} if state_shardings is None else {"out_shardings": out}  # noqa: E731
        self._back_off = jax.jit(sharding.vmap_runs(trainer.back_off, in_axes=(0, 0, 0, 0, 0)),
                                 **pinned((state_shardings, None)))
        self._keep = jax.jit(
            lambda keep, new, old: jax.tree.map(
                lambda n, o: jnp.where(keep.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, old),
            **pinned(state_shardings))

    def _fired(self, kl: np.ndarray, good_kl: np.ndarray, budget) -> tuple[np.ndarray, np.ndarray]:
        """(over the budget, jumped) elementwise; NaN (an empty domain) fires neither."""
        with np.errstate(invalid="ignore"):
            over = (self.budget > 0) & (kl > budget)
            jumped = (self.jump > 0) & (good_kl >= self.jump_from) & (kl > self.jump * good_kl)
        return over, jumped

    def check(self, state, hp, kl: np.ndarray, i: int, seeds: np.ndarray,
              rows: list[dict] | None = None, domain_kl: np.ndarray | None = None):
        """(state, hp, whether any run was rolled back) after the evaluation of chunk ``i``;
        ``rows``: that evaluation's rows (one per run, in run order), whose gold, proxy and
        samples go into the events; ``domain_kl`` [runs, D]: each domain's KL (watched when the
        guard is per domain). Raises `KLGuardError` on an alarm with ``kl_action`` "stop", or on
        too many rollbacks, after appending the events to ``self.events``."""
        kl = np.asarray(kl, np.float64)
        over, jumped = self._fired(kl, self.good_kl, self.budget)
        fired_d = None
        if self.domain_scale is not None:
            domain_kl = np.asarray(domain_kl, np.float64)
            over_d, jumped_d = self._fired(domain_kl, self.good_kl_domains,
                                           self.budget * self.domain_scale)
            fired_d = over_d | jumped_d
            over, jumped = over_d.any(-1), jumped_d.any(-1)
        bad = over | jumped | ~np.isfinite(kl)
        real = bad[:self.num_runs]  # runs past num_runs pad a mesh: no events of their own
        rolled = False
        if bad.any():
            rolling = self.action == "rollback"
            self.rollbacks += bad if rolling else 0
            for r in np.flatnonzero(real):
                event = {"evaluation": i, "seed": int(seeds[r]), "index": int(r),
                         "kl": float(kl[r]) if np.isfinite(kl[r]) else None,
                         "last_passing_kl": float(self.good_kl[r]),
                         "reason": "budget" if over[r] else ("jump" if jumped[r] else
                                                             "non-finite"),
                         "action": self.action}
                if rolling:
                    event["rollback"] = int(self.rollbacks[r])
                row = rows[r] if rows is not None and r < len(rows) else {}
                event.update({k: row[k] for k in ("gold", "proxy", "samples") if k in row})
                if fired_d is not None:  # which domains, and what their prompts drew
                    event["domains"] = [
                        {"domain": int(d), "kl": float(domain_kl[r, d]),
                         "last_passing_kl": float(self.good_kl_domains[r, d]),
                         "budget": float(self.budget * self.domain_scale[d]),
                         **{k: row[f"{k}_d{d}"] for k in ("gold", "proxy", "samples")
                            if f"{k}_d{d}" in row}}
                        for d in np.flatnonzero(fired_d[r])]
                self.events.append(event)
                then = {"rollback": "rolled back to the last passing evaluation and strengthened "
                                    f"the anchor by {self.backoff}×",
                        "stop": "stopping the stage", "warn": "training goes on"}[self.action]
                shown = {k: v for k, v in event.items() if k != "samples"}
                warnings.warn(f"KL guard: {shown}; {then}.", RuntimeWarning, stacklevel=3)
            if self.action == "stop" and real.any():
                first = self.events[-int(real.sum())]
                raise guards.KLGuardError(
                    f"evaluation {i} (run {first['index']}, seed {first['seed']}): KL alarm "
                    f"({first['reason']}, KL {first['kl']}) with guards.kl_action = 'stop'; its "
                    "events are in events.jsonl.")
            if rolling:
                worst = int(np.argmax(self.rollbacks[:self.num_runs]))
                if self.rollbacks[worst] > self.max_rollbacks:
                    raise guards.KLGuardError(
                        f"evaluation {i} (run {worst}, seed {int(seeds[worst])}): the KL guard "
                        f"rolled back more than guards.max_rollbacks = {self.max_rollbacks} "
                        f"times; last KL {kl[worst]:.4g} against guards.max_sequence_kl = "
                        f"{self.budget}.")
                # The anchor is strengthened by kl_backoff: per domain, only where a domain fired.
                factor = np.full(bad.shape, self.backoff, np.float32)
                if self.per_domain_anchor:
                    factor = np.where(fired_d, self.backoff, 1.0).astype(np.float32)
                state, hp = self._back_off(state, hp, self.good, jnp.asarray(bad),
                                           jnp.asarray(factor))
                hp = jax.tree.map(np.asarray, sharding.to_host(hp))  # host arrays, as chunks expect
                rolled = True
        # A run rolled back keeps its last passing state and KL. With "warn" every finite
        # evaluation becomes the one a later jump is measured from, so one spike is one alarm
        # (a KL over the budget still fires at every evaluation it stays over).
        passed = ~bad if self.action == "rollback" else np.isfinite(kl)
        self.good = self._keep(jnp.asarray(passed), state, self.good)
        self.good_kl = np.where(passed, kl, self.good_kl)
        if fired_d is not None:  # an empty domain (NaN) keeps its last passing KL
            self.good_kl_domains = np.where(passed[:, None] & np.isfinite(domain_kl), domain_kl,
                                            self.good_kl_domains)
        return state, hp, rolled

    def between(self, evaluation: Callable[[int, Any], tuple[dict, list[dict]]], i: int, carry,
                seeds: np.ndarray, last: int, events_file: pathlib.Path | None):
        """The host loop's ``between`` of a guarded stage: ``evaluation(i, state) -> (metrics with
        "kl" [runs], rows)`` after ``i`` chunks, then `check`. A run rolled back at the last
        evaluation (``i == last``) ends on its last passing state, which is evaluated again: that
        is the final evaluation. New events are appended to ``events_file`` (None: not written).
        Returns (carry, the evaluation's rows)."""
        state, hp = carry
        metrics, rows = evaluation(i, state)
        if i and self.active:
            before = len(self.events)
            try:
                domain_kl = None
                if self.domain_scale is not None:
                    domain_kl = np.stack([np.asarray(metrics[f"kl_d{d}"], np.float64)
                                          for d in range(len(self.domain_scale))], -1)
                state, hp, rolled = self.check(state, hp, metrics["kl"], i, seeds, rows,
                                               domain_kl)
            finally:  # a stopping alarm's event is written before the error leaves
                if events_file is not None:
                    tok.append_jsonl(events_file, self.events[before:])
            if rolled and i == last:
                metrics, rows = evaluation(i, state)
        return (state, hp), rows

    def rows_file(self, updates_per_eval: int) -> host.RowsFile:
        """events.jsonl as a resume cuts it back: the evaluation at the checkpoint is redone (with
        its check), so the events kept are those of the evaluations before it."""

        def resumed(rows: list[dict]) -> None:
            self.events = rows

        return host.RowsFile("events.jsonl", "evaluation",
                             lambda done: done // updates_per_eval - 1, resumed)

    def saved(self, carry, strip: Callable[[Any], Any] = lambda state: state) -> dict[str, Any]:
        """What a checkpoint of the carry ``(state, hp)`` holds: the state and the guard's last
        passing state, each ``strip`` ped (e.g. of frozen weights), the hyperparameters the guard
        may have changed, and (when on) the last passing KL and the rollback counts."""
        state, hp = carry
        saved = {"state": strip(state), "hp": jax.tree.map(jnp.asarray, hp)}
        if self.active:
            saved["guard"] = {"good": strip(self.good), "good_kl": jnp.asarray(self.good_kl),
                              "rollbacks": jnp.asarray(self.rollbacks)}
            if self.domain_scale is not None:
                saved["guard"]["good_kl_domains"] = jnp.asarray(self.good_kl_domains)
        return saved

    def restored(self, saved: dict[str, Any], unstrip: Callable[[Any], Any] = lambda state: state):
        """`saved`'s inverse (``unstrip`` undoes its ``strip``): the carry; the guard takes its part
        back."""
        if self.active:
            self.good = unstrip(saved["guard"]["good"])
            self.good_kl = np.asarray(saved["guard"]["good_kl"])
            # A copy: a restored array's NumPy view is read-only, and `check` adds to it in place.
            self.rollbacks = np.array(saved["guard"]["rollbacks"])
            if self.domain_scale is not None:
                self.good_kl_domains = np.array(saved["guard"]["good_kl_domains"])
        return unstrip(saved["state"]), jax.tree.map(np.asarray, saved["hp"])
