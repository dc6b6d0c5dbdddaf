"""`kltrust.models.interface.Tokenizer` adapters rebuilt from GGUF tokenizer metadata.

* ``tokenizer.ggml.model == "gpt2"`` (SmolLM2): byte-level BPE. The vocabulary and merge list are
  in the metadata; the `tokenizers` library rebuilds it with SmolLM2's pre-tokenizer (every digit
  on its own, then GPT-2's byte-level regex split; llama.cpp's "smollm" pre-tokenizer) and the
  byte-level decoder. Control tokens (``<|im_start|>`` ...) are special tokens, matched whole.
* ``tokenizer.ggml.model == "llama"`` (Gemma): SentencePiece BPE. A ``ModelProto`` is built from
  the pieces, scores and types in the metadata (GGUF's token-type numbers are SentencePiece's:
  1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte) with byte fallback and the
  identity normaliser (spaces → "▁", nothing else changed, no dummy prefix), so any text
  round-trips exactly.

* A Hugging Face checkpoint directory's ``tokenizer.json`` (`HFTokenizer`): whatever the file
  describes, run by the `tokenizers` library as written; the special ids come from the
  directory's JSON files (`HFTokenizer.from_directory`).

Each GGUF adapter writes its own file into the weight cache's entry (``save``), so a warm load
rebuilds the tokenizer without parsing the GGUF metadata again.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

_CONTROL = 3


def _ids(ids: Sequence[int] | Any) -> list[int]:
    return [int(i) for i in (ids.tolist() if hasattr(ids, "tolist") else ids)]


class _Base:
    """Shared ids and PAD-dropping decode; subclasses set ``_encode`` / ``_decode``."""

    def __init__(self, vocab_size: int, bos_id: int | None, eos_id: int, pad_id: int):
        self._vocab_size, self._bos_id = vocab_size, bos_id
        self._eos_id, self._pad_id = eos_id, pad_id

    @property
    def vocab_size(self) -> int:
        return self._vocab_size

    @property
    def bos_id(self) -> int | None:
        """The BOS id if the model expects one (metadata ``add_bos_token``), else None."""
        return self._bos_id

    @property
    def eos_id(self) -> int:
        return self._eos_id

    @property
    def pad_id(self) -> int:
        return self._pad_id

    def encode(self, text: str) -> list[int]:
        """The ids of ``text``, no special tokens added."""
        return self._encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        """The text of ``ids`` with PAD dropped (control tokens other than PAD are kept where the
        library can render them)."""
        return self._decode([i for i in _ids(ids) if i != self._pad_id])

    def _ids_json(self) -> dict[str, Any]:
        return dict(vocab_size=self._vocab_size, bos_id=self._bos_id, eos_id=self._eos_id,
                    pad_id=self._pad_id)


def _special_ids(meta: dict[str, Any]) -> dict[str, Any]:
    eos = int(meta["tokenizer.ggml.eos_token_id"])
    bos = meta.get("tokenizer.ggml.bos_token_id")
    uses_bos = bos is not None and bool(meta.get("tokenizer.ggml.add_bos_token"))
    return dict(vocab_size=len(meta["tokenizer.ggml.tokens"]),
                bos_id=int(bos) if uses_bos else None,
                eos_id=eos, pad_id=int(meta.get("tokenizer.ggml.padding_token_id", eos)))


class ByteLevelBPETokenizer(_Base):
    """SmolLM2's byte-level BPE (module docstring), backed by a `tokenizers.Tokenizer`."""

    FILE = "tokenizer.json"

    def __init__(self, backend: Any, **ids: Any):
        super().__init__(**ids)
        self._backend = backend

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> ByteLevelBPETokenizer:
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        tokens = meta["tokenizer.ggml.tokens"]
        merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
        backend = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
        backend.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
        backend.decoder = decoders.ByteLevel()
        types = meta["tokenizer.ggml.token_type"]
        backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                    for t, kind in zip(tokens, types) if kind == _CONTROL])
        return cls(backend, **_special_ids(meta))

    def save(self, directory: Path) -> None:
        """Writes the tokenizer (its JSON and the special ids) into ``directory``."""
        (directory / self.FILE).write_text(self._backend.to_str())
        (directory / "tokenizer_ids.json").write_text(json.dumps(self._ids_json()))

    @classmethod
    def load(cls, directory: Path) -> ByteLevelBPETokenizer:
        from tokenizers import Tokenizer

        ids = json.loads((directory / "tokenizer_ids.json").read_text())
        return cls(Tokenizer.from_file(str(directory / cls.FILE)), **ids)

    def _encode(self, text: str) -> list[int]:
        return self._backend.encode(text, add_special_tokens=False).ids

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids, skip_special_tokens=False)


