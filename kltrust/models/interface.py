"""What a language model supplies to the token trainers: the `LanguageModel` and `Tokenizer` protocols.

A token trainer needs a policy (and a frozen reference) that it can initialise, run over whole
sequences (teacher-forced log-probs, values, the exact per-token KL) and sample from incrementally
with a KV cache, plus the rules that lay its parameters out on a device mesh. The small decoder
(`kltrust.models.transformer.TransformerLM`, also `kltrust.train.tokens.Policy`) is the first
implementation; a pretrained model loaded from an installed package implements the same members.

Every member is a pure function of its arguments (the model object itself is static: hashable, so
a jitted program can close over it), and every array is batch-major:

    init(key)                          -> params (a pytree)
    start_from(ref_params, key)        -> params of a policy that starts at its reference
    sequence(params, tokens [B, T])    -> logits [B, T, V], values [B, T] or None
    empty_cache(batch)                 -> cache (a pytree with room for max_len positions)
    decode(params, tokens [B, T], cache) -> logits [B, T, V], cache advanced by T positions

Logits at position t are the distribution of token t+1. ``decode`` after ``empty_cache`` gives
the same logits as ``sequence`` on the same tokens (tests/test_transformer.py checks the small
decoder), which is what makes a sampled token's log-prob equal the one training recomputes. These
are exactly the ``decode_fn`` / ``sequence_fn`` that `kltrust.rollout.token_rollout` takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import jax

Params = Any
"""A model's parameters: any pytree of arrays."""

Cache = Any
"""A model's KV cache: any pytree of arrays (explicit, so `lax.scan` can carry it)."""

__all__ = ["Cache", "LanguageModel", "Params", "RewardModel", "Tokenizer"]


@runtime_checkable
class Tokenizer(Protocol):
    """Text ↔ token ids of one vocabulary.

    Attributes (read-only): ``vocab_size`` (ids are in [0, vocab_size)), ``bos_id`` (None if the
    vocabulary has no beginning-of-sequence token), ``eos_id``, ``pad_id`` (may equal eos_id).
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def bos_id(self) -> int | None: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, without adding special tokens (the task decides where BOS goes)."""
        ...

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` (PAD dropped): ``encode(decode(ids)) == ids`` for ids without PAD."""
        ...


@runtime_checkable
class LanguageModel(Protocol):
    """A causal language model (optionally with a value head) as pure functions; see the module
    docstring for shapes.

    Attributes (read-only):
      vocab_size: V, the width of the logits.
      max_len: the most positions ``sequence`` and a cache take (prompt + response must fit).
      tokenizer: the model's `Tokenizer`, or None when token ids come from the task itself (the
        small decoder trained from scratch on the task's vocabulary).
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def max_len(self) -> int: ...

    @property
    def tokenizer(self) -> Tokenizer | None: ...

    def init(self, key: jax.Array) -> Params:
        """Parameters: drawn from ``key`` for a fresh model; a pretrained model returns its
        loaded weights (from an installed package; nothing downloads) and draws only new heads."""
        ...

    def start_from(self, reference_params: Params, key: jax.Array) -> Params:
        """A policy's initial parameters given its reference's: RLHF starts the policy at the
        reference. The small decoder copies the reference's trunk and head into fresh params (a new
        value head keeps its draw); a pretrained model returns ``reference_params`` themselves; a
        LoRA model wraps them with fresh zero-effect adapters (the same arrays, no copy)."""
        ...

    def sequence(self, params: Params, tokens: jax.Array) -> tuple[jax.Array, jax.Array | None]:
        """The full forward over ``tokens`` [B, T]: (logits [B, T, V], values [B, T] when the model
        has a critic, else None)."""
        ...

    def decode(self, params: Params, tokens: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """Incremental forward: ``tokens`` [B, T] at the positions after those ``cache`` holds →
        (logits [B, T, V], the cache with these T positions added). The policy alone, no values."""
        ...

    def empty_cache(self, batch: int) -> Cache:
        """A cache for ``batch`` rows with nothing filled and room for ``max_len`` positions."""
        ...

    def param_shardings(self, mesh: jax.sharding.Mesh, params: Params) -> Any:
        """A `jax.sharding.NamedSharding` per leaf of ``params`` (or of an optimiser state shaped
        like it) on ``mesh`` (axes `kltrust.sharding.AXES`): the model's sharding rules."""
        ...


@runtime_checkable
class RewardModel(Protocol):
    """A learned (proxy) reward: one scalar per (prompt, response), as a pure function of its
    parameters. Hashable and static like a `LanguageModel`; the trainers call only ``score``.

    Implementations: the small decoder's Bradley–Terry scorer (`kltrust.train.reward_model.Scorer`)
    and a head on a pretrained trunk (`kltrust.models.trunk_reward.TrunkReward`).
    """

    def score(self, params: Params, prompts: jax.Array, response: jax.Array,
              mask: jax.Array) -> jax.Array:
        """r(x, y) [B] for prompts [B, P] and responses [B, L] (``mask`` [B, L]: 1 on the
        response's real tokens, EOS included)."""
        ...
