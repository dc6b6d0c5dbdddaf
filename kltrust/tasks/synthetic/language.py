"""The synthetic language: its definition, its construction and its samplers.

Tokens. ``PAD, BOS, EOS = 0, 1, 2``; the W words are ids ``3 .. W+2``; ``vocab_size = W + 3``. A
prompt is ``BOS w_1 … w_{P-1}`` (P = ``prompt_len``), a response is ``response_len`` = L tokens that
continue the chain from w_{P-1}. A response ends at its first EOS (mask 1, part of the response) and
is PAD (mask 0) after it; with no EOS drawn it is L words, all mask 1.

The true language is a first-order Markov chain on the words. Each word w has ``successors`` = S
allowed next words A(w), with weights q(·|w) ~ Dirichlet(1) over A(w); the ``num_good`` "good"
words are reachable but rare: a good successor's weight is multiplied by ``good_weight`` before
renormalising. The graph of allowed transitions is an *oriented* graph with no good→good edge:

    w ∉ A(w),   u ∈ A(w) ⇒ w ∉ A(u),   w, u good ⇒ u ∉ A(w),

and it is strongly connected (every word, each good word included, is reachable from every other
word; good words only from non-good ones). A prompt's first word is drawn from the start
distribution s(w) ∝ Dirichlet(1)·(good_weight if w good), the rest with q. In the response, EOS is
mixed into every word's successor distribution, and the chain then stays at PAD:

    p(u | w) = (1 − eos_prob)·q(u|w) + eos_prob·[u = EOS],   p(PAD | EOS) = p(PAD | PAD) = 1,

so log p(response | prompt) = Σ_{t: mask_t = 1} log p(y_t | y_{t−1}) with y_0 the prompt's last word
(``true_log_prob`` in `kltrust.tasks.synthetic.gold`; exactly −inf when a counted transition has
probability 0).

The gold reward on this language is in `kltrust.tasks.synthetic.gold`, its text display in
`kltrust.tasks.synthetic.display`; `kltrust.tasks.text` re-exports all three.

The samplers are jax.numpy, safe under ``jit`` and ``vmap``. ``make_language`` is numpy, a
deterministic function of the spec.
"""

from __future__ import annotations

import dataclasses
import functools
import math

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

PAD, BOS, EOS = 0, 1, 2
NUM_SPECIAL = 3

# make_language retries the random graph construction this many times before giving up.
_MAX_GRAPH_ATTEMPTS = 1000

__all__ = [
    "BOS",
    "EOS",
    "Language",
    "LanguageSpec",
    "NUM_SPECIAL",
    "PAD",
    "make_language",
    "prompt_domains",
    "sample_prompts",
    "sample_responses",
    "sft_corpus",
]


def _max_successors(num_words: int, num_good: int) -> int:
    """Largest out-degree an oriented graph on the words without good→good edges can have.

    Good words may only point at the W − G non-good words; no word may point at itself; and the
    W·S directed edges must fit in the C(W,2) − C(G,2) unordered pairs (no 2-cycles).
    """
    pairs = num_words * (num_words - 1) // 2 - num_good * (num_good - 1) // 2
    bound = min(num_words - 1, pairs // num_words)
    if num_good > 0:
        bound = min(bound, num_words - num_good)
    return bound


@dataclasses.dataclass(frozen=True)
class LanguageSpec:
    """The synthetic language and its gold reward (static, hashable).

    Attributes:
      num_words: W ≥ 3 words, token ids 3 .. W+2.
      successors: S allowed next words per word, in [2, max] where max keeps the graph oriented
        (see ``_max_successors``; 9 for W = 20, G = 4).
      eos_prob: probability of EOS after each response word, in [0, 1).
      num_good: G good words, in [0, W − 2].
      good_weight: factor on a good successor's Dirichlet weight, > 0 (< 1 makes them rare).
      prompt_len: P ≥ 2 tokens (BOS and P − 1 words).
      response_len: L ≥ 1 tokens.
      seed: numpy seed of the transition graph and weights, in [0, 2³²).
      good_scale, good_saturation: gold's good-word term good_scale·(1 − exp(−c/good_saturation));
        good_scale ≥ 0, good_saturation > 0.
      repeat_penalty, ungrammatical_penalty: ≥ 0, per repeated / ungrammatical token.
    """

    num_words: int = 20
    successors: int = 4
    eos_prob: float = 0.08
    num_good: int = 4
    good_weight: float = 0.35
    prompt_len: int = 4
    response_len: int = 12
    seed: int = 0
    good_scale: float = 3.0
    good_saturation: float = 2.0
    repeat_penalty: float = 1.0
    ungrammatical_penalty: float = 1.0

    def __post_init__(self):
        def fail(name: str, allowed: str) -> None:
            raise ValueError(f"LanguageSpec.{name} must be {allowed}, got {getattr(self, name)!r}.")

        def is_int(value) -> bool:
            return isinstance(value, (int, np.integer)) and not isinstance(value, bool)

        def is_real(value) -> bool:
            return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) \
                and math.isfinite(value)

        if not (is_int(self.num_words) and self.num_words >= 3):
            fail("num_words", "an integer >= 3")
        if not (is_int(self.num_good) and 0 <= self.num_good <= self.num_words - 2):
            fail("num_good", f"an integer in [0, {self.num_words - 2}] (num_words - 2)")
        top = _max_successors(self.num_words, self.num_good)
        if not (is_int(self.successors) and 2 <= self.successors <= top):
            fail("successors", f"an integer in [2, {top}] for num_words={self.num_words}, "
                               f"num_good={self.num_good} (no self-loops, 2-cycles or good->good edges)")
        if not (is_real(self.eos_prob) and 0.0 <= self.eos_prob < 1.0):
            fail("eos_prob", "a number in [0, 1)")
        if not (is_real(self.good_weight) and self.good_weight > 0.0):
            fail("good_weight", "a finite number > 0")
        if not (is_int(self.prompt_len) and self.prompt_len >= 2):
            fail("prompt_len", "an integer >= 2")
        if not (is_int(self.response_len) and self.response_len >= 1):
            fail("response_len", "an integer >= 1")
        if not (is_int(self.seed) and 0 <= self.seed < 2**32):
            fail("seed", "an integer in [0, 2**32)")
        for name in ("good_scale", "repeat_penalty", "ungrammatical_penalty"):
            if not (is_real(getattr(self, name)) and getattr(self, name) >= 0.0):
                fail(name, "a finite number >= 0")
        if not (is_real(self.good_saturation) and self.good_saturation > 0.0):
            fail("good_saturation", "a finite number > 0")
        # Canonical Python types, so equal specs also print (and hash into data set names) alike.
        for field in dataclasses.fields(self):
            cast = int if field.type == "int" else float
            object.__setattr__(self, field.name, cast(getattr(self, field.name)))

    @property
    def vocab_size(self) -> int:
        return self.num_words + NUM_SPECIAL


