"""The synthetic language as a `kltrust.tasks.interface.TokenTask`: `SyntheticTask`.

An adapter over what the token pipeline already does, so a trainer that reads the interface gets
exactly the arrays it gets today: the prompts, SFT corpus and preference pairs are the rows of the
TFDS builders in `kltrust.tasks.synthetic.datasets` for the same `SyntheticConfig` the pipeline
(`kltrust.train.pipeline`) builds from its config — drawn in memory by ``generate``, or read through
the builders (written on first use) when ``data_dir`` is given; the two are equal — and the gold
reward is `kltrust.tasks.synthetic.gold.gold_reward` on the task's `Language`.

The task is a pytree (`flax.struct`): the language's arrays are its leaves and everything else is
static, so a compiled program can take the task as an argument and its gold reward reads the
arrays as inputs rather than baking them in as constants.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np

from kltrust.tasks.arrays import load_arrays
from kltrust.tasks.synthetic import gold
from kltrust.tasks.synthetic.datasets import (SyntheticConfig, SyntheticPreferences, SyntheticPrompts,
                                              SyntheticSFT, generate)
from kltrust.tasks.synthetic.display import SyntheticTokenizer, decode
from kltrust.tasks.synthetic.language import (EOS, PAD, Language, LanguageSpec, make_language,
                                              prompt_domains)

__all__ = ["SyntheticTask"]

_BUILDERS = {"prompts": SyntheticPrompts, "sft": SyntheticSFT, "preferences": SyntheticPreferences}


def _static(default: Any) -> Any:
    return flax.struct.field(pytree_node=False, default=default)


@flax.struct.dataclass
class SyntheticTask:
    """The synthetic language with its data sets, as a `TokenTask`.

    Build it with `create` (a token run's is `kltrust.train.token_spec.TokenSpec.task`).

    Attributes:
      language: the `Language` (its ``spec`` fixes prompt and response lengths and the gold).
      seed: the data sets' sampling seed (``SyntheticConfig.seed``; the pipeline's ``config.seed``).
      num_prompts, num_eval_prompts: rows of the prompt set's train / test split.
      num_sft, num_eval_sft: rows of the SFT corpus's train / test split.
      num_pairs, num_eval_pairs: preference pairs in the train / test split.
      label_noise, bt_temperature: how the preference labels are drawn (`gold.preference_pairs`).
      data_dir: None to draw the rows in memory; a directory to read them through the TFDS
        builders, prepared there on first use (as the pipeline does under ``ROOT/tfds``).
      num_domains: D, the prompt domains (`domain_ids`); 1: none. The data sets do not depend on it.
    """

    language: Language
    seed: int = _static(0)
    num_prompts: int = _static(2048)
    num_eval_prompts: int = _static(256)
    num_sft: int = _static(8192)
    num_eval_sft: int = _static(1024)
    num_pairs: int = _static(4096)
    num_eval_pairs: int = _static(1024)
    label_noise: float = _static(0.0)
    bt_temperature: float = _static(1.0)
    data_dir: str | None = _static(None)
    num_domains: int = _static(1)

    @classmethod
    def create(cls, spec: LanguageSpec = LanguageSpec(), **kwargs: Any) -> SyntheticTask:
        """The task of the language ``spec`` (`make_language`); ``kwargs`` are the other
        attributes. Every data set's config is checked here, before anything is drawn."""
        task = cls(make_language(spec), **kwargs)
        d = task.num_domains
        if not (isinstance(d, int) and 1 <= d <= spec.num_words):
            raise ValueError(f"num_domains must be an integer in [1, num_words = {spec.num_words}] "
                             f"(a domain is a set of first words), got {d!r}.")
        for kind in _BUILDERS:
            task.data_config(kind)
        return task

    # ------------------------------------------------------------ the TokenTask attributes

    @property
    def spec(self) -> LanguageSpec:
        return self.language.spec

    @property
    def vocab_size(self) -> int:
        return self.spec.vocab_size

    @property
    def prompt_len(self) -> int:
        return self.spec.prompt_len

    @property
    def response_len(self) -> int:
        return self.spec.response_len

    @property
    def eos_id(self) -> int:
        return EOS

    @property
    def pad_id(self) -> int:
        return PAD

    @property
    def traceable_gold(self) -> bool:
        return True

    @property
    def tokenizer(self) -> SyntheticTokenizer:
        """The language's `Tokenizer`, for a model built on its vocabulary."""
        return SyntheticTokenizer(self.spec.num_words)

    # ------------------------------------------------------------ data

    def data_config(self, kind: str) -> SyntheticConfig:
        """The `SyntheticConfig` of data set ``kind`` ("prompts", "sft" or "preferences"): exactly
        the one the pipeline builds, so the TFDS names (and directories) are the same too."""
        if kind == "prompts":
            sizes, extra = (self.num_prompts, self.num_eval_prompts), {}
        elif kind == "sft":
            sizes, extra = (self.num_sft, self.num_eval_sft), {}
        elif kind == "preferences":
            sizes = (self.num_pairs, self.num_eval_pairs)
            extra = {"label_noise": self.label_noise, "bt_temperature": self.bt_temperature}
        else:
            raise ValueError(f"kind must be one of {tuple(_BUILDERS)}, got {kind!r}.")
        return SyntheticConfig(language=self.spec, num_train=sizes[0], num_test=sizes[1],
                               seed=self.seed, **extra)

    def rows(self, kind: str, split: str) -> dict[str, np.ndarray]:
        """Every column of data set ``kind``'s ``split`` ("train" or "test"), host numpy arrays."""
        config = self.data_config(kind)
        if self.data_dir is None:
            return generate(kind, config, split)
        return load_arrays(_BUILDERS[kind], config, split=split, data_dir=self.data_dir)

    def prompts(self, split: str) -> np.ndarray:
        """Prompts ``BOS w_1 … w_{P−1}``: int32 [N, P]."""
        return self.rows("prompts", split)["prompt"]

    def sft_corpus(self, split: str) -> dict[str, np.ndarray]:
        """``prompt`` [N, P], ``response``, ``mask`` [N, L] and their ``gold`` [N]."""
        return self.rows("sft", split)

    def preference_pairs(self, split: str) -> dict[str, np.ndarray]:
        """The `PAIR_KEYS` and each side's gold (``gold_chosen``, ``gold_rejected``)."""
        return self.rows("preferences", split)

    # ------------------------------------------------------------ reward and display

    def gold_reward(self, prompts: jax.Array, responses: jax.Array, mask: jax.Array) -> jax.Array:
        """`gold.gold_reward` on this language: float32 [...], jax (safe under jit and vmap)."""
        return gold.gold_reward(self.language, prompts, responses, mask)

    def metrics(self, prompts: jax.Array, responses: jax.Array,
                mask: jax.Array) -> dict[str, jax.Array]:
        """The optional `TokenTask` hook: ``grammatical``, bool [B], whether a response has no
        zero-probability transition under the true language (jax, safe under jit and vmap)."""
        return {"grammatical": gold.grammatical(self.language, prompts, responses, mask)}

    def domain_ids(self, prompts: jax.Array) -> jax.Array:
        """The optional `TokenTask` domain hook (`kltrust.domains`): each prompt's domain,
        int32 [B] in [0, ``num_domains``) (`language.prompt_domains`)."""
        return prompt_domains(prompts, self.num_domains)

    def decode(self, tokens: np.ndarray | jax.Array) -> str:
        """Tokens as words, good words in capitals (`display.decode`)."""
        return decode(tokens, self.language)
