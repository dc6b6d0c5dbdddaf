"""Training programs on the contextual-bandit testbed (`kltrust.tasks.bandit`), one per method.

Every method is a pair of pure functions (``Method``): ``init(key, bandit, hparams) -> TrainState``
and ``update(state, bandit, hparams) -> (state, metrics)``, one optimisation step. ``make_train``
runs a method on the one host loop (`kltrust.train.bandit_run`: a compiled chunk of
``steps_per_eval`` steps at a time) and reports the testbed's exact metrics after every chunk:
E_x KL(π_θ‖π*_β), E[r], E_x KL(π_θ‖π_ref), and the gap to the exact reward–KL frontier at the
policy's own KL. ``make_sweep`` vmaps it over hyperparameters × seeds in one compilation;
`kltrust.train.bandit_run.train` runs a run spec of a typed `BanditSpec`, with a workdir
(rows, checkpoints, resume, SIGTERM) when given one. The method and every shape
are static (``Setup``); β, the learning rate, label noise and the preference loss's own knobs are
arrays (``HParams``).

Methods (``METHODS``, a registry: each is registered in `kltrust.train.bandit_methods` with what a
program needs to know about it; the config schema and checks are `kltrust.train.bandit_config`):

``pg_exact``
    Gradient ascent on the exact regularised objective J_β(π) = E_x[Σ_y π(y|x) r(x,y)] −
    β·E_x KL(π‖π_ref), with gradients through the exact expectation (no sampling).
``pg_reinforce``
    REINFORCE with the KL penalty in the reward, RLHF-style: ``batch_size`` contexts x ~ ρ,
    ``group_size`` actions y ~ π_θ(·|x) each, shaped reward r(x,y) − β·k1 with k1 = log π_θ(y|x) −
    log π_ref(y|x) (``kltrust.kl.estimate``; as a reward k1 gives the unbiased gradient of the KL),
    and a leave-one-out baseline within each context's group (none when ``group_size`` = 1).
``dpo``
    Offline preference optimisation with any registered preference loss
    (`kltrust.objectives.preference`; ``Setup.preference_loss``: DPO, IPO, rDPO, SLiC, SimPO, ...)
    on pairs drawn once from π_ref at ``init``: ``num_pairs`` Bradley–Terry samples
    (``preferences="sampled"``; ``batch_size`` of them per step with replacement, or all of them
    when ``batch_size`` is 0) or every (x, y_w, y_l) triple weighted by its probability
    (``preferences="exact"``, no sampling anywhere).
``ppo``
    PPO's clipped surrogate with a fixed-β exact KL(π_θ‖π_ref) penalty (`kltrust.objectives.ppo`),
    ``ppo_epochs`` epochs on each sampled batch.
``trpo``
    TRPO (`kltrust.objectives.trpo`) on exact expectations with a hard budget on KL(π_θ‖π_ref) of
    ``kl_budget_ratio`` × KL(π*_β‖π_ref), one trust-region step of size δ per update.
``dpo_online``
    Each step draws ``batch_size`` pairs from the current policy (gradient stopped), labels them by
    Bradley–Terry with the true reward, and takes one step of the ``Setup.preference_loss`` loss.
``pg_kl``, ``pg_kl_sampled``
    Policy gradient with the KL through any registered estimator (``Setup.kl_estimator``) placed in
    the reward or the loss (``Setup.kl_placement``), on exact expectations over every action or on
    ``batch_size`` × ``group_size`` samples (`kltrust.train.bandit_kl`, which states each
    combination's fixed point).

The optimiser is Adam with the learning rate ``hparams.learning_rate``, decayed to 0 over
``num_steps`` by a cosine (``lr_schedule="cosine"``) so that the final policy is the optimum the
loss defines rather than Adam's noise ball around it, or constant.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp

from kltrust import components, kl
from kltrust.objectives import preference
from kltrust.tasks.bandit import Bandit, PolicySpec, Preferences

PREFERENCE_MODES: tuple[str, ...] = ("sampled", "exact")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")
KL_PLACEMENTS: tuple[str, ...] = ("reward", "loss")

__all__ = [
    "BanditMethod",
    "HParams",
    "METHODS",
    "Method",
    "Run",
    "Setup",
    "TrainState",
    "Knobs",
    "hparams_for",
    "make_runs",
    "make_sweep",
    "make_train",
    "setup_for",
    "spec_from_config",
    "validate",
]


@components.hparams
class Knobs:
    """The numeric knobs of a bandit config's ``hparams`` group (shared by every run spec)."""

    learning_rate: jax.Array = components.knob(0.1, "Adam's (initial) learning rate", low=0.0,
                                               low_open=True)
    kl_budget_ratio: jax.Array = components.knob(
        1.0, "trpo: budget on E_x KL(π_θ‖π_ref) as a multiple of KL(π*_β‖π_ref)", low=0.0,
        low_open=True)
    delta: jax.Array = components.knob(0.01, "trpo: per-step trust region KL(π_old‖π_θ) ≤ δ",
                                       low=0.0, low_open=True)
    damping: jax.Array = components.knob(0.001, "trpo: conjugate-gradient damping", low=0.0)
    clip_eps: jax.Array = components.knob(0.2, "ppo: the clipping range ε", low=0.0,
                                          low_open=True)


