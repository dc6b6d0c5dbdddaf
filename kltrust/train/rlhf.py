"""Policy optimisation on tokens against the proxy reward model, one jitted update per method.

The trainer holds what every method shares (rollouts, minibatch SGD, metrics, the non-finite guard,
the KL-guard back-off); each method's update and what programs need to know about it live in its
own module of `kltrust.train.methods`, registered in ``METHODS``. The built-in methods
(``Static.method``) and where each may put the KL to the reference (``Static.kl_placement``):

    ppo         reward (default; Ziegler et al. 2019: r_t = −β·k_t per token, + proxy at the last
                token, GAE over tokens with a value head), loss (β·k in PPO's loss), or none
    grpo, rloo  loss (default for GRPO; Shao et al. 2024: β·k3 per token in the loss), reward
                (default for RLOO; Ahmadian et al. 2024: the sequence reward is proxy − β·Σ_t k_t),
                or none; group baselines over ``group_size`` samples per prompt, no critic
    trpo        budget: the trust region KL(π_old‖π_θ) ≤ δ plus KL(π_θ‖π_ref) ≤ kl_budget_per_token (both the
                per-token mean exact KL), with RLOO sequence advantages; or none (no budget)
    dpo         implicit (any registered preference loss, ``Static.preference_loss``: DPO, IPO,
                SimPO, ..., on the offline preference data set; Rafailov et al. 2023)
    dpo_online  implicit (pairs sampled from the current policy, labelled by the proxy: iterative
                / online DPO, as in Guo et al. 2024 with the reward model as the annotator)

The KL is applied in exactly one place, chosen statically: the objectives are handed a β only where
the placement puts it, so it can never be applied twice. ``kl_estimator`` picks what is applied
(``exact`` from full logits, or k1/k2/k3 at the sampled tokens); the exact sequence KL is always
reported beside it whenever the reference is evaluated. The reference is evaluated in training
only when the placement needs it (``kl_placement="none"`` never runs it); evaluation runs it unless
``eval_kl`` is off.

β comes from a controller (any kind of `kltrust.controllers`; Ziegler et al.'s is ``proportional``)
fed the mean exact sequence KL of each batch; its knobs are ``HParams.controller``. All numeric
hyperparameters are arrays in `HParams`, so a sweep over seeds × (β, lr, ε, δ, …) is one vmapped
program.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from kltrust import components, controllers, domains, guards, kl, sharding, shuffle
from kltrust import reference as references
from kltrust import rollout as rollouts
from kltrust.models.interface import LanguageModel, RewardModel
from kltrust.objectives import preference
from kltrust.tasks import interface as tasks
from kltrust.train import anchor
from kltrust.train import tokens as tok
from kltrust.train.methods import METHODS

def kl_estimators() -> tuple[str, ...]:
    """``rl.kl_estimator``'s choices: "exact" and every registered `kl` estimator (at call time)."""
    return ("exact",) + kl.estimators()


