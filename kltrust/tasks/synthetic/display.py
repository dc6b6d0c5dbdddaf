"""The synthetic language as text: words as letters, good words in capitals, markers for BOS/EOS/PAD.

``decode`` shows tokens; `SyntheticTokenizer` reads such text back, the language's
`kltrust.models.interface.Tokenizer`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import jax
import numpy as np

from kltrust.tasks.synthetic.language import BOS, EOS, NUM_SPECIAL, PAD, Language

__all__ = ["SyntheticTokenizer", "decode", "word_index", "word_name"]


def word_name(index: int) -> str:
    """Word ``index`` (0-based) as bijective base-26 letters: a … z, aa, ab, …"""
    name = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("a") + rem) + name
    return name


def word_index(name: str) -> int:
    """The inverse of ``word_name`` (case-insensitive): ``word_index(word_name(i)) == i``."""
    letters = name.lower()
    if not letters or not all("a" <= ch <= "z" for ch in letters):
        raise ValueError(f"word_index: a word is letters a-z, got {name!r}.")
    index = 0
    for ch in letters:
        index = index * 26 + ord(ch) - ord("a") + 1
    return index - 1


def decode(tokens: Sequence[int] | np.ndarray | jax.Array, language: Language | None = None,
           skip_pad: bool = True) -> str:
    """Tokens as text: words as letters (``word_name``), good words UPPERCASE when ``language`` is
    given, ``<s>``/``</s>`` for BOS/EOS, ``<pad>`` for PAD (dropped if ``skip_pad``). A 2-D array
    gives one line per row."""
    tokens = np.asarray(tokens)
    if tokens.ndim > 1:
        return "\n".join(decode(row, language, skip_pad) for row in tokens.reshape(-1, tokens.shape[-1]))
    good = None if language is None else np.asarray(language.good)
    names = []
    for t in tokens.tolist():
        if t == PAD:
            if not skip_pad:
                names.append("<pad>")
        elif t == BOS:
            names.append("<s>")
        elif t == EOS:
            names.append("</s>")
        else:
            name = word_name(t - NUM_SPECIAL)
            names.append(name.upper() if good is not None and t < good.size and good[t] else name)
    return " ".join(names)


_MARKERS = {"<s>": BOS, "</s>": EOS, "<pad>": PAD}


@dataclasses.dataclass(frozen=True)
class SyntheticTokenizer:
    """The text of ``decode`` ↔ token ids of a language of ``num_words`` words (a
    `kltrust.models.interface.Tokenizer`): words are space-separated letters in either case,
    ``<s>``/``</s>``/``<pad>`` are BOS/EOS/PAD."""

    num_words: int

    @property
    def vocab_size(self) -> int:
        return self.num_words + NUM_SPECIAL

    @property
    def bos_id(self) -> int:
        return BOS

    @property
    def eos_id(self) -> int:
        return EOS

    @property
    def pad_id(self) -> int:
        return PAD

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``; raises ValueError on a word outside the language."""
        ids = []
        for piece in text.split():
            if piece in _MARKERS:
                ids.append(_MARKERS[piece])
                continue
            index = word_index(piece)
            if index >= self.num_words:
                raise ValueError(f"SyntheticTokenizer.encode: {piece!r} is not one of the "
                                 f"{self.num_words} words.")
            ids.append(index + NUM_SPECIAL)
        return ids

    def decode(self, ids: Sequence[int] | np.ndarray | jax.Array) -> str:
        """``decode(ids)`` without a language (every word lower case), PAD dropped."""
        return decode(ids)
