"""A local Hugging Face-format checkpoint directory (``config.json`` + ``*.safetensors``, one file
or shards, optionally ``tokenizer.json``) of a llama or gemma3 model → `ArchConfig` and float32
parameters of `kltrust.models.pretrained.model`, read with the ``safetensors`` package's NumPy API.

Layout conventions (restated independently in tests/test_pretrained_hf.py):

* A ``torch.nn.Linear`` weight is [out, in]; ours are [in, out], with the head axes split out:
  ``q_proj`` [H·D, W] → q [W, H, D]; ``k_proj`` / ``v_proj`` [Hkv·D, W] → [W, Hkv, D];
  ``o_proj`` [W, H·D] → o [H, D, W]; ``gate_proj`` / ``up_proj`` [F, W] → [W, F];
  ``down_proj`` [W, F] → [F, W].
* HF's Q/K rows are already in the rotate-half order our `rope` uses: there is no GGUF-style
  interleaving to undo (`gguf_io._unpermute` undoes llama.cpp's permutation, which is applied
  when converting *from* this layout).
* Gemma3's RMSNorm computes x̂·(1 + w) and stores w; ours multiplies by the stored scale, so every
  gemma3 norm (input, post-attention, pre/post-feedforward, q/k, final) is stored here as 1 + w.
* Norm names: llama ``input_layernorm`` / ``post_attention_layernorm`` → attn_norm / ffn_norm;
  gemma3 ``input_layernorm`` → attn_norm, ``post_attention_layernorm`` → post_attn_norm (it
  follows the attention, before the residual add), ``pre_feedforward_layernorm`` → ffn_norm,
  ``post_feedforward_layernorm`` → post_ffn_norm.

Config keys that a checkpoint omits take the defaults of transformers' ``LlamaConfig`` /
``Gemma3TextConfig`` (``save_pretrained`` may leave out values equal to them). Both the
transformers-4 keys (``rope_theta``, ``rope_scaling``, ``rope_local_base_freq``,
``sliding_window_pattern``) and the transformers-5 ``rope_parameters`` / ``layer_types`` are read.
Features this implementation lacks (a ``query_pre_attn_scalar`` other than ``head_dim``, rope
scaling other than linear, attention biases, attention soft-capping, other activations, a layer
pattern that is not "every n-th layer global") raise NotImplementedError rather than silently
computing something else.

No cache: the tensors are memory-mapped and only transposed (no dequantising), so a load costs
about as much as reading the float32 cache of `gguf_io` would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from kltrust.models.pretrained.config import ArchConfig

HF_ARCHS = {"llama": "llama", "gemma3_text": "gemma3", "gemma3": "gemma3"}

# transformers' class defaults for the keys a config.json may omit (LlamaConfig, Gemma3TextConfig).
_DEFAULTS = {
    "llama": dict(rms_norm_eps=1e-6, rope_theta=10_000.0, tie_word_embeddings=False,
                  hidden_act="silu"),
    "gemma3": dict(rms_norm_eps=1e-6, rope_theta=1_000_000.0, rope_local_base_freq=10_000.0,
                   tie_word_embeddings=True, hidden_activation="gelu_pytorch_tanh",
                   head_dim=256, query_pre_attn_scalar=256, sliding_window=4096,
                   sliding_window_pattern=6, final_logit_softcapping=None),
}
_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
             "vocab_size")

# Multimodal Gemma-3 (model_type "gemma3"): the language model's tensors under these prefixes
# (transformers 4.50 and 4.52+ spellings) become the text model's; the vision tower's are skipped.
_PREFIXES = (("language_model.model.", "model."), ("model.language_model.", "model."),
             ("language_model.lm_head.", "lm_head."))
_SKIPPED = ("vision_tower.", "multi_modal_projector.", "model.vision_tower.",
            "model.multi_modal_projector.")


def _safetensors_numpy():
    try:
        from safetensors import safe_open
    except ImportError as exc:
        raise ImportError("loading a Hugging Face checkpoint needs the 'real' extra: "
                          "pip install -c constraints.txt -e '.[real]'") from exc
    return safe_open


def read_json(path: Path) -> dict[str, Any]:
    """The JSON object at ``path``, or ``{}`` when the file does not exist (optional HF files)."""
    return json.loads(path.read_text()) if path.exists() else {}


def _rope(params: Mapping[str, Any], theta: float, where: str) -> tuple[float, float]:
    """(theta, linear scale) of one rope parameter dict (transformers 5) or rope_scaling (4)."""
    kind = params.get("rope_type", params.get("type", "default"))
    if float(params.get("partial_rotary_factor", 1.0)) != 1.0:
        raise NotImplementedError(f"{where}: partial rotary embeddings")
    theta = float(params.get("rope_theta", theta))
    if kind == "default":
        return theta, 1.0
    if kind == "linear":
        return theta, float(params["factor"])
    raise NotImplementedError(f"{where}: rope scaling {kind!r} (only none and linear are "
                              "implemented)")


def _layer_pattern(hf: Mapping[str, Any], num_layers: int) -> tuple[bool, int]:
    """(any local layers, global_every) from gemma3's layer_types or sliding_window_pattern."""
    types = hf.get("layer_types")
    if types is None:
        every = int(hf["sliding_window_pattern"])
        types = ["sliding_attention" if (i + 1) % every else "full_attention"
                 for i in range(num_layers)]
    unknown = set(types) - {"sliding_attention", "full_attention"}
    if unknown or len(types) != num_layers:
        raise NotImplementedError(f"layer_types {types!r}: expected {num_layers} of "
                                  "'sliding_attention' / 'full_attention'")
    local = [t == "sliding_attention" for t in types]
    if not any(local):
        return False, 1
    every = local.index(False) + 1 if not all(local) else num_layers + 1
    if local != [(i + 1) % every != 0 for i in range(num_layers)]:
        raise NotImplementedError(f"layer_types {types!r}: only 'every n-th layer global' "
                                  "patterns are implemented")
    return True, every


