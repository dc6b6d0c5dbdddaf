"""Real text as byte tokens, and a TFDS text data set read without TensorFlow or downloading.

Real text, ``byte_corpus``: UTF-8 bytes as tokens ``byte + 3`` (``BYTE_VOCAB_SIZE`` = 259, keeping
PAD/BOS/EOS = 0/1/2), rows of ``seq_len`` tokens starting with BOS. How a TFDS text data set is read
without TensorFlow (tensorflow-datasets 4.9.10):

* prepared as ArrayRecord, it is read by ``tfds.data_source`` (no TF anywhere on the read path);
* prepared as TFRecord (the default of ``tfds build``, and the format of the prepared data sets on
  ``gs://tfds-data``), ``tfds.data_source`` refuses it (no random access), so the records are read
  here with a small TFRecord framing reader (CRCs are not checked) and decoded by the data set's own
  ``features.deserialize_example_np``, TFDS's numpy example parser.

*Preparing* ``tiny_shakespeare`` needs internet and, for that builder, TensorFlow (its generator
reads the download with ``tf.io.gfile``): on such a machine run
``tfds build tiny_shakespeare --file_format=array_record --data_dir=DIR`` (or plain
``tfds build tiny_shakespeare`` for TFRecord) and copy ``DIR/tiny_shakespeare`` to the
``data_dir`` given to ``byte_corpus`` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``).
``byte_corpus`` never downloads. Without either, ``byte_rows`` chunks any text you have.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from kltrust.tasks.arrays import read_all
from kltrust.tasks.synthetic.language import BOS, EOS, PAD

BYTE_OFFSET = 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET

__all__ = ["BYTE_OFFSET", "BYTE_VOCAB_SIZE", "byte_corpus", "byte_rows", "decode_bytes"]


def byte_rows(data: bytes | str | list[bytes | str], seq_len: int, drop_remainder: bool = False) -> np.ndarray:
    """Text as rows of byte tokens: int32 [N, seq_len], each ``BOS`` then seq_len − 1 tokens ``byte + 3``.

    Strings are UTF-8 encoded. A list of texts is joined with one EOS between consecutive texts.
    The stream is cut into consecutive chunks of seq_len − 1 tokens; a final shorter chunk is
    padded with PAD (mask = tokens ≠ PAD), or dropped with ``drop_remainder``.
    """
    if not (isinstance(seq_len, int) and seq_len >= 2):
        raise ValueError(f"byte_rows: seq_len must be an integer >= 2, got {seq_len!r}.")
    texts = data if isinstance(data, list) else [data]
    pieces = []
    for i, t in enumerate(texts):
        if i:
            pieces.append(np.array([EOS], np.int32))
        raw = t.encode("utf-8") if isinstance(t, str) else bytes(t)
        pieces.append(np.frombuffer(raw, np.uint8).astype(np.int32) + BYTE_OFFSET)
    stream = np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)
    width = seq_len - 1
    num_rows = len(stream) // width if drop_remainder else -(-len(stream) // width)
    body = np.full((num_rows * width,), PAD, np.int32)
    body[:min(len(stream), len(body))] = stream[:len(body)]
    rows = np.concatenate([np.full((num_rows, 1), BOS, np.int32), body.reshape(num_rows, width)], axis=1)
    return rows


def decode_bytes(tokens: np.ndarray) -> str:
    """Byte tokens back to text (BOS/EOS/PAD dropped; invalid UTF-8 replaced)."""
    tokens = np.asarray(tokens).reshape(-1)
    raw = (tokens[tokens >= BYTE_OFFSET] - BYTE_OFFSET).astype(np.uint8).tobytes()
    return raw.decode("utf-8", errors="replace")


def _tfrecord_records(path: epath.Path) -> Iterator[bytes]:
    """The records of one TFRecord file: [uint64 length][uint32 crc][data][uint32 crc] each (crcs unchecked)."""
    with path.open("rb") as f:
        while header := f.read(12):
            if len(header) < 12:
                raise ValueError(f"{path}: truncated TFRecord header.")
            (length,) = struct.unpack("<Q", header[:8])
            data = f.read(length)
            if len(data) < length or len(f.read(4)) < 4:
                raise ValueError(f"{path}: truncated TFRecord record.")
            yield data


def _read_tfrecord_split(builder: tfds.core.DatasetBuilder, split: str) -> list[dict[str, Any]]:
    if split not in builder.info.splits:
        raise ValueError(f"{builder.name}: no split {split!r} (TFRecord fallback reads whole splits only); "
                         f"have {sorted(builder.info.splits)}.")
    features = builder.info.features
    return [features.deserialize_example_np(record)
            for path in builder.info.splits[split].filepaths for record in _tfrecord_records(path)]


def _text_examples(name: str, split: str, data_dir: str | None) -> list[dict[str, Any]]:
    """The examples of a prepared TFDS split, without TensorFlow and without downloading."""
    try:
        source = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
    except Exception as error:  # not ArrayRecord, or not prepared: look at what is on disk
        try:
            builder = tfds.builder(name, data_dir=data_dir)
            prepared = builder.is_prepared()
        except Exception:
            prepared = False
        if not prepared:
            raise FileNotFoundError(
                f"byte_corpus: {name!r} is not prepared in data_dir={data_dir!r} (and is never downloaded "
                f"here). On a machine with internet (and TensorFlow, which tiny_shakespeare's generator "
                f"needs) run `tfds build {name} --file_format=array_record --data_dir=DIR` and copy "
                f"DIR/{name} into the data_dir."
            ) from error
        if builder.info.file_format != tfds.core.FileFormat.TFRECORD:
            raise
        return _read_tfrecord_split(builder, split)
    return read_all(source)


def byte_corpus(
    name: str = "tiny_shakespeare",
    split: str = "train",
    seq_len: int = 64,
    data_dir: str | None = None,
    *,
    feature: str = "text",
    drop_remainder: bool = False,
) -> np.ndarray:
    """A TFDS text data set as byte-token rows, int32 [N, seq_len] (``byte_rows`` of its texts).

    The texts are the ``feature`` of every example of ``split``, in record order (tiny_shakespeare
    has one example per split: train 90%, validation 5%, test 5% of the 1.1 MB text). The data set
    must already be prepared under ``data_dir`` (module docstring); nothing is downloaded. Reads
    ArrayRecord through ``tfds.data_source`` and TFRecord through the fallback reader, no TensorFlow.
    """
    examples = _text_examples(name, split, data_dir)
    texts = []
    for example in examples:
        value = example[feature]
        texts.append(value.item() if isinstance(value, np.ndarray) else value)
    return byte_rows(texts, seq_len, drop_remainder)
