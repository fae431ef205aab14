"""Checkpoints: `checkpoints/<run>/step_000123/{model.safetensors, train_state.pt, meta.json}`.

Weights are safetensors (loading runs no code); the optimiser, data-loader and RNG state for
resuming is a plain-tensor `torch.save` read back with `weights_only=True`. Every file is written
atomically and `meta.json` last: a folder without it is an unfinished write and is ignored.

`meta.json` records the sha256 of each other file (`sha256`) and of itself (`meta_sha256`, over its
text with that digest zeroed), so a byte damaged anywhere is refused on loading, never trained on or
analysed. Checkpoints written before the hashes load unchecked, with one warning a process.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import shutil
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainer.config import ModelConfig, from_dict
from trainer.errors import CheckpointError, ConfigError, SmearlensError, one_line, warn
from trainer.io import atomic_path, atomic_write_text
from trainer.model import GPT, min_parameters

if TYPE_CHECKING:
    import pandas as pd

MODEL_FILE, STATE_FILE, META_FILE, RUN_FILE = "model.safetensors", "train_state.pt", "meta.json", "run.json"
RESUME_KEYS = {"step": int, "adam": dict, "muon": dict, "loader": dict, "rng": dict}
META_KEYS = {"model_config": dict, "step": int, "arm": str, "seed": int}
HASHES, META_HASH = "sha256", "meta_sha256"  # meta.json's keys: {file: digest} of the others, and its own
_ZEROS = "0" * 64
_warned_unhashed = False  # one warning a process: a study's analysis may read hundreds of such checkpoints


def step_dir(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / f"step_{step:06d}"


def code_version() -> str:
    """The git commit of the smearlens checkout, if it is one, else the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(["git", "-C", str(root), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, timeout=5)
        if out.returncode == 0 and out.stdout.strip():
            return out.stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("smearlens")
    except PackageNotFoundError:
        return "unknown"


def save_checkpoint(run_dir: Path, step: int, model: GPT, meta: dict[str, Any], train_state: dict | None) -> Path:
    """Write weights, resume state, then metadata with their hashes (which marks the checkpoint complete)."""
    out = step_dir(run_dir, step)
    new = not out.exists()
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / META_FILE).unlink(missing_ok=True)  # an overwrite is incomplete until meta is back
        tensors = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
        with atomic_path(out / MODEL_FILE) as tmp:
            save_file(tensors, str(tmp))
        if train_state is not None:
            with atomic_path(out / STATE_FILE) as tmp:
                torch.save(train_state, tmp)
        files = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        hashes = {name: file_sha256(out / name) for name in files if (out / name).is_file()}
        atomic_write_text(out / META_FILE, sealed_meta(dict(meta, step=step, files=files, **{HASHES: hashes})))
    except BaseException:
        if new:  # a half-written checkpoint is ignored anyway; removing it gives back its space
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _digest_field(digest: str) -> str:
    return f'"{META_HASH}": "{digest}"'


def sealed_meta(meta: dict[str, Any]) -> str:
    """meta.json's text ending with its own sha256: the digest of the same text with the digest zeroed."""
    text = json.dumps(dict({k: v for k, v in meta.items() if k != META_HASH}, **{META_HASH: _ZEROS}), indent=1)
    digest = hashlib.sha256(text.encode()).hexdigest()  # json.dumps escapes non-ASCII: text and bytes agree
    head, _, tail = text.rpartition(_digest_field(_ZEROS))
    return head + _digest_field(digest) + tail


def is_hashed(meta: dict) -> bool:
    """Whether the checkpoint records hashes. Either key marks it, so one damaged key name cannot pass the
    checkpoint off as one written before hashes (which loads unchecked)."""
    return HASHES in meta or META_HASH in meta


