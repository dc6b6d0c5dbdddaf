"""LoRA for any `kltrust.models.interface.LanguageModel` whose parameters are a pytree of arrays.

A targeted kernel W is replaced by W + s·ΔW with ΔW = A @ B of rank r and s = alpha / r
(Hu et al., 2021). Only A and B are trained; W stays frozen. B starts at 0, so at initialisation
W + s·A@B = W exactly and the adapted model *is* the base model. A ~ N(0, 1/fan_in) must not be 0:
with G = ∂L/∂W, ∂L/∂B = s·AᵀG and ∂L/∂A = s·G·Bᵀ, so the first step moves B alone (∂L/∂A = 0 at
B = 0) and would move nothing if A were 0 too.

Selecting kernels. A `Target` is a regex matched (``re.fullmatch``) against a leaf's key path
joined by '/', plus which axes of the leaf are the matrix's input axes. The small decoder
(`kltrust.models.transformer.TransformerLM`) has these kernels (width W, heads H, head dim D,
vocabulary V; a ``DenseGeneral`` kernel is laid out [input axes..., output axes...]):

    params/trunk/block_{i}/qkv/kernel        [W, 3, H, D]   input axes (0,)    → `SMALL_DECODER_ATTENTION`
    params/trunk/block_{i}/attn_out/kernel   [H, D, W]      input axes (0, 1)
    params/trunk/block_{i}/mlp_in/kernel     [W, 4W]        input axes (0,)    → `SMALL_DECODER_MLP`
    params/trunk/block_{i}/mlp_out/kernel    [4W, W]        input axes (0,)
    params/trunk/token_embed/embedding       [V, W]         (an embedding: not a LoRA target here)
    params/lm_head/kernel                    [W, V]

The pretrained decoders (`kltrust.models.pretrained`: llama and gemma3) stack their layers for
``lax.scan``: ``layers/{q,k,v}`` [L, W, heads, D], ``layers/o`` [L, H, D, W] and ``layers/{gate,up}``
[L, W, F], ``layers/down`` [L, F, W]; `PRETRAINED_ATTENTION` and `PRETRAINED_MLP` select them with
``batch_axes=(0,)`` (each layer its own A, B) and the input axes after it. `target_paths` lists
what a config selects in any tree.

Shapes. For a leaf with batch axes Bt, input axes I and output axes O (every other axis, in order),
A is [*Bt, prod(I), r] and B is [*Bt, r, prod(O)]; ΔW = A @ B is reshaped to [*Bt, *I, *O] and
transposed back to the leaf's axis order. The sum W + s·ΔW is formed in the wider of the two dtypes
and rounded once to W's dtype (so a bfloat16 base gets one rounding, not two).

Design: params = {"base": base params, "lora": adapters}. Chosen over a wrapper whose functions
take (base, adapters) because `LoRAModel` then implements `LanguageModel` over that one tree, so
rollouts, sharding rules and checkpoints take it unchanged, and the reference policy IS
``params["base"]`` under ``model.base`` (`LoRAModel.reference`): the same buffers, no second copy
(a jitted program given one buffer as two arguments reads it twice, copies nothing). Inside
`LoRAModel.sequence`/`decode` the base goes through ``lax.stop_gradient``: whatever the trainer
differentiates, the frozen kernels' cotangents are symbolic zeros and XLA never builds xᵀ·dy for
them. Two ways to keep the base still in the optimiser:

* ``optimizer(tx, trainable_mask(params))``: ``optax.multi_transform`` with ``set_to_zero`` on the
  base, a drop-in for a trainer that updates ``params`` whole. Its state covers the adapters only,
  but the step returns the base (base + 0: bitwise the base, −0.0 aside) as a new base-sized output
  buffer, unless the trainer donates ``params`` (then it is aliased to the input).
* Differentiate and update ``params["lora"]`` alone, with ``params["base"]`` an argument the step
  does not return: no base-sized output at all. Returning the base unchanged is not enough: XLA
  gives every output its own buffer unless the input is donated.

Measured (``PYTHONPATH=. python -m benchmarks.lora_chunked_memory``: V = 32,768, width 64, 2 layers,
B = 16, T = 64, rank 8 on attention + MLP; XLA CPU ``memory_analysis``): one Adam step outputs 16.7
MiB whole-tree, 16.7 MiB aliased when donated, 0.2 MiB adapters-only, against 49.6 MiB arguments and
outputs for full fine-tuning (Adam state for every weight). FLOPs 9.40 G for all three LoRA forms
(differentiating the whole tree costs nothing more than the adapters alone: no frozen-kernel
gradient is computed) against 13.73 G for full fine-tuning. Temporaries: 394 MiB against full
fine-tuning's 268 MiB, but the extra [B, T, V]-sized buffer comes from the LM head getting no
gradient, not from the adapters: the gradient alone of full fine-tuning takes 269 MiB, of the trunk
with the head frozen 395 MiB, of the adapters 390 MiB; `kltrust.models.chunked` is the remedy for
[B, T, V] buffers. `tests/test_lora.py::test_returned_base_is_an_output_buffer_unless_donated`
checks the output-buffer facts.

Cost. Merging is model-agnostic (nothing about the model's layers is assumed) at the price of a
transient merged copy of each targeted kernel per forward (kept for the backward). In sampling
XLA hoists the loop-invariant merge out of the ``lax.scan``: ``rollout.sample_tokens`` compiled
with ``LoRAModel.decode`` has the same FLOPs and temporaries as ``model.base.decode`` on
``model.merged(params)`` (measured at width 256, rank 8, 48 new tokens).
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from kltrust.models.interface import Cache, LanguageModel, Params

__all__ = [
    "PRETRAINED_ATTENTION",
    "PRETRAINED_MLP",
    "SMALL_DECODER_ATTENTION",
    "SMALL_DECODER_MLP",
    "LoRAConfig",
    "LoRAModel",
    "Target",
    "init_adapters",
    "merge",
    "optimizer",
    "path_mask",
    "target_paths",
    "trainable_mask",
]


@dataclasses.dataclass(frozen=True)
class Target:
    """Which leaves to adapt and how to read them as (batches of) matrices.

    Attributes:
      pattern: regex, ``re.fullmatch``-ed against the '/'-joined key path of each leaf.
      in_axes: the leaf's input axes (flax ``Dense``/``DenseGeneral``: the leading ones).
      batch_axes: axes indexing independent matrices (stacked layers), each with its own A and B.
    """

    pattern: str
    in_axes: tuple[int, ...] = (0,)
    batch_axes: tuple[int, ...] = ()

    def __post_init__(self):
        re.compile(self.pattern)  # a bad regex fails here, not at the first merge
        # Tuples, whatever sequence was given: the config is hashed as part of compiled programs.
        object.__setattr__(self, "in_axes", tuple(int(a) for a in self.in_axes))
        object.__setattr__(self, "batch_axes", tuple(int(a) for a in self.batch_axes))


@dataclasses.dataclass(frozen=True)
class LoRAConfig:
    """rank r, alpha (the update is scaled by s = alpha / r), and the `Target`s (a bare string is
    ``Target(string)``). Hashable: it is static in compiled programs."""

    rank: int
    alpha: float
    targets: tuple[Target | str, ...]

    def __post_init__(self):
        if not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"lora.rank = {self.rank!r}: must be an integer >= 1.")
        if not self.targets:
            raise ValueError("lora.targets is empty: LoRA would train nothing.")
        targets = tuple(t if isinstance(t, Target) else Target(t) for t in self.targets)
        object.__setattr__(self, "targets", targets)

    @property
    def scale(self) -> float:
        return self.alpha / self.rank


SMALL_DECODER_ATTENTION = (Target(r".*/qkv/kernel"), Target(r".*/attn_out/kernel", in_axes=(0, 1)))
SMALL_DECODER_MLP = (Target(r".*/mlp_in/kernel"), Target(r".*/mlp_out/kernel"))
PRETRAINED_ATTENTION = (Target(r"layers/[qkv]", in_axes=(1,), batch_axes=(0,)),
                        Target(r"layers/o", in_axes=(1, 2), batch_axes=(0,)))
PRETRAINED_MLP = (Target(r"layers/(gate|up|down)", in_axes=(1,), batch_axes=(0,)),)


def _key_name(key: Any) -> str:
    for attr in ("key", "name", "idx"):  # DictKey, GetAttrKey, SequenceKey / FlattenedIndexKey
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path(keys: Sequence[Any]) -> str:
    return "/".join(_key_name(k) for k in keys)


def _match(config: LoRAConfig, path: str) -> Target | None:
    """The first target whose pattern matches ``path`` (None if none does)."""
    for target in config.targets:
        if re.fullmatch(target.pattern, path):
            return target
    return None


@dataclasses.dataclass(frozen=True)
class _Layout:
    """A leaf of shape ``shape`` as matrices [*batch, prod(in), prod(out)]."""

    shape: tuple[int, ...]
    batch: tuple[int, ...]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]

    @classmethod
    def of(cls, target: Target, shape: tuple[int, ...], path: str) -> _Layout:
        ndim = len(shape)
        axes = target.in_axes + target.batch_axes
        batch = tuple(a % ndim for a in target.batch_axes) if ndim else ()
        inputs = tuple(a % ndim for a in target.in_axes) if ndim else ()
        outputs = tuple(a for a in range(ndim) if a not in batch and a not in inputs)
        if (ndim < 2 or not inputs or not outputs or any(not -ndim <= a < ndim for a in axes)
                or len(set(batch + inputs)) != len(axes)):
            raise ValueError(
                f"lora target {target.pattern!r} matches {path} of shape {shape}, which is not a "
                f"matrix with input axes {target.in_axes} and batch axes {target.batch_axes}.")
        return cls(shape, batch, inputs, outputs)

    def size(self, axes: tuple[int, ...]) -> int:
        return math.prod(self.shape[a] for a in axes)

    def delta(self, a: jax.Array, b: jax.Array) -> jax.Array:
        """A @ B [*batch, in, out] laid out like the leaf."""
        product = jnp.matmul(a, b)  # [*batch, prod(in), prod(out)]
        order = self.batch + self.inputs + self.outputs
        product = product.reshape(tuple(self.shape[i] for i in order))
        return jnp.transpose(product, tuple(order.index(i) for i in range(len(order))))


def _layouts(config: LoRAConfig, base_params: Params) -> dict[str, _Layout]:
    """Every targeted leaf's path → its layout (raises if a target matches nothing)."""
    layouts = {}
    for keys, leaf in jax.tree_util.tree_flatten_with_path(base_params)[0]:
        path = _path(keys)
        target = _match(config, path)
        if target is not None:
            layouts[path] = _Layout.of(target, tuple(jnp.shape(leaf)), path)
    for target in config.targets:
        if not any(re.fullmatch(target.pattern, p) for p in layouts):
            raise ValueError(f"lora target {target.pattern!r} matches no parameter.")
    return layouts


