"""kltrust.models.pretrained.load on Hugging Face-format checkpoint directories (config.json +
*.safetensors [+ tokenizer.json]), written here by hand from tiny random models.

The HF layout is restated independently below (`_to_hf`, `_hf_config`): a torch Linear weight is
[out, in] and computes x @ Wᵀ, attention heads are consecutive blocks of head_dim output rows
(checked against our einsums in `test_restatement_matches_torch_linear_semantics`), gemma3 stores
norm weights w for a scale of 1 + w. Loading the directory back must give the same parameters
bit for bit: the conversion is only transposes, reshapes and (gemma3) the + 1, and x − 1 + 1 == x
exactly in float32 for the random norm scales here (1 + 0.1·N(0,1), so in [0.5, 2] where x − 1
is exact by Sterbenz' lemma). A real checkpoint is compared once by hand (logits of SmolLM2
exported by transformers vs the GGUF path), not here.
"""

from __future__ import annotations

import json

import jax
import ml_dtypes
import numpy as np
import pytest

from kltrust.models import pretrained
from kltrust.models.interface import Tokenizer
from kltrust.models.pretrained import hf_io

safetensors_numpy = pytest.importorskip("safetensors.numpy")

MAX_LEN = 24


def _model(arch, tied):
    model = pretrained.tiny(arch, max_len=MAX_LEN, tied_embeddings=tied)
    params = jax.tree.map(lambda a: np.asarray(a, np.float32), model.init(jax.random.PRNGKey(3)))
    return model, params


def _hf_config(cfg, **extra):
    """config.json as transformers 4 writes it (rope_theta, rope_local_base_freq, ...)."""
    hf = dict(hidden_size=cfg.width, num_hidden_layers=cfg.num_layers,
              num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
              head_dim=cfg.head_dim, intermediate_size=cfg.ffn_width, rms_norm_eps=cfg.norm_eps,
              rope_theta=cfg.rope_theta, vocab_size=cfg.vocab_size,
              tie_word_embeddings=cfg.tied_embeddings, bos_token_id=1, eos_token_id=2)
    if cfg.is_gemma:
        hf.update(model_type="gemma3_text", hidden_activation="gelu_pytorch_tanh",
                  sliding_window=cfg.sliding_window, rope_local_base_freq=cfg.rope_local_theta,
                  query_pre_attn_scalar=cfg.head_dim, final_logit_softcapping=None,
                  layer_types=["sliding_attention" if (i + 1) % cfg.global_every else
                               "full_attention" for i in range(cfg.num_layers)])
    else:
        hf.update(model_type="llama", hidden_act="silu")
    hf.update(extra)
    return hf


def _to_hf(cfg, params):
    """Our params → HF names and layouts (torch Linear [out, in]; gemma3 norms w = g − 1)."""
    W, H, K, D = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    shift = np.float32(1.0) if cfg.is_gemma else np.float32(0.0)
    out = {"model.embed_tokens.weight": params["embed"],
           "model.norm.weight": params["final_norm"] - shift}
    if not cfg.tied_embeddings:
        out["lm_head.weight"] = params["lm_head"]
    lay = params["layers"]
    norms = ({"input_layernorm": "attn_norm", "post_attention_layernorm": "post_attn_norm",
              "pre_feedforward_layernorm": "ffn_norm",
              "post_feedforward_layernorm": "post_ffn_norm",
              "self_attn.q_norm": "q_norm", "self_attn.k_norm": "k_norm"} if cfg.is_gemma else
             {"input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"})
    for i in range(cfg.num_layers):
        pre = f"model.layers.{i}."
        # [W, heads, D] → rows h·D + d, columns w.
        out[pre + "self_attn.q_proj.weight"] = lay["q"][i].transpose(1, 2, 0).reshape(H * D, W)
        out[pre + "self_attn.k_proj.weight"] = lay["k"][i].transpose(1, 2, 0).reshape(K * D, W)
        out[pre + "self_attn.v_proj.weight"] = lay["v"][i].transpose(1, 2, 0).reshape(K * D, W)
        # [H, D, W] → rows w, columns h·D + d.
        out[pre + "self_attn.o_proj.weight"] = lay["o"][i].transpose(2, 0, 1).reshape(W, H * D)
        for name in ("gate", "up", "down"):
            out[pre + f"mlp.{name}_proj.weight"] = lay[name][i].T
        for hf_name, name in norms.items():
            out[pre + hf_name + ".weight"] = lay[name][i] - shift
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def _write(directory, config, tensors, shards=1):
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.json").write_text(json.dumps(config))
    names = sorted(tensors)
    for s in range(shards):
        part = {n: tensors[n] for n in names[s::shards]}
        safetensors_numpy.save_file(part, str(directory / f"model-{s + 1:05d}-of-{shards:05d}"
                                              ".safetensors"))
    return directory


