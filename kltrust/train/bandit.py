"""Training programs on the contextual-bandit testbed (`kltrust.tasks.bandit`), one per method.

Every method is a pair of pure functions (``Method``): ``init(key, bandit, hparams) -> TrainState``
and ``update(state, bandit, hparams) -> (state, metrics)``, one optimisation step. ``make_train``
wraps a method into one jitted program (``lax.scan`` over evaluation chunks of ``lax.scan`` over
steps) that reports the testbed's exact metrics after every chunk: E_x KL(π_θ‖π*_β), E[r],
E_x KL(π_θ‖π_ref), and the gap to the exact reward–KL frontier at the policy's own KL.
``make_sweep`` vmaps it over hyperparameters × seeds in one compilation. The method and every shape
are static (``Setup``); β, the learning rate, label smoothing and label noise are arrays
(``HParams``).

Methods (``METHODS``):

``pg_exact``
    Gradient ascent on the exact regularised objective J_β(π) = E_x[Σ_y π(y|x) r(x,y)] −
    β·E_x KL(π‖π_ref), with gradients through the exact expectation (no sampling).
``pg_reinforce``
    REINFORCE with the KL penalty in the reward, RLHF-style: ``batch_size`` contexts x ~ ρ,
    ``group_size`` actions y ~ π_θ(·|x) each, shaped reward r(x,y) − β·k1 with k1 = log π_θ(y|x) −
    log π_ref(y|x) (``kltrust.kl.estimate``; as a reward k1 gives the unbiased gradient of the KL),
    and a leave-one-out baseline within each context's group (none when ``group_size`` = 1).
``dpo``
    Offline preference optimisation (``kltrust.objectives.dpo``; the loss variant is ``Setup.loss``)
    on pairs drawn once from π_ref at ``init``: ``num_pairs`` Bradley–Terry samples
    (``preferences="sampled"``; ``batch_size`` of them per step with replacement, or all of them
    when ``batch_size`` is 0) or every (x, y_w, y_l) triple weighted by its probability
    (``preferences="exact"``, no sampling anywhere).
``ppo``
    PPO's clipped surrogate with a fixed-β exact KL(π_θ‖π_ref) penalty (`kltrust.objectives.ppo`),
    ``ppo_epochs`` epochs on each sampled batch.
``trpo``
    TRPO (`kltrust.objectives.trpo`) on exact expectations with a hard budget on KL(π_θ‖π_ref) of
    ``kl_budget`` × KL(π*_β‖π_ref), one trust-region step of size δ per update.
``dpo_online``
    Each step draws ``batch_size`` pairs from the current policy (gradient stopped), labels them by
    Bradley–Terry with the true reward, and takes one step of the ``Setup.loss`` loss.

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
import ml_collections
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from kltrust import kl
from kltrust.distributions import Categorical
from kltrust.errors import ConfigError, check, check_choice, unknown_key
from kltrust.objectives import dpo, ppo, trpo
from kltrust.tasks import bandit as bandit_lib
from kltrust.tasks.bandit import Bandit, PolicySpec, Preferences

PREFERENCE_MODES: tuple[str, ...] = ("sampled", "exact")
LR_SCHEDULES: tuple[str, ...] = ("cosine", "constant")

__all__ = [
    "HParams",
    "METHODS",
    "Method",
    "Run",
    "Setup",
    "TrainState",
    "hparams_for",
    "make_sweep",
    "make_train",
    "setup_for",
    "validate",
]


@flax.struct.dataclass
class HParams:
    """Hyperparameters as float32 arrays of one shape, so a sweep is one ``vmap``.

    Attributes:
      beta: β, the KL coefficient (of the penalty, or DPO's β) and the β of π*_β in the metrics.
      learning_rate: Adam's (initial) learning rate.
      label_smoothing: ε of the preference losses (``kltrust.objectives.dpo``).
      label_noise: η, the probability that a Bradley–Terry label is flipped.
      kl_budget: "trpo" only: the budget on E_x KL(π_θ‖π_ref) as a multiple of KL(π*_β‖π_ref), so
        that 1 makes π*_β the constrained optimum (the frontier point at β).
      delta, damping: "trpo" only: the per-step trust region KL(π_old‖π_θ) ≤ δ and the CG damping.
      clip_eps: "ppo" only: the clipping range ε.
    """

    beta: jax.Array
    learning_rate: jax.Array
    label_smoothing: jax.Array
    label_noise: jax.Array
    kl_budget: jax.Array
    delta: jax.Array
    damping: jax.Array
    clip_eps: jax.Array

    @classmethod
    def create(
        cls,
        beta: Any,
        learning_rate: Any = 0.1,
        label_smoothing: Any = 0.0,
        label_noise: Any = 0.0,
        kl_budget: Any = 1.0,
        delta: Any = 0.01,
        damping: Any = 0.001,
        clip_eps: Any = 0.2,
    ) -> HParams:
        """Broadcasts every field to one float32 shape (a scalar, or [n] for a sweep of n)."""
        values = [jnp.asarray(v, jnp.float32) for v in
                  (beta, learning_rate, label_smoothing, label_noise, kl_budget, delta, damping,
                   clip_eps)]
        return cls(*jnp.broadcast_arrays(*values))


@dataclasses.dataclass(frozen=True)
class Setup:
    """The static part of a run: method, loss variant, data mode and every shape."""

    method: str = "pg_exact"
    loss: str = "sigmoid"
    preferences: str = "sampled"
    num_pairs: int = 1024
    batch_size: int = 64
    group_size: int = 4
    ppo_epochs: int = 4
    num_steps: int = 2000
    steps_per_eval: int = 100
    lr_schedule: str = "cosine"
    policy: PolicySpec = PolicySpec()

    def __post_init__(self):
        for name, allowed in (("method", tuple(METHODS)), ("loss", dpo.VARIANTS),
                              ("preferences", PREFERENCE_MODES), ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"setup.{name} must be one of {allowed}, got {getattr(self, name)!r}.")
        for name, low in (("num_pairs", 1), ("batch_size", 0), ("group_size", 1), ("ppo_epochs", 1), ("num_steps", 1),
                          ("steps_per_eval", 1)):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= low):
                raise ValueError(f"setup.{name} must be an integer >= {low}, got {value!r}.")
        if self.num_steps % self.steps_per_eval:
            raise ValueError(f"setup.steps_per_eval must divide num_steps = {self.num_steps}, "
                             f"got {self.steps_per_eval}.")
        if self.batch_size == 0 and self.method != "dpo":
            raise ValueError("setup.batch_size may be 0 (the whole dataset) only for method 'dpo'.")

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
    """A training method as two pure functions (both traced inside ``make_train``'s jit)."""

    init: Callable[[jax.Array, Bandit, HParams], TrainState]
    update: Callable[[TrainState, Bandit, HParams], tuple[TrainState, dict[str, jax.Array]]]


@flax.struct.dataclass
class Run:
    """What ``make_train`` returns: final state and logits [C, A], metrics [num_evals] per name."""

    state: TrainState
    logits: jax.Array
    metrics: dict[str, jax.Array]


# ---------------------------------------------------------------- gradient methods

# loss(logits [C, A], key, data, bandit, hparams) -> (scalar loss, metrics)
LossFn = Callable[[jax.Array, jax.Array, Any, Bandit, HParams], tuple[jax.Array, dict[str, jax.Array]]]


def _optimizer(setup: Setup, hp: HParams, steps_per_update: int = 1) -> optax.GradientTransformation:
    learning_rate = hp.learning_rate
    if setup.lr_schedule == "cosine":
        learning_rate = optax.cosine_decay_schedule(hp.learning_rate, setup.num_steps * steps_per_update)
    return optax.adam(learning_rate)


def _gradient_method(
    setup: Setup,
    loss_fn: LossFn,
    make_data: Callable[[jax.Array, Bandit, HParams], Preferences] | None = None,
) -> Method:
    """A method that takes one Adam step on ``loss_fn`` of the policy's logits per update."""
    policy = bandit_lib.make_policy(setup.policy)

    def init(key: jax.Array, bandit: Bandit, hp: HParams) -> TrainState:
        k_params, k_data, k_run = jax.random.split(key, 3)
        params = policy.init(k_params, bandit)
        data = None if make_data is None else make_data(k_data, bandit, hp)
        return TrainState(params=params, opt_state=_optimizer(setup, hp).init(params), key=k_run,
                          step=jnp.zeros((), jnp.int32), data=data)

    def update(state: TrainState, bandit: Bandit, hp: HParams) -> tuple[TrainState, dict]:
        key, k_step = jax.random.split(state.key)
        objective = lambda params: loss_fn(policy.apply(params, bandit), k_step, state.data, bandit, hp)
        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        updates, opt_state = _optimizer(setup, hp).update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        state = state.replace(params=params, opt_state=opt_state, key=key, step=state.step + 1)
        return state, {"loss": loss, **metrics}

    return Method(init, update)


def _pg_exact(setup: Setup) -> Method:
    def loss_fn(logits, key, data, bandit, hp):
        del key, data
        return -bandit_lib.regularised_objective(bandit, logits, hp.beta), {}

    return _gradient_method(setup, loss_fn)


def _pg_reinforce(setup: Setup) -> Method:
    batch, group = setup.batch_size, setup.group_size

    def loss_fn(logits, key, data, bandit, hp):
        del data
        k_context, k_action = jax.random.split(key)
        context = jax.random.categorical(k_context, jnp.log(bandit.context_probs), shape=(batch,))
        logp = jax.nn.log_softmax(logits, axis=-1)[context]  # [B, A]
        logp_ref = jax.nn.log_softmax(bandit.ref_logits, axis=-1)[context]
        action = jax.random.categorical(k_action, jax.lax.stop_gradient(logp), shape=(group, batch)).T
        logp_action = jnp.take_along_axis(logp, action, axis=-1)  # [B, G]
        penalty = kl.estimate(jax.lax.stop_gradient(logp_action),
                              jnp.take_along_axis(logp_ref, action, axis=-1), "k1")
        reward = bandit.rewards[context[:, None], action]
        shaped = reward - hp.beta * penalty
        if group > 1:  # leave-one-out mean of the other actions of the same context
            baseline = (shaped.sum(axis=-1, keepdims=True) - shaped) / (group - 1)
        else:
            baseline = jnp.zeros_like(shaped)
        advantage = jax.lax.stop_gradient(shaped - baseline)
        loss = -jnp.mean(advantage * logp_action)
        return loss, {"sampled_reward": reward.mean(), "sampled_kl_k1": penalty.mean()}

    return _gradient_method(setup, loss_fn)


def _preference_loss(setup: Setup, logits: jax.Array, pairs: Preferences, bandit: Bandit,
                     hp: HParams) -> tuple[jax.Array, dict[str, jax.Array]]:
    logp = jax.nn.log_softmax(logits, axis=-1)
    logp_ref = jax.nn.log_softmax(bandit.ref_logits, axis=-1)
    c, w, l = pairs.context, pairs.chosen, pairs.rejected
    return dpo.loss(logp[c, w], logp[c, l], logp_ref[c, w], logp_ref[c, l], hp.beta,
                    variant=setup.loss, label_smoothing=hp.label_smoothing, weights=pairs.weight)


def _dpo_offline(setup: Setup) -> Method:
    full_batch = setup.preferences == "exact" or setup.batch_size == 0

    def make_data(key, bandit, hp):
        if setup.preferences == "exact":
            return bandit_lib.exact_preferences(bandit, hp.label_noise)
        return bandit_lib.sample_preferences(key, bandit, setup.num_pairs, hp.label_noise)

    def loss_fn(logits, key, data, bandit, hp):
        pairs = data
        if not full_batch:
            index = jax.random.randint(key, (setup.batch_size,), 0, setup.num_pairs)
            pairs = jax.tree.map(lambda v: v[index], data)
        return _preference_loss(setup, logits, pairs, bandit, hp)

    return _gradient_method(setup, loss_fn, make_data)


def _dpo_online(setup: Setup) -> Method:
    def loss_fn(logits, key, data, bandit, hp):
        del data
        pairs = bandit_lib.sample_preferences(key, bandit, setup.batch_size, hp.label_noise,
                                              policy_logits=jax.lax.stop_gradient(logits))
        return _preference_loss(setup, logits, pairs, bandit, hp)

    return _gradient_method(setup, loss_fn)


def _ppo(setup: Setup) -> Method:
    """PPO's clipped surrogate with a fixed-β exact KL(π_θ‖π_ref) penalty in the loss.

    The loss is `kltrust.objectives.ppo.loss` itself (variant clip + fixed penalty anchored to the
    reference, advantages *not* normalised: rescaling them would change the regularised objective
    and so its optimum). Each update samples ``batch_size`` contexts × ``group_size`` actions from
    π_old, takes the leave-one-out baseline of the raw reward, and runs ``ppo_epochs`` full-batch Adam
    steps. At θ = θ_old the loss gradient is −∇(E[r] − β·KL(π‖π_ref)), so π*_β is its fixed point.
    """
    policy = bandit_lib.make_policy(setup.policy)
    batch, group, epochs = setup.batch_size, setup.group_size, setup.ppo_epochs
    variant = ppo.Variant(clip=True, kl_penalty="fixed", kl_anchor="reference",
                          normalize_advantages=False)

    def init(key: jax.Array, bandit: Bandit, hp: HParams) -> TrainState:
        k_params, k_run = jax.random.split(key)
        params = policy.init(k_params, bandit)
        return TrainState(params=params, opt_state=_optimizer(setup, hp, epochs).init(params),
                          key=k_run, step=jnp.zeros((), jnp.int32), data=None)

    def update(state: TrainState, bandit: Bandit, hp: HParams) -> tuple[TrainState, dict]:
        key, k_context, k_action = jax.random.split(state.key, 3)
        old_logits = policy.apply(state.params, bandit)
        context = jax.random.categorical(k_context, jnp.log(bandit.context_probs), shape=(batch,))
        action = jax.random.categorical(k_action, old_logits[context], shape=(group, batch)).T
        reward = bandit.rewards[context[:, None], action]  # [B, G]
        baseline = (reward.sum(-1, keepdims=True) - reward) / max(group - 1, 1) if group > 1 else 0.0
        context, action = jnp.repeat(context, group), action.reshape(-1)
        old = Categorical(old_logits[context])
        samples = ppo.Batch(
            obs=context, action=action, log_prob=old.log_prob(action), policy=old,
            advantage=(reward - baseline).reshape(-1), target=jnp.zeros(batch * group),
            reference=Categorical(bandit.ref_logits[context]),
        )
        apply_fn = lambda params, ctx: (Categorical(policy.apply(params, bandit)[ctx]),
                                        jnp.zeros(ctx.shape))
        coefs = ppo.LossCoefs(clip_eps=hp.clip_eps, beta=hp.beta, vf_coef=jnp.zeros(()),
                              ent_coef=jnp.zeros(()))
        optimizer = _optimizer(setup, hp, epochs)

        def epoch(carry, _):
            params, opt_state = carry
            (loss, metrics), grads = jax.value_and_grad(ppo.loss, has_aux=True)(
                params, samples, coefs, apply_fn=apply_fn, variant=variant)
            updates, opt_state = optimizer.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), opt_state), (loss, metrics)

        (params, opt_state), (losses, metrics) = jax.lax.scan(
            epoch, (state.params, state.opt_state), None, length=epochs)
        state = state.replace(params=params, opt_state=opt_state, key=key, step=state.step + 1)
        return state, {"loss": losses[-1], "clip_frac": metrics["clip_frac"][-1],
                       "sampled_reward": reward.mean()}

    return Method(init, update)


