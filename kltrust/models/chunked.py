"""Per-token sequence statistics of a policy and its reference, computed over row chunks.

For tokens x [B, T] and a start position P ≥ 1 (the prompt length), every target position
t = P..T−1 gets, from teacher-forced logits ℓ_t = model(x_{<t}) (``sequence`` on x[:, :−1]):

    log_prob[b, t−P]     = log softmax(ℓ_t / τ)[x_t]                     log π(x_t | x_{<t})
    ref_log_prob[b, t−P] = log softmax(ℓ^ref_t / τ)[x_t]                 log π_ref(x_t | x_{<t})
    kl[b, t−P]           = KL(softmax(ℓ_t/τ) ‖ softmax(ℓ^ref_t/τ))        exact, `kltrust.kl.categorical`
    entropy[b, t−P]      = H(softmax(ℓ_t / τ))
    value[b, t−P]        = the critic's value at position t−1 (None without a critic)

all 0 where ``mask`` [B, T−P] is 0. These are exactly `kltrust.rollout.token_rollout`'s
``log_prob``, ``ref_log_prob``, ``kl``, ``entropy`` and ``value`` for prompts x[:, :P] and response
x[:, P:] (``tests/test_chunked.py`` checks it), without its [B, L, V] logits.

Memory. The whole-batch computation holds the policy's and the reference's logits, [B, T, V] each,
plus log-softmax temporaries of the same size: at V = 262,144 (Gemma 3) and B·T = 1024 that is
1 GiB per array in float32. Here the rows go through ``lax.map`` in chunks of ``chunk`` rows, so
only [chunk, T, V] per model exists at a time: peak ∝ chunk·T·V. The chunk body is wrapped in
``jax.checkpoint``: without it the backward pass of the map would keep every chunk's logits as
residuals (stacked back to [B, T, V]); with it only the chunk's tokens are kept and the forward is
recomputed per chunk in the backward (one extra forward of policy and reference per gradient: the
price of the memory). Gradients flow through ``log_prob``, ``entropy``, ``kl`` and ``value`` into
``params``; the reference is under ``stop_gradient`` (it is a fixed anchor).

The model's parameters are loop-invariant inputs of the map (not copied per chunk); each chunk
runs the same program as a whole batch of ``chunk`` rows.

Measured (``PYTHONPATH=. python -m benchmarks.lora_chunked_memory``: a 2-layer width-64 decoder,
V = 32,768, B = 16, T = 64 with statistics at the last 32 positions; one [B, 32, V] float32 array
is 64 MiB; XLA CPU ``memory_analysis().temp_size_in_bytes``):

    chunk                    16 (whole)   8      4      2      1
    forward (MiB)            380         160     80     40     20
    value_and_grad (MiB)     461         295    148     82     41

i.e. ∝ chunk. Without ``jax.checkpoint`` the chunk-2 value_and_grad needs 360 MiB: the map's
residuals bring the whole batch's logits back.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import flax.struct
import jax
import jax.numpy as jnp

from kltrust import kl
from kltrust.distributions import Categorical

if TYPE_CHECKING:  # kltrust.rollout imports this module: the type only, not a cycle
    from kltrust.rollout import SequenceFn

__all__ = ["TokenStats", "response_stats", "rows_per_chunk", "token_stats"]


def rows_per_chunk(limit: int, batch: int) -> int:
    """The largest divisor of ``batch`` that is ≤ ``limit`` (``limit`` ≥ 1): the chunk a program
    uses for a batch that ``limit`` does not divide (an evaluation's prompt count, best-of-n's
    M·n), so one setting serves every batch of a run. 1 always qualifies."""
    if not isinstance(limit, int) or limit < 1:
        raise ValueError(f"chunked.rows_per_chunk: limit = {limit!r} must be an integer >= 1.")
    return max(d for d in range(1, min(limit, batch) + 1) if batch % d == 0)


@flax.struct.dataclass
class TokenStats:
    """Per-token statistics, all [B, T − start] and 0 at padding (see the module docstring)."""

    log_prob: jax.Array
    entropy: jax.Array
    value: jax.Array | None
    ref_log_prob: jax.Array | None
    kl: jax.Array | None


def _stats(sequence_fn, params, ref_sequence_fn, ref_params, tokens, mask, start, temperature):
    """The statistics of one batch (or chunk) of rows, whole: [rows, T − start] each."""
    targets = tokens[:, start:]
    inputs = tokens[:, :-1]

    def log_softmax_at(seq_fn, p):
        logits, values = seq_fn(p, inputs)
        # Slice to the target positions before anything [.., V]-sized is derived from the logits.
        logits = logits[:, start - 1:] / temperature
        logp = jax.nn.log_softmax(logits)
        taken = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return logits, jnp.where(mask > 0, taken, 0.0), values

    logits, log_prob, values = log_softmax_at(sequence_fn, params)
    entropy = Categorical(logits).entropy() * mask
    value = None if values is None else values[:, start - 1:] * mask
    ref_log_prob = token_kl = None
    if ref_sequence_fn is not None:
        ref_logits, ref_log_prob, _ = log_softmax_at(ref_sequence_fn,
                                                     jax.lax.stop_gradient(ref_params))
        token_kl = kl.categorical(logits, ref_logits) * mask
    return TokenStats(log_prob, entropy, value, ref_log_prob, token_kl)


def token_stats(
    sequence_fn: "SequenceFn",
    params: Any,
    tokens: jax.Array,
    mask: jax.Array,
    *,
    start: int,
    chunk: int,
    ref_sequence_fn: "SequenceFn | None" = None,
    ref_params: Any = None,
    temperature: jax.Array | float = 1.0,
) -> TokenStats:
    """`TokenStats` of ``tokens`` [B, T] at positions start..T−1, ``chunk`` rows at a time.

    Args:
      sequence_fn: the policy's ``LanguageModel.sequence``; ``params`` its parameters.
      tokens: int [B, T], prompt then response (teacher forcing).
      mask: [B, T − start], 1 for the positions whose statistics are wanted (0 gives 0 there).
      start: first target position (the prompt length), 1 ≤ start < T; static.
      chunk: rows per chunk; must divide B (chunk = B is the whole-batch computation); static.
      ref_sequence_fn: the reference's sequence function (e.g. ``LoRAModel.base.sequence``);
        None skips the reference fields.
      ref_params: the reference's parameters (e.g. ``LoRAModel.reference(params)``).
      temperature: τ, applied to both models' logits (the distributions that sampled).

    Raises:
      ValueError: ``chunk`` not a divisor of B, ``start`` out of range, or a mask of the wrong shape.
    """
    batch, length = tokens.shape
    if not isinstance(chunk, int) or chunk < 1 or batch % chunk:
        raise ValueError(f"chunked.token_stats: chunk = {chunk!r} must be a positive divisor of the "
                         f"batch size {batch} (pad the batch, or pick a divisor).")
    if not 1 <= start < length:
        raise ValueError(f"chunked.token_stats: start = {start!r} must be in [1, {length}) for "
                         f"tokens of length {length}.")
    if mask.shape != (batch, length - start):
        raise ValueError(f"chunked.token_stats: mask {mask.shape} must be [B, T − start] = "
                         f"{(batch, length - start)}.")

    def body(rows):
        chunk_tokens, chunk_mask = rows
        return _stats(sequence_fn, params, ref_sequence_fn, ref_params, chunk_tokens, chunk_mask,
                      start, temperature)

    if chunk == batch:  # one chunk: the whole-batch program, no map and no recomputation
        return body((tokens, mask))
    # Rematerialised: only the chunk's inputs are kept for the backward (module docstring, Memory).
    body = jax.checkpoint(body)
    count = batch // chunk
    rows = (tokens.reshape(count, chunk, length), mask.reshape(count, chunk, length - start))
    stacked = jax.lax.map(body, rows)
    return jax.tree_util.tree_map(lambda x: x.reshape((batch,) + x.shape[2:]), stacked)


def response_stats(
    sequence_fn: "SequenceFn",
    params: Any,
    prompts: jax.Array,
    response: jax.Array,
    mask: jax.Array,
    *,
    max_rows: int,
    ref_sequence_fn: "SequenceFn | None" = None,
    ref_params: Any = None,
    temperature: jax.Array | float = 1.0,
) -> TokenStats:
    """`token_stats` of ``response`` [B, L] after ``prompts`` [B, P] (mask [B, L]), in chunks of
    ``rows_per_chunk(max_rows, B)`` rows: how the token programs call it, where one setting
    (``rl.stats_chunk``) serves batches it need not divide."""
    return token_stats(sequence_fn, params, jnp.concatenate([prompts, response], axis=1), mask,
                       start=prompts.shape[1], chunk=rows_per_chunk(max_rows, prompts.shape[0]),
                       ref_sequence_fn=ref_sequence_fn, ref_params=ref_params,
                       temperature=temperature)