def check_meta_hash(path: Path, raw: bytes, meta: dict) -> None:
    """Refuse a meta.json whose bytes are not exactly those its own digest was taken over."""
    digest = meta.get(META_HASH)
    if not (isinstance(digest, str) and re.fullmatch("[0-9a-f]{64}", digest)):
        raise CheckpointError(f"{path}: damaged: its own sha256 ({META_HASH}) is missing or malformed; refused")
    head, found, tail = raw.rpartition(_digest_field(digest).encode())
    if not found or hashlib.sha256(head + _digest_field(_ZEROS).encode() + tail).hexdigest() != digest:
        raise CheckpointError(f"{path}: damaged: its bytes differ from the sha256 it records; refused")


def verified_file(ckpt: Path, name: str, meta: dict, what: str) -> Path:
    """`ckpt/name` once its sha256 matches the one the metadata records (checkpoints from before hashes: as is)."""
    file = Path(ckpt) / name
    if not is_hashed(meta):
        return file
    hashes = meta.get(HASHES)
    expected = hashes.get(name) if isinstance(hashes, dict) else None
    if not isinstance(expected, str):
        raise CheckpointError(f"{file}: its checkpoint's {META_FILE} records no sha256 for this {what}; refused")
    try:
        actual = file_sha256(file)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: {what} is missing") from None
    except OSError as e:
        raise CheckpointError(f"{file}: {what} is unreadable ({one_line(e)})") from None
    if actual != expected:
        raise CheckpointError(f"{file}: damaged: its sha256 differs from the one {META_FILE} records; refused")
    return file


def read_json(path: Path, what: str, error: type[SmearlensError] = CheckpointError) -> dict:
    """A JSON object from `path`, or `error` naming the file and what is wrong with it."""
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise error(f"{path}: {what} is missing") from None
    except OSError as e:
        raise error(f"{path}: {what} is unreadable ({one_line(e)})") from None
    return parse_json(path, raw, what, error)


def parse_json(path: Path, raw: bytes, what: str, error: type[SmearlensError] = CheckpointError) -> dict:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise error(f"{path}: {what} is not valid JSON ({one_line(e)})") from None
    except RecursionError:  # brackets nested thousands deep
        raise error(f"{path}: {what} is not valid JSON (nested too deep)") from None
    if not isinstance(data, dict):
        raise error(f"{path}: {what} is not a JSON object")
    return data


def complete_checkpoints(run_dir: Path) -> list[Path]:
    """Step folders whose metadata was written, oldest first."""
    return sorted(p.parent for p in Path(run_dir).glob(f"step_*/{META_FILE}"))


def resolve_checkpoint(path: str | Path) -> Path:
    """A step folder as it is, or a run folder's newest complete checkpoint."""
    path = Path(path)
    if (path / META_FILE).exists():
        return path
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint or run folder")
    found = complete_checkpoints(path)
    if not found:
        raise CheckpointError(f"{path}: no complete checkpoint (step_*/{META_FILE}) in this folder")
    return found[-1]


def read_meta(ckpt: Path) -> dict:
    """A checkpoint's metadata, checked against its own sha256 and for the keys every reader needs."""
    path = Path(ckpt) / META_FILE
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path}: checkpoint metadata is missing") from None
    except OSError as e:
        raise CheckpointError(f"{path}: checkpoint metadata is unreadable ({one_line(e)})") from None
    meta = parse_json(path, raw, "checkpoint metadata")
    if is_hashed(meta):
        check_meta_hash(path, raw, meta)
    else:
        global _warned_unhashed
        if not _warned_unhashed:
            _warned_unhashed = True
            warn(f"{path.parent}: written before smearlens recorded hashes (so may others be); "
                 f"such checkpoints load without a damage check")
    require(path, meta, META_KEYS, "metadata")
    return meta


def require(path: Path, d: dict, kinds: dict[str, type | tuple[type, ...]], what: str) -> None:
    """Each key of `kinds` in `d`, of its type: what a loaded file holds is checked before anything uses it."""
    for key, kind in kinds.items():
        if key not in d:
            raise CheckpointError(f"{path}: {what} has no {key!r}")
        if not isinstance(d[key], kind) or (isinstance(d[key], bool) and kind is not bool):
            names = " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
            raise CheckpointError(f"{path}: {what}'s {key!r} is a {type(d[key]).__name__}, not {names}")


