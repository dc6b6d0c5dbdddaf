"""GGUF files from installed packages → float32 parameters of `kltrust.models.pretrained.model`,
cached as .npz so that only the first load pays for parsing and dequantising.

Layout conventions (checked by the coherent-output test on the real SmolLM2, not assumed):

* GGUF lists dimensions fastest-first (ne0 = the input width of a matrix), the reverse of NumPy;
  `gguf.GGUFReader` already gives NumPy-order arrays, so a linear map's weight arrives [out, in]
  (PyTorch's order) and is transposed here to [in, out] for x @ W.
* llama.cpp's converter permutes the rows of llama's Q and K weights, per head, from the
  rotate-half layout (first half / second half of head_dim) to interleaved pairs (its "normal"
  rope). `_unpermute` undoes that, so one rotate-half `rope` serves llama and gemma3 (whose
  converter does not permute: llama.cpp runs gemma3 with NeoX rope).
* Gemma norm weights are stored as 1 + w (the converter adds the 1), so they are used as-is.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from kltrust.models.pretrained.config import ArchConfig, from_gguf_metadata

CACHE_ENV = "KLTRUST_CACHE"
CACHE_FORMAT = 1  # bump when the stored layout changes: old entries are then ignored

_LAYER_TENSORS = {  # GGUF name → (our name, how to lay it out)
    "attn_norm": ("attn_norm", "vector"), "ffn_norm": ("ffn_norm", "vector"),
    "attn_q": ("q", "q"), "attn_k": ("k", "k"), "attn_v": ("v", "kv_in"),
    "attn_output": ("o", "out"), "ffn_gate": ("gate", "in"), "ffn_up": ("up", "in"),
    "ffn_down": ("down", "in"), "attn_q_norm": ("q_norm", "vector"),
    "attn_k_norm": ("k_norm", "vector"), "post_attention_norm": ("post_attn_norm", "vector"),
    "post_ffw_norm": ("post_ffn_norm", "vector"),
}


def default_cache_dir() -> Path:
    """$KLTRUST_CACHE, else ~/.cache/kltrust/pretrained."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "kltrust" / "pretrained"


def _gguf():
    try:
        import gguf
    except ImportError as exc:  # one line saying what to install
        raise ImportError("kltrust.models.pretrained needs the 'real' extra: "
                          "pip install -c constraints.txt -e '.[real]'") from exc
    return gguf