@flax.struct.dataclass
class Language:
    """The true language as arrays (a pytree; ``spec`` is static).

    Attributes:
      log_transition: [V, V], log p(next | token) in the response: word rows mix in EOS, the BOS
        row is the start distribution, the EOS and PAD rows put probability 1 on PAD; −inf marks
        probability 0.
      log_start: [V], log s(w) of a prompt's first word (−inf off the words).
      good: [V] bool, the good words.
      spec: the ``LanguageSpec``.
    """

    log_transition: jax.Array
    log_start: jax.Array
    good: jax.Array
    spec: LanguageSpec = flax.struct.field(pytree_node=False)

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def prompt_len(self) -> int:
        return self.spec.prompt_len

    @property
    def response_len(self) -> int:
        return self.spec.response_len


# ---------------------------------------------------------------- construction (numpy)


def _strongly_connected(adj: np.ndarray) -> bool:
    """Whether every node reaches every other along ``adj`` [n, n] (reachability from node 0 both ways)."""

    def reach(a: np.ndarray) -> np.ndarray:
        seen = np.zeros(a.shape[0], bool)
        seen[0] = True
        frontier = seen.copy()
        while frontier.any():
            frontier = a[frontier].any(axis=0) & ~seen
            seen |= frontier
        return seen

    return bool(reach(adj).all() and reach(adj.T).all())


def _random_graph(spec: LanguageSpec, good: np.ndarray, rng: np.random.RandomState) -> np.ndarray:
    """A random strongly connected oriented graph on the words, out-degree S, no good→good edge.

    Greedy: good words (the most constrained) choose their S successors first, among non-good
    words; then the non-good words in random order, among all words that do not already point at
    them. Retried until strongly connected. Returns adj [W, W] bool, adj[w, u] = u ∈ A(w).
    """
    w_count, s = spec.num_words, spec.successors
    for _ in range(_MAX_GRAPH_ATTEMPTS):
        adj = np.zeros((w_count, w_count), bool)
        order = np.concatenate([rng.permutation(np.flatnonzero(good)), rng.permutation(np.flatnonzero(~good))])
        ok = True
        for w in order:
            allowed = ~adj[:, w]
            allowed[w] = False
            if good[w]:
                allowed &= ~good
            candidates = np.flatnonzero(allowed)
            if candidates.size < s:
                ok = False
                break
            adj[w, rng.choice(candidates, s, replace=False)] = True
        if ok and _strongly_connected(adj):
            return adj
    raise ValueError(
        f"LanguageSpec.successors={s}: no strongly connected transition graph found for "
        f"num_words={w_count}, num_good={spec.num_good} in {_MAX_GRAPH_ATTEMPTS} attempts; "
        "use fewer successors or good words."
    )


