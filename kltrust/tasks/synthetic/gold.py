"""The gold reward of the synthetic language, its likelihood, batch metrics and preference pairs.

The language (tokens, the Markov chain, its graph without self-loops or 2-cycles) is defined in
`kltrust.tasks.synthetic.language`.

Gold reward. With c the number of good-word tokens in the response,

    gold = good_scale·(1 − exp(−c / good_saturation)) − repeat_penalty·R − ungrammatical_penalty·U,

R = #{t: mask_t = 1, y_t ∈ {y_{t−1}, y_{t−2}}} (degenerate repetition; the two preceding tokens may
be the prompt's last ones) and U = #{t: mask_t = 1, p(y_t | y_{t−1}) = 0} (ungrammatical
transitions, the one from the prompt into y_1 and the one into EOS included). PAD positions
(mask 0) count for nothing. Because the graph has no self-loops and no 2-cycles, a sample of the
true language has R = U = 0 *exactly*; its gold is the concave good-word term alone. A reward
model fitted to preference pairs of such samples sees only "more good words is better" and has no
data on repeats or grammar, so a policy optimised against it without a KL anchor finds that
spamming good words (good→good transitions, ``a G a G`` loops) raises the proxy while the gold
saturates in c and falls with R and U: the gold rises, then falls.

Everything here except ``max_gold`` (numpy, host-side) is jax.numpy, safe under ``jit`` and
``vmap`` (a [P] prompt with an [L] response gives a scalar).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from kltrust.tasks.synthetic.language import EOS, Language, sample_prompts, sample_responses

__all__ = [
    "batch_metrics",
    "distinct_n",
    "gold_components",
    "gold_reward",
    "grammatical",
    "max_gold",
    "preference_pairs",
    "true_log_prob",
]


# ---------------------------------------------------------------- gold reward and likelihood (jax)


def _transitions(prompts: jax.Array, responses: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The two tokens before each response position: (y_{t−1}, y_{t−2}), each shaped like responses."""
    prompts, responses = jnp.asarray(prompts), jnp.asarray(responses)
    p, length = prompts.shape[-1], responses.shape[-1]
    if p < 2:
        raise ValueError(f"prompts must have at least 2 tokens (BOS and a word), got shape {prompts.shape}.")
    full = jnp.concatenate([prompts.astype(responses.dtype), responses], axis=-1)
    return full[..., p - 1:p - 1 + length], full[..., p - 2:p - 2 + length]


def _step_log_probs(language: Language, prompts: jax.Array, responses: jax.Array) -> jax.Array:
    prev, _ = _transitions(prompts, responses)
    return language.log_transition[prev, jnp.asarray(responses)]