def target_paths(config: LoRAConfig, base_params: Params) -> tuple[str, ...]:
    """The '/'-joined paths of the leaves ``config`` adapts, in tree order."""
    return tuple(_layouts(config, base_params))


def init_adapters(config: LoRAConfig, base_params: Params, key: jax.Array) -> Params:
    """Adapters {path: {"a": A, "b": B}} nested by the path's keys (checkpoint-friendly names).

    A [*batch, fan_in, r] ~ N(0, 1/fan_in) (LeCun scale: A@x has the variance of x's mean square),
    B [*batch, r, fan_out] = 0, both float32 (LoRA's update is small; keep its precision even on a
    bfloat16 base), so `merge` returns the base values at initialisation.
    """
    layouts = _layouts(config, base_params)
    adapters: dict = {}
    for (path, layout), k in zip(layouts.items(), jax.random.split(key, max(len(layouts), 1))):
        batch = tuple(layout.shape[i] for i in layout.batch)
        fan_in, fan_out = layout.size(layout.inputs), layout.size(layout.outputs)
        node = adapters
        for name in path.split("/"):
            node = node.setdefault(name, {})
        node["a"] = jax.random.normal(k, batch + (fan_in, config.rank), jnp.float32) / math.sqrt(fan_in)
        node["b"] = jnp.zeros(batch + (config.rank, fan_out), jnp.float32)
    return adapters


