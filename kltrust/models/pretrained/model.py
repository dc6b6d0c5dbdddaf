"""Llama and Gemma-3 decoders as pure JAX functions, and `PretrainedLM`, their
`kltrust.models.interface.LanguageModel`.

One layer, for hidden states x [B, T, W] at positions p (pre-norm; the gemma3-only steps in []):

    h = RMSNorm(x)                     RMSNorm(x) = x / sqrt(mean(x²) + eps) · g
    q, k, v = h Wq, h Wk, h Wv         q [B,T,H,D]; k, v [B,T,Hkv,D] (grouped-query attention:
                                       query head j reads key/value head j // (H / Hkv))
    [q, k = RMSNorm(q), RMSNorm(k)]    per head, over D
    q, k = RoPE(q, p), RoPE(k, p)      rotate-half form: pairs (d, d + D/2) turn by p·θ^(−2d/D)
    a = softmax(q kᵀ / sqrt(D) + mask) v   mask: key ≤ query, [and query − key < window on
                                       local layers]
    x = x + [RMSNorm](a Wo)
    h = RMSNorm(x)
    x = x + [RMSNorm]((act(h Wgate) ⊙ h Wup) Wdown)   act = SiLU (llama), tanh-GELU (gemma3)

The model is embed [× sqrt(W)] → layers → RMSNorm → logits = h Eᵀ (tied embeddings)
[→ c·tanh(logits / c) when the model soft-caps]. Gemma's RMSNorm is x̂·(1 + w) in its own
checkpoints; GGUF stores 1 + w (llama.cpp's converter adds the 1), so every norm here multiplies
by its stored scale. The layers run under `lax.scan` over stacked parameters (one compiled layer,
not 30), with each layer's rope base and window as scanned values.

KV cache: an explicit `KVCache` pytree of fixed size ``max_len``; ``decode`` writes the new keys
and values at [length, length + T) and masks slots beyond each query's position, so cached
decoding gives the same logits as the full forward (tests/test_pretrained.py).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from kltrust import sharding
from kltrust.models.pretrained.config import ArchConfig

Params = dict[str, Any]
_NO_WINDOW = 2**30  # the "window" of a global layer: longer than any sequence


@flax.struct.dataclass
class KVCache:
    """Keys and values of every layer at positions [0, length); the rest is unused space."""

    key: jax.Array  # [layers, B, max_len, kv_heads, head_dim]
    value: jax.Array
    length: jax.Array  # int32 scalar: how many positions are filled


def rms_norm(x: jax.Array, scale: jax.Array, eps: float) -> jax.Array:
    """x / sqrt(mean(x², last axis) + eps) · scale, computed in float32 (bfloat16 sums of
    squares lose the small components), returned in x's dtype."""
    x32 = x.astype(jnp.float32)
    y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
    return (y * scale.astype(jnp.float32)).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: jax.Array) -> jax.Array:
    """Rotary embedding (rotate-half / NeoX form) of x [B, T, heads, D] at ``positions`` [T]:
    (x_d, x_{d+D/2}) turns by the angle positions · theta^(−2d/D), d < D/2. Angles are
    float32 (a bfloat16 position times a frequency is off by whole radians past ~256)."""
    half = x.shape[-1] // 2
    freq = theta ** (-jnp.arange(half, dtype=jnp.float32) * 2.0 / x.shape[-1])
    angle = positions.astype(jnp.float32)[:, None] * freq[None, :]  # [T, D/2]
    cos, sin = jnp.cos(angle)[None, :, None, :], jnp.sin(angle)[None, :, None, :]
    x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
    return jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1).astype(x.dtype)


def layer_constants(cfg: ArchConfig) -> dict[str, np.ndarray]:
    """Per-layer rope base, position divisor and attention window (scanned beside the weights)."""
    local = [cfg.is_local(i) for i in range(cfg.num_layers)]
    return dict(
        theta=np.array([cfg.local_theta if l else cfg.rope_theta for l in local], np.float32),
        pos_scale=np.array([1.0 if l else cfg.rope_scale for l in local], np.float32),
        window=np.array([cfg.sliding_window if l else _NO_WINDOW for l in local], np.int32))


