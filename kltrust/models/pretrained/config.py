"""The static shape of a pretrained decoder (llama or gemma3), read from GGUF metadata or written
by hand for the tiny random variants.

Both architectures are pre-norm decoders with grouped-query attention, rotary position embeddings
and a gated MLP; they differ in a handful of switches that `ArchConfig` derives from ``arch``:

    llama   SwiGLU MLP; no q/k norms; no post-norms; embeddings unscaled; every layer global
    gemma3  GeGLU (tanh-approximate GELU); RMS norms on q and k per head; RMS norms after the
            attention and the MLP (before the residual add); embeddings × sqrt(width); local layers
            (all but every ``global_every``-th) attend to the last ``sliding_window`` positions
            with rope base ``rope_local_theta``, global layers to everything with ``rope_theta``
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

ARCHS = ("llama", "gemma3")
DTYPES = ("float32", "bfloat16", "float16")

# gemma3's local-layer rope base when the GGUF lacks `gemma3.rope.freq_base_swa` (older files, as
# here): llama.cpp's default
# `hparams.rope_freq_base_train_swa = 10000.0f` in llama-model.cpp, as in HF's
# `Gemma3TextConfig.rope_local_base_freq`.
GEMMA3_LOCAL_ROPE_THETA = 10_000.0
GEMMA3_GLOBAL_EVERY = 6  # llama.cpp `set_swa_pattern(6)`: layers 5, 11, 17, ... are global


@dataclasses.dataclass(frozen=True)
class ArchConfig:
    """Every number the forward pass needs (hashable: it is part of the compiled program).

    ``sliding_window`` 0 means no local layers; ``final_softcap`` 0 means no logit soft-capping
    (otherwise logits ← c·tanh(logits / c)); ``rope_scale`` divides positions on global layers
    (linear rope scaling; 1 for the models here).
    """

    arch: str
    vocab_size: int
    num_layers: int
    width: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    ffn_width: int
    norm_eps: float
    rope_theta: float
    max_len: int = 256
    rope_local_theta: float = 0.0
    sliding_window: int = 0
    global_every: int = 1
    rope_scale: float = 1.0
    final_softcap: float = 0.0
    tied_embeddings: bool = True
    dtype: str = "float32"
    # Rematerialise each layer in the backward pass (jax.checkpoint): the teacher-forced forward
    # keeps only the layer inputs and recomputes the rest when differentiating (memory, not
    # numbers).
    remat: bool = False

    def __post_init__(self):
        if self.arch not in ARCHS:
            raise ValueError(f"arch = {self.arch!r}: must be one of {ARCHS}.")
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype = {self.dtype!r}: must be one of {DTYPES}.")
        if not isinstance(self.remat, bool):
            raise ValueError(f"remat = {self.remat!r}: must be True or False.")
        for name in ("vocab_size", "num_layers", "width", "num_heads", "num_kv_heads", "head_dim",
                     "ffn_width", "max_len", "global_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} = {value!r}: must be an integer >= 1.")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads = {self.num_heads} must be a multiple of num_kv_heads = "
                             f"{self.num_kv_heads} (grouped-query attention).")
        if self.head_dim % 2:
            raise ValueError(f"head_dim = {self.head_dim}: rotary embeddings need an even size.")

    @property
    def is_gemma(self) -> bool:
        return self.arch == "gemma3"

    @property
    def local_theta(self) -> float:
        return self.rope_local_theta or self.rope_theta

    def is_local(self, layer: int) -> bool:
        """Whether ``layer`` (0-based) is a sliding-window layer: all but every global_every-th."""
        return self.sliding_window > 0 and (layer + 1) % self.global_every != 0

    def to_dict(self) -> dict[str, Any]:
        """The fields as a plain dict (JSON-serialisable: what the float32 cache stores)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ArchConfig:
        return cls(**values)


def from_gguf_metadata(meta: Mapping[str, Any], max_len: int, dtype: str) -> ArchConfig:
    """The config of a GGUF file's ``{arch}.*`` keys (``meta`` maps key → decoded value).

    Keys that a supported model would need but the file lacks raise a ValueError naming them;
    features this implementation does not have (partial rotary, attention soft-capping) raise
    NotImplementedError rather than silently computing something else.
    """
    arch = meta["general.architecture"]
    if arch not in ARCHS:
        raise NotImplementedError(f"GGUF architecture {arch!r}: only {ARCHS} are implemented.")

    def get(key: str, default: Any = None) -> Any:
        full = f"{arch}.{key}"
        if full in meta:
            return meta[full]
        if default is None:
            raise ValueError(f"GGUF metadata lacks {full!r}.")
        return default

    width = int(get("embedding_length"))
    heads = int(get("attention.head_count"))
    head_dim = int(get("attention.key_length", width // heads))
    if int(get("attention.value_length", head_dim)) != head_dim:
        raise NotImplementedError("key_length != value_length")
    if int(get("rope.dimension_count", head_dim)) != head_dim:
        raise NotImplementedError("partial rotary embeddings (rope.dimension_count < head_dim)")
    if float(get("attn_logit_softcapping", 0.0)):
        raise NotImplementedError("attention logit soft-capping (gemma2)")
    vocab = meta.get(f"{arch}.vocab_size") or len(meta["tokenizer.ggml.tokens"])
    scaling = get("rope.scaling.type", "none")
    rope_scale = float(get("rope.scaling.factor", 1.0)) if scaling == "linear" else 1.0
    if scaling not in ("none", "linear"):
        raise NotImplementedError(f"rope scaling {scaling!r}")
    gemma = arch == "gemma3"
    return ArchConfig(
        arch=arch, vocab_size=int(vocab), num_layers=int(get("block_count")), width=width,
        num_heads=heads, num_kv_heads=int(get("attention.head_count_kv", heads)),
        head_dim=head_dim, ffn_width=int(get("feed_forward_length")),
        norm_eps=float(get("attention.layer_norm_rms_epsilon")),
        rope_theta=float(get("rope.freq_base", 10_000.0)), max_len=max_len,
        rope_local_theta=(float(get("rope.freq_base_swa", GEMMA3_LOCAL_ROPE_THETA)) if gemma
                          else 0.0),
        sliding_window=int(get("attention.sliding_window", 0)) if gemma else 0,
        global_every=GEMMA3_GLOBAL_EVERY if gemma else 1, rope_scale=rope_scale,
        final_softcap=float(get("final_logit_softcapping", 0.0)),
        tied_embeddings="output.weight" not in meta.get("_tensor_names", ()), dtype=dtype)
