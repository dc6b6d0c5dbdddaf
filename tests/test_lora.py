"""LoRA adapters on the small decoder: identity at init, merge against float64 NumPy, frozen base."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from kltrust import rollout, sharding
from kltrust.models import lora
from kltrust.models.interface import LanguageModel
from kltrust.models.transformer import TransformerConfig, TransformerLM

VOCAB, PROMPT, RESPONSE, BATCH = 11, 3, 5, 4
WIDTH, HEADS, LAYERS, RANK, ALPHA = 16, 2, 2, 4, 8.0
BASE = TransformerLM(TransformerConfig(vocab_size=VOCAB, num_layers=LAYERS, width=WIDTH,
                                       num_heads=HEADS, max_len=PROMPT + RESPONSE, critic="shared"))
CONFIG = lora.LoRAConfig(RANK, ALPHA, lora.SMALL_DECODER_ATTENTION + lora.SMALL_DECODER_MLP)
MODEL = lora.LoRAModel(BASE, CONFIG)
U = 2.0 ** -24  # float32 unit round-off


@pytest.fixture(scope="module")
def params():
    return jax.jit(MODEL.init)(jax.random.PRNGKey(0))  # jitted: eager init is slow on 2 cores


def _randomise_b(params, key):
    """Adapters with B ≠ 0 (at init B = 0 and the merge would be trivial)."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params["lora"])
    keys = jax.random.split(key, len(leaves))
    new = [jax.random.normal(k, x.shape) if path[-1].key == "b" else x
           for (path, x), k in zip(leaves, keys)]
    return {"base": params["base"], "lora": jax.tree_util.tree_unflatten(tree, new)}


def _bit_identical(a, b):
    """Same structure and the same bits in every leaf (−0.0 and +0.0 differ here)."""
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        x.shape == y.shape and np.array_equal(np.asarray(x).view(np.uint32), np.asarray(y).view(np.uint32))
        for x, y in zip(la, lb))


def test_targets_and_mask_cover_exactly_the_attention_and_mlp_kernels(params):
    expected = tuple(f"params/trunk/block_{i}/{name}/kernel"
                     for i in range(LAYERS) for name in ("attn_out", "mlp_in", "mlp_out", "qkv"))
    assert lora.target_paths(CONFIG, params["base"]) == expected  # tree (sorted-key) order
    adapters = {"/".join(str(k.key) for k in path): x.shape
                for path, x in jax.tree_util.tree_flatten_with_path(params["lora"])[0]}
    # Shapes: [fan_in, r] and [r, fan_out] with DenseGeneral's axes flattened.
    assert adapters["params/trunk/block_0/qkv/kernel/a"] == (WIDTH, RANK)
    assert adapters["params/trunk/block_0/qkv/kernel/b"] == (RANK, 3 * WIDTH)
    assert adapters["params/trunk/block_1/attn_out/kernel/a"] == (WIDTH, RANK)  # [H, D] → H·D in
    assert adapters["params/trunk/block_1/mlp_in/kernel/b"] == (RANK, 4 * WIDTH)
    assert sorted(adapters) == sorted(f"{p}/{ab}" for p in expected for ab in "ab")
    mask = lora.trainable_mask(params)
    assert not any(jax.tree_util.tree_leaves(mask["base"]))
    assert all(jax.tree_util.tree_leaves(mask["lora"]))
    # The optimiser keeps state for the adapters only: Adam's mu has exactly the adapters' shapes.
    state = lora.optimizer(optax.adam(1e-2), mask).init(params)
    sizes = sorted(x.size for x in jax.tree_util.tree_leaves(state) if x.ndim)
    assert sizes == sorted(2 * [x.size for x in jax.tree_util.tree_leaves(params["lora"])])


def test_zero_initialised_adapters_give_the_base_model_bitwise(params):
    # Derivation: B = 0 makes s·A@B an array of (+/−) zeros, so W + s·A@B rounds to W exactly (a
    # −0.0 weight would become +0.0, which multiplies to the same products); the merged kernels are
    # the base's values and the forward is the same ops on the same values: bitwise-equal logits.
    tokens = jax.random.randint(jax.random.PRNGKey(1), (BATCH, PROMPT + RESPONSE), 0, VOCAB)
    got, got_value = jax.jit(MODEL.sequence)(params, tokens)
    want, want_value = jax.jit(BASE.sequence)(params["base"], tokens)
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    np.testing.assert_array_equal(np.asarray(got_value), np.asarray(want_value))
    assert _bit_identical(MODEL.merged(params), params["base"])  # no −0.0 among random weights