def _assert_same_params(loaded, params):
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(loaded), jax.tree.leaves(params)):
        assert a.dtype == np.float32 and a.shape == b.shape, path
        assert np.array_equal(a, b), path


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
@pytest.mark.parametrize("tied", [True, False])
def test_round_trip_bit_for_bit(tmp_path, arch, tied):
    model, params = _model(arch, tied)
    directory = _write(tmp_path / "ckpt", _hf_config(model.config), _to_hf(model.config, params))
    loaded = pretrained.load(str(directory), max_len=MAX_LEN)  # a str naming a directory
    assert loaded.config == model.config
    assert loaded.name == str(directory.resolve()) and loaded.tokenizer is None
    assert ("lm_head" in loaded.weights) == (not tied)
    _assert_same_params(loaded.weights, params)
    tokens = jax.random.randint(jax.random.PRNGKey(4), (2, MAX_LEN), 0, model.vocab_size)
    got = np.asarray(jax.jit(loaded.sequence)(loaded.init(None), tokens)[0])
    want = np.asarray(jax.jit(model.sequence)(params, tokens)[0])
    assert np.array_equal(got, want)


def test_restatement_matches_torch_linear_semantics():
    """`_to_hf` is HF's convention: y = x @ Wᵀ, and q_proj's output (or o_proj's input) split
    into heads as consecutive blocks of head_dim."""
    model, params = _model("llama", True)
    cfg, hf = model.config, _to_hf(model.config, params)
    x = np.random.default_rng(0).normal(size=(5, cfg.width)).astype(np.float32)
    q_hf = (x @ hf["model.layers.1.self_attn.q_proj.weight"].T).reshape(5, cfg.num_heads,
                                                                        cfg.head_dim)
    np.testing.assert_allclose(q_hf, np.einsum("tw,whd->thd", x, params["layers"]["q"][1]),
                               rtol=1e-5, atol=1e-6)
    a = np.random.default_rng(1).normal(size=(5, cfg.num_heads, cfg.head_dim)).astype(np.float32)
    o_hf = a.reshape(5, -1) @ hf["model.layers.1.self_attn.o_proj.weight"].T
    np.testing.assert_allclose(o_hf, np.einsum("thd,hdw->tw", a, params["layers"]["o"][1]),
                               rtol=1e-5, atol=1e-6)


def test_sharded_checkpoint(tmp_path):
    model, params = _model("gemma3", False)
    directory = _write(tmp_path / "ckpt", _hf_config(model.config), _to_hf(model.config, params),
                       shards=2)
    assert len(list(directory.glob("*.safetensors"))) == 2
    (directory / "model.safetensors.index.json").write_text("{}")  # present in real shards
    loaded = pretrained.load(directory, max_len=MAX_LEN)  # a Path
    _assert_same_params(loaded.weights, params)


def test_bfloat16_checkpoint_widens_exactly(tmp_path):
    model, params = _model("llama", True)
    tensors = {k: v.astype(ml_dtypes.bfloat16) for k, v in _to_hf(model.config, params).items()}
    directory = _write(tmp_path / "ckpt", _hf_config(model.config), tensors)
    loaded = pretrained.load_hf(directory, max_len=MAX_LEN, dtype="bfloat16")
    embed = loaded.weights["embed"]
    assert embed.dtype == np.float32
    assert np.array_equal(embed, tensors["model.embed_tokens.weight"].astype(np.float32))
    assert loaded.init(None)["embed"].dtype == np.dtype(ml_dtypes.bfloat16)


def test_missing_unknown_and_misshapen_tensors_are_named(tmp_path):
    model, params = _model("llama", True)
    tensors = _to_hf(model.config, params)
    del tensors["model.layers.1.mlp.up_proj.weight"]
    tensors["model.layers.0.self_attn.q_proj.bias"] = np.zeros(32, np.float32)
    directory = _write(tmp_path / "a", _hf_config(model.config), tensors)
    with pytest.raises(ValueError, match=(
            r"missing tensors \['model.layers.1.mlp.up_proj.weight'\]; "
            r"unknown tensors \['model.layers.0.self_attn.q_proj.bias'\]")):
        pretrained.load(directory)
    tensors = _to_hf(model.config, params)
    down = "model.layers.0.mlp.down_proj.weight"
    tensors[down] = tensors[down].T
    with pytest.raises(ValueError, match="down_proj.weight has shape"):
        pretrained.load(_write(tmp_path / "b", _hf_config(model.config), tensors))


def test_tied_checkpoint_with_a_stored_lm_head(tmp_path):
    """Some tied checkpoints store the shared matrix twice: accepted if equal, refused if not."""
    model, params = _model("llama", True)
    tensors = _to_hf(model.config, params)
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].copy()
    loaded = pretrained.load(_write(tmp_path / "a", _hf_config(model.config), tensors))
    _assert_same_params(loaded.weights, params)
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    with pytest.raises(ValueError, match="lm_head.weight differs"):
        pretrained.load(_write(tmp_path / "b", _hf_config(model.config), tensors))


