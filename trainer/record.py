"""The speedrun record's own checkpoints: import them, and evaluate any checkpoint the way the record does.

`smearlens import-record PATH.pt` reads what the record's `train_gpt.py` writes with
`save_checkpoint=True` (2025-09-18 with the smear, 2025-09-15 without): `torch.save(dict(step=,
code=, model=, optimizers=))`, where `model` is the state dict of a `torch.compile`d module (keys
start with `_orig_mod.`). The file is read with `torch.load(weights_only=True)` only, so a pickle
that needs code to load is refused, never run. Our parameter names and shapes already equal the
record's; what differs is

- the prefix, stripped;
- dtypes: the record casts every `nn.Embedding` and `nn.Linear` (token and value embeddings,
  lm_head, attention and smear gates) to bf16; we hold fp32;
- the `scalars` vector: the record has skip weights (n), block lambdas (2n), SA lambdas (2n), then
  with the smear n more (λ first, the rest unused), padded with ones to a multiple of the world
  size it ran on; ours always has 6n entries padded to `scalar_pad_to`;
- YaRN: the record's rotary tables and attention scale are not saved (non-persistent), so they are
  recomputed by replaying its window schedule up to the final validation (3 → 7 → 11, then 13 with
  20 blocks in the last layer), as its `get_ws` and `Yarn.apply` did.

`smearlens eval CHECKPOINT` computes validation loss as the record's validation loop does: the first
10,485,760 tokens of the validation stream cut into consecutive rows of 262,144 tokens (its
`val_batch_size` over 8 GPU steps, `align_to_bos=False`: a row may start mid-document, documents
are found by BOS inside the row), the mean loss of each row, averaged over rows.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pickle
import re
import time
import zipfile
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from trainer import checkpoint as ckpt
from trainer.config import ModelConfig, TrainConfig, get_preset, replace, to_dict
from trainer.errors import CheckpointError, ConfigError, DataError, one_line
from trainer.io import atomic_write_text
from trainer.model import GPT
from trainer.optim import window_blocks

RECORD_PRESET = "speedrun-124m"
PREFIX = "_orig_mod."  # torch.compile wraps the module; its state dict keys carry this
RECORD_WORLD_SIZES = (1, 2, 4, 8)  # the record asserts 8 % world_size == 0
# parameters of the modules the record casts with `.bfloat16()` (every nn.Embedding and nn.Linear)
BF16_PREFIXES = ("embed.", "value_embeds.", "lm_head.", "smear_gate.")
BF16_SUFFIXES = (".attn.attn_gate.weight",)
RECORD_VAL_TOKENS = 10_485_760
RECORD_ROW_TOKENS = 4 * 64 * 1024  # val_batch_size (4·64·1024·8) over 8 = world_size · grad_accum_steps
UNKNOWN_SEED = -1  # the record's runs have no seed; analysis groups runs by an integer seed


# ---- layout ---------------------------------------------------------------------------------------

def is_bf16_in_record(name: str) -> bool:
    return name.startswith(BF16_PREFIXES) or name.endswith(BF16_SUFFIXES)


def scalars_used(n_layers: int, smear: bool) -> int:
    """Entries of the record's scalars vector before its padding: 5n, and n more for the smear."""
    return (6 if smear else 5) * n_layers


def record_scalars_len(n_layers: int, smear: bool, world_size: int) -> int:
    used = scalars_used(n_layers, smear)
    return used + (-used) % world_size