def fingerprint(path: Path) -> str:
    """A cheap identity of a GGUF file: its size and the hash of its first and last MiB (the
    header holds the metadata and tensor offsets; the tail is the last tensor's data)."""
    size = path.stat().st_size
    digest = hashlib.sha256(f"{CACHE_FORMAT}:{size}".encode())
    with path.open("rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, size - (1 << 20)))
        digest.update(f.read(1 << 20))
    return digest.hexdigest()[:16]


def read_metadata(reader: Any) -> dict[str, Any]:
    """GGUF key → Python value (strings decoded, arrays as lists) for every field."""
    meta = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        meta[key] = field.contents()
    meta["_tensor_names"] = [t.name for t in reader.tensors]
    return meta


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
    """Inverse of llama.cpp's `LlamaModel.permute` on a [heads·D, in] Q/K weight: per head, rows
    ordered (D/2, 2) (interleaved pairs) back to (2, D/2) (first half, second half)."""
    rows, cols = w.shape
    return w.reshape(heads, rows // heads // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def _layout(w: np.ndarray, kind: str, cfg: ArchConfig) -> np.ndarray:
    """One GGUF tensor (NumPy order, [out, in] for matrices) in our layout (module docstring)."""
    D = cfg.head_dim
    if kind == "vector":
        return w
    if kind in ("q", "k"):
        heads = cfg.num_heads if kind == "q" else cfg.num_kv_heads
        if cfg.arch == "llama":
            w = _unpermute(w, heads)
        return w.T.reshape(cfg.width, heads, D)
    if kind == "kv_in":
        return w.T.reshape(cfg.width, cfg.num_kv_heads, D)
    if kind == "out":
        return w.T.reshape(cfg.num_heads, D, cfg.width)
    return w.T  # "in": [out, in] -> [in, out]


def convert(path: Path, max_len: int) -> tuple[ArchConfig, dict[str, Any], dict[str, Any]]:
    """Reads and dequantises a GGUF file: (config, float32 params, metadata)."""
    gguf = _gguf()
    reader = gguf.GGUFReader(str(path))
    meta = read_metadata(reader)
    cfg = from_gguf_metadata(meta, max_len=max_len, dtype="float32")
    tensors = {}
    for t in reader.tensors:
        # dequantize returns NumPy-order float32 ([rows = ne1, cols = ne0]) for every type.
        tensors[t.name] = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type), np.float32)
    layers: dict[str, list[np.ndarray]] = {}
    for i in range(cfg.num_layers):
        for gguf_name, (name, kind) in _LAYER_TENSORS.items():
            full = f"blk.{i}.{gguf_name}.weight"
            if full in tensors:
                layers.setdefault(name, []).append(_layout(tensors.pop(full), kind, cfg))
    expected = {"attn_norm", "ffn_norm", "q", "k", "v", "o", "gate", "up", "down"}
    if cfg.is_gemma:
        expected |= {"q_norm", "k_norm", "post_attn_norm", "post_ffn_norm"}
    missing = expected - set(layers) or {n for n in layers if len(layers[n]) != cfg.num_layers}
    if missing:
        raise ValueError(f"{path.name}: layer tensors missing or incomplete: {sorted(missing)}")
    params: dict[str, Any] = dict(layers={n: np.stack(v) for n, v in layers.items()},
                                  embed=tensors.pop("token_embd.weight"),
                                  final_norm=tensors.pop("output_norm.weight"))
    if "output.weight" in tensors:
        params["lm_head"] = tensors.pop("output.weight")
    if tensors:
        raise ValueError(f"{path.name}: tensors this loader does not use: {sorted(tensors)[:5]}")
    return cfg, params, meta


def _flatten(params: dict[str, Any]) -> dict[str, np.ndarray]:
    flat = {f"layers/{k}": v for k, v in params["layers"].items()}
    flat.update({k: v for k, v in params.items() if k != "layers"})
    return flat


def _unflatten(flat: Any) -> dict[str, Any]:
    params: dict[str, Any] = {"layers": {}}
    for key in flat.files:
        if key.startswith("layers/"):
            params["layers"][key[len("layers/"):]] = flat[key]
        else:
            params[key] = flat[key]
    return params


def load_cached(path: Path, cache_dir: Path, max_len: int,
                tokenizer_files: Any) -> tuple[ArchConfig, dict[str, Any], Path, dict[str, float]]:
    """(config, float32 params, the entry's directory, timings) for the GGUF at ``path``.

    The entry ``cache_dir/<stem>-<fingerprint>/`` holds weights.npz, config.json and whatever
    ``tokenizer_files(meta, entry_dir)`` writes there on a miss (the tokenizer's own files, so a
    warm load parses no GGUF metadata either). Entries are written to a temporary directory and
    renamed, so a crash leaves no half entry.
    """
    start = time.perf_counter()
    entry = cache_dir / f"{path.stem}-{fingerprint(path)}"
    timings: dict[str, float] = {}
    if not (entry / "weights.npz").exists():
        cfg, params, meta = convert(path, max_len)
        timings["dequantise_s"] = time.perf_counter() - start
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=cache_dir, prefix=".partial-"))
        np.savez(tmp / "weights.npz", **_flatten(params))
        (tmp / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
        tokenizer_files(meta, tmp)
        try:
            tmp.rename(entry)
        except OSError:  # another process finished first: its entry is as good as ours
            import shutil
            shutil.rmtree(tmp, ignore_errors=True)
        timings["total_s"] = time.perf_counter() - start
        return cfg, params, entry, timings
    values = json.loads((entry / "config.json").read_text())
    values.update(max_len=max_len, dtype="float32")
    cfg = ArchConfig.from_dict(values)
    with np.load(entry / "weights.npz") as flat:
        params = _unflatten(flat)
    timings["total_s"] = time.perf_counter() - start
    return cfg, params, entry, timings
