"""`kltrust.models.pretrained.text.perplexity` on the tiny random llama with a character tokenizer.

What holds: perplexity(model, params, texts, batch_size) = exp(mean over every predicted token of
−log π(t_{i+1} | t_{≤i})), with BOS prepended, the first token (BOS) not predicted and padding
neither predicted nor read, equal to a float64 NumPy restatement that runs each text alone and
unpadded through `model.sequence`; with batch_size smaller than the number of texts and not
dividing it (so a whole padding row and the batching loop are exercised); and independent of
batch_size.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust.models import pretrained
from kltrust.models.interface import Tokenizer
from kltrust.models.pretrained.text import perplexity

U = 2.0 ** -24  # float32 unit round-off
CHARS = "abcdefghijklmnopqrstuvwxyz .,"
# Five texts of different lengths (1 to 20 characters: BOS + 20 ≤ max_len 24). Padding to the
# longest puts real padding into every shorter row.
TEXTS = ("the cat sat.", "a", "water boils, then.", "on the mat", "seven days in a week")
BATCH_SIZES = (2, 3)  # < 5 and not dividing it: padded to 6 rows (one all-padding row)
# Logits of one text computed at two batch shapes (different compiled programs) agree to
# F32_RTOL·(1 + max|logit|): the forward-pass bound derived in tests/test_pretrained.py (≲ 15
# chained float32 reductions of length ≤ 48, each ≤ 48u relative), and the same here.
F32_RTOL = 5e-5


@dataclasses.dataclass(frozen=True)
class CharTokenizer:
    """One id per character of CHARS after three specials: PAD 0, BOS 1, EOS 2. Frozen, so
    hashable."""

    chars: str = CHARS

    @property
    def vocab_size(self) -> int:
        return 3 + len(self.chars)

    @property
    def bos_id(self) -> int | None:
        return 1

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def pad_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        return [3 + self.chars.index(c) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join(self.chars[i - 3] for i in ids if i >= 3)


TOK = CharTokenizer()
MODEL = dataclasses.replace(pretrained.tiny("llama", vocab_size=TOK.vocab_size), tokenizer=TOK)


@pytest.fixture(scope="module")
def params():
    return jax.jit(MODEL.init)(jax.random.PRNGKey(0))


@pytest.fixture(scope="module")
def reference(params):
    """(perplexity, its tolerance): each text alone as [1, 1 + len] tokens (BOS first, no
    padding), logits from `model.sequence` in float32, then log-softmax and the NLL of tokens
    1.. in float64."""
    sequence = jax.jit(MODEL.sequence)
    nll, count, max_logit = 0.0, 0, 0.0
    for text in TEXTS:
        ids = np.array([TOK.bos_id] + TOK.encode(text))
        logits = np.asarray(sequence(params, jnp.asarray(ids[None]))[0][0], np.float64)
        z = logits[:-1]
        logp = z - z.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        nll -= logp[np.arange(len(ids) - 1), ids[1:]].sum()
        count += len(ids) - 1
        max_logit = max(max_logit, float(np.abs(logits).max()))
    # Per-token log-prob error of the library's float32 path against this one:
    #   forward at another batch shape: each logit within ε = F32_RTOL(1 + max|z|), and log-softmax
    #   is 2-Lipschitz in the ∞-norm (|Δ log p_i| ≤ |Δz_i| + |Δ logsumexp| ≤ 2ε);
    #   float32 log-softmax itself: the shifted logit and the log of a sum of V terms ≤ 1, each
    #   rounded: ≤ (V + 4)·u·(1 + max|z| + log V).
    # A mean over tokens keeps the same bound; perplexity's relative error is exp(δ) − 1 ≈ δ.
    eps = F32_RTOL * (1 + max_logit)
    delta = 2 * eps + (TOK.vocab_size + 4) * U * (1 + max_logit + math.log(TOK.vocab_size))
    return math.exp(nll / count), delta


@pytest.fixture(scope="module")
def results(params):
    """perplexity at each of BATCH_SIZES (computed once: each call compiles its own program)."""
    return {n: perplexity(MODEL, params, TEXTS, batch_size=n) for n in BATCH_SIZES}


def test_tokenizer_is_a_protocol_tokenizer():
    assert isinstance(TOK, Tokenizer) and hash(TOK) == hash(CharTokenizer())
    assert TOK.decode(TOK.encode(TEXTS[2])) == TEXTS[2]
    assert MODEL.tokenizer is TOK and MODEL.vocab_size == TOK.vocab_size


@pytest.mark.parametrize("batch_size", BATCH_SIZES)
def test_perplexity_matches_float64_restatement(results, reference, batch_size):
    """Catches: BOS not prepended or predicted, padding tokens counted as predictions, an
    off-by-one between logits and targets, a padding row or last batch dropped or double-counted
    (every text carries a different NLL, so any of these moves the mean by ≳ 1e-2 relative, far
    above the ~1e-4 tolerance)."""
    assert len(TEXTS) % batch_size != 0 and batch_size < len(TEXTS)
    expected, delta = reference
    got = results[batch_size]
    assert abs(got / expected - 1) <= math.expm1(delta), (got, expected, delta)


def test_perplexity_does_not_depend_on_batch_size(results, reference):
    """Two batch sizes (different compiled shapes, different padding) give one perplexity, to the
    float32 bound of each against the restatement added up (2δ). Catches: a result that depends on
    which rows share a batch (padding read by real tokens, or a per-batch mean)."""
    _, delta = reference
    a, b = (results[n] for n in BATCH_SIZES)
    assert abs(a / b - 1) <= math.expm1(2 * delta), (a, b)


def test_texts_differ_in_likelihood(params, reference):
    """The texts' NLLs differ (else dropping or repeating one would not move the mean and the
    tests above could not fail): perplexity of a text subset differs from the whole by ≫ δ."""
    expected, delta = reference
    part = perplexity(MODEL, params, TEXTS[:2], batch_size=2)
    assert abs(part / expected - 1) > 100 * delta
