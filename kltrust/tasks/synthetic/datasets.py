"""TFDS data sets of the synthetic language, written and read without TensorFlow.

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

(``load_arrays`` and ``batches`` are in `kltrust.tasks.arrays`; `kltrust.tasks.text_data`
re-exports everything.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from kltrust.tasks.synthetic.gold import gold_reward, preference_pairs
from kltrust.tasks.synthetic.language import LanguageSpec, make_language, sample_prompts, sft_corpus

_KINDS = {"prompts": 0, "sft": 1, "preferences": 2}
_SPLITS = {"train": 0, "test": 1}

__all__ = ["SyntheticConfig", "SyntheticPreferences", "SyntheticPrompts", "SyntheticSFT", "generate"]


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
    language = make_language(config.language)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.key(config.seed), _KINDS[kind]), _SPLITS[split])
    n = config.num_train if split == "train" else config.num_test
    if kind == "prompts":
        rows = {"prompt": sample_prompts(language, key, n)}
    elif kind == "sft":
        rows = sft_corpus(language, key, n)
        rows["gold"] = gold_reward(language, rows["prompt"], rows["response"], rows["mask"])
    else:
        rows = preference_pairs(language, key, n, config.label_noise, config.bt_temperature)
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