def make_language(spec: LanguageSpec = LanguageSpec()) -> Language:
    """The language of ``spec``, a deterministic function of it (numpy ``RandomState(spec.seed)``).

    Draws, in order: the good words (G of the W, uniformly), the transition graph
    (``_random_graph``), each word's Dirichlet(1) successor weights (good successors × good_weight,
    renormalised) and the start distribution (Dirichlet(1) over all words, good × good_weight).
    """
    rng = np.random.RandomState(spec.seed)
    w_count, v = spec.num_words, spec.vocab_size
    good_words = np.zeros(w_count, bool)
    good_words[rng.choice(w_count, spec.num_good, replace=False)] = True
    adj = _random_graph(spec, good_words, rng)

    word_probs = np.zeros((w_count, w_count))
    for w in range(w_count):
        targets = np.flatnonzero(adj[w])
        weights = rng.dirichlet(np.ones(targets.size)) * np.where(good_words[targets], spec.good_weight, 1.0)
        word_probs[w, targets] = weights / weights.sum()
    start = rng.dirichlet(np.ones(w_count)) * np.where(good_words, spec.good_weight, 1.0)
    start /= start.sum()

    probs = np.zeros((v, v))
    probs[NUM_SPECIAL:, NUM_SPECIAL:] = (1.0 - spec.eos_prob) * word_probs
    probs[NUM_SPECIAL:, EOS] = spec.eos_prob
    probs[BOS, NUM_SPECIAL:] = start
    probs[EOS, PAD] = 1.0
    probs[PAD, PAD] = 1.0
    log_start = np.full(v, -np.inf)
    log_start[NUM_SPECIAL:] = np.log(start)
    good = np.zeros(v, bool)
    good[NUM_SPECIAL:] = good_words
    with np.errstate(divide="ignore"):
        log_transition = np.log(probs)
    return Language(
        log_transition=jnp.asarray(log_transition, jnp.float32),
        log_start=jnp.asarray(log_start, jnp.float32),
        good=jnp.asarray(good),
        spec=spec,
    )


# ---------------------------------------------------------------- sampling (jax)


def _chain(log_probs: jax.Array, first_prev: jax.Array, key: jax.Array, steps: int) -> jax.Array:
    """``steps`` draws of the chain log_probs [V, V] from the tokens first_prev [n]: int32 [n, steps].

    Inverse-CDF sampling with one uniform draw for the whole chain (cheap to compile): y = #{k:
    F(k | prev) ≤ u}, F the row's CDF normalised so its last entry is exactly 1. A zero-probability
    token k has F(k) = F(k − 1), so it is never the first k with u < F(k): never drawn.
    """
    cdf = jnp.cumsum(jnp.exp(log_probs), axis=-1)
    cdf = cdf / cdf[:, -1:]
    uniforms = jax.random.uniform(key, (steps, first_prev.shape[0]))

    def step(prev, u):
        token = jnp.sum(cdf[prev] <= u[:, None], axis=-1).astype(jnp.int32)
        return token, token

    _, tokens = jax.lax.scan(step, first_prev.astype(jnp.int32), uniforms)
    return tokens.T


@functools.partial(jax.jit, static_argnames=("n",))
def sample_prompts(language: Language, key: jax.Array, n: int) -> jax.Array:
    """n prompts ``BOS w_1 … w_{P−1}`` of the true language: w_1 ~ s, w_{i+1} ~ q(·|w_i); int32 [n, P].

    q is the response chain without EOS, renormalised; its BOS row is the start distribution s.
    """
    word_log_probs = jax.nn.log_softmax(language.log_transition.at[:, EOS].set(-jnp.inf), axis=-1)
    bos = jnp.full((n,), BOS, jnp.int32)
    return jnp.concatenate([bos[:, None], _chain(word_log_probs, bos, key, language.prompt_len - 1)], axis=1)


@jax.jit
def prompt_domains(prompts: jax.Array, num_domains: int) -> jax.Array:
    """Each prompt's domain id in [0, ``num_domains``), int32 [...]: its first word's index modulo
    the count, (w_1 − NUM_SPECIAL) mod D. Domains so differ in where their chains start (and so in
    which words, good ones included, come easily), and a reward bug can be planted in one of them."""
    return ((prompts[..., 1] - NUM_SPECIAL) % num_domains).astype(jnp.int32)


def sample_responses(language: Language, key: jax.Array, prompts: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Responses of the true language to ``prompts`` [n, P]: (tokens int32 [n, L], mask float32 [n, L]).

    y_t ~ p(·|y_{t−1}) from y_0 = the prompt's last token; after EOS the chain emits PAD, so
    mask = [token ≠ PAD] is 1 on the words and the EOS and 0 after it.
    """
    tokens = _chain(language.log_transition, prompts[:, -1], key, language.response_len)
    return tokens, (tokens != PAD).astype(jnp.float32)


@functools.partial(jax.jit, static_argnames=("n",))
def sft_corpus(language: Language, key: jax.Array, n: int) -> dict[str, jax.Array]:
    """n (prompt, response) samples of the true language: ``prompt`` [n, P], ``response``, ``mask`` [n, L]."""
    k_prompt, k_response = jax.random.split(key)
    prompts = sample_prompts(language, k_prompt, n)
    response, mask = sample_responses(language, k_response, prompts)
    return {"prompt": prompts, "response": response, "mask": mask}