def _lookup(adapters: Params, path: str) -> dict:
    node = adapters
    for name in path.split("/"):
        node = node[name]
    return node


def merge(base_params: Params, adapters: Params, config: LoRAConfig) -> Params:
    """``base_params`` with W + s·(A @ B) on every targeted leaf (s = alpha / rank); other leaves
    are returned as they are (the same arrays). Differentiable in both arguments."""
    layouts = _layouts(config, base_params)

    def leaf(keys, w):
        path = _path(keys)
        if path not in layouts:
            return w
        ab = _lookup(adapters, path)
        wide = jnp.promote_types(w.dtype, ab["a"].dtype)
        delta = layouts[path].delta(ab["a"].astype(wide), ab["b"].astype(wide))
        return (w.astype(wide) + config.scale * delta).astype(w.dtype)

    return jax.tree_util.tree_map_with_path(leaf, base_params)


def path_mask(params: Params, patterns: Sequence[str], *, match: bool = True) -> Any:
    """A bool per leaf: whether its '/'-joined path fullmatches one of ``patterns`` (== ``match``).

    E.g. frozen embeddings for full fine-tuning:
    ``optimizer(tx, path_mask(params, [r".*embed.*"], match=False))`` trains every leaf but those.
    """
    return jax.tree_util.tree_map_with_path(
        lambda keys, _: any(re.fullmatch(p, _path(keys)) for p in patterns) == match, params)


