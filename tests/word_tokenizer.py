"""A word-level `kltrust.models.interface.Tokenizer` over the sentiment prompts' words, for tests
of the sentiment task and of real-model programs on tiny random decoders."""

from __future__ import annotations

import re
from collections.abc import Sequence

from kltrust.models.pretrained.text import HELD_OUT_ENGLISH
from kltrust.tasks.sentiment import prompt_rows

SENTIMENT_WORDS = ("it was great good wonderful terrible awful bad boring not very fine okay and "
                   "the food film i loved hated ! .").split()


class WordTokenizer:
    """Word-level `Tokenizer` over the prompts' words and `SENTIMENT_WORDS`: words and single
    punctuation marks are tokens; decode joins them with spaces (so encode(decode(ids)) == ids).
    ``bos`` False and ``pad_is_eos`` True give a GPT-2-like layout (no BOS, PAD = EOS)."""

    def __init__(self, bos: bool = True, pad_is_eos: bool = False):
        words = {w for split in ("train", "test") for t in prompt_rows(split)["text"] for w in self.split(t)}
        words |= {w for t in HELD_OUT_ENGLISH for w in self.split(t)}  # the alignment tax's text
        specials = ["<pad>", "<s>", "</s>"]
        self.words = specials + sorted(words | set(SENTIMENT_WORDS))
        self.index = {w: i for i, w in enumerate(self.words)}
        self._bos, self._pad = (1 if bos else None), (2 if pad_is_eos else 0)

    @staticmethod
    def split(text: str) -> list[str]:
        return re.findall(r"\w+|[^\w\s]", text)

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def bos_id(self) -> int | None:
        return self._bos

    @property
    def eos_id(self) -> int:
        return 2

    @property
    def pad_id(self) -> int:
        return self._pad

    def encode(self, text: str) -> list[int]:
        return [self.index[w] for w in self.split(text)]

    def decode(self, ids: Sequence[int]) -> str:
        return " ".join(self.words[i] for i in ids if i != self._pad)