def _layer(cfg: ArchConfig, x: jax.Array, p: Params, const: dict[str, jax.Array],
           positions: jax.Array, kv: tuple[jax.Array, jax.Array] | None):
    """One decoder layer (module docstring) over x [B, T, W] at ``positions`` [T]; ``kv`` is this
    layer's cache (keys, values) [B, max_len, Hkv, D] or None. Returns (x, updated kv)."""
    batch, length, _ = x.shape
    groups = cfg.num_heads // cfg.num_kv_heads
    h = rms_norm(x, p["attn_norm"], cfg.norm_eps)
    q = jnp.einsum("btw,whd->bthd", h, p["q"])
    k = jnp.einsum("btw,whd->bthd", h, p["k"])
    v = jnp.einsum("btw,whd->bthd", h, p["v"])
    if cfg.is_gemma:
        q = rms_norm(q, p["q_norm"], cfg.norm_eps)
        k = rms_norm(k, p["k_norm"], cfg.norm_eps)
    rope_pos = positions.astype(jnp.float32) / const["pos_scale"]
    q, k = rope(q, rope_pos, const["theta"]), rope(k, rope_pos, const["theta"])
    if kv is None:
        keys, values, key_pos = k, v, positions
    else:
        start = positions[0]
        keys = jax.lax.dynamic_update_slice(kv[0], k.astype(kv[0].dtype), (0, start, 0, 0))
        values = jax.lax.dynamic_update_slice(kv[1], v.astype(kv[1].dtype), (0, start, 0, 0))
        key_pos = jnp.arange(keys.shape[1])
        kv = (keys, values)
    q = q.reshape(batch, length, cfg.num_kv_heads, groups, cfg.head_dim)
    scores = jnp.einsum("btkgd,bskd->bkgts", q, keys, preferred_element_type=jnp.float32)
    scores = scores / math.sqrt(cfg.head_dim)
    # Causal (also hides unfilled cache slots, which lie after every query) and windowed.
    offset = positions[:, None] - key_pos[None, :]
    visible = (offset >= 0) & (offset < const["window"])
    scores = jnp.where(visible[None, None, None], scores, -jnp.inf)
    probs = jax.nn.softmax(scores, axis=-1).astype(values.dtype)
    out = jnp.einsum("bkgts,bskd->btkgd", probs, values).reshape(batch, length, cfg.num_heads,
                                                                  cfg.head_dim)
    attn = jnp.einsum("bthd,hdw->btw", out, p["o"])
    if cfg.is_gemma:
        attn = rms_norm(attn, p["post_attn_norm"], cfg.norm_eps)
    x = x + attn
    h = rms_norm(x, p["ffn_norm"], cfg.norm_eps)
    gate = h @ p["gate"]
    act = jax.nn.gelu(gate, approximate=True) if cfg.is_gemma else jax.nn.silu(gate)
    mlp = (act * (h @ p["up"])) @ p["down"]
    if cfg.is_gemma:
        mlp = rms_norm(mlp, p["post_ffn_norm"], cfg.norm_eps)
    return x + mlp, kv