def test_unsupported_config_is_refused():
    gemma = _hf_config(pretrained.tiny("gemma3").config)
    with pytest.raises(NotImplementedError, match="query_pre_attn_scalar = 16 != head_dim = 8"):
        hf_io.config_from_hf({**gemma, "query_pre_attn_scalar": 16}, max_len=8)
    llama = _hf_config(pretrained.tiny("llama").config)
    with pytest.raises(NotImplementedError, match="rope scaling 'llama3'"):
        hf_io.config_from_hf({**llama, "rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, 8)
    with pytest.raises(NotImplementedError, match="attention_bias"):
        hf_io.config_from_hf({**llama, "attention_bias": True}, 8)
    with pytest.raises(NotImplementedError, match="layer_types"):
        hf_io.config_from_hf({**gemma, "layer_types": ["full_attention", "sliding_attention"]}, 8)
    with pytest.raises(NotImplementedError, match="model_type 'mistral'"):
        hf_io.config_from_hf({**llama, "model_type": "mistral"}, 8)
    linear = hf_io.config_from_hf({**llama, "rope_scaling": {"type": "linear", "factor": 4.0}}, 8)
    assert linear.rope_scale == 4.0


def test_transformers5_config_keys_and_defaults():
    """transformers 5's rope_parameters (nested per layer type for gemma3) and the older
    rope_theta / rope_local_base_freq / sliding_window_pattern describe the same model; omitted
    keys take transformers' class defaults (gemma3: head_dim 256, tied, window pattern 6)."""
    cfg = pretrained.tiny("gemma3").config
    old = _hf_config(cfg)
    new = {k: v for k, v in old.items() if k not in ("rope_theta", "rope_local_base_freq")}
    new["rope_parameters"] = {
        "full_attention": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "sliding_attention": {"rope_type": "default", "rope_theta": cfg.rope_local_theta}}
    pattern = {k: v for k, v in old.items() if k != "layer_types"} | {"sliding_window_pattern": 2}
    for hf in (old, new, pattern):
        assert hf_io.config_from_hf(hf, max_len=cfg.max_len) == cfg
    llama = pretrained.tiny("llama").config
    flat = {k: v for k, v in _hf_config(llama).items() if k != "rope_theta"}
    flat["rope_parameters"] = {"rope_type": "default", "rope_theta": llama.rope_theta}
    assert hf_io.config_from_hf(flat, max_len=llama.max_len) == llama
    minimal = hf_io.config_from_hf(dict(model_type="gemma3_text", hidden_size=512,
                                        num_hidden_layers=12, num_attention_heads=2,
                                        num_key_value_heads=1, intermediate_size=64,
                                        vocab_size=100), max_len=8)
    assert (minimal.head_dim, minimal.tied_embeddings, minimal.global_every,
            minimal.sliding_window, minimal.rope_theta, minimal.rope_local_theta) == (
                256, True, 6, 4096, 1e6, 1e4)


def test_multimodal_gemma3_language_model(tmp_path):
    """model_type "gemma3" (the image-text model): text_config and the language model's tensors
    under language_model.model.* load as the text model; the vision tower is skipped."""
    model, params = _model("gemma3", True)
    text = _hf_config(model.config)
    tensors = {"language_model." + k: v for k, v in _to_hf(model.config, params).items()}
    tensors["vision_tower.vision_model.post_layernorm.weight"] = np.ones(4, np.float32)
    config = {"model_type": "gemma3", "text_config": text, "vision_config": {}}
    loaded = pretrained.load(_write(tmp_path / "ckpt", config, tensors), max_len=MAX_LEN)
    assert loaded.config == model.config
    _assert_same_params(loaded.weights, params)


def test_tokenizer_json(tmp_path):
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, pre_tokenizers, processors

    vocab = {"<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5}
    backend = Backend(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    backend.add_special_tokens(["<pad>", "<s>", "</s>"])
    model, params = _model("llama", True)
    directory = _write(tmp_path / "ckpt", _hf_config(model.config), _to_hf(model.config, params))
    (directory / "tokenizer.json").write_text(backend.to_str())
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    tok = pretrained.load(directory).tokenizer
    assert isinstance(tok, Tokenizer)
    # EOS from tokenizer_config.json; PAD defaults to it; BOS (config.json's id 1) dropped:
    # this tokenizer does not add it.
    assert (tok.vocab_size, tok.eos_id, tok.pad_id, tok.bos_id) == (6, 2, 2, None)
    assert tok.encode("hello world hello") == [4, 5, 4]
    assert tok.decode([4, 5, 2, 2]) == "hello world"  # PAD (= EOS here) dropped
    # A post-processor that prepends <s> means the model expects BOS; pad_token names PAD.
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[
        ("<s>", 1)])
    (directory / "tokenizer.json").write_text(backend.to_str())
    (directory / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>",
                                                                 "pad_token": "<pad>"}))
    tok = pretrained.load(directory).tokenizer
    assert (tok.bos_id, tok.pad_id) == (1, 0)
    assert tok.encode("hello") == [4]  # no special tokens added by encode itself


def test_load_names_and_directories(tmp_path):
    with pytest.raises(KeyError, match="unknown pretrained model 'no-such-model'"):
        pretrained.load("no-such-model")
    with pytest.raises(FileNotFoundError, match="no config.json"):
        pretrained.load(tmp_path)
    with pytest.raises(ValueError, match="dtype"):
        pretrained.load(tmp_path, dtype="int8")