def _table(model: GPT, world_size: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    cfg = model.config
    table = {}
    for name, p in model.named_parameters():
        shape = (record_scalars_len(cfg.n_layers, cfg.smear, world_size),) if name == "scalars" else tuple(p.shape)
        table[name] = (shape, torch.bfloat16 if is_bf16_in_record(name) else torch.float32)
    return table


def record_parameter_table(config: ModelConfig | None = None, world_size: int = 8) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
    """Name (without `_orig_mod.`), shape and dtype of every tensor of the record's state dict for a
    model of `config` (default speedrun-124m; the smear as `config.smear`). Built on the meta
    device: no memory, no initialisation."""
    with torch.device("meta"):
        model = GPT(config or get_preset(RECORD_PRESET).model)
    return _table(model, world_size)


def export_record_state_dict(model: GPT, world_size: int = 8) -> dict[str, Tensor]:
    """Our model's weights laid out as the record saves them: prefixed, bf16 where the record is,
    scalars cut to the record's entries and padded with ones for `world_size` ranks; no buffers."""
    cfg = model.config
    used = scalars_used(cfg.n_layers, cfg.smear)
    out = {}
    for name, p in model.named_parameters():
        t = p.detach().to("cpu", copy=True)
        if name == "scalars":
            t = torch.cat([t[:used], torch.ones(record_scalars_len(cfg.n_layers, cfg.smear, world_size) - used)])
        elif is_bf16_in_record(name):
            t = t.bfloat16()
        out[PREFIX + name] = t
    return out


# ---- reading a record file -------------------------------------------------------------------------

def read_record_file(path: str | Path) -> dict:
    """The object `torch.save` wrote, loaded with `weights_only=True` (plain tensors and containers
    only). Tensors are memory-mapped: the optimiser state, most of a record file, is never read."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    # torch.save writes a zip archive whose directory is at its end: a truncated file has none
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"{path}: not a complete torch.save archive (truncated, damaged, or not a checkpoint)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as e:
        needs = re.search(r"GLOBAL (\S+)", str(e))
        what = f"it needs {needs.group(1)}" if needs else one_line(e)
        raise CheckpointError(f"{path}: refused: loading it would run code ({what}); record checkpoints hold only "
                              f"tensors and plain containers (read with torch.load(weights_only=True))") from None
    except Exception as e:  # a damaged archive fails in many ways inside torch; all mean the same here
        raise CheckpointError(f"{path}: not a readable torch checkpoint ({one_line(e)})") from None
    return obj


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        keys = list(obj)[:5]
        return f"a dict with keys {keys}{' ...' if len(obj) > 5 else ''}"
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    return f"a {type(obj).__name__}"


def record_state_dict(obj: Any, source: str) -> dict[str, Tensor]:
    """The model state dict of a loaded record checkpoint, with `_orig_mod.` stripped."""
    if not (isinstance(obj, dict) and "model" in obj):
        raise CheckpointError(f"{source}: not a record checkpoint: expected the dict of step, code, model and "
                              f"optimizers that the record's train_gpt.py saves, found {_describe(obj)}")
    sd = obj["model"]
    if not isinstance(sd, dict) or not sd or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in sd.items()):
        raise CheckpointError(f"{source}: not a record checkpoint: its 'model' is {_describe(sd)}, not a state dict of tensors")
    return {k.removeprefix(PREFIX): v for k, v in sd.items()}


def _names(names: list[str]) -> str:
    # repr, not the raw name: a damaged file's key may hold a newline or other control characters
    return ", ".join(repr(n)[1:-1] for n in names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")


def check_record_state_dict(sd: dict[str, Tensor], model: GPT, source: str, world_size: int | None) -> None:
    """Every name, shape and dtype kind as the record's model of `model.config` has them."""
    cfg = model.config
    expected = _table(model, 1)
    missing = sorted(set(expected) - set(sd))
    extra = sorted(set(sd) - set(expected))
    arch = f"{cfg.n_layers} layers, d_model {cfg.d_model}, vocab {cfg.padded_vocab}"
    if missing or extra:
        raise CheckpointError(f"{source}: not the record's architecture ({arch}): "
                              + "; ".join(s for s in (missing and f"missing {_names(missing)}",
                                                      extra and f"unexpected {_names(extra)}") if s))
    for name, (shape, _) in expected.items():
        t = sd[name]
        if not t.is_floating_point():
            raise CheckpointError(f"{source}: tensor {name} has dtype {t.dtype}, not floating point")
        if name == "scalars":
            sizes = [world_size] if world_size else list(RECORD_WORLD_SIZES)
            allowed = sorted({record_scalars_len(cfg.n_layers, cfg.smear, w) for w in sizes})
            if t.ndim != 1 or t.numel() not in allowed:
                ranks = f"{world_size} ranks" if world_size else f"world sizes {', '.join(map(str, sizes))}"
                raise CheckpointError(f"{source}: scalars has shape {tuple(t.shape)}; the record's "
                                      f"{'smear' if cfg.smear else 'baseline'} model on {ranks} has "
                                      f"{' or '.join(f'({n},)' for n in allowed)}")
        elif tuple(t.shape) != shape:
            raise CheckpointError(f"{source}: not the record's architecture ({arch}): tensor {name} has shape "
                                  f"{tuple(t.shape)}, the record's is {shape}")


def replay_record_windows(model: GPT, train: TrainConfig, steps: int) -> None:
    """Grow windows (and so YaRN) through the record's schedule for `steps` training steps, then to
    its final validation windows: the state its end-of-training validation and checkpoint had."""
    first = train.ws_schedule[0]
    if int(model.window_blocks[0]) != first:
        raise ConfigError(f"model starts at a {int(model.window_blocks[0])}-block window, the schedule at {first}")
    cfg = dataclasses.replace(train, steps=max(1, steps))
    for step in range(cfg.steps):
        w = window_blocks(step, cfg)
        if w != int(model.window_blocks[0]):
            model.set_windows(w)
    model.set_windows(train.ws_validate, train.ws_validate_final)


def unfilled_model(config: ModelConfig) -> GPT:
    """A model whose parameters are allocated but not initialised (every one is loaded next; drawing
    the 124M initial weights would take seconds), with YaRN and windows at their starting state."""
    with torch.device("meta"):
        model = GPT(config)
    model = model.to_empty(device="cpu")
    model.yarn.reset()
    model.window_blocks.fill_(config.initial_window)
    return model


def import_state_dict(sd: dict[str, Tensor], config: ModelConfig | None = None, train: TrainConfig | None = None,
                      steps: int | None = None, world_size: int | None = None, source: str = "state dict") -> GPT:
    """Our model holding the record-layout weights `sd` (prefix already stripped), in fp32, in the
    record's end-of-training validation state. The smear is detected from `smear_gate.weight`."""
    smear = "smear_gate.weight" in sd
    config = replace(config or get_preset(RECORD_PRESET).model, arm="smear" if smear else "baseline")
    train = train or get_preset(RECORD_PRESET).train
    if world_size is not None and world_size not in RECORD_WORLD_SIZES:
        raise ConfigError(f"--world-size {world_size}: the record runs on 1, 2, 4 or 8 GPUs")
    model = unfilled_model(config)
    check_record_state_dict(sd, model, source, world_size)
    n = config.n_layers
    ours: dict[str, Tensor] = {}
    for name, t in sd.items():
        t = t.float()
        if name == "scalars":  # our layout: the record's used entries, the smear block (zeros without it), padding ones
            full = model.initial_scalars()
            full[5 * n:6 * n] = 0
            used = scalars_used(n, smear)
            full[:used] = t[:used]
            t = full
        ours[name] = t
    missing, unexpected = model.load_state_dict(ours, strict=False)
    assert not unexpected and set(missing) == {"yarn.angular_freq", "yarn.attn_scale", "window_blocks"}, missing
    replay_record_windows(model, train, steps if steps is not None else train.steps)
    return model.eval()


def import_record(path: str | Path, out: str | Path | None = None, *, world_size: int | None = None,
                  seed: int = UNKNOWN_SEED, config: ModelConfig | None = None, train: TrainConfig | None = None,
                  preset: str = RECORD_PRESET, tokenizer: str | None = "gpt2") -> Path:
    """Import a record checkpoint file into a smearlens run folder; returns the checkpoint (step folder).

    `config`/`train` default to the speedrun-124m preset (tests pass small ones); `tokenizer`
    "gpt2" saves the record's tokenizer beside the run, None saves none."""
    from trainer.train import Run  # the run manifest's format (train.py imports heavier modules)

    path = Path(path)
    obj = read_record_file(path)
    step = obj.get("step") if isinstance(obj, dict) else None
    sd = record_state_dict(obj, str(path))
    if not isinstance(step, int) or step < 1:
        raise CheckpointError(f"{path}: not a record checkpoint: no positive integer 'step' (found {step!r})")
    train = train or get_preset(RECORD_PRESET).train
    model = import_state_dict(sd, config, train, step, world_size, str(path))
    arm = "smear" if model.config.smear else "baseline"
    run_dir = Path(out) if out else Path("checkpoints") / f"record-{arm}-{path.resolve().parent.name}"
    source = dict(path=str(path.resolve()), bytes=path.stat().st_size, layout=f"record-{arm}",
                  scalars=int(sd["scalars"].numel()), world_size=world_size,
                  code_sha256=hashlib.sha256(obj["code"].encode()).hexdigest() if isinstance(obj.get("code"), str) else None)
    check_destination(run_dir, source)

    train = replace(train, steps=step, seed=seed)
    tok = None
    if tokenizer == "gpt2":
        from trainer.tokenizer import gpt2_tokenizer

        tok = gpt2_tokenizer()
        if (tok.vocab_size, tok.bos_id) != (model.config.vocab_size, model.config.bos_id):
            raise ConfigError(f"GPT-2 tokenizer (vocab {tok.vocab_size}) does not fit a model of vocab {model.config.vocab_size}")
    tok_meta = dict(kind=tok.kind, vocab_size=tok.vocab_size, bos_id=tok.bos_id) if tok else {}
    run = Run(name=run_dir.name, preset=preset, arm=arm, seed=seed, data="", model=model.config, train=train,
              tokenizer=tok_meta)
    version = ckpt.code_version()
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / ckpt.RUN_FILE, json.dumps(dict(run.manifest(), data=None, source=source,
                                                               code_version=version), indent=1))
    if tok:
        tok.save(run_dir)
    meta = dict(run=run.name, preset=preset, arm=arm, seed=seed, data=None,
                tokens=step * train.batch_size * train.seq_len, train_loss=None, val_loss=None,
                model_config=to_dict(model.config), train_config=to_dict(train), tokenizer=tok_meta,
                windows=[int(w) for w in model.window_blocks], code_version=version, source=source)
    return ckpt.save_checkpoint(run_dir, step, model, meta, None)


