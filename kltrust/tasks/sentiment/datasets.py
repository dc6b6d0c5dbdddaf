"""The sentiment prompts as a TFDS data set, written and read without TensorFlow (ArrayRecord).

``SentimentPrompts`` (name ``sentiment_prompts``) has one row per prompt opener of
`kltrust.tasks.sentiment.prompts.prompt_rows`: ``text`` (Text), ``domain`` and ``template``
(int32), with a ``train`` and a held-out ``test`` split (held-out subjects; disjoint). Nothing is
random: the builder's version is `PROMPTS_VERSION`, and the same version and config always write
the same records in the same order (shuffling disabled), as the synthetic builders do
(`kltrust.tasks.synthetic.datasets`, whose conventions this follows).

    rows = load_prompt_rows("train", data_dir="/tmp/tfds")   # prepares on first use
    rows["text"]  # object [N] of str; rows["domain"] int32 [N]
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from kltrust.tasks.arrays import load_arrays
from kltrust.tasks.sentiment.prompts import PROMPTS_VERSION, prompt_rows

_SPLITS = ("train", "test")

__all__ = ["SentimentPromptConfig", "SentimentPrompts", "load_prompt_rows"]


@dataclasses.dataclass(eq=False)
class SentimentPromptConfig(tfds.core.BuilderConfig):
    """Which prompts are held out; leave ``name`` empty and it is derived (``holdout5``).

    Attributes:
      holdout_every: every holdout_every-th subject of a domain is a test subject (≥ 2).
    """

    name: str = ""
    holdout_every: int = 5

    def __post_init__(self):
        if not (isinstance(self.holdout_every, (int, np.integer)) and self.holdout_every >= 2):
            raise ValueError(f"SentimentPromptConfig.holdout_every must be an integer >= 2, "
                             f"got {self.holdout_every!r}.")
        self.holdout_every = int(self.holdout_every)
        if not self.name:
            self.name = f"holdout{self.holdout_every}"
        if not self.description:
            self.description = f"kltrust sentiment prompt openers, every {self.holdout_every}th subject held out"


class SentimentPrompts(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Short neutral openers of reviews, trip reports, messages and stories (see prompts.py)."""

    VERSION = tfds.core.Version(PROMPTS_VERSION)
    RELEASE_NOTES = {"1.0.0": "First release: 7 domains, 1,566 prompts (holdout5: 1,296 train, 270 test)."}
    BUILDER_CONFIGS = [SentimentPromptConfig()]

    def __init__(self, *, config: SentimentPromptConfig | str | None = None,
                 file_format: str | tfds.core.FileFormat | None = tfds.core.FileFormat.ARRAY_RECORD,
                 **kwargs: Any):
        if isinstance(config, SentimentPromptConfig):
            # TFDS refuses a new instance named like a class config; the name holds every
            # parameter, so an equal config is the class's own.
            registered = self.get_builder_config(config.name)
            if registered is not None and registered.holdout_every == config.holdout_every:
                config = registered
        super().__init__(config=config, file_format=file_format, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # As in the synthetic builders: TFDS's own lookup touches ``importlib_resources``.
        return epath.Path(inspect.getfile(cls))

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description="kltrust controlled-sentiment prompt openers (kltrust/tasks/sentiment/prompts.py).",
            features=tfds.features.FeaturesDict({
                "text": tfds.features.Text(),
                "domain": tfds.features.Scalar(dtype=np.int32),
                "template": tfds.features.Scalar(dtype=np.int32),
            }),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(split) for split in _SPLITS}

    def _generate_examples(self, split: str):
        rows = prompt_rows(split, self.builder_config.holdout_every)
        for i in range(len(rows["text"])):
            yield i, {k: v[i] for k, v in rows.items()}


def load_prompt_rows(split: str, data_dir: str | None = None, holdout_every: int = 5) -> dict[str, np.ndarray]:
    """One split of the prompts: ``text`` object [N] of str, ``domain`` / ``template`` int32 [N].

    With ``data_dir`` the rows are read through ``SentimentPrompts`` (prepared there on first use,
    ArrayRecord, no TensorFlow); without, they are built in memory by ``prompt_rows``. The two
    are equal (tests/test_sentiment_prompts.py).
    """
    if data_dir is None:
        return prompt_rows(split, holdout_every)
    arrays = load_arrays(SentimentPrompts, SentimentPromptConfig(holdout_every=holdout_every),
                         split=split, data_dir=data_dir)
    # Text features read back as UTF-8 bytes.
    text = np.array([t.decode("utf-8") if isinstance(t, bytes) else str(t) for t in arrays["text"]], dtype=object)
    return {"text": text, "domain": arrays["domain"].astype(np.int32), "template": arrays["template"].astype(np.int32)}
