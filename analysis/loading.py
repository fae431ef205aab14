"""Find and load checkpoints for analysis: the model with its run's tokenizer attached, and its data."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from trainer import checkpoint as ckpt
from trainer.data import load_split
from trainer.errors import AnalysisError
from trainer.model import GPT
from trainer.perf import keep_freed_memory
from trainer.tokenizer import FILENAME as TOKENIZER_FILE, Tokenizer


def load_checkpoint_model(path: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, dict]:
    """The model a checkpoint (or a run folder's newest checkpoint) holds, in eval mode, with the run's
    `tokenizer.json` attached as `model.tokenizer` (so `to_tokens` and TransformerLens tools work),
    and the checkpoint's metadata (with `path`). Missing or mismatched tensors: CheckpointError."""
    keep_freed_memory()  # probes allocate large blocks: keep them (see trainer.perf)
    model, meta = ckpt.load_model(path, device)
    run_dir = Path(meta["path"]).parent
    if (run_dir / TOKENIZER_FILE).exists():
        model.tokenizer = Tokenizer.load(run_dir)
    return model, meta


@dataclass
class RunTarget:
    """One run folder to analyse, and which of its complete checkpoints."""

    run_dir: Path
    checkpoints: list[Path]


def resolve_targets(paths: list[str | Path], skip: Path | None = None) -> list[RunTarget]:
    """Each path is a checkpoint (step folder), a run folder (all its complete checkpoints) or a folder
    of run folders. `skip` (the output folder) is passed over when a glob names it."""
    targets: list[RunTarget] = []
    for raw in paths:
        path = Path(raw)
        if skip is not None and path.resolve() == skip.resolve():
            continue
        if (path / ckpt.META_FILE).exists():
            targets.append(RunTarget(path.parent, [path]))
        elif (path / ckpt.RUN_FILE).exists() or any(path.glob("step_*")):
            found = ckpt.complete_checkpoints(path)
            if not found:
                raise AnalysisError(f"{path}: run folder has no complete checkpoint (step_*/{ckpt.META_FILE})")
            targets.append(RunTarget(path, found))
        elif path.is_dir() and any((p / ckpt.RUN_FILE).exists() for p in path.iterdir()):
            runs = sorted(p for p in path.iterdir() if (p / ckpt.RUN_FILE).exists())
            targets += resolve_targets(runs, skip)
        elif not path.exists():
            raise AnalysisError(f"{path}: no such run folder or checkpoint")
        else:
            raise AnalysisError(f"{path}: not a checkpoint, a run folder or a folder of runs (no checkpoints found)")
    merged: dict[Path, list[Path]] = {}
    for t in targets:  # a run named twice (as a run and as one of its steps) is analysed once
        merged.setdefault(t.run_dir.resolve(), [])
        merged[t.run_dir.resolve()] += [c for c in t.checkpoints if c not in merged[t.run_dir.resolve()]]
    return [RunTarget(run_dir, sorted(cks)) for run_dir, cks in merged.items()]


def validation_tokens(meta: dict, data: str | Path | None = None) -> np.ndarray:
    """The validation split of the checkpoint's data folder (or of `data`, when it has moved)."""
    where = data or meta.get("data")
    if not where:
        raise AnalysisError(f"{meta.get('path')}: checkpoint metadata names no data folder; pass --data")
    if "{split}" not in str(where) and not Path(where).exists():
        raise AnalysisError(f"data folder {where} (from {meta.get('path')}) not found; pass --data")
    return load_split(where, "val", vocab_size=meta["model_config"]["vocab_size"])
