"""kltrust.models.pretrained on tiny random llama / gemma3 configs: cached decoding against the full
forward, the forward against a float64 NumPy restatement, the GGUF layout conventions, the
weight cache, and the tokenizer adapters on toy vocabularies. No real model is needed (those are
in test_pretrained_real.py)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from kltrust import sharding
from kltrust.models import pretrained
from kltrust.models.interface import LanguageModel, Tokenizer
from kltrust.models.pretrained import gguf_io

ARCHS = ("llama", "gemma3")
BATCH = 3
# Float32 agreement: every logit is a chain of ~15 float32 matmuls / reductions of length ≤ 48
# (width 32, MLP 48, ≤ 24 keys). Each has relative rounding error ≤ n·u, u = 2⁻²⁴ ≈ 6e-8, so
# ≤ 48·6e-8 ≈ 3e-6, and ~15 of them chain to ≲ 5e-5 relative in the worst case. Logits here are
# O(1–10), so |Δ| ≤ 5e-5·(1 + max|logit|) holds with margin; a wrong mask, rope position or
# cache slot moves logits by O(0.1–1), four orders of magnitude more. (Measured 2026-11-30:
# max |Δ| 3e-6 for cached vs full and 2e-6 for float32 vs float64, at max |logit| ≈ 4.)
F32_RTOL = 5e-5


def _tol(reference: np.ndarray) -> float:
    return F32_RTOL * (1.0 + float(np.max(np.abs(reference))))


@pytest.fixture(scope="module", params=ARCHS)
def tiny_model(request):
    model = pretrained.tiny(request.param)
    return model, model.init(jax.random.PRNGKey(0))


def test_protocol_and_static():
    model = pretrained.tiny("gemma3")
    assert isinstance(model, LanguageModel)
    # Static: equal configs are equal and hash alike (one compiled program for both).
    assert model == pretrained.tiny("gemma3") and hash(model) == hash(pretrained.tiny("gemma3"))
    assert model != pretrained.tiny("llama")
    assert model.config.is_local(0) and not model.config.is_local(1)


@pytest.mark.parametrize("split", [1, 9])
def test_cached_decoding_equals_full_forward(tiny_model, split):
    """Prefill ``split`` tokens, then one token at a time up to max_len (24 > the gemma3 window 5,
    so the windowed mask of the cached path is exercised on the local layer, both while stepping
    (split 1) and within a prefill longer than the window (split 9))."""
    model, params = tiny_model
    tokens = jax.random.randint(jax.random.PRNGKey(1), (BATCH, model.max_len), 0, model.vocab_size)
    full, values = jax.jit(model.sequence)(params, tokens)
    assert values is None and full.shape == (BATCH, model.max_len, model.vocab_size)
    decode = jax.jit(model.decode)
    logits, cache = decode(params, tokens[:, :split], model.empty_cache(BATCH))
    pieces = [logits]
    for t in range(split, model.max_len):
        logits, cache = decode(params, tokens[:, t:t + 1], cache)
        pieces.append(logits)
    assert int(cache.length) == model.max_len
    stepped = np.asarray(jnp.concatenate(pieces, axis=1))
    np.testing.assert_allclose(stepped, np.asarray(full), rtol=0, atol=_tol(np.asarray(full)))


def test_sliding_window_changes_late_positions_only():
    """The window must matter (else the decoding test above would not test it): with the window
    widened past max_len, logits agree before position 5 (= window) and differ after it."""
    windowed = pretrained.tiny("gemma3", sliding_window=5)
    wide = pretrained.tiny("gemma3", sliding_window=1000)
    params = windowed.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(2), (BATCH, 24), 0, windowed.vocab_size)
    a = np.asarray(windowed.sequence(params, tokens)[0])
    b = np.asarray(wide.sequence(params, tokens)[0])
    np.testing.assert_allclose(a[:, :5], b[:, :5], rtol=0, atol=_tol(b))
    assert np.max(np.abs(a[:, 5:] - b[:, 5:])) > 1e3 * _tol(b)


def test_token_rollout_log_probs_match_teacher_forcing():
    """The model drives `kltrust.rollout.token_rollout` (decode_fn / sequence_fn) unchanged: the
    sampler's log-probs equal the teacher-forced recomputation (gemma3, response past the
    window)."""
    from kltrust import rollout

    model = pretrained.tiny("gemma3")
    params = model.init(jax.random.PRNGKey(0))
    prompts = jax.random.randint(jax.random.PRNGKey(6), (BATCH, 4), 3, model.vocab_size)
    out = jax.jit(lambda key: rollout.token_rollout(
        model.decode, model.sequence, params, prompts, model.empty_cache(BATCH), key,
        max_new_tokens=model.max_len - 4, eos_id=1, pad_id=0))(jax.random.PRNGKey(7))
    np.testing.assert_allclose(np.asarray(out.sampled_log_prob), np.asarray(out.log_prob),
                               rtol=0, atol=_tol(np.asarray(out.log_prob)))


# ------------------------------------------------------- a float64 NumPy restatement


def _np_rms(x, g, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * g


def _np_rope(x, positions, theta):
    """RoPE as complex rotation: z_d = x_d + i·x_{d+D/2} times exp(i·p·θ^(−2d/D)) (an independent
    statement of the rotate-half form)."""
    half = x.shape[-1] // 2
    z = x[..., :half] + 1j * x[..., half:]
    angle = positions[:, None] * theta ** (-np.arange(half) * 2.0 / x.shape[-1])
    z = z * np.exp(1j * angle)[:, None, :]
    return np.concatenate([z.real, z.imag], axis=-1)


def _np_forward(cfg, params, tokens):
    """The model of `kltrust.models.pretrained.model`'s docstring, head by head, in float64."""
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    x = p["embed"][tokens] * (np.sqrt(cfg.width) if cfg.is_gemma else 1.0)
    T = tokens.shape[1]
    pos = np.arange(T, dtype=np.float64)
    gelu = lambda u: 0.5 * u * (1 + np.tanh(np.sqrt(2 / np.pi) * (u + 0.044715 * u**3)))
    silu = lambda u: u / (1 + np.exp(-u))
    for i in range(cfg.num_layers):
        w = {k: v[i] for k, v in p["layers"].items()}
        local = cfg.is_local(i)
        theta = cfg.local_theta if local else cfg.rope_theta
        h = _np_rms(x, w["attn_norm"], cfg.norm_eps)
        q = np.einsum("btw,whd->bthd", h, w["q"])
        k = np.einsum("btw,whd->bthd", h, w["k"])
        v = np.einsum("btw,whd->bthd", h, w["v"])
        if cfg.is_gemma:
            q, k = _np_rms(q, w["q_norm"], cfg.norm_eps), _np_rms(k, w["k_norm"], cfg.norm_eps)
        q, k = _np_rope(q, pos, theta), _np_rope(k, pos, theta)
        out = np.zeros_like(q)
        group = cfg.num_heads // cfg.num_kv_heads
        for head in range(cfg.num_heads):
            kv = head // group
            for t in range(T):
                lo = max(0, t - cfg.sliding_window + 1) if local else 0
                s = k[:, lo:t + 1, kv] @ q[:, t, head][:, :, None] / np.sqrt(cfg.head_dim)
                a = np.exp(s[..., 0] - s[..., 0].max(-1, keepdims=True))
                a /= a.sum(-1, keepdims=True)
                out[:, t, head] = np.einsum("bs,bsd->bd", a, v[:, lo:t + 1, kv])
        attn = np.einsum("bthd,hdw->btw", out, w["o"])
        if cfg.is_gemma:
            attn = _np_rms(attn, w["post_attn_norm"], cfg.norm_eps)
        x = x + attn
        h = _np_rms(x, w["ffn_norm"], cfg.norm_eps)
        mlp = ((gelu if cfg.is_gemma else silu)(h @ w["gate"]) * (h @ w["up"])) @ w["down"]
        if cfg.is_gemma:
            mlp = _np_rms(mlp, w["post_ffn_norm"], cfg.norm_eps)
        x = x + mlp
    x = _np_rms(x, p["final_norm"], cfg.norm_eps)
    logits = x @ p["embed"].T
    if cfg.final_softcap:
        logits = cfg.final_softcap * np.tanh(logits / cfg.final_softcap)
    return logits


