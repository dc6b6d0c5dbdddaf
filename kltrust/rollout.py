"""The shared on-policy rollouts, environment and token, and GAE.

Every on-policy objective (PPO, TRPO, GRPO, …) collects data through `rollout` (gymnax environments)
or `token_rollout` (a language model sampled with its KV cache) and computes advantages with `gae` /
`token_gae`, so that methods differ only in their update.

Time limits. gymnax 1.x reports ``terminated`` (a true terminal state: the future is worth 0) apart
from ``truncated`` (the time limit: the future is worth V(s_final)), auto-resets, and hands back the
pre-reset observation in ``info["final_observation"]``. The rollout evaluates the critic there, and
`gae` bootstraps truncated episodes from it instead of treating a time limit as a terminal state,
which would bias value targets on Pendulum, where every episode ends by truncation.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from kltrust import kl
from kltrust.distributions import Categorical, Distribution
from kltrust.models import chunked

PolicyFn = Callable[[Any, jax.Array], tuple[Distribution, jax.Array]]
"""(params, obs [N, ...]) -> (action distribution [N], value [N])."""


@flax.struct.dataclass
class RunnerState:
    """Per-environment state carried between rollouts; every leaf's leading axis is the environment."""

    env_state: Any
    obs: jax.Array
    episode_return: jax.Array  # return so far of each running episode
    episode_length: jax.Array


RECENT_EPISODES = 100


@flax.struct.dataclass
class EpisodeStats:
    """Returns of the last `RECENT_EPISODES` completed episodes (the PPO paper's score) as a ring buffer."""

    returns: jax.Array  # [RECENT_EPISODES]
    next_slot: jax.Array
    recorded: jax.Array  # total completed episodes so far

    @classmethod
    def empty(cls) -> EpisodeStats:
        return cls(jnp.zeros((RECENT_EPISODES,), jnp.float32), jnp.zeros((), jnp.int32),
                   jnp.zeros((), jnp.int32))

    def record(self, done: jax.Array, episode_return: jax.Array) -> EpisodeStats:
        """Appends the returns of the environments where ``done`` (in environment order)."""
        count = jnp.sum(done, dtype=jnp.int32)
        rank = jnp.cumsum(done, dtype=jnp.int32) - 1
        # If more episodes end at once than the buffer holds, only the last ones are kept, so the
        # scatter below never writes one slot twice.
        keep = done & (rank >= count - RECENT_EPISODES)
        slot = jnp.where(keep, (self.next_slot + rank) % RECENT_EPISODES, RECENT_EPISODES)
        return EpisodeStats(
            returns=self.returns.at[slot].set(episode_return, mode="drop"),
            next_slot=(self.next_slot + count) % RECENT_EPISODES,
            recorded=self.recorded + count,
        )

    def mean_return(self) -> jax.Array:
        """Mean of the last min(recorded, 100) returns; NaN before any episode has ended."""
        filled = jnp.minimum(self.recorded, RECENT_EPISODES)
        valid = jnp.arange(RECENT_EPISODES) < filled
        total = jnp.sum(jnp.where(valid, self.returns, 0.0))
        return jnp.where(filled > 0, total / jnp.maximum(filled, 1), jnp.nan)


@flax.struct.dataclass
class Transition:
    """One rollout step for every environment; `rollout` stacks these to [T, N, ...]."""

    obs: jax.Array
    action: jax.Array
    reward: jax.Array
    terminated: jax.Array
    done: jax.Array  # terminated or truncated: the episode ended after this step
    value: jax.Array
    bootstrap_value: jax.Array  # V(final observation), used when the episode was truncated
    log_prob: jax.Array
    policy: Distribution  # the behaviour ("old") policy's distribution at obs


def init_runner(key: jax.Array, env: Any, env_params: Any, num_envs: int) -> RunnerState:
    """Resets ``num_envs`` environments."""
    obs, env_state = jax.vmap(env.reset, in_axes=(0, None))(
        jax.random.split(key, num_envs), env_params
    )
    zeros = jnp.zeros((num_envs,), jnp.float32)
    return RunnerState(env_state, obs, zeros, zeros.astype(jnp.int32))


