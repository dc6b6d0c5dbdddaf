"""Preference pairs of the sentiment task: reference samples labelled by a Bradley–Terry draw.

Two responses a, b to the same prompt x (sampled from the reference policy by the caller) with
gold rewards g_a, g_b are labelled by

    P(a ≻ b) = σ((g_a − g_b) / T)                      (Bradley–Terry, temperature T > 0)

and the label is then flipped with probability ε ∈ [0, ½) (label noise), so the probability that
a ends up *chosen* is

    p_a = σ((g_a − g_b)/T)·(1 − ε) + (1 − σ((g_a − g_b)/T))·ε.

With two independent uniforms u, v per pair: a is chosen iff (u < σ(·)) XOR (v < ε) — the same
draw as `kltrust.tasks.synthetic.gold.preference_pairs`. VADER's gold is in (−1, 1), so T sets
how decisive a gold gap is: T = 0.1 makes a gap of 0.3 a 95% preference.

`PairSet` holds labelled pairs in a hashable form (by a digest of their bytes), so a task that
carries pairs stays a static argument of a jitted program.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from kltrust.tasks.interface import PAIR_KEYS

# PAIR_KEYS plus the gold of each side, kept for diagnostics (reward-model accuracy vs. gold).
PAIR_SET_KEYS = PAIR_KEYS + ("gold_chosen", "gold_rejected")

__all__ = ["PAIR_SET_KEYS", "PairSet", "choice_probability", "label_pairs"]


def choice_probability(gold_a: np.ndarray, gold_b: np.ndarray, label_noise: float, temperature: float) -> np.ndarray:
    """p_a = σ((g_a − g_b)/T)(1 − ε) + (1 − σ)ε, the probability `label_pairs` chooses a (float64)."""
    sigma = 1.0 / (1.0 + np.exp(-(np.asarray(gold_a, np.float64) - np.asarray(gold_b, np.float64)) / temperature))
    return sigma * (1.0 - label_noise) + (1.0 - sigma) * label_noise


def label_pairs(
    prompts: np.ndarray,
    responses_a: np.ndarray,
    masks_a: np.ndarray,
    responses_b: np.ndarray,
    masks_b: np.ndarray,
    gold_a: np.ndarray,
    gold_b: np.ndarray,
    key: jax.Array,
    label_noise: float = 0.0,
    temperature: float = 1.0,
) -> dict[str, np.ndarray]:
    """Label N pairs (a_i, b_i) of responses to prompts_i by the Bradley–Terry draw above.

    Shapes: prompts int [N, P]; responses int [N, L]; masks [N, L]; gold [N]. Returns host numpy
    `PAIR_SET_KEYS`: ``prompt`` int32 [N, P], ``chosen`` / ``rejected`` int32 [N, L],
    ``chosen_mask`` / ``rejected_mask`` float32 [N, L], ``gold_chosen`` / ``gold_rejected`` float32 [N].
    Deterministic in ``key``.

    Raises:
      ValueError: label_noise outside [0, ½), temperature ≤ 0, or shapes that do not agree.
    """
    if not 0.0 <= label_noise < 0.5:
        raise ValueError(f"label_pairs: label_noise must be in [0, 0.5), got {label_noise!r}.")
    if not temperature > 0.0:
        raise ValueError(f"label_pairs: temperature must be > 0, got {temperature!r}.")
    prompts = np.asarray(prompts, np.int32)
    a, b = np.asarray(responses_a, np.int32), np.asarray(responses_b, np.int32)
    mask_a, mask_b = np.asarray(masks_a, np.float32), np.asarray(masks_b, np.float32)
    gold_a, gold_b = np.asarray(gold_a, np.float32), np.asarray(gold_b, np.float32)
    n = prompts.shape[0]
    if prompts.ndim != 2 or a.ndim != 2 or a.shape[0] != n or not (a.shape == b.shape == mask_a.shape == mask_b.shape) \
            or gold_a.shape != (n,) or gold_b.shape != (n,):
        raise ValueError(f"label_pairs: want prompts [N, P], responses and masks [N, L], gold [N]; got prompts "
                         f"{prompts.shape}, responses {a.shape} / {b.shape}, masks {mask_a.shape} / "
                         f"{mask_b.shape}, gold {gold_a.shape} / {gold_b.shape}.")
    k_label, k_flip = jax.random.split(key)
    u = np.asarray(jax.random.uniform(k_label, (n,)), np.float64)
    v = np.asarray(jax.random.uniform(k_flip, (n,)), np.float64)
    sigma = 1.0 / (1.0 + np.exp(-(gold_a.astype(np.float64) - gold_b) / temperature))
    a_wins = (u < sigma) != (v < label_noise)
    pick = lambda x, y: np.where(a_wins.reshape((-1,) + (1,) * (x.ndim - 1)), x, y)  # noqa: E731
    return {"prompt": prompts, "chosen": pick(a, b), "chosen_mask": pick(mask_a, mask_b),
            "rejected": pick(b, a), "rejected_mask": pick(mask_b, mask_a),
            "gold_chosen": pick(gold_a, gold_b), "gold_rejected": pick(gold_b, gold_a)}


class PairSet:
    """Preference pairs (`PAIR_KEYS`, optionally the gold of each side) as read-only numpy arrays,
    hashable and compared by a SHA-256 digest of their keys, shapes, dtypes and bytes."""

    def __init__(self, arrays: Mapping[str, Any], prompt_len: int | None = None, response_len: int | None = None):
        missing = [k for k in PAIR_KEYS if k not in arrays]
        if missing:
            raise ValueError(f"PairSet: missing keys {missing}; pairs need {PAIR_KEYS}.")
        rows: dict[str, np.ndarray] = {}
        for k, v in sorted(arrays.items()):
            dtype = np.int32 if k in ("prompt", "chosen", "rejected") else np.float32
            rows[k] = np.array(v, dtype)  # a copy: the caller's arrays may change, ours must not
            rows[k].setflags(write=False)
        n = rows["prompt"].shape[0]
        length = rows["chosen"].shape[-1] if rows["chosen"].ndim == 2 else None
        for k, v in rows.items():
            want = {"prompt": 2, "gold_chosen": 1, "gold_rejected": 1}.get(k, 2)
            if v.ndim != want or v.shape[0] != n or (k not in ("prompt", "gold_chosen", "gold_rejected")
                                                       and v.shape[1] != length):
                raise ValueError(f"PairSet: {k} has shape {v.shape}; want [N, P] prompts, [N, L] "
                                 f"responses and masks, [N] gold, with N = {n}.")
        if prompt_len is not None and rows["prompt"].shape[1] != prompt_len:
            raise ValueError(f"PairSet: prompts have {rows['prompt'].shape[1]} tokens, the task {prompt_len}.")
        if response_len is not None and length != response_len:
            raise ValueError(f"PairSet: responses have {length} tokens, the task {response_len}.")
        digest = hashlib.sha256()
        for k, v in rows.items():
            digest.update(f"{k}{v.shape}{v.dtype}".encode())
            digest.update(np.ascontiguousarray(v).tobytes())
        self._rows, self.digest = rows, digest.hexdigest()

    def __len__(self) -> int:
        return self._rows["prompt"].shape[0]

    def arrays(self) -> dict[str, np.ndarray]:
        """The pairs (read-only arrays; a new dict each call)."""
        return dict(self._rows)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PairSet) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    def __repr__(self) -> str:
        return f"PairSet({len(self)} pairs, {self.digest[:10]})"