def optimizer(tx: optax.GradientTransformation, mask: Any) -> optax.GradientTransformation:
    """``tx`` on the leaves where ``mask`` is True, ``set_to_zero`` (no state) on the rest."""
    labels = jax.tree_util.tree_map(lambda m: "train" if m else "frozen", mask)
    return optax.multi_transform({"train": tx, "frozen": optax.set_to_zero()}, labels)


def trainable_mask(params: Params) -> Any:
    """For LoRAModel params {"base", "lora"}: False on every base leaf, True on every adapter."""
    return {"base": jax.tree_util.tree_map(lambda _: False, params["base"]),
            "lora": jax.tree_util.tree_map(lambda _: True, params["lora"])}


@dataclasses.dataclass(frozen=True)
class LoRAModel:
    """``base`` with LoRA adapters, as a `LanguageModel` over params {"base": ..., "lora": ...}.

    Hashable when ``base`` is. The base weights are an argument (never a closure constant, which
    would be baked into the compiled program and duplicated per program).
    """

    base: LanguageModel
    config: LoRAConfig

    @property
    def vocab_size(self) -> int:
        return self.base.vocab_size

    @property
    def max_len(self) -> int:
        return self.base.max_len

    @property
    def tokenizer(self):
        return self.base.tokenizer

    def init(self, key: jax.Array) -> Params:
        """The base's parameters (a pretrained model: its loaded weights) plus fresh adapters."""
        k_base, k_lora = jax.random.split(key)
        return self.wrap(self.base.init(k_base), k_lora)

    def wrap(self, base_params: Params, key: jax.Array) -> Params:
        """{"base": base_params (the same arrays, not copied), "lora": fresh adapters}."""
        return {"base": base_params, "lora": init_adapters(self.config, base_params, key)}

    def start_from(self, reference_params: Params, key: jax.Array) -> Params:
        """`wrap`: the reference's arrays as the base plus fresh adapters (B = 0, so the policy
        starts exactly at the reference; nothing is copied)."""
        return self.wrap(reference_params, key)

    @staticmethod
    def param_labels(params: Params) -> Any:
        """"frozen" on every base leaf, "train" on every adapter (the optional `LanguageModel`
        member the token trainer's optimiser reads: no Adam state for the base)."""
        return {"base": jax.tree_util.tree_map(lambda _: "frozen", params["base"]),
                "lora": jax.tree_util.tree_map(lambda _: "train", params["lora"])}

    def merged(self, params: Params) -> Params:
        """Parameters of ``self.base`` with the adapters folded in (base gets no gradient)."""
        return merge(jax.lax.stop_gradient(params["base"]), params["lora"], self.config)

    @staticmethod
    def reference(params: Params) -> Params:
        """The reference policy's parameters, for ``self.base``: the frozen base itself."""
        return params["base"]

    def sequence(self, params: Params, tokens: jax.Array):
        """The base model's ``sequence`` at the merged weights W + s·A@B (s = α/r)."""
        return self.base.sequence(self.merged(params), tokens)

    def features(self, params: Params, tokens: jax.Array):
        """The base's ``features`` (logits, hidden states) under the adapted weights."""
        return self.base.features(self.merged(params), tokens)

    @property
    def width(self) -> int:
        return self.base.width

    def decode(self, params: Params, tokens: jax.Array, cache: Cache):
        """The base model's cached ``decode`` at the merged weights W + s·A@B (s = α/r)."""
        return self.base.decode(self.merged(params), tokens, cache)

    def empty_cache(self, batch: int) -> Cache:
        """The base model's empty decoding cache for ``batch`` sequences."""
        return self.base.empty_cache(batch)

    def param_shardings(self, mesh: jax.sharding.Mesh, params: Any) -> Any:
        """The base's rules for the base; the adapters replicated (they are small: r·(in + out)).

        Works on any tree holding {"base", "lora"} subtrees (params, an Adam state whose moments
        are shaped like them, or a tuple of both, as `kltrust.train.rlhf.Trainer` passes); every
        other leaf (a step count, an injected learning rate) is replicated."""
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

        def rules(node: Any) -> Any:
            if _is_lora_params(node):
                return {"base": self.base.param_shardings(mesh, node["base"]),
                        "lora": jax.tree_util.tree_map(lambda _: replicated, node["lora"])}
            return replicated

        return jax.tree_util.tree_map(rules, params, is_leaf=_is_lora_params)


def _is_lora_params(node: Any) -> bool:
    return isinstance(node, dict) and set(node) == {"base", "lora"}
