"""A synthetic language with a known gold reward, built so that reward over-optimisation shows.

This module re-exports the language's public names; the code lives in `kltrust.tasks.synthetic`,
split by concern (each module's docstring holds its part of the definition):

    synthetic/language.py   tokens, the Markov chain, `LanguageSpec`, `make_language`, the samplers
    synthetic/gold.py       the gold reward (good words saturate, repeats and ungrammatical
                            transitions cost), the true likelihood, batch metrics, preference pairs
    synthetic/display.py    tokens as text (`decode`, `word_name`)

In short: PAD, BOS, EOS = 0, 1, 2 and W words; the true language is a strongly connected Markov
chain without self-loops, 2-cycles or good→good edges, so its samples never repeat or break
grammar, while a policy optimised against a reward model fitted to its preference pairs learns to
spam the rare "good" words; the gold reward then rises and falls.
"""

from __future__ import annotations

from kltrust.tasks.synthetic.display import decode, word_name
from kltrust.tasks.synthetic.gold import (batch_metrics, distinct_n, gold_components, gold_reward,
                                          grammatical, max_gold, preference_pairs, true_log_prob)
from kltrust.tasks.synthetic.language import (BOS, EOS, NUM_SPECIAL, PAD, Language, LanguageSpec,
                                              make_language, sample_prompts, sample_responses,
                                              sft_corpus)

__all__ = [
    "BOS",
    "EOS",
    "Language",
    "LanguageSpec",
    "NUM_SPECIAL",
    "PAD",
    "batch_metrics",
    "decode",
    "distinct_n",
    "gold_components",
    "gold_reward",
    "grammatical",
    "make_language",
    "max_gold",
    "preference_pairs",
    "sample_prompts",
    "sample_responses",
    "sft_corpus",
    "true_log_prob",
    "word_name",
]