def config_from_hf(hf: Mapping[str, Any], max_len: int, dtype: str = "float32") -> ArchConfig:
    """The `ArchConfig` of a config.json (``hf``); a multimodal Gemma-3 config's text_config."""
    model_type = hf.get("model_type")
    if model_type not in HF_ARCHS:
        raise NotImplementedError(f"config.json model_type {model_type!r}: only "
                                  f"{sorted(HF_ARCHS)} are implemented.")
    if model_type == "gemma3" and "text_config" in hf:
        hf = {"tie_word_embeddings": hf.get("tie_word_embeddings", True), **hf["text_config"]}
    arch = HF_ARCHS[model_type]
    missing = [k for k in _REQUIRED if k not in hf]
    if missing:
        raise ValueError(f"config.json lacks {missing}")
    hf = {**_DEFAULTS[arch], **{k: v for k, v in hf.items() if v is not None or k not in
                                _DEFAULTS[arch]}}
    width, heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or width // heads)
    num_layers = int(hf["num_hidden_layers"])
    for flag in ("attention_bias", "mlp_bias", "use_bidirectional_attention"):
        if hf.get(flag):
            raise NotImplementedError(f"config.json {flag} = true")
    if hf.get("attn_logit_softcapping"):
        raise NotImplementedError("attention logit soft-capping (attn_logit_softcapping)")
    act_key, act = ("hidden_act", "silu") if arch == "llama" else ("hidden_activation",
                                                                    "gelu_pytorch_tanh")
    if hf.get(act_key, act) != act:
        raise NotImplementedError(f"config.json {act_key} = {hf[act_key]!r}: only {act!r}")
    rope_params = hf.get("rope_parameters") or {}
    local_theta, sliding_window, global_every = 0.0, 0, 1
    if arch == "gemma3":
        scalar = hf["query_pre_attn_scalar"]
        if float(scalar) != head_dim:
            raise NotImplementedError(
                f"query_pre_attn_scalar = {scalar} != head_dim = {head_dim}: the attention here "
                f"scales scores by 1/sqrt(head_dim), not 1/sqrt(query_pre_attn_scalar)")
        full = rope_params.get("full_attention", rope_params) if rope_params else {}
        theta, scale = _rope({**(hf.get("rope_scaling") or {}), **full},
                             float(hf["rope_theta"]), "full_attention rope")
        local_theta, local_scale = _rope(rope_params.get("sliding_attention", {}),
                                         float(hf["rope_local_base_freq"]),
                                         "sliding_attention rope")
        if local_scale != 1.0:
            raise NotImplementedError("rope scaling on sliding-window layers")
        has_local, global_every = _layer_pattern(hf, num_layers)
        if has_local:
            if not hf.get("sliding_window"):
                raise ValueError("config.json has sliding-attention layers but no sliding_window")
            sliding_window = int(hf["sliding_window"])
    else:
        theta, scale = _rope({**(hf.get("rope_scaling") or {}), **rope_params},
                             float(hf["rope_theta"]), "rope")
    return ArchConfig(
        arch=arch, vocab_size=int(hf["vocab_size"]), num_layers=num_layers, width=width,
        num_heads=heads, num_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=head_dim, ffn_width=int(hf["intermediate_size"]),
        norm_eps=float(hf["rms_norm_eps"]), rope_theta=theta, max_len=max_len,
        rope_local_theta=local_theta, sliding_window=sliding_window, global_every=global_every,
        rope_scale=scale, final_softcap=float(hf.get("final_logit_softcapping") or 0.0),
        tied_embeddings=bool(hf["tie_word_embeddings"]), dtype=dtype)


