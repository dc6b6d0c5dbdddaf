"""kltrust.models.heads.ValueHead on tiny random llama / gemma3 trunks (and LoRA over llama):
the logits are the inner model's bit for bit, the values are h·w + b against a float64 NumPy
restatement, cached decoding matches the full pass, ``start_from`` keeps the reference's arrays,
and a value loss's gradient reaches the head and (unless detached) the LoRA adapters."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kltrust import sharding
from kltrust.models import lora, pretrained
from kltrust.models.heads import ValueHead
from kltrust.models.interface import LanguageModel

BATCH, SPLIT = 3, 9
U32 = 2.0 ** -24  # float32 unit roundoff
# Cached vs full logits: the inner model's own agreement (ValueHead.decode IS the inner model's
# decode, and the logits of ValueHead.sequence are the inner model's bit for bit, checked below).
# As derived in tests/test_pretrained.py: ~15 chained float32 matmuls / reductions of length ≤ 48,
# each ≤ 48·u relative, so ≲ 5e-5 relative to the logits' scale.
F32_RTOL = 5e-5


def _random_head(width: int, seed: int) -> dict:
    """A head with w ~ N(0, 1), b = 0.25 (a zero head would make the value checks vacuous)."""
    rng = np.random.default_rng(seed)
    return {"w": jnp.asarray(rng.standard_normal(width), jnp.float32),
            "b": jnp.asarray(0.25, jnp.float32)}


@pytest.fixture(scope="module", params=("llama", "gemma3"))
def trunk(request):
    """(inner model, its ValueHead, params with a random head, tokens), one set per arch."""
    model = pretrained.tiny(request.param)
    head = ValueHead(model)
    params = {"model": jax.jit(model.init)(jax.random.PRNGKey(0)),
              "value": _random_head(model.width, 0)}
    tokens = jax.random.randint(jax.random.PRNGKey(1), (BATCH, model.max_len), 0,
                                model.vocab_size)
    return model, head, params, tokens


def test_protocol_and_delegated_attributes():
    base = pretrained.tiny("llama")
    stacked = ValueHead(lora.LoRAModel(base, lora.LoRAConfig(2, 4.0, lora.PRETRAINED_MLP)))
    for model, inner in ((ValueHead(base), base), (stacked, stacked.model)):
        assert isinstance(model, LanguageModel)
        assert (model.vocab_size, model.max_len, model.width) == (inner.vocab_size, inner.max_len,
                                                                  inner.width)
        assert model.tokenizer is inner.tokenizer
    # Static: equal wrappers hash alike (one compiled program), detaching makes a different one.
    assert hash(ValueHead(base)) == hash(ValueHead(pretrained.tiny("llama")))
    assert ValueHead(base) != ValueHead(base, detach_trunk=True)


def test_logits_are_the_inner_models_and_values_are_h_dot_w_plus_b(trunk):
    model, head, params, tokens = trunk
    logits, values = jax.jit(head.sequence)(params, tokens)
    inner_logits, inner_values = jax.jit(model.sequence)(params["model"], tokens)
    assert inner_values is None
    # The same trunk and LM head on the same params: the logits are the inner model's, bit for bit.
    np.testing.assert_array_equal(np.asarray(logits).view(np.uint32),
                                  np.asarray(inner_logits).view(np.uint32))

    hidden = np.asarray(jax.jit(model.features)(params["model"], tokens)[1], np.float64)
    w, b = np.asarray(params["value"]["w"], np.float64), float(params["value"]["b"])
    expected = hidden @ w + b  # float64: the float32 inputs' products are exact, sums nearly so
    assert values.shape == (BATCH, model.max_len) and values.dtype == jnp.float32
    # A float32 dot of n = W = 32 terms plus the bias, in any summation order (FMA or not):
    # |fl(Σ x_i) − Σ x_i| ≤ γ_{n+1} Σ|x_i| with γ_k = k·u / (1 − k·u), x = (h_1 w_1, …, h_W w_W, b).
    # The element-wise bound, not a global tolerance: a value read at the wrong position or from
    # the wrong hidden state is off by O(Σ|h w|), ~10⁶ times more.
    k = model.width + 1
    bound = k * U32 / (1 - k * U32) * (np.abs(hidden) @ np.abs(w) + abs(b))
    assert np.all(np.abs(np.asarray(values, np.float64) - expected) <= bound)


def test_cached_decode_after_empty_cache_matches_sequence(trunk):
    """Prefill SPLIT tokens, then one at a time to max_len (24 > the gemma3 window 5)."""
    model, head, params, tokens = trunk
    full, _ = jax.jit(head.sequence)(params, tokens)
    decode = jax.jit(head.decode)
    logits, cache = decode(params, tokens[:, :SPLIT], head.empty_cache(BATCH))
    pieces = [logits]
    for t in range(SPLIT, model.max_len):
        logits, cache = decode(params, tokens[:, t:t + 1], cache)
        pieces.append(logits)
    assert int(cache.length) == model.max_len
    full = np.asarray(full)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(pieces, axis=1)), full, rtol=0,
                               atol=F32_RTOL * (1.0 + float(np.max(np.abs(full)))))


@pytest.fixture(scope="module")
def lora_stack():
    """(ValueHead over a rank-2 LoRA tiny llama, the bare base, the reference's params, tokens)."""
    base = pretrained.tiny("llama")
    inner = lora.LoRAModel(base, lora.LoRAConfig(
        rank=2, alpha=4.0, targets=lora.PRETRAINED_ATTENTION + lora.PRETRAINED_MLP))
    ref_params = jax.jit(base.init)(jax.random.PRNGKey(3))
    tokens = jax.random.randint(jax.random.PRNGKey(4), (BATCH, 12), 0, base.vocab_size)
    return ValueHead(inner), base, ref_params, tokens


def test_start_from_keeps_the_references_arrays_and_starts_at_the_reference(lora_stack):
    head, base, ref_params, tokens = lora_stack
    params = head.start_from(ref_params, jax.random.PRNGKey(0))
    assert set(params) == {"model", "value"} and set(params["model"]) == {"base", "lora"}
    assert params["model"]["base"] is ref_params  # the same arrays: no copy of the base
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(params["value"]))
    logits, values = jax.jit(head.sequence)(params, tokens)
    ref_logits, _ = jax.jit(base.sequence)(ref_params, tokens)
    # B = 0 and a zero head: the policy is the reference bit for bit and every value is exactly 0.
    np.testing.assert_array_equal(np.asarray(logits).view(np.uint32),
                                  np.asarray(ref_logits).view(np.uint32))
    assert not np.any(np.asarray(values))
    # init: the inner model's init on the same key (the head draws nothing), plus a zero head.
    fresh = head.init(jax.random.PRNGKey(5))
    expected = head.model.init(jax.random.PRNGKey(5))
    assert jax.tree.structure(fresh["model"]) == jax.tree.structure(expected)
    assert all(np.array_equal(x, y) for x, y in zip(jax.tree.leaves(fresh["model"]),
                                                    jax.tree.leaves(expected)))


