"""The controlled-sentiment token task (real text, VADER gold), one concern per module.

    prompts    the prompt openers: templates × slot fillers, 7 domains, held-out subjects
    datasets   their TFDS builder `SentimentPrompts` (ArrayRecord, no TensorFlow)
    gold       VADER's compound score of a decoded continuation (and its measured speed)
    pairs      Bradley–Terry labelling of reference samples (`label_pairs`), `PairSet`
    task       `SentimentTask`: all of it as a `kltrust.tasks.interface.TokenTask`

`python -m kltrust.tasks.sentiment` prints the gold reward's speed (sentences/s).
"""

from __future__ import annotations

from kltrust.tasks.sentiment.datasets import SentimentPromptConfig, SentimentPrompts, load_prompt_rows
from kltrust.tasks.sentiment.pairs import PAIR_SET_KEYS, PairSet, choice_probability, label_pairs
from kltrust.tasks.sentiment.prompts import DOMAINS, PROMPTS_VERSION, prompt_rows
from kltrust.tasks.sentiment.task import SentimentTask

__all__ = ["DOMAINS", "PAIR_SET_KEYS", "PROMPTS_VERSION", "PairSet", "SentimentPromptConfig",
           "SentimentPrompts", "SentimentTask", "choice_probability", "label_pairs", "load_prompt_rows",
           "prompt_rows"]
