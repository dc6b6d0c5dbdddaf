"""TFDS splits as stacked numpy arrays, and shuffled minibatches of them; no TensorFlow.

``load_arrays`` prepares a data set if missing and reads one split through ``as_data_source``
(ArrayRecord); ``batches`` iterates reproducible minibatches. The synthetic builders are in
`kltrust.tasks.synthetic.datasets`; a builder's config keywords default to theirs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from kltrust.tasks.synthetic.datasets import SyntheticConfig

__all__ = ["batches", "load_arrays", "read_all"]


def _stack(rows: list[Mapping[str, Any]], features: tfds.features.FeaturesDict) -> dict[str, np.ndarray]:
    out = {}
    for key, feature in features.items():
        dtype = getattr(feature, "np_dtype", None)
        values = [row[key] for row in rows]
        out[key] = np.stack([np.asarray(v, dtype) for v in values]) if values else np.zeros((0,), dtype)
    return out


def read_all(source) -> list[Any]:
    """Every record of a TFDS data source (``tfds.data_source`` / ``as_data_source``), in order."""
    indices = list(range(len(source)))
    if hasattr(source, "__getitems__"):
        try:
            return list(source.__getitems__(indices))
        except TypeError:  # tfds.testing.mock_data's source lacks the batched read
            pass
    return [source[i] for i in indices]


def load_arrays(
    builder: type[tfds.core.DatasetBuilder] | str,
    config: SyntheticConfig | str | None = None,
    *,
    split: str = "train",
    data_dir: str | None = None,
    prepare: bool = True,
    **config_kwargs: Any,
) -> dict[str, np.ndarray]:
    """One split of a data set as stacked numpy arrays, each [num_rows, ...], in record order.

    ``builder`` is a builder class or registered name (``"synthetic_sft"``). The config is
    ``config``, or ``SyntheticConfig(**config_kwargs)`` for the synthetic builders, or the
    builder's default. With ``prepare`` the data set is generated first if missing
    (``download_and_prepare``; the synthetic builders download nothing). It is then read through
    ``builder.as_data_source`` — ArrayRecord, no TensorFlow.
    """
    cls = tfds.builder_cls(builder) if isinstance(builder, str) else builder
    if config_kwargs:
        if config is not None:
            raise ValueError("load_arrays: pass either config or config keyword arguments, not both.")
        config = SyntheticConfig(**config_kwargs)
    kwargs = {"data_dir": data_dir}
    if config is not None:
        kwargs["config"] = config
    instance = cls(**kwargs)
    if prepare:
        instance.download_and_prepare(download_config=tfds.download.DownloadConfig(try_download_gcs=False))
    source = instance.as_data_source(split=split)
    return _stack(read_all(source), instance.info.features)


def batches(
    arrays: Mapping[str, np.ndarray],
    batch_size: int,
    seed: int = 0,
    epochs: int | None = 1,
    drop_remainder: bool = True,
) -> Iterator[dict[str, np.ndarray]]:
    """Shuffled minibatches of ``arrays`` (all with the same leading size n), a new permutation of
    ``np.random.default_rng(seed)`` per epoch; ``epochs=None`` repeats forever. Deterministic in
    (arrays, batch_size, seed). With ``drop_remainder`` every batch has exactly ``batch_size`` rows."""
    sizes = {len(v) for v in arrays.values()}
    if len(sizes) != 1:
        raise ValueError(f"batches: arrays must share their leading size, got {sorted(sizes)}.")
    n = sizes.pop()
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise ValueError(f"batches: batch_size must be an integer >= 1, got {batch_size!r}.")
    if drop_remainder and batch_size > n:
        raise ValueError(f"batches: batch_size {batch_size} exceeds the {n} rows with drop_remainder.")
    rng = np.random.default_rng(seed)
    epoch = 0
    while epochs is None or epoch < epochs:
        order = rng.permutation(n)
        stop = n - n % batch_size if drop_remainder else n
        for start in range(0, stop, batch_size):
            index = order[start:start + batch_size]
            yield {k: np.asarray(v)[index] for k, v in arrays.items()}
        epoch += 1