def _trpo(setup: Setup) -> Method:
    """TRPO with a hard budget on E_x KL(π_θ‖π_ref), on exact expectations (no sampling).

    `kltrust.objectives.trpo.step` with the reference anchor, on the batch of every (x, y) weighted by
    ρ(x)·π_old(y|x) (so the surrogate, its gradient, the Fisher and both KLs are exact), advantages
    r(x, y) − V_old(x). The budget is ``kl_budget`` × KL(π*_β‖π_ref): at 1 the constrained optimum
    max E[r] s.t. KL ≤ budget is π*_β itself, which puts TRPO on the same footing as the penalty
    methods. Each update is one trust-region step of size δ; no optimiser state.
    """
    policy = bandit_lib.make_policy(setup.policy)
    variant = trpo.Variant(line_search=True, kl_anchor="reference", normalize_advantages=False)

    def init(key: jax.Array, bandit: Bandit, hp: HParams) -> TrainState:
        k_params, k_run = jax.random.split(key)
        return TrainState(params=policy.init(k_params, bandit), opt_state=(), key=k_run,
                          step=jnp.zeros((), jnp.int32), data=None)

    def update(state: TrainState, bandit: Bandit, hp: HParams) -> tuple[TrainState, dict]:
        num_contexts, num_actions = bandit.rewards.shape
        context = jnp.repeat(jnp.arange(num_contexts), num_actions)
        action = jnp.tile(jnp.arange(num_actions), num_contexts)
        flat, unravel = ravel_pytree(state.params)
        policy_fn = lambda f, ctx: Categorical(policy.apply(unravel(f), bandit)[ctx])
        old_logp = jax.nn.log_softmax(policy.apply(state.params, bandit), axis=-1)
        value = jnp.sum(jnp.exp(old_logp) * bandit.rewards, axis=-1, keepdims=True)
        batch = trpo.Batch(
            obs=context, action=action, log_prob=old_logp.reshape(-1),
            policy=Categorical(old_logp[context]), advantage=(bandit.rewards - value).reshape(-1),
            reference=Categorical(bandit.ref_logits[context]),
            weight=(bandit.context_probs[:, None] * jnp.exp(old_logp)).reshape(-1),
        )
        budget = hp.kl_budget * bandit_lib.kl_to_reference(
            bandit, bandit_lib.optimal_policy(bandit, hp.beta))
        coefs = trpo.StepCoefs(delta=hp.delta, kl_budget=budget, damping=hp.damping,
                               backtrack_factor=jnp.float32(0.8), cg_residual_tol=jnp.float32(1e-10))
        new_flat, metrics = trpo.step(policy_fn, flat, batch, coefs, variant=variant)
        state = state.replace(params=unravel(new_flat), step=state.step + 1)
        keep = ("accepted", "backtracks", "kl_old", "kl_ref", "kl_budget", "cg_relative_residual")
        return state, {name: metrics[name] for name in keep}

    return Method(init, update)


