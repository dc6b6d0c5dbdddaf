"""Perplexity of ordinary English text under a language model: the alignment tax's yardstick.

``perplexity(model, params, texts) = exp(−Σ log π(t_{i+1} | t_{≤i}) / #predicted tokens)`` over
every text (BOS first where the tokenizer has one; the first token is not predicted), in batches
of one compiled shape. `HELD_OUT_ENGLISH` are plain sentences on everyday topics, written for this
purpose: not reviews, stories or messages (the sentiment task's prompts), and mostly without
sentiment words, so a policy tuned toward positive continuations is measured on text it was not
tuned for. tests/test_pretrained_text.py restates the NLL in float64 NumPy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

HELD_OUT_ENGLISH = (
    "The cat sat on the mat and looked out of the window at the birds.",
    "Water boils at one hundred degrees Celsius at sea level.",
    "She opened the door, took off her coat and sat down by the fire.",
    "The train to London leaves from the station every morning at eight.",
    "Most plants need light, water and air to grow.",
    "The library closes at six on weekdays and at noon on Saturdays.",
    "He wrote the address on the envelope and put a stamp in the corner.",
    "A week has seven days and a year has twelve months.",
    "The river runs through the middle of the town and under three bridges.",
    "Add the flour to the butter and stir until the mixture is smooth.",
    "The meeting was moved from Tuesday to Thursday afternoon.",
    "Children in the village walk to school along the main road.",
    "The museum has a large collection of old maps and coins.",
    "Turn left at the second light and the bank is on your right.",
    "The sun rises in the east and sets in the west.",
    "They planted potatoes in the spring and picked them in the autumn.",
    "The computer saves a copy of the file every ten minutes.",
    "On the table there were two cups, a teapot and a plate of bread.",
    "The bus was late, so we waited under the roof of the shelter.",
    "Paris is the capital of France and lies on the river Seine.",
    "The doctor asked him to come back in two weeks.",
    "Fish breathe through their gills and most of them lay eggs.",
    "The shop sells newspapers, sweets and cold drinks.",
    "After dinner they washed the dishes and went for a short walk.",
)


def perplexity(model: Any, params: Any, texts: Sequence[str], batch_size: int = 8) -> float:
    """exp(mean negative log-likelihood per predicted token) of ``texts`` under ``model`` (any
    `kltrust.models.interface.LanguageModel` with a tokenizer) at ``params``. Rows are right-padded
    to the longest text; padding is neither predicted nor read by a real token (causal attention).
    """
    tok = model.tokenizer
    bos = [tok.bos_id] if tok.bos_id is not None else []
    rows = [bos + list(tok.encode(t)) for t in texts]
    width = max(map(len, rows))
    n = -(-len(rows) // batch_size) * batch_size  # whole batches: one compiled shape
    tokens = np.full((n, width), tok.pad_id, np.int32)
    mask = np.zeros((n, width - 1), np.float64)
    for i, row in enumerate(rows):
        tokens[i, :len(row)] = row
        mask[i, :len(row) - 1] = 1

    @jax.jit
    def token_logp(params, tokens):
        logits = model.sequence(params, tokens)[0][:, :-1]
        return jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], -1)[..., 0]

    nll = 0.0
    for start in range(0, n, batch_size):
        logp = np.asarray(token_logp(params, jnp.asarray(tokens[start:start + batch_size])),
                          np.float64)
        nll -= float((logp * mask[start:start + batch_size]).sum())
    return float(np.exp(nll / mask.sum()))
