"""The gold reward of the sentiment task: VADER's compound score of the decoded continuation.

VADER (Hutto & Gilbert 2014; the ``vaderSentiment`` package) is a lexicon-and-rules scorer: each
word has a valence, adjusted for negation, intensifiers ("very"), capitals, "but" and "!", and
the sum s is squashed to the compound score s / √(s² + 15) ∈ (−1, 1). It is a real reward of
real text that needs no model weights, and — being a lexicon — it is easy to over-optimise
(repeat "great!"), which is what this task is for. It is host Python, so the task's
``traceable_gold`` is False and `kltrust.tasks.interface.gold_reward` calls it by callback.

Speed (a pure-Python loop: the host-side cost of each gold call), 2,000 sentences of ~26 words,
on 2 CPU cores shared with 4 other jobs, 2026-11-30:

    .venv/bin/python -m kltrust.tasks.sentiment     # prints sentences/s (`benchmark`)

gave 1,837 to 3,415 sentences/s over six runs at load averages 4.6 to 12. Through the task
(`SentimentTask.gold_reward`: decode with a word-level tokenizer, then VADER), 1,024 responses of
32 tokens took 0.46 s (≈ 2,200 responses/s), and 0.73 s inside a jitted program through
`kltrust.tasks.interface.gold_reward`'s callback: about half a second of host time per batch
of 1,024 gold evaluations, which a trainer pays once per evaluation, not per token.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["benchmark", "response_ids", "vader", "vader_compound"]


@functools.cache
def vader() -> Any:
    """The one ``SentimentIntensityAnalyzer`` of the process (loading its lexicon takes ~50 ms,
    so it is built once, on first use; importing this module does not need the package)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError as error:  # the task is usable (prompts, pairs) without it; gold is not
        raise ImportError("The sentiment task's gold reward needs the vaderSentiment package "
                          "(pip install vaderSentiment==3.3.2).") from error
    return SentimentIntensityAnalyzer()


def vader_compound(texts: Sequence[str]) -> np.ndarray:
    """VADER's compound score of each text: float32 [len(texts)], in (−1, 1); 0 for empty text."""
    analyzer = vader()
    return np.array([analyzer.polarity_scores(t)["compound"] for t in texts], np.float32).reshape(len(texts))


def response_ids(response: np.ndarray, mask: np.ndarray, eos_id: int) -> list[int]:
    """The ids of one response that are text: those with mask > 0, up to (not including) the
    first EOS. Masked positions and anything after EOS therefore cannot change the gold."""
    ids = np.asarray(response)[np.asarray(mask) > 0].tolist()
    return ids[:ids.index(eos_id)] if eos_id in ids else ids


def benchmark(num: int = 2000) -> float:
    """Sentences per second of `vader_compound` on ``num`` review-like sentences (~26 words)."""
    import time

    base = ("The staff were friendly but the room was not very clean, and honestly I would not "
            "stay there again unless the price dropped a lot!")
    words = ["great", "awful", "fine", "boring", "lovely", "terrible", "okay", "wonderful"]
    texts = [f"{base} It was {words[i % 8]} and {words[(i // 8) % 8]} overall, sample {i}." for i in range(num)]
    vader()  # lexicon load is not part of the rate
    start = time.perf_counter()
    vader_compound(texts)
    return num / (time.perf_counter() - start)

