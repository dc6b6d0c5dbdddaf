"""Heads on a language model's trunk: a linear read-out of its final hidden states.

A trunk is any `kltrust.models.interface.LanguageModel` that also has
``features(params, tokens) -> (logits [B, T, V], hidden [B, T, W])`` and ``width`` (W):
`kltrust.models.pretrained.PretrainedLM` and `kltrust.models.lora.LoRAModel` over it. A linear head
{"w": [W], "b": []} reads a scalar per position,

    h_t · w + b,

computed and returned in float32 whatever the trunk's dtype, with float32 head parameters: a
bfloat16 value keeps 8 significant bits, coarse next to the returns and advantages it enters.

`ValueHead` puts a critic V(s_t) = h_t · w + b on the policy's own trunk so that token PPO
(`kltrust.train.methods.ppo`) runs on a pretrained (or LoRA) policy.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from kltrust.models.interface import Cache, LanguageModel, Params

__all__ = ["ValueHead", "linear_head", "linear_head_init"]


def linear_head_init(width: int) -> Params:
    """{"w": zeros [W], "b": 0.0}, float32: a head whose output is exactly 0 everywhere."""
    return {"w": jnp.zeros((width,), jnp.float32), "b": jnp.zeros((), jnp.float32)}


def linear_head(head: Params, hidden: jax.Array) -> jax.Array:
    """h · w + b [...]: ``hidden`` [..., W] read out in float32."""
    return jnp.einsum("...w,w->...", hidden.astype(jnp.float32), head["w"]) + head["b"]


@dataclasses.dataclass(frozen=True)
class ValueHead:
    """``model`` with a value head, as a `LanguageModel` over params {"model", "value"}.

    ``sequence`` runs the trunk ONCE (``model.features``) and returns (logits, values) with
    values_t = h_t · w + b, h_t the final (normed) hidden state the LM head reads at position t:
    the value of the state "tokens up to t", as `kltrust.rollout.response_logits` expects.
    ``decode`` is the policy alone (the inner model's, on params["model"]): sampling needs no
    values, and the logits are the inner model's own, so a sampled token's log-prob is the one
    training recomputes.

    Initialisation: w = 0, b = 0, so every value is exactly 0 at the start. The first GAE
    advantages are then the plain (γλ-discounted) rewards-to-go: no random critic noise enters the
    first policy step, and the policy starts exactly where the inner model starts (the value head
    does not touch the logits). The head still learns from the first step:
    ∂L/∂w = Σ_t ∂L/∂V_t · h_t ≠ 0 since h ≠ 0 (∂L/∂b = Σ_t ∂L/∂V_t). The value head of Ziegler
    et al. 2019 starts the same way (openai/lm-human-preferences, ``fc_layer(h, (), scale=0)``
    for the 'value' head, bias 0).

    Shared trunk: the value loss's gradient flows into the trunk, ∂L/∂h_t += ∂L/∂V_t · w, as with
    Ziegler et al.'s scalar head on the policy's own transformer and the small decoder's
    ``critic="shared"``. With a LoRA inner model that gradient lands on the adapters only (the
    base is stop-gradiented inside `LoRAModel`). It is 0 while w = 0, so the first optimiser
    step's trunk update is the policy loss's alone. ``detach_trunk=True`` stop-gradients h for the
    value (the critic is then a linear probe on the policy's features and cannot pull the policy's
    representation toward predicting returns); the logits' gradient is unaffected either way.

    Hashable when ``model`` is (static in compiled programs, like every `LanguageModel`).
    """

    model: LanguageModel
    detach_trunk: bool = False

    # ------------------------------------------------------------ delegated attributes

    @property
    def vocab_size(self) -> int:
        return self.model.vocab_size

    @property
    def max_len(self) -> int:
        return self.model.max_len

    @property
    def tokenizer(self):
        return self.model.tokenizer

    @property
    def width(self) -> int:
        return self.model.width

    # ------------------------------------------------------------ parameters

    def init(self, key: jax.Array) -> Params:
        """{"model": the inner model's ``init(key)``, "value": a zero head}. The head draws
        nothing, so the inner model gets ``key`` itself: ``init(key)["model"]`` equals
        ``model.init(key)``."""
        return {"model": self.model.init(key), "value": linear_head_init(self.width)}

    def start_from(self, reference_params: Params, key: jax.Array) -> Params:
        """{"model": the inner model's ``start_from(reference_params, key)``, "value": a zero
        head}. The reference is the bare inner model (e.g. the pretrained base under LoRA): its
        params carry no head, and the policy's logits start at the reference's exactly. Nothing is
        copied (a LoRA inner model keeps the reference's arrays as its base)."""
        return {"model": self.model.start_from(reference_params, key),
                "value": linear_head_init(self.width)}

    def param_labels(self, params: Params) -> Any:
        """"train" / "frozen" per leaf (the optional member the token trainer's optimiser reads,
        `kltrust.train.tokens.adam`): the inner model's labels (a LoRA base: frozen), or "train"
        on every leaf of an inner model without them; the head is trained."""
        inner = getattr(self.model, "param_labels", None)
        return {"model": inner(params["model"]) if inner is not None
                else jax.tree.map(lambda _: "train", params["model"]),
                "value": jax.tree.map(lambda _: "train", params["value"])}

    def param_shardings(self, mesh: jax.sharding.Mesh, params: Any) -> Any:
        """The inner model's rules on "model", the head replicated (W + 1 floats).

        Works on any tree holding params-shaped subtrees (params, an Adam state whose moments are
        shaped like params, or a tuple of both, as `kltrust.train.rlhf.Trainer` passes): each
        {"model", "value"} dict gets the rules above; any other leaf (a step count, an injected
        learning rate) is replicated."""
        replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())

        def rules(node: Any) -> Any:
            if _is_params(node):
                return {"model": self.model.param_shardings(mesh, node["model"]),
                        "value": jax.tree.map(lambda _: replicated, node["value"])}
            return replicated

        return jax.tree.map(rules, params, is_leaf=_is_params)

    # ------------------------------------------------------------ forward passes

    def sequence(self, params: Params, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(logits [B, T, V], values [B, T] float32) from one trunk pass over ``tokens`` [B, T]."""
        logits, hidden = self.model.features(params["model"], tokens)
        if self.detach_trunk:
            hidden = jax.lax.stop_gradient(hidden)
        return logits, linear_head(params["value"], hidden)

    def decode(self, params: Params, tokens: jax.Array, cache: Cache) -> tuple[jax.Array, Cache]:
        """The inner model's cached decoding on params["model"] (no values: sampling needs none)."""
        return self.model.decode(params["model"], tokens, cache)

    def empty_cache(self, batch: int) -> Cache:
        """The wrapped model's empty decoding cache for ``batch`` sequences."""
        return self.model.empty_cache(batch)


def _is_params(node: Any) -> bool:
    """Whether ``node`` is a `ValueHead` parameter tree (or a tree shaped like one)."""
    return isinstance(node, dict) and set(node) == {"model", "value"}