def check_destination(run_dir: Path, source: dict) -> None:
    """A run folder may be re-imported from the same file, never overwritten by another."""
    manifest = run_dir / ckpt.RUN_FILE
    if manifest.exists():
        old = ckpt.read_json(manifest, "run manifest").get("source")
        old = old if isinstance(old, dict) else {}
        if (old.get("path"), old.get("bytes")) != (source["path"], source["bytes"]):
            raise ConfigError(f"{run_dir}: already holds a run from {old.get('path') or 'training'}; choose another --out")


# ---- evaluation like the record ------------------------------------------------------------------

def receptive_field(model: GPT) -> int:
    """How many tokens back a position's logits can depend on: each attention layer reaches back its
    window, the smear one token more (it mixes in the previous embedding even across a BOS)."""
    windows = model.layer_windows()
    return sum(windows[i] for i in model.config.attn_layers()) + int(model.config.smear)


def segment_spans(T: int, length: int, context: int) -> list[tuple[int, int]]:
    """Cover positions 0..T−1 with windows of `length` tokens: (start, first kept offset) each.

    Every window after the first starts `context` or more tokens before the first position it keeps,
    so each kept position sees all it would see in the whole row: the losses are the row's. All
    windows have the same length (one compiled shape on CUDA)."""
    if T <= length:
        return [(0, 0)]
    if length <= context:
        raise ConfigError(f"segment of {length} tokens must be longer than the model's reach of {context} tokens")
    spans, covered = [(0, 0)], length
    while covered < T:
        start = min(covered - context, T - length)
        spans.append((start, covered - start))
        covered = start + length
    return spans