def rollout(
    policy_fn: PolicyFn,
    params: Any,
    runner: RunnerState,
    stats: EpisodeStats,
    key: jax.Array,
    env: Any,
    env_params: Any,
    num_steps: int,
    constrain: Callable[[Any], Any] = lambda tree: tree,
) -> tuple[RunnerState, EpisodeStats, Transition, jax.Array]:
    """Runs ``num_steps`` steps of every environment under ``policy_fn(params, ·)`` with `lax.scan`.

    Args:
      constrain: applied to each step's per-environment arrays; the training program passes a
        sharding constraint that keeps the environment axis split over the mesh's data axis.

    Returns:
      (runner state, episode statistics, transitions [num_steps, num_envs, ...],
        V(obs after the last step) [num_envs]).
    """

    def step(carry: tuple[RunnerState, EpisodeStats], step_key: jax.Array):
        runner, stats = carry
        key_action, key_env = jax.random.split(step_key)
        dist, value = policy_fn(params, runner.obs)
        action = dist.sample(key_action)
        num_envs = runner.obs.shape[0]
        obs, env_state, reward, terminated, truncated, info = jax.vmap(
            env.step, in_axes=(0, 0, 0, None)
        )(jax.random.split(key_env, num_envs), runner.env_state, action, env_params)
        _, bootstrap_value = policy_fn(params, info["final_observation"])
        reward = reward.astype(jnp.float32)
        done = jnp.logical_or(terminated, truncated)
        episode_return = runner.episode_return + reward
        episode_length = runner.episode_length + 1
        transition = Transition(
            obs=runner.obs,
            action=action,
            reward=reward,
            terminated=terminated,
            done=done,
            value=value,
            bootstrap_value=bootstrap_value,
            log_prob=dist.log_prob(action),
            policy=dist,
        )
        runner = runner.replace(
            env_state=env_state,
            obs=obs,
            episode_return=jnp.where(done, 0.0, episode_return),
            episode_length=jnp.where(done, 0, episode_length),
        )
        stats = stats.record(done, episode_return)
        return (constrain(runner), stats), constrain(transition)

    (runner, stats), transitions = jax.lax.scan(
        step, (runner, stats), jax.random.split(key, num_steps)
    )
    _, last_value = policy_fn(params, runner.obs)
    return runner, stats, transitions, last_value


def gae(
    transitions: Transition, last_value: jax.Array, gamma: jax.Array, gae_lambda: jax.Array,
    reward_scale: jax.Array | float = 1.0,
) -> tuple[jax.Array, jax.Array]:
    """Generalised advantage estimation (Schulman et al. 2016) over a [T, N] rollout.

    The value after step t is 0 if the episode terminated, V(final observation) if it was truncated,
    and V(s_{t+1}) otherwise:
        δ_t = c·r_t + γ·V_next_t − V(s_t),   A_t = δ_t + γλ·(1 − done_t)·A_{t+1},
    with c = ``reward_scale``. Returns (advantages, value targets A + V), both [T, N].
    """
    following_values = jnp.concatenate([transitions.value[1:], last_value[None]], axis=0)
    next_values = jnp.where(
        transitions.done,
        jnp.where(transitions.terminated, 0.0, transitions.bootstrap_value),
        following_values,
    )
    deltas = reward_scale * transitions.reward + gamma * next_values - transitions.value
    continues = 1.0 - transitions.done.astype(jnp.float32)

    def backward(advantage_next, inputs):
        delta, cont = inputs
        advantage = delta + gamma * gae_lambda * cont * advantage_next
        return advantage, advantage

    _, advantages = jax.lax.scan(
        backward, jnp.zeros_like(last_value), (deltas, continues), reverse=True
    )
    return advantages, advantages + transitions.value


# ---------------------------------------------------------------- token sequences
#
# Layout: a sequence is a prompt [B, P] followed by a response [B, L]. The logits at sequence
# position P − 1 + t give the distribution of response token t, so every per-token quantity below
# is [B, L] and aligned with the response. ``mask`` is 1 for real response tokens (the EOS token
# included) and 0 for the padding after it.

DecodeFn = Callable[[Any, jax.Array, Any], tuple[jax.Array, Any]]
"""(params, tokens [B, T], cache) -> (logits [B, T, V], new cache): incremental decoding."""

SequenceFn = Callable[[Any, jax.Array], tuple[jax.Array, jax.Array | None]]
"""(params, tokens [B, T]) -> (logits [B, T, V], values [B, T] or None): full forward."""


