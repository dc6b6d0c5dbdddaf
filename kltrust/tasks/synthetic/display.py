"""The synthetic language as text: words as letters, good words in capitals, markers for BOS/EOS/PAD."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from kltrust.tasks.synthetic.language import BOS, EOS, NUM_SPECIAL, PAD, Language

__all__ = ["decode", "word_name"]


def word_name(index: int) -> str:
    """Word ``index`` (0-based) as bijective base-26 letters: a … z, aa, ab, …"""
    name = ""
    index += 1
    while index > 0:
        index, rem = divmod(index - 1, 26)
        name = chr(ord("a") + rem) + name
    return name


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