# ---------------------------------------------------------------- method registry
#
# name -> builder(setup) -> Method. A new method only needs a builder here; make_train, make_sweep,
# validate and the bandit_frontier experiment pick it up by name (a run spec in configs/bandit.py
# selects it with `method=NAME`).
METHODS: dict[str, Callable[[Setup], Method]] = {
    "pg_exact": _pg_exact,
    "pg_reinforce": _pg_reinforce,
    "dpo": _dpo_offline,
    "dpo_online": _dpo_online,
    "ppo": _ppo,
    "trpo": _trpo,
}


# ---------------------------------------------------------------- the compiled programs


def _train_fn(setup: Setup) -> Callable[[jax.Array, Bandit, HParams], Run]:
    method = METHODS[setup.method](setup)
    policy = bandit_lib.make_policy(setup.policy)

    def train(key: jax.Array, bandit: Bandit, hp: HParams) -> Run:
        def step(state, _):
            return method.update(state, bandit, hp)

        def chunk(state, _):
            state, step_metrics = jax.lax.scan(step, state, None, length=setup.steps_per_eval)
            logits = policy.apply(state.params, bandit)
            metrics = bandit_lib.exact_metrics(bandit, logits, hp.beta)
            metrics.update({name: values[-1] for name, values in step_metrics.items()})
            metrics["step"] = state.step
            return state, metrics

        state = method.init(key, bandit, hp)
        state, metrics = jax.lax.scan(chunk, state, None, length=setup.num_evals)
        return Run(state=state, logits=policy.apply(state.params, bandit), metrics=metrics)

    return train