class SentencePieceTokenizer(_Base):
    """Gemma's SentencePiece BPE (module docstring), backed by a `SentencePieceProcessor`."""

    FILE = "tokenizer.model"

    def __init__(self, proto: bytes, **ids: Any):
        import sentencepiece

        super().__init__(**ids)
        self._proto = proto
        self._backend = sentencepiece.SentencePieceProcessor(model_proto=proto)

    @classmethod
    def from_metadata(cls, meta: dict[str, Any]) -> SentencePieceTokenizer:
        from sentencepiece import sentencepiece_model_pb2 as pb

        model = pb.ModelProto()
        for piece, score, kind in zip(meta["tokenizer.ggml.tokens"], meta["tokenizer.ggml.scores"],
                                      meta["tokenizer.ggml.token_type"]):
            entry = model.pieces.add()
            entry.piece, entry.score, entry.type = piece, float(score), int(kind) or 1
        ids = _special_ids(meta)
        trainer = model.trainer_spec
        trainer.model_type = pb.TrainerSpec.BPE
        trainer.vocab_size = ids["vocab_size"]
        trainer.byte_fallback = True
        trainer.unk_id = int(meta.get("tokenizer.ggml.unknown_token_id", 0))
        trainer.bos_id = int(meta.get("tokenizer.ggml.bos_token_id", -1))
        trainer.eos_id, trainer.pad_id = ids["eos_id"], ids["pad_id"]
        norm = model.normalizer_spec
        norm.name = "identity"
        norm.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", False))
        norm.remove_extra_whitespaces = False
        norm.escape_whitespaces = True
        return cls(model.SerializeToString(), **ids)

    def save(self, directory: Path) -> None:
        """Writes the tokenizer (its model proto and the special ids) into ``directory``."""
        (directory / self.FILE).write_bytes(self._proto)
        (directory / "tokenizer_ids.json").write_text(json.dumps(self._ids_json()))

    @classmethod
    def load(cls, directory: Path) -> SentencePieceTokenizer:
        ids = json.loads((directory / "tokenizer_ids.json").read_text())
        return cls((directory / cls.FILE).read_bytes(), **ids)

    def _encode(self, text: str) -> list[int]:
        return list(self._backend.encode(text))

    def _decode(self, ids: list[int]) -> str:
        return self._backend.decode(ids)


class HFTokenizer(ByteLevelBPETokenizer):
    """Any ``tokenizer.json`` of a Hugging Face checkpoint directory, backed by
    `tokenizers.Tokenizer.from_file` (encoding and decoding as `ByteLevelBPETokenizer`: no
    special tokens added, none skipped but PAD)."""

    @classmethod
    def from_directory(cls, directory: Path) -> HFTokenizer | None:
        """The tokenizer of ``directory``, or None without a tokenizer.json. EOS, BOS and PAD are
        the tokens that tokenizer_config.json names (``eos_token`` ...), else the ids in
        config.json, else generation_config.json (the first of a list); PAD defaults to EOS. BOS
        is kept only if the tokenizer adds it: tokenizer_config.json ``add_bos_token``, else
        whether encoding with special tokens puts it first."""
        from tokenizers import Tokenizer

        if not (directory / cls.FILE).exists():
            return None
        backend = Tokenizer.from_file(str(directory / cls.FILE))
        configs = [_read_json(directory / name) for name in
                   ("tokenizer_config.json", "config.json", "generation_config.json")]
        config = configs[1].get("text_config", {}) | configs[1]

        def special(name: str) -> int | None:
            token = configs[0].get(f"{name}_token")
            if isinstance(token, dict):  # AddedToken serialised as a dict
                token = token.get("content")
            if isinstance(token, str) and backend.token_to_id(token) is not None:
                return backend.token_to_id(token)
            for source in (config, configs[2]):
                value = source.get(f"{name}_token_id")
                if isinstance(value, list):
                    value = value[0] if value else None
                if value is not None:
                    return int(value)
            return None

        eos = special("eos")
        if eos is None:
            raise ValueError(f"{directory}: no EOS token in tokenizer_config.json, config.json "
                             "or generation_config.json")
        bos = special("bos")
        adds_bos = configs[0].get("add_bos_token")
        if adds_bos is None and bos is not None:
            with_special = backend.encode("a", add_special_tokens=True).ids
            adds_bos = bool(with_special) and with_special[0] == bos
        pad = special("pad")
        return cls(backend, vocab_size=backend.get_vocab_size(with_added_tokens=True),
                   bos_id=bos if adds_bos else None, eos_id=eos,
                   pad_id=eos if pad is None else pad)


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.exists() else {}


KINDS = {"gpt2": ByteLevelBPETokenizer, "llama": SentencePieceTokenizer}


def from_metadata(meta: dict[str, Any]) -> ByteLevelBPETokenizer | SentencePieceTokenizer:
    """The tokenizer a GGUF file's metadata describes (``tokenizer.ggml.model``: BPE or
    SentencePiece); another kind raises `NotImplementedError`.
    """
    kind = meta["tokenizer.ggml.model"]
    if kind not in KINDS:
        raise NotImplementedError(f"GGUF tokenizer model {kind!r}: only {sorted(KINDS)}.")
    return KINDS[kind].from_metadata(meta)


def load(directory: Path):
    """The tokenizer saved in a cache entry (whichever kind's file is there)."""
    for kind in KINDS.values():
        if (directory / kind.FILE).exists():
            return kind.load(directory)
    raise FileNotFoundError(f"no tokenizer file in {directory}")