def _layer_names(cfg: ArchConfig) -> dict[str, tuple[str, str]]:
    """HF name within ``model.layers.{i}.`` → (our name, layout kind)."""
    names = {"self_attn.q_proj.weight": ("q", "q"), "self_attn.k_proj.weight": ("k", "kv"),
             "self_attn.v_proj.weight": ("v", "kv"), "self_attn.o_proj.weight": ("o", "out"),
             "mlp.gate_proj.weight": ("gate", "in"), "mlp.up_proj.weight": ("up", "in"),
             "mlp.down_proj.weight": ("down", "in"),
             "input_layernorm.weight": ("attn_norm", "norm")}
    if cfg.is_gemma:
        names.update({"post_attention_layernorm.weight": ("post_attn_norm", "norm"),
                      "pre_feedforward_layernorm.weight": ("ffn_norm", "norm"),
                      "post_feedforward_layernorm.weight": ("post_ffn_norm", "norm"),
                      "self_attn.q_norm.weight": ("q_norm", "head_norm"),
                      "self_attn.k_norm.weight": ("k_norm", "head_norm")})
    else:
        names["post_attention_layernorm.weight"] = ("ffn_norm", "norm")
    return names


def _hf_shape(name: str, kind: str, cfg: ArchConfig) -> tuple[int, ...]:
    """The shape config.json implies for a tensor in HF's layout."""
    W, H, K, D, F = cfg.width, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.ffn_width
    if name == "down":
        return (W, F)
    return {"q": (H * D, W), "kv": (K * D, W), "out": (W, H * D), "norm": (W,),
            "head_norm": (D,), "in": (F, W), "vocab": (cfg.vocab_size, W)}[kind]