@functools.lru_cache(maxsize=None)
def make_train(setup: Setup) -> Callable[[jax.Array, Bandit, HParams], Run]:
    """One jitted run ``train(key, bandit, hparams) -> Run`` (scalar hparams, one key).

    Cached per ``setup``, so repeated calls (tests, several bandits of one shape) compile once.
    """
    return jax.jit(_train_fn(setup))


@functools.lru_cache(maxsize=None)
def make_sweep(setup: Setup) -> Callable[[jax.Array, Bandit, HParams], Run]:
    """``sweep(keys [S], bandit, hparams [H]) -> Run`` with leading axes [H, S], one compilation."""
    train = _train_fn(setup)
    over_seeds = jax.vmap(train, in_axes=(0, None, None))
    return jax.jit(jax.vmap(over_seeds, in_axes=(None, None, 0)))


# ---------------------------------------------------------------- config -> setup


_check = check  # config.KEY = VALUE: must be ALLOWED (a ConfigError)

# Every key of a bandit config (configs/bandit.py), by group ("" is the top level), and of each
# entry of ``run_specs``: anything else is a typo, refused with a did-you-mean.
CONFIG_KEYS = {
    "": ("algorithm", "seed", "num_seeds", "bandit", "policy", "num_steps", "steps_per_eval",
         "lr_schedule", "batch_size", "group_size", "ppo_epochs", "offline_batch_size", "betas",
         "num_pairs", "runs", "run_specs", "hparams"),
    "bandit": ("seed", "num_contexts", "num_actions", "reward_scale", "ref_scale", "context_scale"),
    "policy": ("kind", "hidden", "activation"),
    "hparams": ("learning_rate", "kl_budget", "delta", "damping", "clip_eps"),
}
RUN_SPEC_KEYS = ("method", "loss", "preferences", "label_noise", "label_smoothing")