def _adapter_norms(grads) -> list[float]:
    return [float(jnp.max(jnp.abs(x))) for x in jax.tree.leaves(grads["model"]["lora"])]


@pytest.mark.parametrize("detach", [False, True])
def test_value_loss_gradients_reach_the_head_and_the_adapters_unless_detached(lora_stack, detach):
    shared, _, ref_params, tokens = lora_stack
    head = ValueHead(shared.model, detach_trunk=detach)
    params = head.start_from(ref_params, jax.random.PRNGKey(0))
    target = jnp.linspace(-1.0, 1.0, tokens.size).reshape(tokens.shape)

    def value_loss(p):
        return jnp.mean((head.sequence(p, tokens)[1] - target) ** 2)

    grad = jax.jit(jax.grad(value_loss))
    # The fresh zero head: ∂L/∂w = Σ ∂L/∂V·h ≠ 0, ∂L/∂b ≠ 0, but ∂L/∂h = ∂L/∂V·w = 0, so nothing
    # reaches the trunk yet (the first policy step is the policy loss's alone).
    g0 = grad(params)
    assert np.any(np.asarray(g0["value"]["w"])) and float(g0["value"]["b"]) != 0.0
    assert max(_adapter_norms(g0)) == 0.0
    # A nonzero head: the value loss reaches the adapters (the B matrices: at B = 0, ∂L/∂A = 0)
    # unless the trunk is detached; never the frozen base.
    g = grad({**params, "value": _random_head(head.width, 1)})
    assert np.any(np.asarray(g["value"]["w"])) and float(g["value"]["b"]) != 0.0
    assert all(not np.any(np.asarray(x)) for x in jax.tree.leaves(g["model"]["base"]))
    assert (max(_adapter_norms(g)) > 0.0) != detach


def test_param_shardings_cover_params_and_the_trainers_adam_state(lora_stack):
    """`rlhf.Trainer` constrains (params, opt_state) together: each params-shaped subtree gets the
    inner model's rules on "model" and a replicated head; other leaves are replicated."""
    head, _, ref_params, _ = lora_stack
    params = head.start_from(ref_params, jax.random.PRNGKey(0))
    tree = (params, optax.adam(1e-3).init(params))
    mesh = sharding.make_mesh(1)
    shardings = head.param_shardings(mesh, tree)
    assert jax.tree.structure(shardings) == jax.tree.structure(tree)
    assert all(isinstance(s, jax.sharding.NamedSharding) for s in jax.tree.leaves(shardings))
    assert all(s.spec == jax.sharding.PartitionSpec()
               for s in jax.tree.leaves(shardings[0]["value"]))