def _layout(w: np.ndarray, kind: str, cfg: ArchConfig) -> np.ndarray:
    """One HF tensor ([out, in] for matrices) in our layout (module docstring)."""
    W, D = cfg.width, cfg.head_dim
    if kind in ("norm", "head_norm"):
        return w + np.float32(1.0) if cfg.is_gemma else w
    if kind == "q":
        return w.T.reshape(W, cfg.num_heads, D)
    if kind == "kv":
        return w.T.reshape(W, cfg.num_kv_heads, D)
    if kind == "out":
        return w.T.reshape(cfg.num_heads, D, W)
    return np.ascontiguousarray(w.T)  # "in": [out, in] -> [in, out]


def read_tensors(directory: Path) -> dict[str, np.ndarray]:
    """Every tensor of every ``*.safetensors`` in ``directory`` as float32 (bfloat16 / float16
    checkpoints are widened exactly), multimodal Gemma-3 prefixes normalised."""
    safe_open = _safetensors_numpy()
    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{directory}: no *.safetensors file")
    tensors: dict[str, np.ndarray] = {}
    for file in files:
        with safe_open(str(file), framework="numpy") as f:
            for key in f.keys():
                name = key
                for old, new in _PREFIXES:
                    if name.startswith(old):
                        name = new + name[len(old):]
                        break
                if name.startswith(_SKIPPED):
                    continue
                if name in tensors:
                    raise ValueError(f"{directory}: tensor {key!r} is in more than one file "
                                     f"(second: {file.name})")
                tensors[name] = np.asarray(f.get_tensor(key), np.float32)
    return tensors


def convert(directory: Path, max_len: int) -> tuple[ArchConfig, dict[str, Any], dict[str, Any]]:
    """(config, float32 params, the config.json dict) of the checkpoint in ``directory``."""
    hf = read_json(directory / "config.json")
    if not hf:
        raise FileNotFoundError(f"{directory}: no config.json")
    cfg = config_from_hf(hf, max_len=max_len)
    tensors = read_tensors(directory)
    expected: dict[str, tuple[str, str, int | None]] = {}  # HF name → (our name, kind, layer)
    for i in range(cfg.num_layers):
        for hf_name, (name, kind) in _layer_names(cfg).items():
            expected[f"model.layers.{i}.{hf_name}"] = (name, kind, i)
    expected["model.embed_tokens.weight"] = ("embed", "vocab", None)
    expected["model.norm.weight"] = ("final_norm", "norm", None)
    if cfg.tied_embeddings:
        head = tensors.pop("lm_head.weight", None)
        # Some tied checkpoints store the shared matrix twice; tolerated only if it is the same.
        embed = tensors.get("model.embed_tokens.weight")
        if head is not None and not (embed is not None and np.array_equal(head, embed)):
            raise ValueError(f"{directory}: tie_word_embeddings is true but lm_head.weight "
                             "differs from model.embed_tokens.weight")
    else:
        expected["lm_head.weight"] = ("lm_head", "vocab", None)
    missing = sorted(set(expected) - set(tensors), key=_natural)
    unknown = sorted(set(tensors) - set(expected), key=_natural)
    if missing or unknown:
        raise ValueError(f"{directory}: checkpoint does not match its config.json "
                         f"({cfg.arch}, {cfg.num_layers} layers): missing tensors {missing}; "
                         f"unknown tensors {unknown}")
    layers: dict[str, list[Any]] = {}
    params: dict[str, Any] = {}
    for hf_name, (name, kind, layer) in expected.items():
        w = tensors.pop(hf_name)
        want = _hf_shape(name, kind, cfg)
        if w.shape != want:
            raise ValueError(f"{directory}: {hf_name} has shape {w.shape}; config.json implies "
                             f"{want}")
        if layer is None:
            params[name] = _layout(w, kind, cfg) if kind == "norm" else w
        else:
            layers.setdefault(name, [None] * cfg.num_layers)[layer] = _layout(w, kind, cfg)
    params["layers"] = {name: np.stack(ws) for name, ws in layers.items()}
    return cfg, params, hf


def _natural(name: str) -> tuple[Any, ...]:
    """Sort key that puts layer 2 before layer 10."""
    return tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in name.split("."))