@jax.jit
def gold_components(
    language: Language, prompts: jax.Array, responses: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
    """The terms of the gold reward per response, float32, shaped like ``responses[..., 0]``.

    ``good_count`` c, ``repeats`` R, ``ungrammatical`` U (module docstring) and ``gold``.
    ``prompts`` [..., P] (P ≥ 2), ``responses`` and ``mask`` [..., L]; mask > 0 marks counted tokens.
    """
    spec = language.spec
    responses = jnp.asarray(responses)
    real = jnp.asarray(mask) > 0
    prev1, prev2 = _transitions(prompts, responses)
    step_logp = language.log_transition[prev1, responses]

    def count(flags: jax.Array) -> jax.Array:
        return jnp.sum(real & flags, axis=-1).astype(jnp.float32)

    good_count = count(language.good[responses])
    repeats = count((responses == prev1) | (responses == prev2))
    ungrammatical = count(step_logp == -jnp.inf)
    gold = (spec.good_scale * (1.0 - jnp.exp(-good_count / spec.good_saturation))
            - spec.repeat_penalty * repeats - spec.ungrammatical_penalty * ungrammatical)
    return {"good_count": good_count, "repeats": repeats, "ungrammatical": ungrammatical, "gold": gold}


def gold_reward(language: Language, prompts: jax.Array, responses: jax.Array, mask: jax.Array) -> jax.Array:
    """gold = good_scale·(1 − e^{−c/good_saturation}) − repeat_penalty·R − ungrammatical_penalty·U, [...]."""
    return gold_components(language, prompts, responses, mask)["gold"]


@jax.jit
def true_log_prob(language: Language, prompts: jax.Array, responses: jax.Array, mask: jax.Array) -> jax.Array:
    """log p(response | prompt) = Σ_{t: mask_t > 0} log p(y_t | y_{t−1}) under the true language, [...].

    Exactly −inf when a counted transition is ungrammatical (no finite floor): filter with
    ``grammatical`` before averaging if the batch may contain such responses.
    """
    step_logp = _step_log_probs(language, prompts, responses)
    return jnp.sum(jnp.where(jnp.asarray(mask) > 0, step_logp, 0.0), axis=-1)


@jax.jit
def grammatical(language: Language, prompts: jax.Array, responses: jax.Array, mask: jax.Array) -> jax.Array:
    """Whether every counted transition has probability > 0 (U = 0), bool [...]."""
    step_logp = _step_log_probs(language, prompts, responses)
    return ~jnp.any((jnp.asarray(mask) > 0) & (step_logp == -jnp.inf), axis=-1)


def max_gold(language: Language, prompts: np.ndarray | jax.Array, grammatical_only: bool = False) -> np.ndarray:
    """The largest gold any response of length ≤ L reaches after each prompt, float32 [n] (numpy).

    Exact dynamic programme over the state (y_{t−2}, y_{t−1}, c) — the gold of a response depends on
    nothing else — maximising over every token at each position (any of the V tokens, mask 1 up to
    and including the first EOS; a response without EOS has L tokens). With ``grammatical_only``
    the maximum is over responses with R = U = 0, i.e. reachable by a policy that stays in the
    support of the true language. Host-side (not jit-able); the cost is L·V³·(L+1), tiny here.
    """
    spec = language.spec
    v, length = spec.vocab_size, spec.response_len
    logt = np.asarray(language.log_transition)
    good = np.asarray(language.good).astype(np.int64)
    counts = np.arange(length + 2)
    f = spec.good_scale * (1.0 - np.exp(-np.minimum(counts, length) / spec.good_saturation))
    tokens = np.arange(v)
    # cost[a, b, y]: penalties of emitting y after (a, b); -inf where grammatical_only forbids it.
    repeat = (tokens[None, None, :] == tokens[:, None, None]) | (tokens[None, None, :] == tokens[None, :, None])
    ungram = np.broadcast_to(np.isneginf(logt)[None, :, :], (v, v, v))
    if grammatical_only:
        cost = np.where(repeat | ungram, -np.inf, 0.0)
    else:
        cost = -spec.repeat_penalty * repeat - spec.ungrammatical_penalty * ungram
    value = np.broadcast_to(f[None, None, :], (v, v, counts.size)).copy()  # after L tokens: f(c)
    for _ in range(length):  # value(a, b, c) with one more position to fill, from the back
        best = np.full((v, v, counts.size), -np.inf)
        for y in range(v):
            if y == EOS:  # the response ends here
                cont = f[None, None, :]
            else:  # value(b, y, c + good[y]), the same for every a
                cont = value[:, y, np.minimum(counts + good[y], counts[-1])][None, :, :]
            best = np.maximum(best, cost[:, :, y][:, :, None] + cont)
        value = best
    prompts = np.asarray(prompts)
    return value[prompts[..., -2], prompts[..., -1], 0].astype(np.float32)


# ---------------------------------------------------------------- metrics


@functools.partial(jax.jit, static_argnames=("n",))
def distinct_n(responses: jax.Array, mask: jax.Array, n: int) -> jax.Array:
    """Distinct-n of a batch: #distinct n-grams / #n-grams, a float32 scalar (0 when there are none).

    The n-grams are the windows of n consecutive tokens of one response that all have mask > 0
    (words and the EOS), pooled over the batch (``responses`` [..., L]). Exact (lexicographic sort,
    no hashing); jit-able with n static.
    """
    if not (isinstance(n, int) and n >= 1):
        raise ValueError(f"distinct_n: n must be an integer >= 1, got {n!r}.")
    responses = jnp.asarray(responses)
    length = responses.shape[-1]
    if length < n:
        return jnp.zeros((), jnp.float32)
    tokens = responses.reshape(-1, length)
    real = (jnp.asarray(mask) > 0).reshape(-1, length)
    window = jnp.arange(length - n + 1)[:, None] + jnp.arange(n)[None, :]
    grams = tokens[:, window].reshape(-1, n)
    valid = real[:, window].all(axis=-1).reshape(-1)
    # lexsort: the last key is the primary one, so invalid windows go last.
    order = jnp.lexsort(tuple(grams[:, i] for i in reversed(range(n))) + ((~valid).astype(jnp.int32),))
    grams, valid = grams[order], valid[order]
    new = jnp.concatenate([jnp.ones((1,), bool), jnp.any(grams[1:] != grams[:-1], axis=-1)])
    distinct = jnp.sum(valid & new)
    total = jnp.sum(valid)
    return (distinct / jnp.maximum(total, 1)).astype(jnp.float32)


@jax.jit
def batch_metrics(
    language: Language, prompts: jax.Array, responses: jax.Array, mask: jax.Array
) -> dict[str, jax.Array]:
    """Scalar means over a batch [n, ·]: gold, good_count, repeats, ungrammatical (per response),
    ``repeat_rate`` / ``ungrammatical_rate`` (fraction of responses with any), ``length`` (mask sum),
    ``eos_rate`` (fraction ending in EOS), ``distinct_1`` and ``distinct_2``. jit-able."""
    parts = gold_components(language, prompts, responses, mask)
    real = jnp.asarray(mask) > 0
    out = {k: jnp.mean(v) for k, v in parts.items()}
    out["repeat_rate"] = jnp.mean(parts["repeats"] > 0)
    out["ungrammatical_rate"] = jnp.mean(parts["ungrammatical"] > 0)
    out["length"] = jnp.mean(jnp.sum(real, axis=-1))
    out["eos_rate"] = jnp.mean(jnp.any(real & (jnp.asarray(responses) == EOS), axis=-1))
    out["distinct_1"] = distinct_n(responses, mask, 1)
    out["distinct_2"] = distinct_n(responses, mask, 2)
    return out


# ---------------------------------------------------------------- preferences


def preference_pairs(
    language: Language,
    key: jax.Array,
    num_pairs: int,
    label_noise: float | jax.Array = 0.0,
    bt_temperature: float | jax.Array = 1.0,
) -> dict[str, jax.Array]:
    """Bradley–Terry preference pairs on gold, both responses sampled from the true language.

    x ~ prompts of the language; y_a, y_b ~ p(·|x) independently; y_a is chosen with probability
    σ((gold_a − gold_b)/bt_temperature), then the label is flipped with probability ``label_noise``.
    Returns ``prompt`` [N, P], ``chosen``, ``chosen_mask``, ``rejected``, ``rejected_mask`` [N, L],
    ``gold_chosen``, ``gold_rejected`` [N].

    Raises:
      ValueError: label_noise outside [0, 0.5) or bt_temperature ≤ 0 (checked when given as numbers).
    """
    if isinstance(label_noise, (int, float)) and not 0.0 <= label_noise < 0.5:
        raise ValueError(f"preference_pairs: label_noise must be in [0, 0.5), got {label_noise!r}.")
    if isinstance(bt_temperature, (int, float)) and not bt_temperature > 0.0:
        raise ValueError(f"preference_pairs: bt_temperature must be > 0, got {bt_temperature!r}.")
    return _preference_pairs(language, key, num_pairs, jnp.asarray(label_noise, jnp.float32),
                             jnp.asarray(bt_temperature, jnp.float32))


@functools.partial(jax.jit, static_argnames=("num_pairs",))
def _preference_pairs(
    language: Language, key: jax.Array, num_pairs: int, label_noise: jax.Array, bt_temperature: jax.Array
) -> dict[str, jax.Array]:
    k_prompt, k_a, k_b, k_label, k_flip = jax.random.split(key, 5)
    prompts = sample_prompts(language, k_prompt, num_pairs)
    a, mask_a = sample_responses(language, k_a, prompts)
    b, mask_b = sample_responses(language, k_b, prompts)
    gold_a = gold_reward(language, prompts, a, mask_a)
    gold_b = gold_reward(language, prompts, b, mask_b)
    a_wins = jax.random.uniform(k_label, (num_pairs,)) < jax.nn.sigmoid((gold_a - gold_b) / bt_temperature)
    a_wins = a_wins != (jax.random.uniform(k_flip, (num_pairs,)) < label_noise)
    pick = lambda x, y: jnp.where(a_wins.reshape((-1,) + (1,) * (x.ndim - 1)), x, y)  # noqa: E731
    return {
        "prompt": prompts,
        "chosen": pick(a, b),
        "chosen_mask": pick(mask_a, mask_b),
        "rejected": pick(b, a),
        "rejected_mask": pick(mask_b, mask_a),
        "gold_chosen": pick(gold_a, gold_b),
        "gold_rejected": pick(gold_b, gold_a),
    }