def test_rollout_against_the_base_as_reference_has_zero_kl_at_init(params):
    assert isinstance(MODEL, LanguageModel) and hash(MODEL) == hash(lora.LoRAModel(BASE, CONFIG))
    prompts = jax.random.randint(jax.random.PRNGKey(2), (BATCH, PROMPT), 3, VOCAB)
    out = jax.jit(lambda p, key: rollout.token_rollout(
        MODEL.decode, MODEL.sequence, p, prompts, MODEL.empty_cache(BATCH), key,
        max_new_tokens=RESPONSE, eos_id=2, pad_id=0,
        ref_sequence_fn=MODEL.base.sequence, ref_params=MODEL.reference(p)))(
            params, jax.random.PRNGKey(3))
    # The reference is the same buffers as the base, and the adapted model equals it (above).
    assert np.all(np.asarray(out.kl) == 0)
    np.testing.assert_array_equal(np.asarray(out.log_prob), np.asarray(out.ref_log_prob))
    # Sharding rules: the base's own (FSDP) for the base, replicated adapters.
    mesh = sharding.make_mesh(1)
    rules = MODEL.param_shardings(mesh, params)
    assert rules["base"] == BASE.param_shardings(mesh, params["base"])
    assert jax.tree_util.tree_structure(rules["lora"]) == jax.tree_util.tree_structure(params["lora"])
    assert all(r.spec == jax.sharding.PartitionSpec() for r in jax.tree_util.tree_leaves(rules["lora"]))
    # The trainer passes (params, optimiser state) together: the moments shaped like params get the
    # same rules, other leaves (the step count) are replicated. (Indexing params["base"] on that
    # tuple raised TypeError before.)
    opt_state = optax.adam(1e-3).init(params)
    both = MODEL.param_shardings(mesh, (params, opt_state))
    assert both[0] == rules and both[1][0].mu == rules and both[1][0].nu == rules
    assert both[1][0].count.spec == jax.sharding.PartitionSpec()


def test_merge_equals_float64_numpy(params):
    adapted = _randomise_b(params, jax.random.PRNGKey(4))
    merged = lora.merge(adapted["base"], adapted["lora"], CONFIG)
    s = ALPHA / RANK
    block = lambda tree: tree["params"]["trunk"]["block_1"]  # noqa: E731
    ab = {name: {k: np.asarray(v, np.float64) for k, v in block(adapted["lora"])[name]["kernel"].items()}
          for name in ("qkv", "attn_out", "mlp_in")}
    base = {name: np.asarray(block(adapted["base"])[name]["kernel"], np.float64) for name in ab}
    # Independent float64 references, written per layout with einsum (no reshape/transpose logic).
    deltas = {
        "qkv": np.einsum("ir,rj->ij", ab["qkv"]["a"], ab["qkv"]["b"]).reshape(base["qkv"].shape),
        "attn_out": np.einsum("ir,rj->ij", ab["attn_out"]["a"], ab["attn_out"]["b"]).reshape(
            base["attn_out"].shape),  # [H·D, W] → [H, D, W]: H-major, as flax flattens DenseGeneral
        "mlp_in": ab["mlp_in"]["a"] @ ab["mlp_in"]["b"],
    }
    for name, delta in deltas.items():
        want = base[name] + s * delta
        got = np.asarray(block(merged)[name]["kernel"], np.float64)
        # Tolerance, per entry: the float32 product sums r terms (error ≤ (r−1)·u·Σ_k|a_ik b_kj|),
        # then ·s and + W each round once (≤ u of their result): |err| ≤ (r+1)·u·(|W| + s·Σ|a||b|).
        magnitude = np.abs(base[name]) + s * np.einsum(
            "ir,rj->ij", np.abs(ab[name]["a"]), np.abs(ab[name]["b"])).reshape(base[name].shape)
        assert np.all(np.abs(got - want) <= (RANK + 1) * U * magnitude), name
        assert np.max(np.abs(delta)) > 0.1  # the check is not of W alone
    # Untargeted leaves are returned as they are.
    assert merged["params"]["lm_head"]["kernel"] is adapted["base"]["params"]["lm_head"]["kernel"]