def sample_tokens(
    decode_fn: DecodeFn,
    params: Any,
    prompts: jax.Array,
    cache: Any,
    key: jax.Array,
    *,
    max_new_tokens: int,
    temperature: jax.Array | float = 1.0,
    eos_id: int,
    pad_id: int,
    return_logits: bool = False,
) -> tuple[jax.Array, ...]:
    """Autoregressive sampling with a KV cache: one prefill of the prompt, then a `lax.scan`.

    Token t is drawn from softmax(logits_t / temperature). Once a row has emitted ``eos_id`` its
    later tokens are ``pad_id`` with mask 0 (the model still runs on them; they are discarded).

    Args:
      cache: an empty cache with room for P + ``max_new_tokens`` positions.
      return_logits: also return every step's logits / temperature [B, L, V], the distribution
        each token was drawn from.

    Returns:
      (response [B, L] int32, mask [B, L] float32, log_prob [B, L]): log-probability of each sampled
      token under the distribution it was drawn from (0 at padding); then the logits if asked.
    """
    logits, cache = decode_fn(params, prompts, cache)
    batch = prompts.shape[0]

    def step(carry, step_key):
        logits_last, cache, done = carry
        logp = jax.nn.log_softmax(logits_last / temperature)
        token = jax.random.categorical(step_key, logp)
        token_logp = jnp.take_along_axis(logp, token[:, None], axis=-1)[:, 0]
        live = ~done
        token = jnp.where(live, token, pad_id).astype(jnp.int32)
        done = done | (token == eos_id)
        next_logits, cache = decode_fn(params, token[:, None], cache)
        out = (token, live.astype(jnp.float32), jnp.where(live, token_logp, 0.0))
        if return_logits:
            out += (logits_last / temperature,)
        return (next_logits[:, -1], cache, done), out

    init = (logits[:, -1], cache, jnp.zeros((batch,), bool))
    _, outs = jax.lax.scan(step, init, jax.random.split(key, max_new_tokens))
    tokens, mask, log_prob = (x.T for x in outs[:3])
    if return_logits:
        return tokens, mask, log_prob, jnp.swapaxes(outs[3], 0, 1)
    return tokens, mask, log_prob


def response_logits(sequence_fn: SequenceFn, params: Any, prompts: jax.Array,
                    response: jax.Array) -> tuple[jax.Array, jax.Array | None]:
    """Teacher-forced logits [B, L, V] (and values [B, L]) of every response position in one pass."""
    tokens = jnp.concatenate([prompts, response], axis=1)
    logits, values = sequence_fn(params, tokens[:, :-1])
    start = prompts.shape[1] - 1
    values = None if values is None else values[:, start:]
    return logits[:, start:], values


def token_log_probs(logits: jax.Array, tokens: jax.Array, mask: jax.Array) -> jax.Array:
    """log softmax(logits)[token] per position [B, L], 0 where ``mask`` is 0."""
    logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], axis=-1)[..., 0]
    return jnp.where(mask > 0, logp, 0.0)


@flax.struct.dataclass
class TokenRollout:
    """A batch of sampled responses with everything the token objectives need, all [B, L] unless
    noted. Reference fields are None when nothing uses the reference (it is then never run)."""

    prompt: jax.Array  # [B, P]
    response: jax.Array
    mask: jax.Array
    log_prob: jax.Array  # under the sampling policy; teacher-forced unless sampler_stats
    sampled_log_prob: jax.Array  # as returned by the sampler (must equal log_prob)
    logits: jax.Array | None  # [B, L, V] policy logits (temperature applied); None if chunked
    value: jax.Array | None
    entropy: jax.Array
    ref_log_prob: jax.Array | None
    ref_logits: jax.Array | None  # [B, L, V], temperature applied; None if chunked
    kl: jax.Array | None  # exact per-token KL(π(·|prefix) ‖ π_ref(·|prefix)) from full logits