def default_segment(model: GPT, row_tokens: int) -> int | None:
    """Tokens per forward pass: the whole row when its logits (held about three times: logits,
    softcap, loss) fit the budget, else windows as long as the budget allows."""
    device = next(model.parameters()).device
    if device.type == "cuda":
        budget = torch.cuda.mem_get_info(device)[0] // 2
    else:
        budget = 1 << 30
    length = budget // (3 * 4 * model.config.padded_vocab)
    if length >= row_tokens:
        return None
    return max(length, 2 * receptive_field(model) + 1)


@torch.no_grad()
def row_loss_sum(model: GPT, inputs: Tensor, targets: Tensor, segment: int | None, autocast) -> float:
    """Summed next-token loss over one row, the row's logits computed window by window."""
    T = inputs.numel()
    length = T if segment is None else min(segment, T)
    impl = "auto" if inputs.is_cuda else ("chunked" if length > 2048 else "sdpa")
    total = 0.0
    for start, keep in segment_spans(T, length, receptive_field(model)):
        with autocast:
            logits = model(inputs[start:start + length][None], attn_impl=impl)
        total += float(F.cross_entropy(logits[0, keep:].float(), targets[start + keep:start + length],
                                       reduction="sum").double())
        del logits
    return total


@torch.no_grad()
def record_val_loss(model: GPT, tokens: np.ndarray | Tensor, n_tokens: int = RECORD_VAL_TOKENS,
                    row_tokens: int = RECORD_ROW_TOKENS, *, segment_tokens: int | None = None,
                    autocast: bool | None = None) -> float:
    """Validation loss as the record computes it: rows of `row_tokens` consecutive tokens from the
    start of the stream (targets shifted by one), mean loss per row, mean over the n_tokens/row_tokens
    rows. Documents inside a row come from its BOS tokens (the model's masking); tokens before a row's
    first BOS are the tail of a document, seen without its start, as in the record.

    `segment_tokens` bounds the logits held at once (default: by memory); `autocast` (default: on
    CUDA) runs in bf16, as the record does. Rows are split over torch.distributed ranks when
    initialised."""
    if row_tokens < 1 or n_tokens < row_tokens or n_tokens % row_tokens:
        raise ConfigError(f"--tokens {n_tokens} must be a positive multiple of the {row_tokens}-token row")
    stream = tokens.flatten() if isinstance(tokens, Tensor) else np.asarray(tokens).reshape(-1)
    if len(stream) < n_tokens + 1:
        raise DataError(f"validation data has {len(stream):,} tokens; evaluating {n_tokens:,} needs {n_tokens + 1:,}")
    device = next(model.parameters()).device
    use_bf16 = device.type == "cuda" if autocast is None else autocast
    ctx = torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()
    segment = segment_tokens if segment_tokens is not None else default_segment(model, row_tokens)
    rank, world = (torch.distributed.get_rank(), torch.distributed.get_world_size()) \
        if torch.distributed.is_available() and torch.distributed.is_initialized() else (0, 1)
    was_training = model.training
    model.eval()
    n_rows = n_tokens // row_tokens
    losses = torch.zeros(n_rows, dtype=torch.float64, device=device)
    for r in range(rank, n_rows, world):
        row = stream[r * row_tokens:(r + 1) * row_tokens + 1]  # inputs and targets: one token more
        row = (row.long() if isinstance(row, Tensor) else torch.from_numpy(row.astype(np.int64))).to(device)
        losses[r] = row_loss_sum(model, row[:-1], row[1:], segment, ctx) / row_tokens
    if world > 1:
        torch.distributed.all_reduce(losses)
    model.train(was_training)
    return float(losses.mean())