def _check_keys(config: ml_collections.ConfigDict) -> None:
    groups = {"": config, **{g: config.get(g) for g in CONFIG_KEYS if g}}
    groups |= {f"run_specs.{name}": spec for name, spec in (config.get("run_specs") or {}).items()}
    for group, node in groups.items():
        allowed = CONFIG_KEYS.get(group, RUN_SPEC_KEYS)
        prefix = f"{group}." if group else ""
        _check(hasattr(node, "keys"), group, node, "a group of fields (a ConfigDict)")
        for key in node.keys():
            if key not in allowed:
                raise unknown_key(f"{prefix}{key}", allowed)
        missing = [key for key in allowed if key not in node]
        if missing:
            raise ConfigError(f"config.{prefix}{missing[0]}: missing; the keys here are "
                              f"{sorted(allowed)}.")


def _is_int(value: Any, low: int) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= low


def _all_in(values: Any, low: float, high: float, high_open: bool = False, low_open: bool = False) -> bool:
    try:
        arr = np.asarray(values, np.float64)
    except (TypeError, ValueError):  # not numbers at all
        return False
    ok = np.isfinite(arr) & ((arr > low) if low_open else (arr >= low))
    ok &= (arr < high) if high_open else (arr <= high)
    return arr.size > 0 and bool(np.all(ok))