@pytest.mark.parametrize("arch,overrides", [("llama", {}), ("gemma3", {}),
                                            ("gemma3", {"final_softcap": 3.0})])
def test_forward_matches_float64_numpy(arch, overrides):
    model = pretrained.tiny(arch, max_len=12, **overrides)
    params = model.init(jax.random.PRNGKey(3))
    tokens = np.asarray(jax.random.randint(jax.random.PRNGKey(4), (2, 12), 0, model.vocab_size))
    expected = _np_forward(model.config, params, tokens)
    got = np.asarray(model.sequence(params, jnp.asarray(tokens))[0])
    np.testing.assert_allclose(got, expected, rtol=0, atol=_tol(expected))


# ------------------------------------------------------- GGUF layout conventions


def _llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp convert_hf_to_gguf.py `LlamaModel.permute`, restated."""
    rows = w.shape[0] // heads // 2
    return w.reshape(heads, 2, rows, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _interleaved_rope(x, positions, theta):
    """llama.cpp's "normal" rope: adjacent pairs (x_{2d}, x_{2d+1}) turn by p·θ^(−2d/D)."""
    z = x[..., 0::2] + 1j * x[..., 1::2]
    angle = positions[:, None] * theta ** (-np.arange(z.shape[-1]) * 2.0 / x.shape[-1])
    z = z * np.exp(1j * angle)[:, None, :]
    out = np.empty_like(x)
    out[..., 0::2], out[..., 1::2] = z.real, z.imag
    return out