def test_merge_of_stacked_and_middle_axis_kernels_equals_float64_numpy():
    # A [L, in, out] stack (a scanned llama) and a Gemma-style einsum kernel w [H, in, D].
    k = jax.random.split(jax.random.PRNGKey(5), 3)
    base = {"layers": {"up": {"kernel": jax.random.normal(k[0], (3, 6, 5))}},
            "attn": {"q_einsum": {"w": jax.random.normal(k[1], (2, 6, 4))}}}
    config = lora.LoRAConfig(2, 3.0, (lora.Target(r"layers/up/kernel", in_axes=(1,), batch_axes=(0,)),
                                      lora.Target(r".*/q_einsum/w", in_axes=(1,))))
    adapters = init_random_adapters(config, base, k[2])
    up, q = adapters["layers"]["up"]["kernel"], adapters["attn"]["q_einsum"]["w"]
    assert up["a"].shape == (3, 6, 2) and up["b"].shape == (3, 2, 5)
    assert q["a"].shape == (6, 2) and q["b"].shape == (2, 2 * 4)
    merged = lora.merge(base, adapters, config)
    f64 = lambda x: np.asarray(x, np.float64)  # noqa: E731
    want_up = f64(base["layers"]["up"]["kernel"]) + 1.5 * np.einsum("lir,lro->lio", f64(up["a"]),
                                                                     f64(up["b"]))
    want_q = f64(base["attn"]["q_einsum"]["w"]) + 1.5 * np.einsum(
        "ir,rhd->hid", f64(q["a"]), f64(q["b"]).reshape(2, 2, 4))
    # Same bound as above with r = 2: (r+1)·u·(|W| + s·Σ|a||b|) ≤ 3u·(4 + 1.5·2·4·4) for these
    # normal draws (|entries| < 4 with overwhelming probability); 3u·60 ≈ 1.1e-5.
    np.testing.assert_allclose(f64(merged["layers"]["up"]["kernel"]), want_up, rtol=0, atol=1.1e-5)
    np.testing.assert_allclose(f64(merged["attn"]["q_einsum"]["w"]), want_q, rtol=0, atol=1.1e-5)


def init_random_adapters(config, base, key):
    """Adapters with both A and B random."""
    adapters = lora.init_adapters(config, base, key)
    leaves, tree = jax.tree_util.tree_flatten(adapters)
    keys = jax.random.split(key, len(leaves))
    return jax.tree_util.tree_unflatten(tree, [jax.random.normal(k, x.shape)
                                               for k, x in zip(keys, leaves)])


def _loss(model, tokens):
    def loss(p):
        logits, value = model.sequence(p, tokens[:, :-1])
        logp = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[:, 1:, None], axis=-1)
        return -jnp.mean(logp) + jnp.mean(jnp.square(value))
    return loss


def test_one_optax_step_moves_only_the_adapters(params):
    tokens = jax.random.randint(jax.random.PRNGKey(6), (BATCH, PROMPT + RESPONSE), 0, VOCAB)
    tx = lora.optimizer(optax.adam(1e-2), lora.trainable_mask(params))

    @jax.jit
    def step(p, state):
        grads = jax.grad(_loss(MODEL, tokens))(p)
        updates, state = tx.update(grads, state, p)
        return optax.apply_updates(p, updates), grads

    new, grads = step(params, tx.init(params))
    # The base gets no gradient at all (stop_gradient inside LoRAModel), and set_to_zero adds +0.
    assert all(np.all(np.asarray(g) == 0) for g in jax.tree_util.tree_leaves(grads["base"]))
    assert _bit_identical(new["base"], params["base"])
    for (path, old), moved in zip(jax.tree_util.tree_flatten_with_path(params["lora"])[0],
                                  jax.tree_util.tree_leaves(new["lora"])):
        moved = np.asarray(moved)
        if path[-1].key == "b":  # B moves in every entry: Adam's first step is ±lr where g ≠ 0
            assert np.all(moved != np.asarray(old)), path
        else:  # ∂L/∂A = s·(∂L/∂W)·Bᵀ = 0 at B = 0, and Adam maps a 0 gradient to a 0 update
            np.testing.assert_array_equal(moved, np.asarray(old))


