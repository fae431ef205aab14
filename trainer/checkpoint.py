"""Checkpoints: `checkpoints/<run>/step_000123/{model.safetensors, train_state.pt, meta.json}`.

Weights are safetensors (loading runs no code); the optimiser, data-loader and RNG state for
resuming is a plain-tensor `torch.save` read back with `weights_only=True`. Every file is written
atomically and `meta.json` last: a folder without it is an unfinished write and is ignored.
"""

from __future__ import annotations

import json
import pickle
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from trainer.config import ModelConfig, from_dict
from trainer.errors import CheckpointError, ConfigError, one_line
from trainer.io import atomic_path, atomic_write_text
from trainer.model import GPT

MODEL_FILE, STATE_FILE, META_FILE, RUN_FILE = "model.safetensors", "train_state.pt", "meta.json", "run.json"
RESUME_KEYS = {"step", "adam", "muon", "loader", "rng"}


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
    """Write weights, resume state, then metadata (which marks the checkpoint complete)."""
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
        meta = dict(meta, step=step, files=sorted(p.name for p in out.iterdir() if not p.name.startswith(".")))
        atomic_write_text(out / META_FILE, json.dumps(meta, indent=1))
    except BaseException:
        if new:  # a half-written checkpoint is ignored anyway; removing it gives back its space
            shutil.rmtree(out, ignore_errors=True)
        raise
    return out


def read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {what} is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: {what} is not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: {what} is not a JSON object")
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
    meta = read_json(ckpt / META_FILE, "checkpoint metadata")
    for key in ("model_config", "step", "arm", "seed"):
        if key not in meta:
            raise CheckpointError(f"{ckpt / META_FILE}: metadata has no {key!r}")
    return meta


def load_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """Build the model a checkpoint describes and load its weights; errors name the bad file."""
    ckpt = resolve_checkpoint(path)
    meta = read_meta(ckpt)
    try:
        config = from_dict(ModelConfig, meta["model_config"])
    except ConfigError as e:
        raise CheckpointError(f"{ckpt / META_FILE}: {e}") from None
    model = GPT(config)
    load_weights(model, ckpt / MODEL_FILE)
    return model.to(device).eval(), dict(meta, path=str(ckpt))


def load_weights(model: GPT, file: Path) -> None:
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


def load_train_state(ckpt: Path) -> dict:
    """The resume state; `weights_only=True` refuses any pickle that would run code."""
    file = Path(ckpt) / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{file}: resume state is missing") from None
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{file}: refused, loading it would need more than plain tensors "
                              f"({one_line(e)})") from None
    except Exception as e:  # torch.load fails in many ways on a damaged file; all mean the same here
        raise CheckpointError(f"{file}: not a loadable resume state ({one_line(e)})") from None
    if not isinstance(state, dict) or not RESUME_KEYS <= set(state):
        raise CheckpointError(f"{file}: resume state lacks {sorted(RESUME_KEYS - set(state or {}))}")
    return state