def test_unpermute_inverts_llama_cpp_and_preserves_attention_scores():
    """The reason for `_unpermute`: llama.cpp's interleaved rope on permuted Q/K weights gives the
    same q·k scores as our rotate-half rope on the un-permuted ones."""
    rng = np.random.default_rng(0)
    heads, D, W, T = 3, 8, 10, 6
    w_q, w_k = rng.normal(size=(heads * D, W)), rng.normal(size=(heads * D, W))
    np.testing.assert_array_equal(gguf_io._unpermute(_llama_cpp_permute(w_q, heads), heads), w_q)
    x, pos = rng.normal(size=(T, W)), np.arange(T, dtype=np.float64)

    def scores(wq, wk, rope):
        q = rope((x @ wq.T).reshape(T, heads, D), pos, 1e4)
        k = rope((x @ wk.T).reshape(T, heads, D), pos, 1e4)
        return np.einsum("thd,shd->hts", q, k)

    gguf_scores = scores(_llama_cpp_permute(w_q, heads), _llama_cpp_permute(w_k, heads),
                         _interleaved_rope)
    ours = scores(gguf_io._unpermute(_llama_cpp_permute(w_q, heads), heads),
                  gguf_io._unpermute(_llama_cpp_permute(w_k, heads), heads), _np_rope)
    np.testing.assert_allclose(ours, gguf_scores, rtol=1e-12, atol=1e-10)  # float64 round-off


# ------------------------------------------------------- a tiny GGUF through the loader

def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte → printable character map (the alphabet of byte-level BPE vocabularies)."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


def _write_tiny_llama_gguf(gguf, path, model, params):
    """Exports a tiny llama in llama.cpp's layout (NumPy [out, in] matrices, Q/K permuted) with a
    toy byte-level BPE vocabulary: what `gguf_io.convert` must undo."""
    cfg = model.config
    alphabet = list(_bytes_to_unicode().values())
    merges = ["Ġ t", "h e", "Ġt he", "a t"]
    tokens = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"] + alphabet + [
        "Ġt", "he", "Ġthe", "at"]
    tokens += [f"<unused{i}>" for i in range(cfg.vocab_size - len(tokens))]
    types = [3, 3, 3] + [1] * (len(tokens) - 3)
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(cfg.num_layers)
    w.add_context_length(cfg.max_len)
    w.add_embedding_length(cfg.width)
    w.add_feed_forward_length(cfg.ffn_width)
    w.add_head_count(cfg.num_heads)
    w.add_head_count_kv(cfg.num_kv_heads)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(cfg.norm_eps)
    w.add_rope_dimension_count(cfg.head_dim)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_pad_token_id(2)
    w.add_add_bos_token(False)
    p = jax.tree.map(np.asarray, params)
    w.add_tensor("token_embd.weight", p["embed"])
    w.add_tensor("output_norm.weight", p["final_norm"])
    L = p["layers"]
    for i in range(cfg.num_layers):
        q = L["q"][i].reshape(cfg.width, -1).T  # [out, in]
        k = L["k"][i].reshape(cfg.width, -1).T
        tensors = {
            "attn_norm": L["attn_norm"][i], "ffn_norm": L["ffn_norm"][i],
            "attn_q": _llama_cpp_permute(q, cfg.num_heads),
            "attn_k": _llama_cpp_permute(k, cfg.num_kv_heads),
            "attn_v": L["v"][i].reshape(cfg.width, -1).T,
            "attn_output": L["o"][i].reshape(-1, cfg.width).T,
            "ffn_gate": L["gate"][i].T, "ffn_up": L["up"][i].T, "ffn_down": L["down"][i].T}
        for name, value in tensors.items():
            w.add_tensor(f"blk.{i}.{name}.weight", np.ascontiguousarray(value, np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_gguf_round_trip_and_cache(tmp_path):
    """Random llama weights → a GGUF in llama.cpp's layout → `load_cached` returns exactly the
    same parameters and config, first by converting, then from the cache entry."""
    gguf = pytest.importorskip("gguf", reason="the 'real' extra (gguf) is not installed")
    pytest.importorskip("tokenizers", reason="the 'real' extra (tokenizers) is not installed")
    from kltrust.models.pretrained import tokenizer as tk

    # eps a power of two: GGUF stores it as float32, and the configs are compared exactly.
    model = pretrained.tiny("llama", vocab_size=300, norm_eps=2.0**-20)
    params = model.init(jax.random.PRNGKey(5))
    path = tmp_path / "tiny.gguf"
    _write_tiny_llama_gguf(gguf, path, model, params)
    save = lambda meta, directory: tk.from_metadata(meta).save(directory)
    cfg, loaded, entry, timings = gguf_io.load_cached(path, tmp_path / "cache", model.max_len, save)
    assert "dequantise_s" in timings and cfg == model.config
    cfg2, cached, entry2, timings2 = gguf_io.load_cached(path, tmp_path / "cache", model.max_len,
                                                        save)
    assert "dequantise_s" not in timings2 and entry2 == entry and cfg2 == cfg
    for got in (loaded, cached):
        jax.tree.map(lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b)),
                     got, jax.tree.map(np.asarray, params))
    tok = tk.load(entry)
    assert isinstance(tok, Tokenizer) and tok.bos_id is None and tok.eos_id == 2
    text = "the hat 123 <|im_start|> ü日本\n\t  x"
    assert tok.decode(tok.encode(text)) == text
    # Merges applied: " the" is one token, digits are split one by one.
    assert tok.encode(" the") == [tok._backend.token_to_id("Ġthe")]
    assert len(tok.encode("123")) == 3


