"""Policy optimisation on tokens against the proxy reward model, one jitted update per method.

Methods (``Static.method``) and where each puts the KL to the reference (``Static.kl_placement``):

    ppo         reward (default; Ziegler et al. 2019: r_t = −β·k_t per token, + proxy at the last
                token, GAE over tokens with a value head), loss (β·k in PPO's loss), or none
    grpo, rloo  loss (default for GRPO; Shao et al. 2024: β·k3 per token in the loss), reward
                (default for RLOO; Ahmadian et al. 2024: the sequence reward is proxy − β·Σ_t k_t),
                or none; group baselines over ``group_size`` samples per prompt, no critic
    trpo        budget: the trust region KL(π_old‖π_θ) ≤ δ plus KL(π_θ‖π_ref) ≤ kl_budget (both the
                per-token mean exact KL), with RLOO sequence advantages; or none (no budget)
    dpo         implicit (DPO/IPO on the offline preference data set, Rafailov et al. 2023)
    dpo_online  implicit (pairs sampled from the current policy, labelled by the proxy: iterative
                / online DPO, as in Guo et al. 2024 with the reward model as the annotator)

The KL is applied in exactly one place, chosen statically: the objectives are handed a β only where
the placement puts it, so it can never be applied twice. ``kl_estimator`` picks what is applied
(``exact`` from full logits, or k1/k2/k3 at the sampled tokens); the exact sequence KL is always
reported beside it whenever the reference is evaluated. The reference is evaluated in training
only when the placement needs it (``kl_placement="none"`` never runs it); evaluation runs it unless
``eval_kl`` is off.

β comes from a controller (`kltrust.controllers`: fixed, adaptive, proportional; Ziegler et al.'s
is ``proportional``) fed the mean exact sequence KL of each batch. All numeric hyperparameters are
arrays in `HParams`, so a sweep over seeds × (β, lr, ε, δ, …) is one vmapped program.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax
from jax.flatten_util import ravel_pytree

from kltrust import controllers, guards, kl, sharding
from kltrust import rollout as rollouts
from kltrust.distributions import Categorical
from kltrust.models.transformer import TransformerConfig
from kltrust.objectives import dpo, grpo, ppo, trpo
from kltrust.tasks import text
from kltrust.train import tokens as tok

METHODS = ("ppo", "grpo", "rloo", "trpo", "dpo", "dpo_online")
PLACEMENTS = {
    "ppo": ("reward", "loss", "none"),
    "grpo": ("loss", "reward", "none"),
    "rloo": ("reward", "loss", "none"),
    "trpo": ("budget", "none"),
    "dpo": ("implicit",),
    "dpo_online": ("implicit",),
}
KL_ESTIMATORS = ("exact",) + kl.ESTIMATORS


@flax.struct.dataclass
class HParams:
    """Every numeric knob, a float32 array (leading run axis in sweeps)."""

    learning_rate: jax.Array
    beta: jax.Array  # initial β of the controller (PPO/GRPO/RLOO) or DPO's β
    kl_target: jax.Array  # adaptive / proportional controllers
    kl_horizon: jax.Array  # proportional controller
    clip_eps: jax.Array
    gamma: jax.Array
    gae_lambda: jax.Array
    vf_coef: jax.Array
    ent_coef: jax.Array
    delta: jax.Array  # TRPO trust region
    kl_budget: jax.Array  # TRPO budget on the per-token KL to the reference
    damping: jax.Array
    label_smoothing: jax.Array  # DPO


@dataclasses.dataclass(frozen=True)
class Static:
    method: str
    policy: TransformerConfig
    reference: TransformerConfig
    reward_model: TransformerConfig
    spec: text.LanguageSpec
    kl_placement: str
    kl_estimator: str
    controller: str
    batch_prompts: int  # prompts per update (pairs per update for DPO)
    group_size: int  # samples per prompt (GRPO/RLOO/TRPO: ≥ 2; DPO online: 2; PPO: 1)
    epochs: int
    minibatches: int
    updates_per_eval: int
    max_grad_norm: float
    dpo_variant: str = "sigmoid"
    cg_iters: int = 10
    max_backtracks: int = 10
    token_average: str = "sequence"

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


def _controller(static: Static) -> controllers.Controller:
    return controllers.get(static.controller)


def init_controller(static: Static, hp: HParams) -> controllers.ControllerState:
    kwargs = {"fixed": {}, "adaptive": {"kl_target": hp.kl_target},
              "proportional": {"kl_target": hp.kl_target, "horizon": hp.kl_horizon, "gain": 1.0}}
    return _controller(static).init(hp.beta, **kwargs[static.controller])


@dataclasses.dataclass(frozen=True)
class Trainer:
    """One method's pure functions. With a ``mesh``, sequences (prompts, rollouts, minibatches,
    pairs) are split over data × fsdp and the policy's parameters and Adam state are laid out by
    `sharding.param_constraint` (FSDP when the mesh's fsdp axis is > 1); without one, nothing is
    constrained (one device)."""

    static: Static
    mesh: jax.sharding.Mesh | None = None

    def _batch(self, tree: Any) -> Any:
        return tree if self.mesh is None else sharding.batch_constraint(self.mesh)(tree)

    def _params(self, tree: Any) -> Any:
        return tree if self.mesh is None else sharding.param_constraint(self.mesh)(tree)

    @property
    def policy(self) -> tok.Policy:
        return tok.Policy(self.static.policy)

    @property
    def reference(self) -> tok.Policy:
        return tok.Policy(self.static.reference)

    def optimizer(self) -> optax.GradientTransformation:
        return tok.adam(self.static.max_grad_norm)

    # ------------------------------------------------------------ init

    def init(self, seed: jax.Array, hp: HParams, frozen: tok.Frozen) -> TrainState:
        key, init_key = jax.random.split(jax.random.PRNGKey(seed))
        params = self._params(tok.with_pretrained(self.policy.init(init_key), frozen.ref_params))
        opt_state = self._params(
            tok.set_learning_rate(self.optimizer().init(params), hp.learning_rate))
        return TrainState(params, opt_state, init_controller(self.static, hp), key,
                          jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32))

    # ------------------------------------------------------------ shared pieces

    def _rollout(self, params, prompts, key, frozen, with_reference: bool):
        s = self.static
        return rollouts.token_rollout(
            self.policy.decode, self.policy.sequence, params, prompts,
            self.policy.empty_cache(prompts.shape[0]), key, max_new_tokens=s.spec.response_len,
            eos_id=text.EOS, pad_id=text.PAD,
            ref_sequence_fn=self.reference.sequence if with_reference else None,
            ref_params=frozen.ref_params if with_reference else None)

    def _token_kl(self, ro: rollouts.TokenRollout) -> jax.Array:
        """The per-token KL value the method applies (``kl_estimator``), 0 at padding."""
        if self.static.kl_estimator == "exact":
            return ro.kl
        return kl.estimate(ro.log_prob, ro.ref_log_prob, self.static.kl_estimator) * ro.mask

    def _logits(self, params, prompts, response):
        return rollouts.response_logits(self.policy.sequence, params, prompts, response)

    def _minibatch_sgd(self, state: TrainState, batch: Any, loss_fn, key: jax.Array):
        """``epochs`` × ``minibatches`` Adam steps of ``loss_fn(params, minibatch)`` over sequences."""
        s = self.static
        optimizer = self.optimizer()
        size = jax.tree.leaves(batch)[0].shape[0]

        def epoch(carry, epoch_key):
            order = jax.random.permutation(epoch_key, size).reshape(s.minibatches, -1)

            def minibatch(carry, idx):
                params, opt_state = carry
                sub = self._batch(jax.tree.map(lambda x: x[idx], batch))
                (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, sub)
                updates, opt_state = optimizer.update(grads, opt_state, params)
                metrics["grad_norm"] = optax.tree.norm(grads)
                return (optax.apply_updates(params, updates), opt_state), metrics

            return jax.lax.scan(minibatch, carry, order)

        (params, opt_state), metrics = jax.lax.scan(
            epoch, (state.params, state.opt_state), jax.random.split(key, s.epochs))
        return params, opt_state, jax.tree.map(jnp.mean, metrics)

    def _sample_prompts(self, frozen: tok.Frozen, key: jax.Array) -> jax.Array:
        s = self.static
        idx = jax.random.randint(key, (s.batch_prompts,), 0, frozen.prompts.shape[0])
        return self._batch(jnp.repeat(frozen.prompts[idx], s.group_size, axis=0))

    def _common_metrics(self, ro, proxy, frozen, beta) -> dict[str, jax.Array]:
        metrics = {
            "proxy": proxy.mean(),
            "gold": text.gold_reward(frozen.language, ro.prompt, ro.response, ro.mask).mean(),
            "entropy": kl.mean_per_token(ro.entropy, ro.mask),
            "length": ro.mask.sum(-1).mean(),
            "beta": beta,
        }
        if ro.kl is not None:
            metrics["kl"] = kl.sum_per_sequence(ro.kl, ro.mask).mean()
            metrics["kl_optimised"] = kl.sum_per_sequence(self._token_kl(ro), ro.mask).mean()
        return metrics

    def _finish(self, state, params, opt_state, key, metrics, observed_kl):
        controller = state.controller
        if observed_kl is not None:
            controller = _controller(self.static).update(
                controller, observed_kl, jnp.asarray(self.static.batch_size, jnp.float32))
        # A non-finite update (a NaN proxy score, an overflow) is skipped; CG's diagnostics may be
        # NaN by design and are not watched.
        (params, opt_state, controller), bad_updates, metrics = guards.skip_nonfinite(
            (state.params, state.opt_state, state.controller), (params, opt_state, controller),
            metrics, state.bad_updates, checked=tuple(k for k in metrics if "cg_" not in k))
        params, opt_state = self._params((params, opt_state))
        return TrainState(params, opt_state, controller, key, state.update_step + 1,
                          bad_updates), metrics

    # ------------------------------------------------------------ one update per method

    def update(self, state: TrainState, hp: HParams, frozen: tok.Frozen):
        method = self.static.method
        if method == "dpo":
            return self._update_dpo_offline(state, hp, frozen)
        return getattr(self, f"_update_{method if method != 'rloo' else 'grpo'}")(
            state, hp, frozen)

    def _update_ppo(self, state, hp, frozen):
        s = self.static
        key, k_prompt, k_sample, k_sgd = jax.random.split(state.key, 4)
        prompts = self._sample_prompts(frozen, k_prompt)
        ro = self._rollout(state.params, prompts, k_sample, frozen, s.uses_reference)
        proxy = tok.score(s.reward_model, frozen.rm_params, prompts, ro.response, ro.mask)
        beta = state.controller.beta
        last = jnp.sum(ro.mask, axis=-1).astype(jnp.int32) - 1
        reward = jax.nn.one_hot(last, ro.mask.shape[1]) * proxy[:, None]
        if s.kl_placement == "reward":
            reward = reward - beta * self._token_kl(ro)
        advantage, target = rollouts.token_gae(reward, ro.value, ro.mask, hp.gamma, hp.gae_lambda)
        in_loss = s.kl_placement == "loss"
        batch = ppo.Batch(
            obs=jnp.concatenate([prompts, ro.response], axis=1), action=ro.response,
            log_prob=ro.log_prob, policy=Categorical(ro.logits), advantage=advantage,
            target=target, reference=Categorical(ro.ref_logits) if in_loss else None,
            weight=ro.mask)
        variant = ppo.Variant(clip=True, kl_penalty="fixed" if in_loss else "none",
                              kl_anchor="reference",
                              kl_estimator=s.kl_estimator if in_loss else "exact")
        coefs = ppo.LossCoefs(hp.clip_eps, beta if in_loss else jnp.zeros_like(beta),
                              hp.vf_coef, hp.ent_coef)
        prompt_len = prompts.shape[1]

        def apply_fn(params, tokens):
            logits, values = self._logits(params, tokens[:, :prompt_len], tokens[:, prompt_len:])
            return Categorical(logits), values

        def loss_fn(params, mb):
            return ppo.loss(params, mb, coefs, apply_fn=apply_fn, variant=variant)

        params, opt_state, sgd = self._minibatch_sgd(state, batch, loss_fn, k_sgd)
        metrics = {**self._common_metrics(ro, proxy, frozen, beta), **sgd}
        observed = metrics.get("kl")
        return self._finish(state, params, opt_state, key, metrics, observed)

    def _update_grpo(self, state, hp, frozen):
        s = self.static
        key, k_prompt, k_sample, k_sgd = jax.random.split(state.key, 4)
        prompts = self._sample_prompts(frozen, k_prompt)
        ro = self._rollout(state.params, prompts, k_sample, frozen, s.uses_reference)
        proxy = tok.score(s.reward_model, frozen.rm_params, prompts, ro.response, ro.mask)
        beta = state.controller.beta
        reward = proxy
        if s.kl_placement == "reward":
            reward = proxy - beta * kl.sum_per_sequence(self._token_kl(ro), ro.mask)
        advantage = grpo.group_advantages(reward, s.group_size, baseline=s.method)
        in_loss = s.kl_placement == "loss"
        variant = grpo.Variant(kl_estimator=s.kl_estimator if in_loss else "k3",
                               kl_in_loss=in_loss, token_average=s.token_average)
        coefs = grpo.LossCoefs(hp.clip_eps, beta)
        batch = {"prompt": prompts, "response": ro.response, "mask": ro.mask,
                 "old_logp": ro.log_prob, "advantage": advantage}
        if s.uses_reference:
            batch.update(ref_logp=ro.ref_log_prob, ref_logits=ro.ref_logits)

        def loss_fn(params, mb):
            logits, _ = self._logits(params, mb["prompt"], mb["response"])
            new_logp = rollouts.token_log_probs(logits, mb["response"], mb["mask"])
            exact = None
            if "ref_logits" in mb:
                exact = jax.lax.stop_gradient(kl.categorical(logits, mb["ref_logits"]))
            return grpo.loss(new_logp, mb["old_logp"], mb["advantage"], mb["mask"], coefs,
                             variant=variant, ref_logp=mb.get("ref_logp"), exact_kl=exact)

        params, opt_state, sgd = self._minibatch_sgd(state, batch, loss_fn, k_sgd)
        metrics = {**self._common_metrics(ro, proxy, frozen, beta), **sgd}
        return self._finish(state, params, opt_state, key, metrics, metrics.get("kl"))

    def _update_trpo(self, state, hp, frozen):
        s = self.static
        key, k_prompt, k_sample = jax.random.split(state.key, 3)
        prompts = self._sample_prompts(frozen, k_prompt)
        ro = self._rollout(state.params, prompts, k_sample, frozen, s.uses_reference)
        proxy = tok.score(s.reward_model, frozen.rm_params, prompts, ro.response, ro.mask)
        advantage = grpo.group_advantages(proxy, s.group_size, baseline="rloo")
        flat, unravel = ravel_pytree(state.params)
        prompt_len = prompts.shape[1]

        def policy_fn(flat_params, tokens):
            logits, _ = self._logits(unravel(flat_params), tokens[:, :prompt_len],
                                     tokens[:, prompt_len:])
            return Categorical(logits)

        batch = trpo.Batch(
            obs=jnp.concatenate([prompts, ro.response], axis=1), action=ro.response,
            log_prob=ro.log_prob, policy=Categorical(ro.logits),
            advantage=advantage[:, None] * ro.mask,
            reference=Categorical(ro.ref_logits) if s.uses_reference else None,
            weight=ro.mask)
        # Backtracking factor and CG tolerance: Spinning Up's values, as in the control TRPO.
        coefs = trpo.StepCoefs(hp.delta, hp.kl_budget, hp.damping, jnp.float32(0.8),
                               jnp.float32(1e-10))
        variant = trpo.Variant(kl_anchor="reference" if s.kl_placement == "budget" else "old",
                               normalize_advantages=True)
        new_flat, step_metrics = trpo.step(policy_fn, flat, batch, coefs, variant=variant,
                                           cg_iters=s.cg_iters, max_backtracks=s.max_backtracks)
        metrics = {**self._common_metrics(ro, proxy, frozen, state.controller.beta),
                   **{f"trpo_{k}": v for k, v in step_metrics.items()}}
        metrics["kl_optimised"] = step_metrics.get("kl_ref", step_metrics["kl_old"])
        return self._finish(state, unravel(new_flat), state.opt_state, key, metrics, None)

    def _dpo_loss(self, hp, params, prompts, chosen, chosen_mask, rejected, rejected_mask,
                  ref_chosen, ref_rejected):
        def seq_logp(response, mask):
            logits, _ = self._logits(params, prompts, response)
            return jnp.sum(rollouts.token_log_probs(logits, response, mask), axis=-1)

        return dpo.loss(seq_logp(chosen, chosen_mask), seq_logp(rejected, rejected_mask),
                        ref_chosen, ref_rejected, hp.beta, self.static.dpo_variant,
                        hp.label_smoothing)

    def _ref_seq_logp(self, frozen, prompts, response, mask):
        logits, _ = rollouts.response_logits(self.reference.sequence, frozen.ref_params, prompts,
                                             response)
        return jnp.sum(rollouts.token_log_probs(logits, response, mask), axis=-1)

    def _update_dpo_online(self, state, hp, frozen):
        s = self.static
        key, k_prompt, k_sample, k_sgd = jax.random.split(state.key, 4)
        prompts = self._sample_prompts(frozen, k_prompt)  # group_size = 2: a pair per prompt
        ro = self._rollout(state.params, prompts, k_sample, frozen, True)
        proxy = tok.score(s.reward_model, frozen.rm_params, prompts, ro.response, ro.mask)
        ref_logp = kl.sum_per_sequence(ro.ref_log_prob, ro.mask)
        first_wins = (proxy[0::2] >= proxy[1::2])[:, None]

        def pick(x, winner):
            a, b = x[0::2], x[1::2]
            cond = first_wins if x.ndim == 2 else first_wins[:, 0]
            return jnp.where(cond, a, b) if winner else jnp.where(cond, b, a)

        batch = {"prompt": prompts[0::2],
                 "chosen": pick(ro.response, True), "chosen_mask": pick(ro.mask, True),
                 "rejected": pick(ro.response, False), "rejected_mask": pick(ro.mask, False),
                 "ref_chosen": pick(ref_logp, True), "ref_rejected": pick(ref_logp, False)}

        def loss_fn(params, mb):
            return self._dpo_loss(hp, params, mb["prompt"], mb["chosen"], mb["chosen_mask"],
                                  mb["rejected"], mb["rejected_mask"], mb["ref_chosen"],
                                  mb["ref_rejected"])

        params, opt_state, sgd = self._minibatch_sgd(state, batch, loss_fn, k_sgd)
        metrics = {**self._common_metrics(ro, proxy, frozen, hp.beta), **sgd}
        metrics["kl_optimised"] = metrics["kl_k1"] = kl.sum_per_sequence(
            kl.estimate(ro.log_prob, ro.ref_log_prob, "k1"), ro.mask).mean()
        return self._finish(state, params, opt_state, key, metrics, None)

    def _update_dpo_offline(self, state, hp, frozen):
        """One Adam step on ``batch_prompts`` pairs drawn from the preference data set."""
        pairs = frozen.pairs
        key, k_idx = jax.random.split(state.key)
        idx = jax.random.randint(k_idx, (self.static.batch_prompts,), 0, pairs["prompt"].shape[0])
        mb = self._batch(jax.tree.map(lambda x: x[idx], pairs))
        ref_c = self._ref_seq_logp(frozen, mb["prompt"], mb["chosen"], mb["chosen_mask"])
        ref_r = self._ref_seq_logp(frozen, mb["prompt"], mb["rejected"], mb["rejected_mask"])

        def loss_fn(params):
            return self._dpo_loss(hp, params, mb["prompt"], mb["chosen"], mb["chosen_mask"],
                                  mb["rejected"], mb["rejected_mask"], ref_c, ref_r)

        (_, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
        optimizer = self.optimizer()
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        metrics["grad_norm"] = optax.tree.norm(grads)
        params = optax.apply_updates(state.params, updates)
        return self._finish(state, params, opt_state, key, metrics, None)

    # ------------------------------------------------------------ the KL guard

    def back_off(self, state: TrainState, hp: HParams, good: TrainState, rolled: jax.Array,
                 factor: jax.Array) -> tuple[TrainState, HParams]:
        """Where ``rolled`` (this run broke its KL guard): the learning state of ``good`` (the last
        evaluation that passed), then a stronger anchor. β × ``factor`` where the method applies a
        positive β (the controller's, or DPO's); TRPO's δ ÷ ``factor``; otherwise (no KL applied,
        or β = 0) the learning rate ÷ ``factor``. The rng key and the update counter go on."""
        s = self.static
        keep = lambda old, new: jax.tree.map(lambda o, n: jnp.where(rolled, o, n), old, new)  # noqa: E731
        params, opt_state, controller, bad = keep(
            (good.params, good.opt_state, good.controller, good.bad_updates),
            (state.params, state.opt_state, state.controller, state.bad_updates))
        # The anchor only ever strengthens: β and the learning rate continue from their current
        # values (earlier rollbacks included), not from the restored state's.
        beta, lr = state.controller.beta, state.opt_state.hyperparams["learning_rate"]
        shrink_lr = jnp.array(False)
        if s.method in ("dpo", "dpo_online"):
            hp = hp.replace(beta=jnp.where(rolled, hp.beta * factor, hp.beta))
        elif s.method == "trpo":
            hp = hp.replace(delta=jnp.where(rolled, hp.delta / factor, hp.delta))
        elif s.uses_reference:
            raise_beta = rolled & (beta > 0)
            beta = jnp.where(raise_beta, beta * factor, beta)
            shrink_lr = rolled & ~raise_beta
        else:
            shrink_lr = rolled
        controller = controller.replace(beta=beta)
        opt_state = tok.set_learning_rate(opt_state, jnp.where(shrink_lr, lr / factor, lr))
        hp = hp.replace(learning_rate=jnp.where(shrink_lr, hp.learning_rate / factor,
                                                hp.learning_rate))
        return TrainState(params, opt_state, controller, state.key, state.update_step, bad), hp

    # ------------------------------------------------------------ chunks and evaluation

    def run_chunk(self, state: TrainState, hp: HParams, frozen: tok.Frozen):
        """``updates_per_eval`` updates in one `lax.scan`; metrics stacked on a leading axis."""
        return jax.lax.scan(lambda st, _: self.update(st, hp, frozen), state, None,
                            length=self.static.updates_per_eval)

    def evaluate(self, state: TrainState, frozen: tok.Frozen, key: jax.Array, with_kl: bool = True):
        frozen = frozen.replace(eval_prompts=self._batch(frozen.eval_prompts))
        return tok.evaluate(self.policy, self.reference, self.static.reward_model, state.params,
                            frozen, key, with_kl=with_kl)


def best_of_n(reference: tok.Policy, rm_config: TransformerConfig, frozen: tok.Frozen,
              key: jax.Array, n: int) -> dict[str, jax.Array]:
    """Best-of-n against the proxy: n samples of the reference per held-out prompt, keep the one
    the proxy scores highest. Its KL to the reference is the analytic log n − (n−1)/n (an upper
    bound that is tight when rewards are untied, `grpo.best_of_n_kl`)."""
    spec = frozen.language.spec
    prompts = jnp.repeat(frozen.eval_prompts, n, axis=0)
    ro = rollouts.token_rollout(
        reference.decode, reference.sequence, frozen.ref_params, prompts,
        reference.empty_cache(prompts.shape[0]), key, max_new_tokens=spec.response_len,
        eos_id=text.EOS, pad_id=text.PAD)
    proxy = tok.score(rm_config, frozen.rm_params, prompts, ro.response, ro.mask)
    gold = text.gold_reward(frozen.language, prompts, ro.response, ro.mask)
    pick = grpo.best_of_n_select(proxy.reshape(-1, n))
    rows = jnp.arange(pick.shape[0]) * n + pick
    return {"gold": gold[rows].mean(), "proxy": proxy[rows].mean(),
            "kl": jnp.asarray(grpo.best_of_n_kl(n), jnp.float32),
            "responses": ro.response[rows] * ro.mask[rows].astype(ro.response.dtype)}
