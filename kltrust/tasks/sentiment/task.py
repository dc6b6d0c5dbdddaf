"""The controlled-sentiment task as a `kltrust.tasks.interface.TokenTask`: `SentimentTask`.

A policy continues short neutral openers (`kltrust.tasks.sentiment.prompts`, 1,566 of them in 7
domains, held-out subjects in the test split) and is scored by the VADER compound score of its
continuation (`kltrust.tasks.sentiment.gold`): a real-text task for a pretrained model, whose
`kltrust.models.interface.Tokenizer` encodes the prompts and decodes the responses. There is no
SFT corpus (the pretrained model is the reference as it is); preference pairs are reference
samples labelled by a Bradley–Terry draw on the gold (`kltrust.tasks.sentiment.pairs`), attached
with `SentimentTask.with_pairs` once the caller has sampled them.

Prompts as exactly ``prompt_len`` tokens. The models take no prompt attention mask, so every
token of a prompt is attended to and prompts of different lengths must be made equal by tokens
the model reads. The rule (`SentimentTask.encode_prompt`):

    row = [filler] * k  +  [BOS if the tokenizer has one]  +  encode(text)[-m:]

* left padding, because the response is sampled right after the prompt's last token: padding on
  the right would sit between the opener and its continuation;
* the filler defaults to EOS: for GPT-2-style vocabularies EOS (= BOS) is the document separator
  the model saw between packed pretraining documents, so a run of it reads as "earlier documents
  ended", the least informative context a real token can give (an id the model never saw at the
  start of text, e.g. id 0 = "!" in GPT-2, would be read as text). The fillers do shift the
  prompt's absolute positions by k, which a model with learnt positions notices slightly;
* not "only prompts whose encoding fits exactly": with a real tokenizer the openers' lengths
  vary by several tokens, and one length would keep a fraction of them and skew the domains;
* ``prompt_len=None`` (the default) is the longest encoded prompt of either split, so no opener
  loses a word; a smaller ``prompt_len`` keeps the last m tokens (the words next to the
  continuation) and `SentimentTask.num_truncated` counts the prompts cut.

The task is a `flax.struct` dataclass with only static fields (the tokenizer, lengths, prompt
texts, and pairs as a digest-hashed `PairSet`): a jitted program takes it as a pytree argument
with no leaves, or as a static argument, and it hashes by that content. The tokenizer must be
hashable (a static object, as the models are).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kltrust.models.interface import Tokenizer
from kltrust.tasks.interface import SPLITS
from kltrust.tasks.sentiment.datasets import load_prompt_rows
from kltrust.tasks.sentiment.gold import response_ids, vader_compound
from kltrust.tasks.sentiment.pairs import PairSet, label_pairs
from kltrust.tasks.sentiment.prompts import DOMAINS

__all__ = ["SentimentTask"]


def _static(**kwargs: Any) -> Any:
    return flax.struct.field(pytree_node=False, **kwargs)


@flax.struct.dataclass
class SentimentTask:
    """VADER-scored continuations of neutral openers, as a `TokenTask`. Build it with `create`.

    Attributes:
      tokenizer: the model's `Tokenizer` (hashable); it fixes vocab_size, eos_id and pad_id.
      prompt_len, response_len: P and L (module docstring for how prompts become P tokens).
      filler_id: the left-padding token of prompts.
      train_texts, test_texts: the prompt strings of each split, in data set order.
      train_domains, test_domains: each prompt's index into `DOMAINS`.
      train_pairs, test_pairs: labelled preference pairs once attached (`with_pairs`), else None.
    """

    tokenizer: Tokenizer = _static()
    prompt_len: int = _static()
    response_len: int = _static()
    filler_id: int = _static()
    train_texts: tuple[str, ...] = _static()
    test_texts: tuple[str, ...] = _static()
    train_domains: tuple[int, ...] = _static()
    test_domains: tuple[int, ...] = _static()
    train_pairs: PairSet | None = _static(default=None)
    test_pairs: PairSet | None = _static(default=None)

    @classmethod
    def create(cls, tokenizer: Tokenizer, prompt_len: int | None = None, response_len: int = 32, *,
               data_dir: str | None = None, holdout_every: int = 5, filler_id: int | None = None) -> SentimentTask:
        """The task for ``tokenizer``. Prompts come from the `SentimentPrompts` TFDS builder under
        ``data_dir`` (prepared on first use) or, without one, are built in memory (the same rows).
        ``prompt_len=None`` fits the longest prompt; ``filler_id=None`` pads with EOS."""
        rows = {split: load_prompt_rows(split, data_dir, holdout_every) for split in SPLITS}
        texts = {split: tuple(str(t) for t in rows[split]["text"]) for split in SPLITS}
        if prompt_len is None:
            bos = tokenizer.bos_id is not None
            prompt_len = max(len(tokenizer.encode(t)) + bos for split in SPLITS for t in texts[split])
        task = cls(tokenizer, int(prompt_len), int(response_len),
                   int(tokenizer.eos_id if filler_id is None else filler_id), texts["train"], texts["test"],
                   tuple(int(d) for d in rows["train"]["domain"]), tuple(int(d) for d in rows["test"]["domain"]))
        task.check()
        return task

    def check(self) -> None:
        """Raises ValueError on lengths or ids that cannot work with this tokenizer."""
        has_bos = self.tokenizer.bos_id is not None
        if not (isinstance(self.prompt_len, int) and self.prompt_len >= 1 + has_bos):
            raise ValueError(f"SentimentTask: prompt_len must be an integer >= {1 + has_bos}, got {self.prompt_len!r}.")
        if not (isinstance(self.response_len, int) and self.response_len >= 1):
            raise ValueError(f"SentimentTask: response_len must be an integer >= 1, got {self.response_len!r}.")
        if not 0 <= self.filler_id < self.vocab_size:
            raise ValueError(f"SentimentTask: filler_id {self.filler_id} is not in [0, {self.vocab_size}).")
        for split in SPLITS:
            if len(self._texts(split)) != len(self.domains(split)) or not self._texts(split):
                raise ValueError(f"SentimentTask: {split} needs as many domains as prompts, and some prompts.")

    # ------------------------------------------------------------ the TokenTask attributes

    @property
    def vocab_size(self) -> int:
        return int(self.tokenizer.vocab_size)

    @property
    def eos_id(self) -> int:
        return int(self.tokenizer.eos_id)

    @property
    def pad_id(self) -> int:
        return int(self.tokenizer.pad_id)

    @property
    def traceable_gold(self) -> bool:
        return False  # VADER is host Python: interface.gold_reward reaches it by pure_callback

    # ------------------------------------------------------------ prompts

    def _texts(self, split: str) -> tuple[str, ...]:
        if split not in SPLITS:
            raise ValueError(f"SentimentTask: split must be one of {SPLITS}, got {split!r}.")
        return self.train_texts if split == "train" else self.test_texts

    def prompt_texts(self, split: str) -> list[str]:
        """The prompt strings of ``split``, in the order of `prompts`."""
        return list(self._texts(split))

    def domains(self, split: str) -> np.ndarray:
        """Each prompt's domain, int32 [N] (an index into `DOMAINS`; names by `domain_names`)."""
        self._texts(split)
        return np.array(self.train_domains if split == "train" else self.test_domains, np.int32)

    @staticmethod
    def domain_names() -> tuple[str, ...]:
        return tuple(d.name for d in DOMAINS)

    @property
    def num_domains(self) -> int:
        """The prompt families (`DOMAINS`) as the `TokenTask` prompt domains (`kltrust.domains`)."""
        return len(DOMAINS)

    def domain_ids(self, prompts: jax.Array) -> jax.Array:
        """The optional `TokenTask` domain hook: each prompt's family, int32 [B], by looking the
        prompt's tokens up among every encoded prompt of both splits (jax, safe under ``jit`` and
        ``vmap``: a [B, N] comparison with N ≈ 1,600); −1 for a prompt that is not one of them."""
        table = np.concatenate([self._encoded[split][0] for split in SPLITS])
        ids = jnp.asarray(np.concatenate([self.domains(split) for split in SPLITS]))
        match = jnp.all(prompts[..., None, :] == table, axis=-1)
        return jnp.where(match.any(-1), ids[jnp.argmax(match, axis=-1)], -1).astype(jnp.int32)

    def encode_prompt(self, text: str) -> tuple[np.ndarray, bool]:
        """``text`` as exactly prompt_len ids (module docstring) and whether it was cut."""
        bos = [] if self.tokenizer.bos_id is None else [int(self.tokenizer.bos_id)]
        ids = list(self.tokenizer.encode(text))
        room = self.prompt_len - len(bos)
        cut = len(ids) > room
        ids = bos + ids[len(ids) - room:] if cut else bos + ids
        return np.array([self.filler_id] * (self.prompt_len - len(ids)) + ids, np.int32), cut

    @functools.cached_property
    def _encoded(self) -> dict[str, tuple[np.ndarray, int]]:
        # Encoding 1,566 prompts with a real tokenizer takes a while; once per task object.
        out = {}
        for split in SPLITS:
            rows = [self.encode_prompt(t) for t in self._texts(split)]
            out[split] = (np.stack([r for r, _ in rows]), sum(c for _, c in rows))
        return out

    def prompts(self, split: str) -> np.ndarray:
        """The prompts of ``split``: int32 [N, prompt_len], the same every call (a fresh copy)."""
        self._texts(split)
        return self._encoded[split][0].copy()

    def num_truncated(self, split: str) -> int:
        """How many prompts of ``split`` lost leading tokens to fit prompt_len (0 at the default)."""
        self._texts(split)
        return self._encoded[split][1]

    # ------------------------------------------------------------ reward and display

    def response_texts(self, responses: np.ndarray | jax.Array, mask: np.ndarray | jax.Array) -> list[str]:
        """Each response decoded: the ids with mask > 0 up to the first EOS (`gold.response_ids`)."""
        responses, mask = np.asarray(responses), np.asarray(mask)
        rows, masks = responses.reshape(-1, responses.shape[-1]), mask.reshape(-1, mask.shape[-1])
        return [self.tokenizer.decode(response_ids(r, m, self.eos_id)) for r, m in zip(rows, masks)]

    def gold_reward(self, prompts: np.ndarray | jax.Array, responses: np.ndarray | jax.Array,
                    mask: np.ndarray | jax.Array) -> np.ndarray:
        """VADER compound score of each decoded continuation: float32 [...] (responses' leading
        shape), in (−1, 1). Host numpy: call it inside a compiled program through
        `kltrust.tasks.interface.gold_reward`. The prompt does not enter the score."""
        del prompts  # the continuation alone is scored; the openers are neutral (score 0)
        shape = np.shape(responses)[:-1]
        return vader_compound(self.response_texts(responses, mask)).reshape(shape)

    def decode(self, tokens: np.ndarray | jax.Array) -> str:
        """One token row as text: PAD and the leading run of prompt fillers dropped. A 2-D array
        gives one line per row."""
        tokens = np.asarray(tokens)
        if tokens.ndim > 1:
            return "\n".join(self.decode(row) for row in tokens.reshape(-1, tokens.shape[-1]))
        ids = tokens.tolist()
        start = next((i for i, t in enumerate(ids) if t != self.filler_id), len(ids))
        return self.tokenizer.decode([t for t in ids[start:] if t != self.pad_id])

    # ------------------------------------------------------------ data for the stages before RL

    def sft_corpus(self, split: str) -> Mapping[str, np.ndarray] | None:
        """None: the pretrained model is the reference as it is."""
        self._texts(split)
        return None

    def preference_pairs(self, split: str) -> Mapping[str, np.ndarray] | None:
        """The attached pairs of ``split`` (`pairs.PAIR_SET_KEYS`), or None before `with_pairs`."""
        self._texts(split)
        pairs = self.train_pairs if split == "train" else self.test_pairs
        return None if pairs is None else pairs.arrays()

    def label_samples(self, prompts: np.ndarray, responses_a: np.ndarray, masks_a: np.ndarray,
                      responses_b: np.ndarray, masks_b: np.ndarray, key: jax.Array,
                      label_noise: float = 0.0, temperature: float = 1.0) -> dict[str, np.ndarray]:
        """Two reference samples per prompt, scored by this task's gold and labelled by
        `pairs.label_pairs` (Bradley–Terry on gold, temperature, label noise)."""
        gold_a = self.gold_reward(prompts, responses_a, masks_a)
        gold_b = self.gold_reward(prompts, responses_b, masks_b)
        return label_pairs(prompts, responses_a, masks_a, responses_b, masks_b, gold_a, gold_b, key,
                           label_noise, temperature)

    def with_pairs(self, train: Mapping[str, Any] | PairSet | None = None,
                   test: Mapping[str, Any] | PairSet | None = None) -> SentimentTask:
        """A copy of the task carrying these preference pairs (checked against P and L); a split
        given as None keeps the pairs it had."""
        def as_set(pairs: Mapping[str, Any] | PairSet | None, old: PairSet | None) -> PairSet | None:
            if pairs is None:
                return old
            arrays = pairs.arrays() if isinstance(pairs, PairSet) else pairs
            return PairSet(arrays, self.prompt_len, self.response_len)
        return dataclasses.replace(self, train_pairs=as_set(train, self.train_pairs),
                                   test_pairs=as_set(test, self.test_pairs))