@components.hparams
class HParams:
    """Every numeric knob, a float32 array (leading run axis in sweeps).

    Each knob declares its config default (``config.rl.hparams.NAME``) and allowed range once; the
    config layer (`kltrust.train.token_config`) derives ``defaults()``, the range checks and the
    parsing from these declarations, and keeps the method-dependent rules (β > 0 for DPO and a
    multiplicative controller) beside them. The field order is the pytree's leaf order: keep it.
    """

    learning_rate: jax.Array = components.knob(
        1e-4, "Adam's step size of the policy (and its value head)", low=0, low_open=True)
    beta: jax.Array = components.knob(
        0.1, "the controller's initial β (PPO/GRPO/RLOO) or the preference loss's β (DPO); "
        "> 0 for DPO and a multiplicative controller", low=0)
    # The knobs of the β controller ``Static.controller`` (its module's HParams); in the config
    # every registered controller's group, so --config.rl.hparams.controller.pid.kp=1 always parses.
    controller: Any = components.group(controllers.REGISTRY, "the β controller's knobs")
    clip_eps: jax.Array = components.knob(
        0.2, "ε of the clipped ratio 1 ± ε (PPO, GRPO, RLOO)", low=0, low_open=True)
    gamma: jax.Array = components.knob(1.0, "discount γ over tokens (PPO's GAE)", low=0, high=1)
    gae_lambda: jax.Array = components.knob(0.95, "GAE λ over tokens (PPO)", low=0, high=1)
    vf_coef: jax.Array = components.knob(0.5, "weight of the value loss (PPO)", low=0)
    ent_coef: jax.Array = components.knob(0.0, "weight of the entropy bonus (PPO)", low=0)
    delta: jax.Array = components.knob(
        0.01, "TRPO's trust region: KL(π_old‖π_θ) ≤ δ, the per-token mean", low=0, low_open=True)
    kl_budget_per_token: jax.Array = components.knob(
        0.1, "TRPO's budget on the mean per-token KL to the reference, nats", low=0,
        low_open=True)
    damping: jax.Array = components.knob(
        0.1, "TRPO's damping of the Fisher-vector product", low=0)
    # `kltrust.kl.estimate`'s clamps of the applied estimator (reward or loss; not "exact").
    kl_log_ratio_clamp: jax.Array = components.knob(
        math.inf, "the estimator's log-ratio clamp c: δ clipped to [-c, c]; inf: none", low=0,
        low_open=True, allow_inf=True)
    kl_value_clamp: jax.Array = components.knob(
        math.inf, "the estimator's output clamp v: each term clipped to [-v, v]; inf: none", low=0,
        low_open=True, allow_inf=True)
    # A moving reference (`Static.ref_sync`, `kltrust.reference`); TRL's defaults (512, 0.6).
    ref_sync_every: jax.Array = components.knob(
        512, "updates between reference syncs τ (rl.ref_sync; 1 with a small α: an EMA)", low=1)
    ref_sync_alpha: jax.Array = components.knob(
        0.6, "the sync's mixup α: θ_ref ← α·θ + (1 − α)·θ_ref (1: hard sync)", low=0,
        low_open=True, high=1)
    clip_eps_high: jax.Array = components.knob(
        0.28, "the upper clip ε_high of DAPO/GSPO's range [1 − ε, 1 + ε_high]", low=0,
        low_open=True)
    # The knobs of the preference loss ``Static.preference_loss`` (dpo, dpo_online); in the config
    # every registered loss's group (e.g. preference.simpo.gamma).
    preference: Any = components.group(preference.LOSSES, "the preference loss's knobs")


@dataclasses.dataclass(frozen=True)
class Static:
    """Everything a policy program is compiled for. The policy and the reference are
    `kltrust.models.interface.LanguageModel` s (hashable), used through that protocol's members
    only; the task's sizes and token ids come from the `TokenTask` in `tok.Frozen`."""

    method: str
    policy: LanguageModel
    reference: LanguageModel
    reward_model: RewardModel  # the proxy reward (its ``score``)
    kl_placement: str
    kl_estimator: str
    controller: str
    batch_prompts: int  # prompts per update (pairs per update for DPO)
    group_size: int  # samples per prompt (GRPO/RLOO/TRPO: ≥ 2; DPO online: 2; PPO: 1)
    epochs: int
    minibatches: int
    updates_per_eval: int
    max_grad_norm: float
    preference_loss: str = "sigmoid"  # a name in `kltrust.objectives.preference.LOSSES`
    cg_iters: int = 10
    max_backtracks: int = 10
    token_average: str = "sequence"
    # Rows per chunk of the teacher-forced statistics (`kltrust.models.chunked`); 0: whole batch.
    # > 0 keeps the [B, L, V] logits of the policy and the reference out of the rollout (a large
    # vocabulary's memory); methods that need full distributions recompute them per minibatch.
    stats_chunk: int = 0
    # The rollout's policy statistics from the sampler's own logits (`rollout.token_rollout`'s
    # ``sampler_stats``): one teacher-forced forward of the policy fewer per update.
    sampler_stats: bool = False
    # The reference follows the policy (`kltrust.reference`: every ``hp.ref_sync_every`` updates,
    # θ_ref ← α·θ + (1 − α)·θ_ref; TR-DPO, an EMA): kept in `TrainState.ref_params`.
    ref_sync: bool = False
    # TRPO's recovery step when the reference budget is exceeded (`kltrust.objectives.trpo`).
    trpo_recovery: bool = False
    # One KL envelope per prompt domain (`kltrust.domains`): one controller β per domain, steered
    # to s_d·kl_target, or TRPO's budget s_d·kl_budget_per_token per domain, with s_d
    # ``tok.Frozen.domain_kl_scale``. False: one global β or budget.
    per_domain: bool = False

    @property
    def batch_size(self) -> int:
        return self.batch_prompts * self.group_size

    @property
    def uses_reference(self) -> bool:
        return self.kl_placement != "none"