def test_path_mask_freezes_the_embeddings_of_a_full_fine_tune():
    params = jax.jit(BASE.init)(jax.random.PRNGKey(7))
    mask = lora.path_mask(params, [r".*_embed/embedding"], match=False)
    frozen = [p for p, m in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                jax.tree_util.tree_leaves(mask)) if not m]
    assert sorted(lora._path(k) for k, _ in frozen) == [
        "params/trunk/position_embed/embedding", "params/trunk/token_embed/embedding"]
    tokens = jax.random.randint(jax.random.PRNGKey(8), (BATCH, PROMPT + RESPONSE), 0, VOCAB)
    tx = lora.optimizer(optax.sgd(0.1), mask)
    new = jax.jit(lambda p: optax.apply_updates(
        p, tx.update(jax.grad(_loss(BASE, tokens))(p), tx.init(p), p)[0]))(params)
    for m, old, moved in zip(jax.tree_util.tree_leaves(mask), jax.tree_util.tree_leaves(params),
                             jax.tree_util.tree_leaves(new)):
        assert np.array_equal(np.asarray(old), np.asarray(moved)) != m


def test_returned_base_is_an_output_buffer_unless_donated(params):
    # The measurement behind the module docstring's advice: a jitted step that hands the base back
    # unchanged still allocates a base-sized output (XLA copies it); donating aliases it instead;
    # returning the adapters alone allocates neither. One rank-1 adapter keeps the adapters small.
    small = lora.LoRAConfig(1, 1.0, (r".*/block_0/mlp_in/kernel",))
    params = lora.LoRAModel(BASE, small).wrap(params["base"], jax.random.PRNGKey(10))
    base_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params["base"]))
    lora_bytes = sum(x.nbytes for x in jax.tree_util.tree_leaves(params["lora"]))
    assert base_bytes > 4 * lora_bytes  # so the sizes below tell the cases apart
    passthrough = lambda p: {"base": p["base"], "lora": jax.tree_util.tree_map(  # noqa: E731
        lambda x: 2 * x, p["lora"])}
    plain = jax.jit(passthrough).lower(params).compile().memory_analysis()
    donated = jax.jit(passthrough, donate_argnums=0).lower(params).compile().memory_analysis()
    alone = jax.jit(lambda l, b: jax.tree_util.tree_map(lambda x: 2 * x, l)).lower(
        params["lora"], params["base"]).compile().memory_analysis()
    assert plain.output_size_in_bytes >= base_bytes + lora_bytes and plain.alias_size_in_bytes == 0
    assert donated.alias_size_in_bytes >= base_bytes
    # Measured 336 = 320 bytes of adapters + the output tuple's table (8 bytes a leaf).
    assert lora_bytes <= alone.output_size_in_bytes <= lora_bytes + 8 * 4 < base_bytes


def test_config_errors():
    params = jax.jit(BASE.init)(jax.random.PRNGKey(9))
    with pytest.raises(ValueError, match=r"lora target '.\*/nope' matches no parameter"):
        lora.init_adapters(lora.LoRAConfig(2, 2.0, (r".*/nope",)), params, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="which is not a matrix with input axes"):
        lora.init_adapters(lora.LoRAConfig(2, 2.0, (r".*/ln_final/scale",)), params,
                           jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="which is not a matrix with input axes"):
        lora.init_adapters(lora.LoRAConfig(2, 2.0, (lora.Target(r".*/block_0/mlp_in/kernel",
                                                                in_axes=(0, 1)),)),
                           params, jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="lora.rank = 0"):
        lora.LoRAConfig(0, 1.0, (r".*",))


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_pretrained_presets_select_every_stacked_projection_and_start_at_the_base(arch):
    """The presets for `kltrust.models.pretrained`'s stacked layout select the 7 projections of
    every layer, and zero-initialised adapters leave the logits bitwise equal to the base's (B = 0
    makes ΔW exactly 0, and W + 0 is W in float32)."""
    from kltrust.models import pretrained

    base = pretrained.tiny(arch)
    config = lora.LoRAConfig(rank=2, alpha=4.0,
                             targets=lora.PRETRAINED_ATTENTION + lora.PRETRAINED_MLP)
    model = lora.LoRAModel(base, config)
    params = model.init(jax.random.PRNGKey(0))
    assert sorted(lora.target_paths(config, params["base"])) == sorted(
        f"layers/{name}" for name in ("q", "k", "v", "o", "gate", "up", "down"))
    num_layers = params["base"]["layers"]["q"].shape[0]
    for leaf in jax.tree.leaves(params["lora"]):
        assert leaf.shape[0] == num_layers  # one A, B per layer
    tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 6), 0, base.vocab_size)
    adapted, _ = model.sequence(params, tokens)
    reference, _ = base.sequence(params["base"], tokens)
    np.testing.assert_array_equal(np.asarray(adapted), np.asarray(reference))