def forward(cfg: ArchConfig, params: Params, tokens: jax.Array,
            cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """Logits [B, T, V] (float32) of ``tokens`` [B, T] at positions after ``cache`` (or from 0)."""
    hidden, new_cache = trunk(cfg, params, tokens, cache)
    return lm_head(cfg, params, hidden), new_cache


def trunk(cfg: ArchConfig, params: Params, tokens: jax.Array,
          cache: KVCache | None = None) -> tuple[jax.Array, KVCache | None]:
    """The final-normed hidden states [B, T, W] of ``tokens`` (what the LM head reads; value
    heads and reward heads read them too), and the advanced cache."""
    start = jnp.zeros((), jnp.int32) if cache is None else cache.length
    positions = start + jnp.arange(tokens.shape[1], dtype=jnp.int32)
    embed = params["embed"]
    x = embed[tokens]
    if cfg.is_gemma:  # Gemma scales the (tied) input embeddings by sqrt(width).
        x = x * jnp.asarray(math.sqrt(cfg.width), x.dtype)
    consts = {k: jnp.asarray(v) for k, v in layer_constants(cfg).items()}

    if cache is None:
        def body(h, xs):
            return _layer(cfg, h, xs[0], xs[1], positions, None)[0], None
        if cfg.remat:
            # The scan's backward pass then saves one [B, T, W] carry per layer instead of every
            # intermediate (attention scores [B, H, T, T], the MLP's [B, T, ffn]); prevent_cse is
            # unneeded inside scan (JAX's advice: it only blocks optimisations there).
            body = jax.checkpoint(body, prevent_cse=False)
        x, _ = jax.lax.scan(body, x, (params["layers"], consts))
        new_cache = None
    else:
        def body(h, xs):
            h, kv = _layer(cfg, h, xs[0], xs[1], positions, (xs[2], xs[3]))
            return h, kv
        x, (keys, values) = jax.lax.scan(body, x, (params["layers"], consts, cache.key,
                                                   cache.value))
        new_cache = KVCache(keys, values, start + tokens.shape[1])
    return rms_norm(x, params["final_norm"], cfg.norm_eps), new_cache


def lm_head(cfg: ArchConfig, params: Params, hidden: jax.Array) -> jax.Array:
    """Logits [B, T, V] (float32) from `trunk`'s hidden states: h Eᵀ [soft-capped]."""
    head = params["embed"] if cfg.tied_embeddings else params["lm_head"]  # [V, W] either way
    logits = jnp.einsum("btw,vw->btv", hidden, head, preferred_element_type=jnp.float32)
    if cfg.final_softcap:
        logits = cfg.final_softcap * jnp.tanh(logits / cfg.final_softcap)
    return logits


def random_params(cfg: ArchConfig, key: jax.Array) -> Params:
    """Random weights of ``cfg``'s shapes (for tests of the computation, not of any knowledge):
    matrices N(0, 1/fan_in), embeddings N(0, 1/W) (× sqrt(W) on gemma3 input, so activations are
    O(1) either way), norm scales 1 + N(0, 0.1²) so that a wrong scale convention shows."""
    L, W, H, K, D, F = (cfg.num_layers, cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                        cfg.ffn_width)
    shapes = dict(attn_norm=(L, W), ffn_norm=(L, W), q=(L, W, H, D), k=(L, W, K, D),
                  v=(L, W, K, D), o=(L, H, D, W), gate=(L, W, F), up=(L, W, F), down=(L, F, W))
    if cfg.is_gemma:
        shapes.update(q_norm=(L, D), k_norm=(L, D), post_attn_norm=(L, W), post_ffn_norm=(L, W))
    fan_in = dict(q=W, k=W, v=W, o=H * D, gate=W, up=W, down=F)
    keys = iter(jax.random.split(key, len(shapes) + 3))
    layers = {}
    for name, shape in sorted(shapes.items()):
        noise = jax.random.normal(next(keys), shape, jnp.float32)
        layers[name] = (1.0 + 0.1 * noise if name.endswith("norm")
                        else noise / math.sqrt(fan_in[name]))
    params = dict(layers=layers,
                  embed=jax.random.normal(next(keys), (cfg.vocab_size, W)) / math.sqrt(W),
                  final_norm=1.0 + 0.1 * jax.random.normal(next(keys), (W,)))
    if not cfg.tied_embeddings:
        params["lm_head"] = jax.random.normal(next(keys), (cfg.vocab_size, W)) / math.sqrt(W)
    return cast(params, cfg.dtype)


def cast(params: Any, dtype: str) -> Any:
    """Every leaf of ``params`` as an array of ``dtype``."""
    return jax.tree.map(lambda a: jnp.asarray(a, dtype), params)


@dataclasses.dataclass(frozen=True)
class PretrainedLM:
    """A llama / gemma3 decoder as a `kltrust.models.interface.LanguageModel` (hashable and
    static: equality is the config and the checkpoint's ``name``, so two loads of one model share
    compiled programs, while two checkpoints of one shape stay distinct for a program that calls
    ``init`` inside jit).

    ``weights`` are host (NumPy) float32 arrays from a checkpoint, or None for a random model
    (``init(key)`` then draws them); ``tokenizer`` may be None for the tiny random variants.
    """

    config: ArchConfig
    name: str = "random"
    tokenizer: Any = dataclasses.field(default=None, compare=False, repr=False)
    weights: Any = dataclasses.field(default=None, compare=False, repr=False)

    @property
    def vocab_size(self) -> int:
        return self.config.vocab_size

    @property
    def max_len(self) -> int:
        return self.config.max_len

    def init(self, key: jax.Array) -> Params:
        """The loaded weights in the config's dtype (``key`` unused), or random ones from
        ``key``."""
        if self.weights is None:
            return random_params(self.config, key)
        return cast(self.weights, self.config.dtype)

    def start_from(self, reference_params: Params, key: jax.Array) -> Params:
        """The reference's parameters themselves (``key`` unused): a policy of this model that
        starts at its reference is the reference."""
        del key
        return reference_params

    def sequence(self, params: Params, tokens: jax.Array) -> tuple[jax.Array, None]:
        """(logits [B, T, V], None): a pretrained policy has no value head."""
        return forward(self.config, params, tokens)[0], None

    def features(self, params: Params, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits [B, T, V], the final hidden states [B, T, W] they are read from): what a
        value head or a reward head on this trunk takes (`kltrust.models.heads`)."""
        hidden, _ = trunk(self.config, params, tokens)
        return lm_head(self.config, params, hidden), hidden

    @property
    def width(self) -> int:
        """W, the width of `features`' hidden states."""
        return self.config.width

    def decode(self, params: Params, tokens: jax.Array,
               cache: KVCache) -> tuple[jax.Array, KVCache]:
        """Logits of ``tokens`` [B, T] appended after the ``cache``'s contents, and the cache
        extended by them.
        """
        return forward(self.config, params, tokens, cache)

    def empty_cache(self, batch: int) -> KVCache:
        """An empty key/value cache for ``batch`` sequences of up to ``config.max_len`` tokens."""
        c = self.config
        shape = (c.num_layers, batch, c.max_len, c.num_kv_heads, c.head_dim)
        return KVCache(jnp.zeros(shape, c.dtype), jnp.zeros(shape, c.dtype),
                       jnp.zeros((), jnp.int32))

    def param_shardings(self, mesh: jax.sharding.Mesh, params: Params) -> Any:
        """FSDP over the mesh's fsdp axis on each leaf's largest divisible axis (the small
        decoder's rule, `kltrust.sharding.param_shardings`), replicated otherwise."""
        return sharding.param_shardings(mesh, params)