@flax.struct.dataclass
class TrainState:
    params: Any
    opt_state: Any
    controller: controllers.ControllerState
    key: jax.Array
    update_step: jax.Array
    bad_updates: jax.Array  # consecutive updates skipped as non-finite (`kltrust.guards`)
    # The moving reference's parameters when `Static.ref_sync` (else None: `tok.Frozen`'s).
    ref_params: Any = None


def _controller(static: Static) -> controllers.Controller:
    return controllers.get(static.controller)


def init_controller(static: Static, hp: HParams, frozen: tok.Frozen) -> controllers.ControllerState:
    """The β controller's state: one, or with ``per_domain`` one per domain ([D] leaves, each
    domain's target scaled by ``frozen.domain_kl_scale``, `kltrust.domains.init_controller`)."""
    if static.per_domain:
        return domains.init_controller(_controller(static), hp.beta, hp.controller,
                                       frozen.domain_kl_scale)
    return _controller(static).init(hp.beta, hp.controller)


@dataclasses.dataclass(frozen=True)
class Trainer:
    """One method's pure functions. With a ``mesh``, sequences (prompts, rollouts, minibatches,
    pairs) are split over data × fsdp and the policy's parameters and Adam state are laid out by
    the policy's own ``param_shardings`` (the small decoder's: FSDP when the mesh's fsdp axis is
    > 1); without one, nothing is constrained (one device). The task (prompts' sizes, EOS/PAD, the
    gold reward) is read from ``frozen.task`` through `kltrust.tasks.interface.TokenTask`."""

    static: Static
    mesh: jax.sharding.Mesh | None = None

    def constrain_batch(self, tree: Any) -> Any:
        """``tree`` laid out as a batch (split over data × fsdp) when there is a mesh."""
        return tree if self.mesh is None else sharding.batch_constraint(self.mesh)(tree)

    def constrain_params(self, tree: Any) -> Any:
        """``tree`` laid out like the policy's parameters (FSDP or replicated)."""
        if self.mesh is None:
            return tree
        return jax.lax.with_sharding_constraint(tree, self.policy.param_shardings(self.mesh, tree))

    @property
    def policy(self) -> LanguageModel:
        return self.static.policy

    @property
    def reference(self) -> LanguageModel:
        return self.static.reference

    @property
    def param_labels(self):
        """The policy's optional ``param_labels`` member ("train" / "frozen" per leaf; a LoRA
        model's base is frozen), None for a policy that trains every leaf."""
        return getattr(self.policy, "param_labels", None)

    def optimizer(self) -> optax.GradientTransformation:
        """Adam (`tok.adam`); a policy with the optional ``param_labels`` member (a LoRA model)
        gets no optimiser state and no update on the leaves it labels "frozen"."""
        return tok.adam(self.static.max_grad_norm, self.param_labels)

    # ------------------------------------------------------------ init

    def init(self, seed: jax.Array, hp: HParams, frozen: tok.Frozen) -> TrainState:
        """The train state before the first update: the policy started from the reference, the
        optimiser at the run's learning rate, the controller's state, the run's key.
        """
        key, init_key = jax.random.split(jax.random.PRNGKey(seed))
        params = self.constrain_params(self.policy.start_from(frozen.ref_params, init_key))
        opt_state = self.constrain_params(
            tok.set_learning_rate(self.optimizer().init(params), hp.learning_rate))
        ref_params = None
        if self.static.ref_sync:  # checked here, at trace time: the policy must hold its leaves
            references.as_reference(params, frozen.ref_params)
            ref_params = frozen.ref_params
        return TrainState(params, opt_state, init_controller(self.static, hp, frozen), key,
                          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32), ref_params)

    # ------------------------------------------------------------ shared pieces

    def rollout(self, params, prompts, key, frozen, with_reference: bool):
        """Samples responses to ``prompts`` (`kltrust.rollout.token_rollout`), the reference
        evaluated alongside only ``with_reference``."""
        task = frozen.task
        return rollouts.token_rollout(
            self.policy.decode, self.policy.sequence, params, prompts,
            self.policy.empty_cache(prompts.shape[0]), key, max_new_tokens=task.response_len,
            eos_id=task.eos_id, pad_id=task.pad_id,
            ref_sequence_fn=self.reference.sequence if with_reference else None,
            ref_params=frozen.ref_params if with_reference else None,
            stats_chunk=self.static.stats_chunk, sampler_stats=self.static.sampler_stats)

    def full_logits(self, params, frozen: tok.Frozen, prompts, response, reference: bool):
        """[B, L, V] logits of the policy at ``params`` (or, ``reference``, of the reference) at
        every response position, constant under differentiation: the full distributions a method
        needs after a chunked rollout (``stats_chunk`` > 0 keeps none), for a minibatch's rows."""
        model, p = (self.reference, frozen.ref_params) if reference else (self.policy, params)
        logits, _ = rollouts.response_logits(model.sequence, p, prompts, response)
        return jax.lax.stop_gradient(logits)

    def token_kl(self, ro: rollouts.TokenRollout, hp: HParams) -> jax.Array:
        """The per-token KL value the method applies (``kl_estimator``), 0 at padding."""
        if self.static.kl_estimator == "exact":
            return ro.kl
        return kl.estimate(ro.log_prob, ro.ref_log_prob, self.static.kl_estimator,
                           log_ratio_clamp=hp.kl_log_ratio_clamp,
                           value_clamp=hp.kl_value_clamp) * ro.mask

    def logits(self, params, prompts, response):
        """(logits, values) of the policy at every response position."""
        return rollouts.response_logits(self.policy.sequence, params, prompts, response)

    def minibatch_sgd(self, state: TrainState, batch: Any, loss_fn, key: jax.Array):
        """``epochs`` × ``minibatches`` Adam steps of ``loss_fn(params, minibatch)`` over sequences."""
        s = self.static
        optimizer = self.optimizer()
        size = jax.tree.leaves(batch)[0].shape[0]

        def epoch(carry, epoch_key):
            order = shuffle.permutation(epoch_key, size).reshape(s.minibatches, -1)

            def minibatch(carry, idx):
                params, opt_state = carry
                sub = self.constrain_batch(jax.tree.map(lambda x: x[idx], batch))
                (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, sub)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                metrics["grad_norm"] = optax.tree.norm(grads)
                return (optax.apply_updates(params, updates), opt_state), metrics

            return jax.lax.scan(minibatch, carry, order)

        (params, opt_state), metrics = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(key, s.epochs))
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    def sample_prompts(self, frozen: tok.Frozen, key: jax.Array) -> jax.Array:
        """``batch_prompts`` training prompts, each repeated ``group_size`` times."""
        s = self.static
        idx = jax.random.randint(key, (s.batch_prompts,), 0, frozen.prompts.shape[0])
        return self.constrain_batch(jnp.repeat(frozen.prompts[idx], s.group_size, axis=0))

    def sample_and_score(self, state: TrainState, frozen: tok.Frozen, num_keys: int,
                         with_reference: bool):
        """What every sampling method starts with: ``state.key`` split in ``num_keys`` (the next
        state's key, the prompts' key, the sampling key, and the rest for the method), prompts
        sampled, responses rolled out and scored by the proxy. Returns (next key, the remaining
        keys, prompts, rollout, proxy scores)."""
        key, k_prompt, k_sample, *rest = jax.random.split(state.key, num_keys)
        prompts = self.sample_prompts(frozen, k_prompt)
        ro = self.rollout(state.params, prompts, k_sample, frozen, with_reference)
        s = self.static
        proxy = s.reward_model.score(frozen.rm_params, prompts, ro.response, ro.mask)
        return key, rest, prompts, ro, proxy

    def row_beta(self, state: TrainState, ro: rollouts.TokenRollout, frozen: tok.Frozen
                 ) -> jax.Array:
        """The controller's β for each sequence of ``ro``: the global β (a scalar), or with
        ``per_domain`` β_d of each sequence's prompt domain, [B]."""
        beta = state.controller.beta
        if not self.static.per_domain:
            return beta
        return domains.per_row(beta, domains.prompt_domains(frozen.task, ro.prompt))

    def observed_kl(self, ro: rollouts.TokenRollout, frozen: tok.Frozen) -> Any:
        """What `finish` feeds the controller: the batch's mean exact sequence KL, or with
        ``per_domain`` (each domain's mean [D], its sequence count [D])."""
        seq_kl = kl.sum_per_sequence(ro.kl, ro.mask)
        if not self.static.per_domain:
            return seq_kl.mean()
        return domains.domain_means(seq_kl, domains.prompt_domains(frozen.task, ro.prompt),
                                    domains.num_domains(frozen.task))

    def common_metrics(self, ro, proxy, frozen, beta, hp: HParams) -> dict[str, jax.Array]:
        """Proxy, gold, entropy, length, β and (when the reference ran) the exact and the applied
        sequence KL of a rollout; with prompt domains, proxy, gold and exact KL per domain too
        (``NAME_dD``, `kltrust.domains.metrics`), and β_d when β is per domain ("beta" is then
        their mean)."""
        gold = tasks.gold_reward(frozen.task, ro.prompt, ro.response, ro.mask)
        metrics = {
            "proxy": proxy.mean(),
            "gold": gold.mean(),
            "entropy": kl.mean_per_token(ro.entropy, ro.mask),
            "length": ro.mask.sum(-1).mean(),
            "beta": jnp.mean(beta),
        }
        per_row = {"proxy": proxy, "gold": gold}
        if ro.kl is not None:
            per_row["kl"] = kl.sum_per_sequence(ro.kl, ro.mask)
            metrics["kl"] = per_row["kl"].mean()
            metrics["kl_optimised"] = kl.sum_per_sequence(self.token_kl(ro, hp), ro.mask).mean()
        count = domains.num_domains(frozen.task)
        metrics.update(domains.metrics(per_row, domains.prompt_domains(frozen.task, ro.prompt),
                                       count))
        if jnp.ndim(beta) == 1:
            metrics.update({f"beta_d{d}": beta[d] for d in range(count)})
        return metrics

    def finish(self, state, params, opt_state, key, metrics, observed_kl):
        """The next state: the controller fed ``observed_kl`` (`observed_kl`; None: unchanged), a
        non-finite update skipped (`kltrust.guards`), the step counted."""
        controller = state.controller
        if observed_kl is not None and self.static.per_domain:
            controller = domains.update_controller(_controller(self.static), controller,
                                                   *observed_kl)
        elif observed_kl is not None:
            controller = _controller(self.static).update(
                controller, observed_kl, jnp.asarray(self.static.batch_size, jnp.float32))
        # A non-finite update (a NaN proxy score, an overflow) is skipped; CG's diagnostics may be
        # NaN by design, and a per-domain metric is NaN for a domain absent from the batch: neither
        # is watched.
        checked = tuple(k for k in metrics if "cg_" not in k and not domains.is_domain_metric(k))
        (params, opt_state, controller), bad_updates, metrics = guards.skip_nonfinite(
            (state.params, state.opt_state, state.controller), (params, opt_state, controller),
            metrics, state.bad_updates, checked=checked)
        params, opt_state = self.constrain_params((params, opt_state))
        return TrainState(params, opt_state, controller, key, state.update_step + 1,
                          bad_updates, state.ref_params), metrics

    # ------------------------------------------------------------ one update per method

    def update(self, state: TrainState, hp: HParams, frozen: tok.Frozen):
        """One update of ``Static.method`` (`kltrust.train.methods.METHODS`). With
        ``Static.ref_sync`` the method sees the moving reference in ``frozen`` and the reference is
        then refreshed (`kltrust.reference.refresh`) from the updated policy."""
        method = METHODS.get(self.static.method)
        if not self.static.ref_sync:
            return method.update(self, state, hp, frozen)
        state, metrics = method.update(self, state, hp,
                                       frozen.replace(ref_params=state.ref_params))
        ref = references.refresh(state.ref_params, state.params, state.update_step,
                                 hp.ref_sync_every, hp.ref_sync_alpha)
        return state.replace(ref_params=ref), metrics

    # ------------------------------------------------------------ the KL guard

    def back_off(self, state: TrainState, hp: HParams, good: TrainState, rolled: jax.Array,
                 factor: jax.Array) -> tuple[TrainState, HParams]:
        """`kltrust.train.anchor.back_off` of this trainer: ``good``'s learning state where
        ``rolled``, then a stronger anchor by ``factor`` (one per domain, or one)."""
        return anchor.back_off(self.static, state, hp, good, rolled, factor)

    # ------------------------------------------------------------ chunks and evaluation

    def run_chunk(self, state: TrainState, hp: HParams, frozen: tok.Frozen):
        """``updates_per_eval`` updates in one `lax.scan`; metrics stacked on a leading axis."""
        return jax.lax.scan(lambda st, _: self.update(st, hp, frozen), state, None,
                            length=self.static.updates_per_eval)

    def evaluate(self, state: TrainState, frozen: tok.Frozen, key: jax.Array, with_kl: bool = True):
        """`tokens.evaluate` at ``state``'s policy: held-out gold, proxy, (``with_kl``) the exact
        sequence KL to the reference, and the responses."""
        frozen = frozen.replace(eval_prompts=self.constrain_batch(frozen.eval_prompts))
        return tok.evaluate(self.policy, self.reference, self.static.reward_model, state.params,
                            frozen, key, with_kl=with_kl, stats_chunk=self.static.stats_chunk)
