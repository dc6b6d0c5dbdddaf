"""TFDS data sets of the synthetic language, and a byte-level loader for real text; no TensorFlow.

Three ``tfds.core.GeneratorBasedBuilder`` s, written as ArrayRecord (the random-access format
``tfds.data_source`` reads without TensorFlow) and configured by one ``SyntheticConfig``:

* ``SyntheticPrompts`` (name ``synthetic_prompts``): ``prompt`` int32 [P];
* ``SyntheticSFT`` (``synthetic_sft``): ``prompt``, ``response`` int32 [L], ``mask`` float32 [L],
  ``gold`` float32 [];
* ``SyntheticPreferences`` (``synthetic_preferences``): ``prompt``, ``chosen``, ``chosen_mask``,
  ``rejected``, ``rejected_mask``, ``gold_chosen``, ``gold_rejected`` (``text.preference_pairs``).

Each has a ``train`` split of ``num_train`` rows and a held-out ``test`` split of ``num_test`` rows
(pairs, for preferences), drawn by ``kltrust.tasks.text`` from the key
``fold_in(fold_in(key(seed), kind), split)`` (kind 0/1/2 for prompts/SFT/preferences, split 0/1 for
train/test), so the splits and the kinds are independent draws and the same config always writes the
same records, in generation order (shuffling is disabled). The config's name encodes every parameter
(readable sizes plus a hash of the whole config), so settings never collide in one data_dir:

    arrays = load_arrays(SyntheticPreferences, SyntheticConfig(num_train=4096, label_noise=0.1),
                         split="train", data_dir="/tmp/tfds")          # prepares on first use
    for batch in batches(arrays, batch_size=64, seed=0, epochs=1): ...

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

import dataclasses
import hashlib
import inspect
import struct
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from kltrust.tasks import text
from kltrust.tasks.text import BOS, EOS, PAD, LanguageSpec

BYTE_OFFSET = 3
BYTE_VOCAB_SIZE = 256 + BYTE_OFFSET
_KINDS = {"prompts": 0, "sft": 1, "preferences": 2}
_SPLITS = {"train": 0, "test": 1}

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


# ---------------------------------------------------------------- synthetic data sets


@dataclasses.dataclass(eq=False)
class SyntheticConfig(tfds.core.BuilderConfig):
    """What a synthetic data set holds; leave ``name`` empty and it is derived from the rest.

    Attributes:
      language: the ``LanguageSpec`` (its seed fixes the language itself).
      num_train, num_test: rows (pairs) in the train and test splits, ≥ 1.
      label_noise: preference label flip probability in [0, 0.5) (preferences only).
      bt_temperature: Bradley–Terry temperature > 0 (preferences only).
      seed: the sampling seed of the data, ≥ 0 (independent of ``language.seed``).
    """

    name: str = ""
    language: LanguageSpec = LanguageSpec()
    num_train: int = 2048
    num_test: int = 512
    label_noise: float = 0.0
    bt_temperature: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not isinstance(self.language, LanguageSpec):
            raise ValueError(f"SyntheticConfig.language must be a LanguageSpec, got {self.language!r}.")
        for field in ("num_train", "num_test"):
            value = getattr(self, field)
            if not (isinstance(value, (int, np.integer)) and value >= 1):
                raise ValueError(f"SyntheticConfig.{field} must be an integer >= 1, got {value!r}.")
            setattr(self, field, int(value))
        if not (isinstance(self.seed, (int, np.integer)) and 0 <= self.seed < 2**31):
            raise ValueError(f"SyntheticConfig.seed must be an integer in [0, 2**31), got {self.seed!r}.")
        self.seed = int(self.seed)
        if not 0.0 <= self.label_noise < 0.5:
            raise ValueError(f"SyntheticConfig.label_noise must be in [0, 0.5), got {self.label_noise!r}.")
        if not self.bt_temperature > 0.0:
            raise ValueError(f"SyntheticConfig.bt_temperature must be > 0, got {self.bt_temperature!r}.")
        self.label_noise, self.bt_temperature = float(self.label_noise), float(self.bt_temperature)
        if not self.name:
            self.name = self.derived_name()
        if not self.description:
            self.description = f"kltrust synthetic language: {self.parameters()}"

    def parameters(self) -> dict[str, Any]:
        """Every parameter that changes the data (the hashed content of the name)."""
        return {"language": dataclasses.asdict(self.language), "num_train": self.num_train,
                "num_test": self.num_test, "label_noise": float(self.label_noise),
                "bt_temperature": float(self.bt_temperature), "seed": self.seed}

    def derived_name(self) -> str:
        """e.g. ``w20-s4-g4-p4-l12-n2048-512-noise0.0-bt1.0-seed0-3f9a0c21d7``; the hash covers all."""
        spec = self.language
        digest = hashlib.sha256(repr(sorted(self.parameters().items())).encode()).hexdigest()[:10]
        return (f"w{spec.num_words}-s{spec.successors}-g{spec.num_good}-p{spec.prompt_len}-"
                f"l{spec.response_len}-n{self.num_train}-{self.num_test}-noise{float(self.label_noise)}-"
                f"bt{float(self.bt_temperature)}-seed{self.seed}-{digest}")


def generate(kind: str, config: SyntheticConfig, split: str) -> dict[str, np.ndarray]:
    """The rows of one split as numpy arrays, exactly what the builder of ``kind`` writes.

    kind ∈ {"prompts", "sft", "preferences"}, split ∈ {"train", "test"}.
    """
    if kind not in _KINDS:
        raise ValueError(f"kind must be one of {tuple(_KINDS)}, got {kind!r}.")
    if split not in _SPLITS:
        raise ValueError(f"split must be one of {tuple(_SPLITS)}, got {split!r}.")
    language = text.make_language(config.language)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), _KINDS[kind]), _SPLITS[split])
    n = config.num_train if split == "train" else config.num_test
    if kind == "prompts":
        rows = {"prompt": text.sample_prompts(language, key, n)}
    elif kind == "sft":
        rows = text.sft_corpus(language, key, n)
        rows["gold"] = text.gold_reward(language, rows["prompt"], rows["response"], rows["mask"])
    else:
        rows = text.preference_pairs(language, key, n, config.label_noise, config.bt_temperature)
    return {k: np.asarray(v) for k, v in jax.device_get(rows).items()}


def _features(kind: str, spec: LanguageSpec) -> tfds.features.FeaturesDict:
    tokens = lambda n: tfds.features.Tensor(shape=(n,), dtype=np.int32)  # noqa: E731
    mask = tfds.features.Tensor(shape=(spec.response_len,), dtype=np.float32)
    scalar = tfds.features.Scalar(dtype=np.float32)
    prompt = tokens(spec.prompt_len)
    if kind == "prompts":
        spec_dict = {"prompt": prompt}
    elif kind == "sft":
        spec_dict = {"prompt": prompt, "response": tokens(spec.response_len), "mask": mask, "gold": scalar}
    else:
        spec_dict = {"prompt": prompt, "chosen": tokens(spec.response_len), "chosen_mask": mask,
                     "rejected": tokens(spec.response_len), "rejected_mask": mask,
                     "gold_chosen": scalar, "gold_rejected": scalar}
    return tfds.features.FeaturesDict(spec_dict)


class _SyntheticBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Shared builder: ArrayRecord by default, two splits, rows from ``generate``."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [SyntheticConfig()]
    KIND = ""

    def __init__(self, *, config: SyntheticConfig | str | None = None,
                 file_format: str | tfds.core.FileFormat | None = tfds.core.FileFormat.ARRAY_RECORD,
                 **kwargs: Any):
        if isinstance(config, SyntheticConfig):
            # TFDS refuses a new instance named like a class config; the name hashes every
            # parameter, so an equal config is the class's own.
            registered = self.get_builder_config(config.name)
            if registered is not None and registered.parameters() == config.parameters():
                config = registered
        super().__init__(config=config, file_format=file_format, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup for a module in a package touches ``importlib_resources`` (not a
        # dependency here, and only a backport); this is the answer it falls back to.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=f"kltrust synthetic language, {self.KIND} (see kltrust/tasks/text.py).",
            features=_features(self.KIND, self.builder_config.language),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in _SPLITS}

    def _generate_examples(self, split: str):
        rows = generate(self.KIND, self.builder_config, split)
        for i in range(len(next(iter(rows.values())))):
            yield i, {k: v[i] for k, v in rows.items()}


class SyntheticPrompts(_SyntheticBuilder):
    """Prompts of the true language (for RL)."""

    KIND = "prompts"


class SyntheticSFT(_SyntheticBuilder):
    """(prompt, response, mask, gold) samples of the true language (for SFT of the reference)."""

    KIND = "sft"


class SyntheticPreferences(_SyntheticBuilder):
    """Bradley–Terry preference pairs on the gold reward (for reward models and DPO)."""

    KIND = "preferences"


# ---------------------------------------------------------------- reading


def _stack(rows: list[Mapping[str, Any]], features: tfds.features.FeaturesDict) -> dict[str, np.ndarray]:
    out = {}
    for key, feature in features.items():
        dtype = getattr(feature, "np_dtype", None)
        values = [row[key] for row in rows]
        out[key] = np.stack([np.asarray(v, dtype) for v in values]) if values else np.zeros((0,), dtype)
    return out


def _read_all(source) -> list[Any]:
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
    return _stack(_read_all(source), instance.info.features)


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


# ---------------------------------------------------------------- real text, as bytes


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
    return _read_all(source)


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