def read_run_table(path: Path) -> "pd.DataFrame":
    """A table a run wrote beside its checkpoints (loss.csv, record_*.parquet), read again on a resume to keep
    its earlier rows; a damaged one is a CheckpointError naming it rather than a traceback from pandas."""
    import pandas as pd

    try:
        table = pd.read_parquet(path) if Path(path).suffix == ".parquet" else pd.read_csv(path)
        if not pd.api.types.is_numeric_dtype(table["step"]):
            raise ValueError("its step column is not numbers")
    except Exception as e:  # pandas and pyarrow raise many types for a damaged file
        raise CheckpointError(f"{path}: damaged, cannot keep its rows on resuming ({type(e).__name__}: "
                              f"{one_line(e)}); move it away to resume without them") from None
    return table


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Build the model a checkpoint describes and load its weights; errors name the bad file."""
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    try:
        config = from_dict(ModelConfig, meta["model_config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt / META_FILE}: {e}") from None
    file = verified_file(ckpt, MODEL_FILE, meta, "weights file")  # first: a damaged file is named as such
    check_model_size(file, config)
    model = GPT(config)
    load_tensors(model, file)
    return model.to(device).eval(), dict(meta, path=str(ckpt))


def check_model_size(file: Path, config: ModelConfig) -> None:
    """Refuse metadata whose model could not fit in its weights file (≥ 1 byte a parameter) before building
    it: a damaged n_layers or d_model would otherwise ask for many gigabytes first."""
    try:
        size = file.stat().st_size
    except FileNotFoundError:
        raise CheckpointError(f"{file}: weights file is missing") from None
    if min_parameters(config) > size:
        raise CheckpointError(f"{file.parent / META_FILE}: its model config needs at least {min_parameters(config):,} "
                              f"parameters, more than {file.name} ({size:,} bytes) holds")


def load_weights(model: GPT, ckpt: Path, meta: dict | None = None) -> None:
    """Load a checkpoint's weights into `model`, after checking the file's hash (`meta`: its read metadata)."""
    meta = read_meta(ckpt) if meta is None else meta
    load_tensors(model, verified_file(ckpt, MODEL_FILE, meta, "weights file"))


def load_tensors(model: GPT, file: Path) -> None:
    """Load a (checked) safetensors file into `model`; tensors that do not fit are named."""
    try:
        tensors = load_file(str(file))
    except FileNotFoundError:
        raise CheckpointError(f"{file}: weights file is missing") from None
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file}: not a readable safetensors file ({one_line(e)})") from None
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing or extra:
        raise CheckpointError(f"{file}: tensors do not match the model: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, t in tensors.items():
        if t.shape != expected[name].shape:
            raise CheckpointError(f"{file}: tensor {name} has shape {tuple(t.shape)}, "
                                  f"the model expects {tuple(expected[name].shape)}")
    model.load_state_dict(tensors)


def load_train_state(ckpt: Path, meta: dict | None = None) -> dict:
    """The resume state, after checking the file's hash; `weights_only=True` refuses any pickle that would run code."""
    meta = read_meta(ckpt) if meta is None else meta
    file = verified_file(ckpt, STATE_FILE, meta, "resume state")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: resume state is missing") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{file}: refused, loading it would need more than plain tensors "
                              f"({one_line(e)})") from None
    except Exception as e:  # torch.load fails in many ways on a damaged file; all mean the same here
        raise CheckpointError(f"{file}: not a loadable resume state ({one_line(e)})") from None
    # a damaged pickle can still load, as anything at all (an int, a list, a dict of other keys)
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: not a resume state: it holds a {type(state).__name__}, not a dict")
    require(file, state, RESUME_KEYS, "resume state")
    return state