def test_sentencepiece_adapter_round_trips():
    pytest.importorskip("sentencepiece")
    from kltrust.models.pretrained import tokenizer as tk

    pieces = ["<pad>", "</s>", "<s>", "<unk>"] + [f"<0x{b:02X}>" for b in range(256)] + [
        "▁", "t", "h", "e", "▁t", "he", "▁the", "a", "c", "▁c", "at", "▁cat"]
    types = [3, 3, 3, 2] + [6] * 256 + [1] * 12
    scores = [0.0] * 260 + [-float(i) for i in range(12)]
    meta = {"tokenizer.ggml.model": "llama", "tokenizer.ggml.tokens": pieces,
            "tokenizer.ggml.scores": scores, "tokenizer.ggml.token_type": types,
            "tokenizer.ggml.bos_token_id": 2, "tokenizer.ggml.eos_token_id": 1,
            "tokenizer.ggml.unknown_token_id": 3, "tokenizer.ggml.padding_token_id": 0,
            "tokenizer.ggml.add_bos_token": True, "tokenizer.ggml.add_space_prefix": False}
    tok = tk.from_metadata(meta)
    assert isinstance(tok, Tokenizer) and tok.bos_id == 2 and tok.pad_id == 0
    for text in ["the cat", " the  cat\n", "Ünïcode 日本 123 ✓", "  leading and trailing  "]:
        assert tok.decode(tok.encode(text)) == text
    assert tok.encode("the cat") == [pieces.index("t"), pieces.index("he"), pieces.index("▁cat")]
    assert tok.decode([0, pieces.index("▁cat"), 0]) == " cat"  # PAD dropped


def test_missing_package_names_the_install_line(monkeypatch):
    fake = pretrained._Source("kltrust_no_such_package", "pip install no-such-package==1.0",
                              "x.gguf")
    monkeypatch.setitem(pretrained.MODELS, "fake", fake)
    with pytest.raises(ModuleNotFoundError, match="pip install no-such-package==1.0"):
        pretrained.load("fake")
    with pytest.raises(ValueError, match="dtype = 'int8'"):  # checked before any slow step
        pretrained.load("fake", dtype="int8")
    with pytest.raises(KeyError, match="known: "):
        pretrained.load("gpt-5")


@pytest.mark.multidevice
@pytest.mark.skipif(jax.device_count() < 8, reason="needs 8 (forced host) devices")
def test_fsdp_sharded_forward_equals_single_device():
    """Weights split over fsdp = 4 (each leaf on its largest divisible axis) and the batch over
    data × fsdp give the one-device logits (same float32 ops, reordered reductions: `_tol`)."""
    model = pretrained.tiny("gemma3")
    params = model.init(jax.random.PRNGKey(0))
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, model.max_len), 0, model.vocab_size)
    expected = np.asarray(model.sequence(params, tokens)[0])
    mesh = sharding.make_mesh(8, fsdp=4)
    placed = sharding.place(params, model.param_shardings(mesh, params))
    assert placed["layers"]["q"].sharding.spec != jax.sharding.PartitionSpec()  # really split
    got = jax.jit(model.sequence)(placed, sharding.place(tokens, sharding.batch_sharding(mesh)))[0]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=0, atol=_tol(expected))