@flax.struct.dataclass
class HParams:
    """Hyperparameters as float32 arrays of one shape, so a sweep is one ``vmap``.

    Attributes:
      beta: β, the KL coefficient (of the penalty, or the preference loss's β) and the β of π*_β in
        the metrics.
      label_noise: η, the probability that a Bradley–Terry label is flipped.
      learning_rate, kl_budget_ratio, delta, damping, clip_eps: see `Knobs`.
      preference: the knobs of ``Setup.preference_loss`` (e.g. DPO's label smoothing ε, SimPO's γ).
    """

    beta: jax.Array
    label_noise: jax.Array
    learning_rate: jax.Array
    kl_budget_ratio: jax.Array
    delta: jax.Array
    damping: jax.Array
    clip_eps: jax.Array
    preference: Any

    @classmethod
    def create(cls, beta: Any, label_noise: Any = 0.0, preference_loss: str = "sigmoid",
               preference_knobs: dict | None = None, **knobs: Any) -> HParams:
        """Broadcasts every field to one float32 shape (a scalar, or [n] for a sweep of n);
        ``knobs`` are `Knobs` fields (defaults for the rest), ``preference_knobs`` the chosen
        loss's."""
        shared = components.create(Knobs, "hparams", **knobs)
        loss = components.create(preference.LOSSES.get(preference_loss).hparams,
                                 f"preference.{preference_loss}", **(preference_knobs or {}))
        values = [jnp.asarray(beta, jnp.float32), jnp.asarray(label_noise, jnp.float32),
                  *jax.tree.leaves((shared, loss))]
        shape = jnp.broadcast_shapes(*(v.shape for v in values))
        grow = lambda x: jnp.broadcast_to(x, shape)  # noqa: E731
        shared, loss = jax.tree.map(grow, (shared, loss))
        return cls(grow(values[0]), grow(values[1]), shared.learning_rate,
                   shared.kl_budget_ratio, shared.delta, shared.damping, shared.clip_eps, loss)


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static part of a run: method, loss variant, data mode and every shape."""

    method: str = "pg_exact"
    preference_loss: str = "sigmoid"
    preferences: str = "sampled"
    num_pairs: int = 1024
    batch_size: int = 64
    group_size: int = 4
    ppo_epochs: int = 4
    num_steps: int = 2000
    steps_per_eval: int = 100
    lr_schedule: str = "cosine"
    kl_estimator: str = "k1"  # pg_kl*: a registered `kltrust.kl` estimator
    kl_placement: str = "reward"  # pg_kl*: one of KL_PLACEMENTS
    policy: PolicySpec = PolicySpec()

    def __post_init__(self):
        for name, allowed in (("method", METHODS.names()),
                              ("preference_loss", preference.LOSSES.names()),
                              ("preferences", PREFERENCE_MODES), ("lr_schedule", LR_SCHEDULES),
                              ("kl_estimator", kl.estimators()), ("kl_placement", KL_PLACEMENTS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"setup.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        if self.kl_placement == "reward" and self.kl_estimator not in kl.estimators(reward_term=True):
            raise ValueError(
                f"setup.kl_estimator = {self.kl_estimator!r} is corrected "
                f"({kl.estimator_info(self.kl_estimator).correction}), which changes a loss term's "
                f"gradient only, so it is refused with kl_placement 'reward'; use one of "
                f"{kl.estimators(reward_term=True)} there, or kl_placement 'loss'.")
        for name, low in (("num_pairs", 1), ("batch_size", 0), ("group_size", 1), ("ppo_epochs", 1), ("num_steps", 1),
                          ("steps_per_eval", 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"setup.{name} must be an integer >= {low}, got {value!r}.")
        if self.num_steps % self.steps_per_eval:
            raise ValueError(f"setup.steps_per_eval must divide num_steps = {self.num_steps}, "
                             f"got {self.steps_per_eval}.")
        if self.batch_size == 0 and not METHODS.get(self.method).offline_pairs:
            raise ValueError("setup.batch_size may be 0 (the whole dataset) only for a method "
                             "with an offline data set of pairs ('dpo').")

    @property
    def num_evals(self) -> int:
        return self.num_steps // self.steps_per_eval


@flax.struct.dataclass
class TrainState:
    """A run's state. ``opt_state`` is () for optimiser-free methods; ``data`` None when unused."""

    params: Any
    opt_state: Any
    key: jax.Array
    step: jax.Array
    data: Preferences | None