def token_rollout(
    decode_fn: DecodeFn,
    sequence_fn: SequenceFn,
    params: Any,
    prompts: jax.Array,
    cache: Any,
    key: jax.Array,
    *,
    max_new_tokens: int,
    eos_id: int,
    pad_id: int,
    temperature: jax.Array | float = 1.0,
    ref_sequence_fn: SequenceFn | None = None,
    ref_params: Any = None,
    stats_chunk: int = 0,
    sampler_stats: bool = False,
) -> TokenRollout:
    """Samples responses, then scores them teacher-forced under the policy and (if given) the
    reference: per-token log-probs, values, entropy and the exact per-token KL via
    `kltrust.kl.categorical`. The reference's logits are divided by the same temperature, so the KL
    compares the two distributions at the temperature that sampled.

    ``stats_chunk`` > 0 scores ``chunked.rows_per_chunk(stats_chunk, B)`` rows at a time
    (`kltrust.models.chunked.token_stats`: the same statistics, without the two [B, L, V] logits
    arrays), and the rollout then carries no logits (``logits`` and ``ref_logits`` are None): a
    method that needs full distributions recomputes them per minibatch.

    ``sampler_stats`` takes the policy's logits from the sampler (the KV-cache decoding that drew
    each token) instead of a second, teacher-forced forward over prompt + response: the same
    distributions up to float32 rounding (the cache sums in another order; `sample_tokens`), one
    forward of the policy fewer. The teacher-forced forward still runs when the policy has a value
    head, for the values only. Not with ``stats_chunk`` (the sampler keeps every step's logits).
    """
    if sampler_stats and stats_chunk:
        raise ValueError("token_rollout: sampler_stats needs stats_chunk = 0 (the sampler keeps "
                         f"every step's [B, V] logits), got stats_chunk = {stats_chunk}")
    sampled = sample_tokens(
        decode_fn, params, prompts, cache, key, max_new_tokens=max_new_tokens,
        temperature=temperature, eos_id=eos_id, pad_id=pad_id, return_logits=sampler_stats)
    response, mask, sampled_log_prob = sampled[:3]
    if stats_chunk:
        stats = chunked.response_stats(
            sequence_fn, params, prompts, response, mask, max_rows=stats_chunk,
            ref_sequence_fn=ref_sequence_fn, ref_params=ref_params, temperature=temperature)
        return TokenRollout(prompts, response, mask, stats.log_prob, sampled_log_prob, None,
                            stats.value, stats.entropy, stats.ref_log_prob, None, stats.kl)
    if sampler_stats:
        logits, value = sampled[3], None
        # The values need the trunk over the whole sequence; only a value head asks for it.
        forced = functools.partial(response_logits, sequence_fn)
        if jax.eval_shape(forced, params, prompts, response)[1] is not None:
            _, value = forced(params, prompts, response)
    else:
        logits, value = response_logits(sequence_fn, params, prompts, response)
        logits = logits / temperature
    log_prob = token_log_probs(logits, response, mask)
    entropy = Categorical(logits).entropy() * mask
    ref_log_prob = ref_logits = token_kl = None
    if ref_sequence_fn is not None:
        ref_logits, _ = response_logits(ref_sequence_fn, ref_params, prompts, response)
        ref_logits = ref_logits / temperature
        ref_log_prob = token_log_probs(ref_logits, response, mask)
        token_kl = kl.categorical(logits, ref_logits) * mask
    if value is not None:
        value = value * mask
    return TokenRollout(prompts, response, mask, log_prob, sampled_log_prob, logits, value,
                        entropy, ref_log_prob, ref_logits, token_kl)


def token_gae(reward: jax.Array, value: jax.Array, mask: jax.Array, gamma: jax.Array,
              gae_lambda: jax.Array) -> tuple[jax.Array, jax.Array]:
    """GAE over the tokens of each response (an episode per row, ending at its last real token).

    ``reward``, ``value``, ``mask`` are [B, L]; the value after the last real token is 0.
    Returns (advantages, value targets), both [B, L] and 0 at padding.
    """
    next_value = jnp.concatenate([value[:, 1:] * mask[:, 1:], jnp.zeros_like(value[:, :1])], axis=1)
    deltas = (reward + gamma * next_value - value) * mask

    def backward(advantage_next, inputs):
        delta, live_next = inputs
        advantage = delta + gamma * gae_lambda * live_next * advantage_next
        return advantage, advantage

    live_next = jnp.concatenate([mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
    _, advantages = jax.lax.scan(backward, jnp.zeros_like(reward[:, 0]),
                                 (deltas.T, live_next.T), reverse=True)
    advantages = advantages.T * mask
    return advantages, (advantages + value) * mask
