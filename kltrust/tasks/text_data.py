"""TFDS data sets of the synthetic language, and a byte-level loader for real text; no TensorFlow.

This module re-exports; the code is split by concern:

    synthetic/datasets.py   ``SyntheticConfig``, the builders ``SyntheticPrompts`` / ``SyntheticSFT``
                            / ``SyntheticPreferences`` (ArrayRecord) and ``generate``, the rows
                            they write
    arrays.py               ``load_arrays`` (one split as stacked numpy arrays) and ``batches``
    byte_text.py            real text as byte tokens: ``byte_rows``, ``decode_bytes``,
                            ``byte_corpus`` (a prepared TFDS text set; never downloads)

    arrays = load_arrays(SyntheticPreferences, SyntheticConfig(num_train=4096, label_noise=0.1),
                         split="train", data_dir="/tmp/tfds")          # prepares on first use
    for batch in batches(arrays, batch_size=64, seed=0, epochs=1): ...
"""

from __future__ import annotations

from kltrust.tasks.arrays import batches, load_arrays
from kltrust.tasks.byte_text import BYTE_OFFSET, BYTE_VOCAB_SIZE, byte_corpus, byte_rows, decode_bytes
from kltrust.tasks.synthetic.datasets import (SyntheticConfig, SyntheticPreferences, SyntheticPrompts,
                                              SyntheticSFT, generate)

__all__ = [
    "BYTE_OFFSET",
    "BYTE_VOCAB_SIZE",
    "SyntheticConfig",
    "SyntheticPreferences",
    "SyntheticPrompts",
    "SyntheticSFT",
    "batches",
    "byte_corpus",
    "byte_rows",
    "decode_bytes",
    "generate",
    "load_arrays",
]