class Method(NamedTuple):
    """A training method as two pure functions (traced inside the compiled programs)."""

    init: Callable[[jax.Array, Bandit, HParams], TrainState]
    update: Callable[[TrainState, Bandit, HParams], tuple[TrainState, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class BanditMethod:
    """A registered bandit method: ``build(setup) -> Method`` and what programs need to know.

    Attributes:
      offline_pairs: trains on a fixed data set of preference pairs drawn at ``init`` (so
        ``num_pairs``, ``preferences`` and the offline batch size apply).
      preference_loss: trains with ``Setup.preference_loss``.
      doc: one line.
    """

    build: Callable[[Setup], Method]
    offline_pairs: bool = False
    preference_loss: bool = False
    doc: str = ""


# name -> BanditMethod; the methods register themselves in `kltrust.train.bandit_methods`.
METHODS: components.Registry[BanditMethod] = components.Registry(
    "bandit method", "kltrust.train.bandit_methods")


def register(name: str, *, offline_pairs: bool = False, preference_loss: bool = False
             ) -> Callable[[Callable[[Setup], Method]], Callable[[Setup], Method]]:
    """Decorator: registers ``build(setup) -> Method`` as bandit method ``name``."""

    def decorate(build: Callable[[Setup], Method]) -> Callable[[Setup], Method]:
        doc = (build.__doc__ or "").strip().splitlines()
        METHODS.register(name, BanditMethod(build, offline_pairs, preference_loss,
                                            doc[0] if doc else ""))
        return build

    return decorate


@flax.struct.dataclass
class Run:
    """What ``make_train`` returns: final state and logits [C, A], metrics [num_evals] per name."""

    state: TrainState
    logits: jax.Array
    metrics: dict[str, jax.Array]


# ---------------------------------------------------------------- the programs
# Each runs on the one host loop (`kltrust.train.bandit_run`: a compiled chunk of steps_per_eval
# steps, the exact evaluation between chunks), here without a workdir: nothing is written.


def make_train(setup: Setup) -> Callable[[jax.Array, Bandit, HParams], Run]:
    """``train(key, bandit, hparams) -> Run`` of one run (scalar hparams, one key).

    Compiled once per ``setup`` and argument shapes, so repeated calls (tests, several bandits of
    one shape) compile once.
    """
    return functools.partial(_run, setup, "single")


def make_sweep(setup: Setup) -> Callable[[jax.Array, Bandit, HParams], Run]:
    """``sweep(keys [S], bandit, hparams [H]) -> Run`` with leading axes [H, S], one compilation."""
    return functools.partial(_run, setup, "sweep")


def make_runs(setup: Setup) -> Callable[[jax.Array, Bandit, HParams], Run]:
    """``runs(keys [R], bandit, hparams [R, H]) -> Run`` with leading axes [R, H]: R runs, each
    with its own seed and H hyperparameter points (a sweep group of runs of one static setup)."""
    return functools.partial(_run, setup, "runs")


def _run(setup: Setup, layout: str, keys: jax.Array, bandit: Bandit, hp: HParams) -> Run:
    from kltrust.train import bandit_run  # it imports this module

    return bandit_run.run_keys(setup, layout, keys, bandit, hp).run


# The config side (schema, checks, the typed spec, Setup and HParams of a spec) is `bandit_config`,
# which imports this module; these thin forwards keep ``bandit.validate(config)`` etc. working.


def defaults():
    """`kltrust.train.bandit_config.defaults`."""
    from kltrust.train import bandit_config
    return bandit_config.defaults()


def validate(config) -> None:
    """`kltrust.train.bandit_config.validate`."""
    from kltrust.train import bandit_config
    bandit_config.validate(config)


def spec_from_config(config):
    """`kltrust.train.bandit_config.spec_from_config`: the checked config as a typed spec."""
    from kltrust.train import bandit_config
    return bandit_config.spec_from_config(config)


def setup_for(spec, run: str, num_pairs: int | None = None) -> Setup:
    """`kltrust.train.bandit_config.setup_for` (of a `BanditSpec`)."""
    from kltrust.train import bandit_config
    return bandit_config.setup_for(spec, run, num_pairs)


def hparams_for(spec, run: str) -> HParams:
    """`kltrust.train.bandit_config.hparams_for` (of a `BanditSpec`)."""
    from kltrust.train import bandit_config
    return bandit_config.hparams_for(spec, run)


def make_bandit(spec) -> Bandit:
    """`kltrust.train.bandit_config.make_bandit` (of a `BanditSpec`)."""
    from kltrust.train import bandit_config
    return bandit_config.make_bandit(spec)