def validate(config: ml_collections.ConfigDict) -> None:
    """Rejects a bad bandit config with one message naming the key, its value and what it must be.

    Runs on the host before anything is traced or compiled.
    """
    _check_keys(config)
    b = config.bandit
    _check(_is_int(b.num_contexts, 1), "bandit.num_contexts", b.num_contexts, "an integer >= 1")
    _check(_is_int(b.num_actions, 2), "bandit.num_actions", b.num_actions, "an integer >= 2")
    for name in ("reward_scale", "ref_scale", "context_scale"):
        _check(_all_in(b[name], 0.0, np.inf, high_open=True), f"bandit.{name}", b[name], "finite and >= 0")
    _check(_is_int(b.seed, 0), "bandit.seed", b.seed, "an integer >= 0")
    p = config.policy
    check_choice(p.kind, bandit_lib.POLICY_KINDS, "policy.kind")
    check_choice(p.activation, bandit_lib.ACTIVATIONS, "policy.activation")
    _check(len(p.hidden) >= 1 and all(_is_int(h, 1) for h in p.hidden), "policy.hidden", p.hidden,
           "a non-empty tuple of integers >= 1")
    _check(_is_int(config.seed, 0), "seed", config.seed, "an integer >= 0")
    _check(_is_int(config.num_seeds, 1), "num_seeds", config.num_seeds, "an integer >= 1")
    _check(_is_int(config.num_steps, 1), "num_steps", config.num_steps, "an integer >= 1")
    _check(_is_int(config.steps_per_eval, 1) and config.num_steps % config.steps_per_eval == 0,
           "steps_per_eval", config.steps_per_eval, f"an integer >= 1 dividing num_steps = {config.num_steps}")
    check_choice(config.lr_schedule, LR_SCHEDULES, "lr_schedule")
    _check(_is_int(config.batch_size, 1), "batch_size", config.batch_size, "an integer >= 1")
    _check(_is_int(config.offline_batch_size, 0), "offline_batch_size", config.offline_batch_size,
           "an integer >= 0 (0 = every pair each step)")
    _check(_is_int(config.group_size, 1), "group_size", config.group_size, "an integer >= 1")
    _check(len(config.betas) >= 1 and _all_in(config.betas, 0.0, np.inf, low_open=True, high_open=True),
           "betas", config.betas, "a non-empty tuple of finite numbers > 0")
    _check(len(config.num_pairs) >= 1 and all(_is_int(n, 1) for n in config.num_pairs),
           "num_pairs", config.num_pairs, "a non-empty tuple of integers >= 1")
    _check(_all_in(config.hparams.learning_rate, 0.0, np.inf, low_open=True, high_open=True),
           "hparams.learning_rate", config.hparams.learning_rate, "finite and > 0")
    for name in ("kl_budget", "delta", "clip_eps"):
        _check(_all_in(config.hparams[name], 0.0, np.inf, low_open=True, high_open=True),
               f"hparams.{name}", config.hparams[name], "finite and > 0")
    _check(_all_in(config.hparams.damping, 0.0, np.inf, high_open=True), "hparams.damping",
           config.hparams.damping, "finite and >= 0")
    _check(_is_int(config.ppo_epochs, 1), "ppo_epochs", config.ppo_epochs, "an integer >= 1")
    _check(len(config.runs) >= 1 and len(set(config.runs)) == len(config.runs), "runs", config.runs,
           "a non-empty tuple of distinct run names")
    for name in config.runs:
        _check(name in config.run_specs, "runs", config.runs,
               f"names of config.run_specs ({', '.join(config.run_specs)}); {name!r} is not one")
        spec, key = config.run_specs[name], f"run_specs.{name}"
        check_choice(spec.method, tuple(METHODS), f"{key}.method")
        check_choice(spec.loss, dpo.VARIANTS, f"{key}.loss")
        check_choice(spec.preferences, PREFERENCE_MODES, f"{key}.preferences")
        _check(_all_in(spec.label_noise, 0.0, 0.5, high_open=True), f"{key}.label_noise",
               spec.label_noise, "in [0, 0.5)")
        robust = spec.loss == "robust"
        _check(_all_in(spec.label_smoothing, 0.0, 0.5, high_open=robust), f"{key}.label_smoothing",
               spec.label_smoothing, "in [0, 0.5)" if robust else "in [0, 0.5]")


