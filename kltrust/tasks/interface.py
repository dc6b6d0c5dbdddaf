"""What a token task supplies to the token trainers: the `TokenTask` protocol.

A token task is the world a language-model policy is optimised in: prompts to answer, a gold
reward that scores a (prompt, response) — the quantity we actually care about and that the proxy
reward model only approximates — and, optionally, the data for the stages before RL (an SFT
corpus for the reference policy, Bradley–Terry preference pairs for the reward model and DPO).
A trainer that reads only this protocol runs on any task: the synthetic language
(`kltrust.tasks.synthetic.task.SyntheticTask`, the first implementation) or a real-text task whose
prompts are encoded by a pretrained model's tokenizer and whose gold reward is, say, a sentiment
score of the decoded response.

Layout (as in `kltrust.rollout`): a prompt is P token ids, a response L ids; ``mask`` [.., L] is 1
on the response's real tokens (its EOS included) and 0 on the PAD after it. Arrays from
``prompts`` / ``sft_corpus`` / ``preference_pairs`` are host numpy arrays, drawn once before
training; the trainer moves and shards them.

The gold reward may be jax (``traceable_gold``: safe under ``jit`` and ``vmap``, called inside the
compiled program) or host Python (a lexicon or a classifier): `gold_reward` calls either inside a
compiled program, the latter through `jax.pure_callback`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import numpy as np

# The two splits of every data set a task supplies: train for fitting, test held out for evaluation.
SPLITS = ("train", "test")
# Keys of `TokenTask.sft_corpus`: prompt int32 [N, P], response int32 [N, L], mask float32 [N, L].
SFT_KEYS = ("prompt", "response", "mask")
# Keys of `TokenTask.preference_pairs`: prompt [N, P], chosen / rejected int32 [N, L] and their
# masks float32 [N, L] (the same keys as `kltrust.train.reward_model.PAIR_KEYS`).
PAIR_KEYS = ("prompt", "chosen", "chosen_mask", "rejected", "rejected_mask")

__all__ = ["PAIR_KEYS", "SFT_KEYS", "SPLITS", "TokenTask", "gold_reward"]


@runtime_checkable
class TokenTask(Protocol):
    """Prompts, a gold reward, optional SFT and preference data, and how to show tokens as text.

    Attributes (read-only):
      vocab_size: token ids are in [0, vocab_size); a model for the task needs at least as many.
      prompt_len: P; every prompt has exactly P tokens, all attended to (the models here take no
        prompt attention mask, so a task with prompts of varying length must choose P tokens).
      response_len: L, the most tokens a response may have (the sampler's ``max_new_tokens``).
      eos_id: the token that ends a response (mask 1, part of the response).
      pad_id: the token after EOS (mask 0).
      traceable_gold: whether ``gold_reward`` is jax.numpy, safe under ``jit`` and ``vmap``; if
        not, it is host Python and `gold_reward` (the module function) reaches it by callback.

    Optional (not part of the protocol's checked members; a trainer looks for it by name):
      metrics(prompts [B, P], responses [B, L], mask [B, L]) -> {name: array [B]}: the task's own
        per-response evaluation metrics (e.g. the synthetic language's ``grammatical``), jax and
        safe under ``jit`` and ``vmap``; the trainer reports each one's batch mean. A task without
        it reports none.
      num_domains and domain_ids(prompts [B, P]) -> int32 [B]: prompt domains in [0, num_domains)
        (jax, safe under ``jit`` and ``vmap``), for per-domain metrics and KL envelopes
        (`kltrust.domains`); a task without them has one domain.

    A task that is a pytree (as `SyntheticTask` is) can be passed to compiled programs as an
    argument, its arrays as inputs; the trainers read only the members above.
    """

    @property
    def vocab_size(self) -> int: ...

    @property
    def prompt_len(self) -> int: ...

    @property
    def response_len(self) -> int: ...

    @property
    def eos_id(self) -> int: ...

    @property
    def pad_id(self) -> int: ...

    @property
    def traceable_gold(self) -> bool: ...

    def prompts(self, split: str) -> np.ndarray:
        """The prompts of ``split`` (one of `SPLITS`): int32 [N, P], the same every call."""
        ...

    def gold_reward(self, prompts: jax.Array, responses: jax.Array, mask: jax.Array) -> jax.Array:
        """The gold reward of each response: prompts [B, P], responses [B, L], mask [B, L] →
        float32 [B]. Positions with mask 0 must not change it."""
        ...

    def sft_corpus(self, split: str) -> Mapping[str, np.ndarray] | None:
        """(prompt, response, mask) rows for SFT of the reference (`SFT_KEYS`, other keys may
        follow), or None when the task has no corpus (a pretrained reference is used as is)."""
        ...

    def preference_pairs(self, split: str) -> Mapping[str, np.ndarray] | None:
        """Preference pairs for the reward model and offline DPO (`PAIR_KEYS`, other keys such
        as the gold of each side may follow), or None when the task has none."""
        ...

    def decode(self, tokens: np.ndarray | jax.Array) -> str:
        """One token row [T] as readable text (PAD dropped), for logs and samples."""
        ...


def gold_reward(task: TokenTask, prompts: jax.Array, responses: jax.Array, mask: jax.Array) -> jax.Array:
    """``task.gold_reward`` in a form every program can call, inside ``jit`` and ``vmap`` too.

    A ``traceable_gold`` task's reward is called directly (traced like any jax function). A host
    reward runs through `jax.pure_callback` on host numpy arrays; under ``vmap`` (e.g. the run
    axis of a sweep) it is called once per batch element (``vmap_method="sequential"``), so it
    always sees the [B, P] / [B, L] arrays of its own contract. Returns float32 [B].
    """
    if task.traceable_gold:
        return task.gold_reward(prompts, responses, mask)

    def host(p, r, m):
        return np.asarray(task.gold_reward(np.asarray(p), np.asarray(r), np.asarray(m)), np.float32)

    result: Any = jax.ShapeDtypeStruct(jnp.shape(responses)[:-1], jnp.float32)
    return jax.pure_callback(host, result, prompts, responses, mask, vmap_method="sequential")
