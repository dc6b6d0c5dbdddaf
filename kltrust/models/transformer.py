"""A small decoder-only transformer for the token tasks: policy (LM head), critic and reward model.

Pre-LayerNorm GPT-style blocks (causal multi-head self-attention, then a GELU MLP), learned
position embeddings, a final LayerNorm, and heads on top:

* ``TokenActorCritic``: next-token logits [B, T, V] and per-position values [B, T]. The critic is
  ``"shared"`` (a linear value head on the policy's trunk), ``"separate"`` (its own trunk, so value
  regression cannot disturb the policy's features) or ``"none"`` (SFT, DPO, GRPO: no value at all).
* ``SequenceScorer``: one scalar per sequence, read at the last real token (the reward model).
* ``TransformerLM``: ``TokenActorCritic``'s pure functions (init, full forward, cached decoding,
  sharding rules), the first `kltrust.models.interface.LanguageModel` (also known to the trainers
  as `kltrust.train.tokens.Policy`).

KV cache. ``Decoder`` takes an explicit `KVCache` pytree instead of flax's mutable ``cache``
collection, so decoding is a pure function that `lax.scan` can carry. A call with a cache writes the
new keys/values at positions ``[cache.length, cache.length + T)`` and lets each new query attend to
every filled position up to its own; a call without one is ordinary causal attention. The two give
the same logits (``tests/test_transformer.py``), which is what makes sampled log-probs equal the
log-probs the training forward recomputes.

Initialisation is Flax's default (LeCun-normal kernels, normal embeddings), which calls no LAPACK
routine, so it is safe to jit on CPU (unlike the orthogonal initialiser of the MLP; see
`kltrust.train.common.initial_params`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.core
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from kltrust import sharding

CRITICS = ("shared", "separate", "none")


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Static shape of the transformer (hashable: it is part of the compiled program)."""

    vocab_size: int
    num_layers: int = 2
    width: int = 64
    num_heads: int = 4
    max_len: int = 32
    mlp_ratio: int = 4
    critic: str = "shared"

    def __post_init__(self):
        for name in ("vocab_size", "num_layers", "width", "num_heads", "max_len", "mlp_ratio"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model.{name} = {value!r}: must be an integer >= 1.")
        if self.width % self.num_heads:
            raise ValueError(f"model.width = {self.width}: must be divisible by model.num_heads = "
                             f"{self.num_heads}.")
        if self.critic not in CRITICS:
            raise ValueError(f"model.critic = {self.critic!r}: must be one of {CRITICS}.")

    @property
    def head_dim(self) -> int:
        return self.width // self.num_heads


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer for positions ``[0, length)``; the rest is unused space."""

    key: jax.Array  # [layers, B, max_len, heads, head_dim]
    value: jax.Array
    length: jax.Array  # int32 scalar: number of filled positions

    @classmethod
    def empty(cls, config: TransformerConfig, batch: int, dtype=jnp.float32) -> KVCache:
        shape = (config.num_layers, batch, config.max_len, config.num_heads, config.head_dim)
        return cls(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype), jnp.zeros((), jnp.int32))


class _Block(nn.Module):
    config: TransformerConfig

    @nn.compact
    def __call__(self, x, layer_cache, start):
        """One pre-LN block over ``x`` [B, T, W] at positions start..start+T−1.

        ``layer_cache`` is (keys, values) [B, max_len, H, D] or None. Returns (x, new layer cache).
        """
        cfg = self.config
        batch, length, _ = x.shape
        h = nn.LayerNorm(name="ln_attn")(x)
        qkv = nn.DenseGeneral((3, cfg.num_heads, cfg.head_dim), name="qkv")(h)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, T, H, D]
        query_pos = start + jnp.arange(length)
        if layer_cache is None:
            keys, values = k, v
            key_pos = jnp.arange(length)
        else:
            keys = jax.lax.dynamic_update_slice(layer_cache[0], k, (0, start, 0, 0))
            values = jax.lax.dynamic_update_slice(layer_cache[1], v, (0, start, 0, 0))
            key_pos = jnp.arange(cfg.max_len)
            layer_cache = (keys, values)
        scores = jnp.einsum("bqhd,bkhd->bhqk", q, keys) / jnp.sqrt(cfg.head_dim).astype(q.dtype)
        causal = key_pos[None, :] <= query_pos[:, None]  # also hides unfilled cache slots
        scores = jnp.where(causal[None, None], scores, jnp.finfo(scores.dtype).min)
        attn = jax.nn.softmax(scores, axis=-1)
        out = jnp.einsum("bhqk,bkhd->bqhd", attn, values)
        x = x + nn.DenseGeneral(cfg.width, axis=(-2, -1), name="attn_out")(out)
        h = nn.LayerNorm(name="ln_mlp")(x)
        h = nn.Dense(cfg.mlp_ratio * cfg.width, name="mlp_in")(h)
        x = x + nn.Dense(cfg.width, name="mlp_out")(nn.gelu(h))
        del batch
        return x, layer_cache


class Decoder(nn.Module):
    """Embeddings + blocks + final LayerNorm: tokens [B, T] → hidden states [B, T, W]."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, cache: KVCache | None = None):
        cfg = self.config
        start = jnp.zeros((), jnp.int32) if cache is None else cache.length
        positions = start + jnp.arange(tokens.shape[1])
        x = nn.Embed(cfg.vocab_size, cfg.width, name="token_embed")(tokens)
        x = x + nn.Embed(cfg.max_len, cfg.width, name="position_embed")(positions)[None]
        new_keys, new_values = [], []
        for i in range(cfg.num_layers):
            layer_cache = None if cache is None else (cache.key[i], cache.value[i])
            x, layer_cache = _Block(cfg, name=f"block_{i}")(x, layer_cache, start)
            if cache is not None:
                new_keys.append(layer_cache[0])
                new_values.append(layer_cache[1])
        x = nn.LayerNorm(name="ln_final")(x)
        if cache is None:
            return x, None
        new_cache = KVCache(jnp.stack(new_keys), jnp.stack(new_values), start + tokens.shape[1])
        return x, new_cache


class TokenActorCritic(nn.Module):
    """Policy logits and (optionally) values over token sequences.

    ``__call__(tokens)`` → (logits [B, T, V], values [B, T] or None): position t's logits are the
    distribution of token t+1 given tokens ≤ t, and its value estimates the return from there.
    ``decode(tokens, cache)`` → (logits, new cache): the policy alone, for incremental sampling.
    """

    config: TransformerConfig

    def setup(self):
        self.trunk = Decoder(self.config)
        self.lm_head = nn.Dense(self.config.vocab_size, name="lm_head")
        if self.config.critic != "none":
            self.value_head = nn.Dense(1, name="value_head")
        if self.config.critic == "separate":
            self.critic_trunk = Decoder(self.config)

    def __call__(self, tokens: jax.Array):
        hidden, _ = self.trunk(tokens)
        logits = self.lm_head(hidden)
        if self.config.critic == "none":
            return logits, None
        critic_hidden = hidden if self.config.critic == "shared" else self.critic_trunk(tokens)[0]
        return logits, self.value_head(critic_hidden)[..., 0]

    def decode(self, tokens: jax.Array, cache: KVCache):
        """Logits of ``tokens`` appended after the ``cache``'s contents, and the extended cache."""
        hidden, cache = self.trunk(tokens, cache)
        return self.lm_head(hidden), cache


class SequenceScorer(nn.Module):
    """One scalar per sequence (a reward model): a linear head on the hidden state of the last
    real token, ``tokens`` [B, T] with ``mask`` [B, T] (1 for real tokens, a prefix of each row)."""

    config: TransformerConfig

    @nn.compact
    def __call__(self, tokens: jax.Array, mask: jax.Array) -> jax.Array:
        hidden, _ = Decoder(self.config, name="trunk")(tokens)
        last = jnp.maximum(jnp.sum(mask > 0, axis=-1) - 1, 0)
        pooled = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
        return nn.Dense(1, name="score_head")(pooled)[:, 0]


@dataclasses.dataclass(frozen=True)
class TransformerLM:
    """A transformer policy's pure functions (hashable, so it can be static in a jitted program):
    the small decoder as a `kltrust.models.interface.LanguageModel`.

    ``tokenizer`` is the `Tokenizer` of the vocabulary the model was built for, or None (token
    ids come from the task); it changes no computation, so it is left out of equality and hash
    and a compiled program is shared by models that differ only in it.
    """

    config: TransformerConfig
    tokenizer: Any = dataclasses.field(default=None, compare=False)

    @property
    def module(self) -> TokenActorCritic:
        return TokenActorCritic(self.config)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def init(self, key: jax.Array) -> Any:
        """Fresh parameters from ``key`` (traced at the configured ``max_len``)."""
        return self.module.init(key, jnp.zeros((1, self.config.max_len), jnp.int32))

    def start_from(self, reference_params: Any, key: jax.Array) -> Any:
        """Fresh params from ``key`` with every subtree the reference also has replaced by its
        values (the SFT trunk and LM head; a new value head or critic trunk keeps its fresh init,
        except that a separate critic trunk starts from the SFT trunk, as is usual in RLHF)."""
        fresh = flax.core.unfreeze(self.init(key))
        pre = flax.core.unfreeze(reference_params)["params"]
        out = dict(fresh["params"])
        out.update(pre)
        if "critic_trunk" in out and "trunk" in pre:
            out["critic_trunk"] = pre["trunk"]
        return {"params": out}

    def sequence(self, params: Any, tokens: jax.Array):
        """(logits [B, T, V], values [B, T] or None)."""
        return self.module.apply(params, tokens)

    def decode(self, params: Any, tokens: jax.Array, cache: KVCache):
        """Logits of ``tokens`` appended after the ``cache``'s contents, and the extended cache."""
        return self.module.apply(params, tokens, cache, method=TokenActorCritic.decode)

    def empty_cache(self, batch: int) -> KVCache:
        """An empty key/value cache for ``batch`` sequences."""
        return KVCache.empty(self.config, batch)

    def param_shardings(self, mesh: jax.sharding.Mesh, params: Any) -> Any:
        """FSDP over the mesh's fsdp axis (`kltrust.sharding.param_shardings`), replicated otherwise."""
        return sharding.param_shardings(mesh, params)