def setup_for(config: ml_collections.ConfigDict, run: str, num_pairs: int | None = None) -> Setup:
    """The static ``Setup`` of run ``run`` of a validated config (``num_pairs`` for offline sampled DPO)."""
    spec = config.run_specs[run]
    offline = spec.method == "dpo"
    return Setup(
        method=spec.method,
        loss=spec.loss,
        preferences=spec.preferences,
        num_pairs=int(num_pairs if num_pairs is not None else config.num_pairs[0]),
        batch_size=int(config.offline_batch_size if offline else config.batch_size),
        group_size=int(config.group_size),
        ppo_epochs=int(config.ppo_epochs),
        num_steps=int(config.num_steps),
        steps_per_eval=int(config.steps_per_eval),
        lr_schedule=config.lr_schedule,
        policy=PolicySpec(kind=config.policy.kind, hidden=tuple(config.policy.hidden),
                          activation=config.policy.activation),
    )


def hparams_for(config: ml_collections.ConfigDict, run: str) -> HParams:
    """The ``HParams`` of run ``run``, one entry per β of ``config.betas`` (shape [len(betas)])."""
    spec = config.run_specs[run]
    return HParams.create(
        beta=np.asarray(config.betas, np.float32),
        learning_rate=config.hparams.learning_rate,
        label_smoothing=spec.label_smoothing,
        label_noise=spec.label_noise,
        kl_budget=config.hparams.kl_budget,
        delta=config.hparams.delta,
        damping=config.hparams.damping,
        clip_eps=config.hparams.clip_eps,
    )


def make_bandit(config: ml_collections.ConfigDict) -> Bandit:
    """The bandit of ``config.bandit``."""
    b = config.bandit
    return bandit_lib.make(int(b.seed), int(b.num_contexts), int(b.num_actions),
                           float(b.reward_scale), float(b.ref_scale), float(b.context_scale))
