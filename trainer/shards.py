"""The speedrun's token shard format: a 256 x int32 header, then the tokens as uint16.

Header: magic 20240520, version 1, token count, then zeros. Every FineWeb shard of the
modded-nanogpt speedrun has this layout, and so do the shards we build from text.
"""

from __future__ import annotations

import glob
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from trainer.errors import DataError
from trainer.io import atomic_path

MAGIC = 20240520
VERSION = 1
HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
MAX_TOKEN = np.iinfo(np.uint16).max


def write_shard(path: str | os.PathLike, tokens: Sequence[int] | np.ndarray) -> None:
    """Write `tokens` (ints in [0, 65535]) as one shard, atomically."""
    arr = np.asarray(tokens)
    if arr.size == 0:
        arr = arr.astype(np.uint16)  # an empty list comes back as float64
    if arr.ndim != 1:
        raise DataError(f"write_shard {path}: tokens must be 1-D, got shape {arr.shape}")
    if not (np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_):
        raise DataError(f"write_shard {path}: tokens must be integers, got dtype {arr.dtype}")
    if arr.size and (arr.min() < 0 or arr.max() > MAX_TOKEN):
        bad = int(arr.min()) if arr.min() < 0 else int(arr.max())
        raise DataError(f"write_shard {path}: token id {bad} does not fit in uint16 [0, {MAX_TOKEN}]")
    if arr.size >= 2**31:
        raise DataError(f"write_shard {path}: {arr.size} tokens exceed the int32 count in the header")
    header = np.zeros(HEADER_INTS, dtype="<i4")
    header[:3] = (MAGIC, VERSION, arr.size)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(header.tobytes())
        f.write(np.ascontiguousarray(arr, dtype="<u2").data)


def read_shard(path: str | os.PathLike, vocab_size: int | None = None) -> np.ndarray:
    """Return the tokens of one shard as a read-only uint16 memmap, after checking the header."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"shard {path}: no such file")
    size = path.stat().st_size
    if size < HEADER_BYTES:
        raise DataError(f"shard {path}: {size} bytes, shorter than the {HEADER_BYTES}-byte header")
    header = np.fromfile(path, dtype="<i4", count=HEADER_INTS)
    magic, version, count = (int(x) for x in header[:3])
    if magic != MAGIC:
        raise DataError(f"shard {path}: bad magic number {magic} (expected {MAGIC}); not a token shard")
    if version != VERSION:
        raise DataError(f"shard {path}: unsupported version {version} (expected {VERSION})")
    expected = HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        what = "truncated" if size < expected else "has trailing bytes"
        raise DataError(f"shard {path}: header says {count} tokens ({expected} bytes) but the file is {size} bytes ({what})")
    if count == 0:
        return np.zeros(0, dtype=np.uint16)
    tokens = np.memmap(path, dtype="<u2", mode="r", offset=HEADER_BYTES, shape=(count,))
    if vocab_size is not None:
        check_vocab(tokens, vocab_size, f"shard {path}")
    return tokens


def check_vocab(tokens: np.ndarray, vocab_size: int, where: str) -> None:
    """Raise DataError naming `where` and the first token id that is >= vocab_size."""
    if tokens.size and int(tokens.max()) >= vocab_size:
        pos = int(np.argmax(tokens >= vocab_size))
        raise DataError(f"{where}: token id {int(tokens[pos])} at position {pos} is >= vocab_size {vocab_size}")


def read_shards(paths_or_glob: str | os.PathLike | Sequence[str | os.PathLike],
                vocab_size: int | None = None) -> np.ndarray:
    """Concatenate the shards named by a glob pattern or a list of paths, in sorted order."""
    if isinstance(paths_or_glob, (str, os.PathLike)):
        pattern = str(paths_or_glob)
        paths = [pattern] if Path(pattern).is_file() else sorted(glob.glob(pattern))
        if not paths:
            raise DataError(f"no shard files match {pattern!r}")
    else:
        paths = sorted(str(p) for p in paths_or_glob)
        if not paths:
            raise DataError("read_shards: empty list of shard paths")
    parts = [read_shard(p, vocab_size) for p in paths]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)