def validation_stream(data: str | Path, vocab_size: int) -> np.ndarray:
    """The validation split of a data folder (ours: val_*.bin; FineWeb's: fineweb_val_*.bin) or glob."""
    from trainer.data import load_split

    where = Path(data)
    if where.is_dir() and not any(where.glob("val_*.bin")) and any(where.glob("*_val_*.bin")):
        data = str(where / "*_val_*.bin")
    return load_split(data, "val", vocab_size=vocab_size)


def evaluate_checkpoint(path: str | Path, data: str | None = None, n_tokens: int = RECORD_VAL_TOKENS,
                        row_tokens: int = RECORD_ROW_TOKENS, device: str | None = None,
                        precision: str = "auto", segment_tokens: int | None = None) -> dict:
    """Load a smearlens checkpoint and compute `record_val_loss` on its (or `data`'s) validation split."""
    if precision not in ("auto", "bf16", "fp32"):
        raise ConfigError(f"--precision {precision!r}: choose auto, bf16 or fp32")
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model, meta = ckpt.load_model(path, dev)
    where = data or meta.get("data")
    if not where:
        raise ConfigError(f"{meta['path']}: its metadata names no data folder; pass --data (e.g. the "
                          f"FineWeb folder or 'data/fineweb10B/fineweb_val_*.bin')")
    tokens = validation_stream(where, model.config.vocab_size)
    bf16 = dev.type == "cuda" if precision == "auto" else precision == "bf16"
    t0 = time.perf_counter()
    loss = record_val_loss(model, tokens, n_tokens, row_tokens, segment_tokens=segment_tokens, autocast=bf16)
    return dict(checkpoint=meta["path"], arm=meta.get("arm"), step=meta.get("step"), val_loss=loss,
                tokens=n_tokens, row_tokens=row_tokens, rows=n_tokens // row_tokens,
                windows=[int(w) for w in model.window_blocks], device=str(dev),
                precision="bf16" if bf16 else "fp32",
                seconds=round(time.perf_counter() - t0, 3))


__all__ = ["import_record", "import_state_dict", "read_record_file", "record_state_dict", "export_record_state_dict",
           "record_parameter_table", "replay_record_windows", "record_val_loss", "evaluate_checkpoint",
           "receptive_field", "segment_spans", "RECORD_VAL_TOKENS", "RECORD_ROW_TOKENS"]
