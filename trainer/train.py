"""The training loop: one arm (baseline, smear, or another of trainer/arms.py) of one seed, on CPU or CUDA, one or many ranks.

Launch with `smearlens train` (one process) or `torchrun --nproc_per_node N -m commands.cli train`
(gloo on CPUs, NCCL on GPUs). Ranks each take an equal slice of every batch and average gradients,
so N ranks make the same update as one process on the whole batch.
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors
from tqdm.auto import tqdm

from trainer import checkpoint as ckpt
from trainer.arms import arm_spec
from trainer.config import ModelConfig, Preset, TrainConfig, from_dict, replace, to_dict
from trainer.data import BatchLoader, load_split, validation_batches
from trainer.errors import CheckpointError, ConfigError, DataError, DiskFullError, SmearlensError, one_line, warn
from trainer.io import atomic_path, atomic_write_text
from trainer.model import GPT
from trainer.perf import cpu_name, keep_freed_memory
from trainer.repeats import with_repeats
from trainer.optim import (adam_step, apply_schedules, build_optimizers, lr_multiplier, native_bf16_matmul,
                           window_blocks)
from trainer.tokenizer import Tokenizer, gpt2_tokenizer

LOG_FILE = "loss.csv"


class NonFiniteLoss(SmearlensError):
    """A NaN or infinite loss or gradient, with on_nonfinite="stop"."""


@dataclass
class Run:
    """Everything that identifies a run; `run.json` in the run folder records it."""

    name: str
    preset: str
    arm: str
    seed: int
    data: str
    model: ModelConfig
    train: TrainConfig
    tokenizer: dict = field(default_factory=dict)

    def manifest(self) -> dict:
        return dict(name=self.name, preset=self.preset, arm=self.arm, seed=self.seed, data=self.data,
                    model_config=to_dict(self.model), train_config=to_dict(self.train), tokenizer=self.tokenizer)


def checkpoint_steps(cfg: TrainConfig) -> list[int]:
    """Log-spaced steps (1 … steps) plus the last."""
    if cfg.n_checkpoints <= 1:
        return [cfg.steps]
    steps = np.unique(np.round(np.logspace(0, math.log10(cfg.steps), cfg.n_checkpoints)).astype(int))
    return sorted(set(int(s) for s in steps if 1 <= s <= cfg.steps) | {cfg.steps})


def dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def init_distributed(device: torch.device) -> tuple[int, int]:
    """Join the torchrun group if launched by torchrun; one CPU thread share per local rank."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        local = int(os.environ.get("LOCAL_WORLD_SIZE", str(world)))
        if device.type == "cpu":
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return dist_info()


def all_reduce_mean_(tensors: list[torch.Tensor]) -> None:
    """Average `tensors` across ranks in one collective (gloo has no AVG: sum, then divide)."""
    rank, world = dist_info()
    if world == 1 or not tensors:
        return
    flat = _flatten_dense_tensors(tensors)
    dist.all_reduce(flat)
    flat /= world
    for t, synced in zip(tensors, _unflatten_dense_tensors(flat, tensors)):
        t.copy_(synced)


def autocast_for(cfg: TrainConfig, device: torch.device):
    use_bf16 = cfg.autocast == "bf16" or (cfg.autocast == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use_bf16 else nullcontext()


@torch.no_grad()
def evaluate(model: GPT, tokens: np.ndarray, cfg: TrainConfig, device: torch.device) -> float:
    """Mean next-token loss over the first `val_tokens` validation targets, split across ranks."""
    rank, world = dist_info()
    model.eval()
    total = torch.zeros(2, dtype=torch.float64, device=device)
    batches = validation_batches(tokens, model.config.bos_id, cfg.val_batch_size, cfg.val_seq_len, cfg.val_tokens,
                                 rank=rank, world_size=world, max_doc_len=cfg.max_doc_len)
    with autocast_for(cfg, device):
        for inputs, targets in batches:
            loss = model(inputs.to(device), targets.to(device), return_type="loss")
            total += torch.stack([loss.double() * targets.numel(), torch.tensor(targets.numel(), device=device)])
    if world > 1:
        dist.all_reduce(total)
    model.train()
    return float(total[0] / total[1]) if total[1] > 0 else float("nan")


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def prepare_run(run_dir: Path, run: Run, resume: bool, device: torch.device) -> None:
    """Create the run folder, or check that an existing one holds this very run."""
    manifest = run_dir / ckpt.RUN_FILE
    if manifest.exists():
        old = ckpt.read_json(manifest, "run manifest")
        for key in ("arm", "seed", "model_config", "train_config", "preset"):
            new, was = run.manifest()[key], old.get(key)
            if key in ("model_config", "train_config"):
                new = json.loads(json.dumps(new))  # tuples as lists, as they were saved
                cls = ModelConfig if key == "model_config" else TrainConfig
                try:  # a manifest from before a field was added (or `smear: bool` became `arm`) reads as it is now
                    was = json.loads(json.dumps(to_dict(from_dict(cls, was))))
                except (ConfigError, TypeError, AttributeError):
                    pass
            if was != new:
                raise ConfigError(f"{run_dir}: this folder holds a run with another {key.replace('_', ' ')} "
                                  f"({old.get(key)!r} ≠ {new!r}); choose another --run name")
        if not resume and ckpt.complete_checkpoints(run_dir):
            raise ConfigError(f"{run_dir}: already has checkpoints; pass --resume to continue it")
        if not ckpt.complete_checkpoints(run_dir) and old.get("machine") != machine_info(device):
            # nothing to resume: the run starts afresh here, so it records this machine, not the one it began on
            atomic_write_text(manifest, json.dumps(dict(old, machine=machine_info(device)), indent=1))
    else:
        atomic_write_text(manifest, json.dumps(dict(run.manifest(), code_version=ckpt.code_version(),
                                                    machine=machine_info(device)), indent=1))
        # the tokenizer travels with the run, so analysis can decode tokens without the data folder
        data_tokenizer(run.data).save(run_dir)


def machine_info(device: torch.device) -> dict:
    """What a run is trained on, for its run.json: kernels differ between machines, so a run's last bits can too
    (Muon's Newton–Schulz is bf16 GEMMs where they are native, fp32 ones rounded to bf16 elsewhere)."""
    info = dict(torch=torch.__version__, device=device.type, cpu=cpu_name(),
                cpu_capability=torch.backends.cpu.get_cpu_capability(),
                bf16_gemm="native" if native_bf16_matmul(device) else "fp32, rounded to bf16")
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def restore(run_dir: Path, model: GPT, adam, muon, loader: BatchLoader, say: bool = True) -> int:
    """Load the newest checkpoint that verifies into the model, optimisers, loader and RNG; returns its step.

    A damaged checkpoint (a hash mismatch, a resume state that does not fit) is passed over for the one
    before it, with a one-line warning for each; none verifying is a CheckpointError naming the newest."""
    refused: list[str] = []
    for last in reversed(ckpt.complete_checkpoints(run_dir)):
        try:
            meta = ckpt.read_meta(last)
            ckpt.load_weights(model, last, meta)
            state = ckpt.load_train_state(last, meta)
            try:  # a resume state of the right keys can still not fit these optimisers or this loader
                adam.load_state_dict(state["adam"])
                muon.load_state_dict(state["muon"])
                loader.load_state_dict(state["loader"])
                torch.set_rng_state(state["rng"]["torch"])
                step = int(state["step"])
            except (DataError, KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
                raise CheckpointError(f"{last / ckpt.STATE_FILE}: resume state does not fit this run "
                                      f"({one_line(e)})") from None
        except CheckpointError as e:
            if say:
                warn(f"{e}; trying the checkpoint before it")
            refused.append(str(e))
            continue
        if refused and say:
            warn(f"resuming from {last}, the newest checkpoint that verifies")
        return step
    raise CheckpointError(f"{run_dir}: no checkpoint verifies, none to resume from; the newest: {refused[0]}")


def train(
    run_dir: str | Path,
    run: Run,
    *,
    resume: bool = False,
    stop_at: int | None = None,
    device: str | None = None,
    callbacks: tuple[Callable[..., None], ...] = (),
    progress: bool = True,
) -> dict:
    """Train one arm; write checkpoints and the loss log to `run_dir`. Returns a summary."""
    run_dir = Path(run_dir)
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    keep_freed_memory()
    rank, world = init_distributed(dev)
    cfg, mcfg = run.train, run.model
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is not divisible by the {world} ranks")
    if rank == 0:
        prepare_run(run_dir, run, resume, dev)
    if world > 1:
        dist.barrier()

    tokenizer_meta = run.tokenizer
    train_tokens = load_split(run.data, "train", vocab_size=mcfg.vocab_size)
    val_tokens = load_split(run.data, "val", vocab_size=mcfg.vocab_size)
    torch.manual_seed(cfg.seed)
    model = GPT(mcfg, seed=cfg.seed).to(dev)
    adam, muon = build_optimizers(model, cfg)
    loader = BatchLoader(train_tokens, mcfg.bos_id, cfg.batch_size, cfg.seq_len, cfg.seed, rank=rank,
                         world_size=world, max_doc_len=cfg.max_doc_len)
    loader = with_repeats(loader, cfg, mcfg.vocab_size, mcfg.bos_id)  # the copy_share option (trainer/repeats.py)
    log: list[dict] = []
    start = 0
    if resume and ckpt.complete_checkpoints(run_dir):
        start = restore(run_dir, model, adam, muon, loader, say=rank == 0)
        if (run_dir / LOG_FILE).exists():
            log = [r for r in ckpt.read_run_table(run_dir / LOG_FILE).to_dict("records") if r["step"] <= start]
    if start >= cfg.steps:
        return dict(run=str(run_dir), step=start, resumed_finished=True)

    ckpt_steps = set(checkpoint_steps(cfg))
    autocast = autocast_for(cfg, dev)
    step_model = torch.compile(model) if cfg.compile else model
    tokens_per_step = cfg.batch_size * cfg.seq_len
    elapsed = 0.0

    def save(step: int, train_loss: float, val_loss: float | None) -> None:
        if not all(bool(torch.isfinite(p).all()) for p in model.parameters()):
            raise NonFiniteLoss(f"{run_dir}: non-finite weights after step {step}; not saved, "
                                f"the newest checkpoint is the last good one")
        if rank == 0:
            meta = dict(run=run.name, preset=run.preset, arm=run.arm, seed=run.seed, data=run.data,
                        tokens=step * tokens_per_step, train_loss=train_loss, val_loss=val_loss,
                        model_config=to_dict(mcfg), train_config=to_dict(cfg), tokenizer=tokenizer_meta,
                        windows=[int(w) for w in model.window_blocks], code_version=ckpt.code_version())
            state = dict(step=step, adam=adam.state_dict(), muon=muon.state_dict(), loader=loader.state_dict(),
                         rng=rng_state())
            with stop_on_full_disk():
                write_log(run_dir, log)  # before the metadata, which marks the checkpoint complete
                ckpt.save_checkpoint(run_dir, step, model, meta, state)
        if world > 1:
            dist.barrier()

    @contextmanager
    def stop_on_full_disk():
        """A full disk stops training; the error says which complete checkpoint a --resume starts from."""
        try:
            yield
        except DiskFullError as e:
            newest = ckpt.complete_checkpoints(run_dir)
            raise DiskFullError(f"{e}; training stopped, the newest complete checkpoint is "
                                f"{newest[-1] if newest else 'none'}; free space and rerun with --resume") from None

    bar = tqdm(range(start, cfg.steps), initial=start, total=cfg.steps, disable=not progress or rank != 0,
               desc=f"{run.name}", unit="step", dynamic_ncols=True)
    train_loss = float(log[-1]["train_loss"]) if log else float("nan")
    # Instruments that read gradients (analysis/measures/lambda_grad.py) are callbacks with `on_train_start` (attach
    # hooks before the first forward) and `on_backward` (after backward and the all-reduce, before the step).
    hooks = lambda name: [getattr(c, name) for c in callbacks if hasattr(c, name)]  # noqa: E731
    for callback in hooks("on_train_start"):
        callback(model=model, step=start, run=run, run_dir=run_dir)
    for step in bar:
        t0 = time.perf_counter()
        model.set_windows(window_blocks(step, cfg))
        apply_schedules(step, cfg, adam, muon)
        inputs, targets = loader.next_batch()
        with autocast:
            loss = step_model(inputs.to(dev), targets.to(dev), return_type="loss")
        # Gradients of the *sum* over the step's tokens, as the record's per-rank sum (times its world
        # size, so any number of ranks gives the same step): the scale keeps rare tokens' embedding
        # gradients and the scalars' well above Adam's eps. Muon is scale-free.
        (loss * tokens_per_step).backward()
        loss = loss.detach().view(1)
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        all_reduce_mean_(grads + [loss])
        train_loss = loss.item()
        finite = math.isfinite(train_loss) and bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        for callback in hooks("on_backward"):
            callback(model=model, step=step, run=run, run_dir=run_dir, inputs=inputs)
        if finite:
            adam_step(adam, model, cfg)
            muon.step()
        elif cfg.on_nonfinite == "stop":
            raise NonFiniteLoss(f"{run_dir}: non-finite loss or gradient at step {step + 1} (loss {train_loss}); "
                                f"the newest checkpoint is the last good one; --set on_nonfinite=skip skips such steps")
        else:
            bar.write(f"step {step + 1}: non-finite loss or gradient (loss {train_loss}); step skipped")
        model.zero_grad(set_to_none=True)
        elapsed += time.perf_counter() - t0
        done = step + 1
        model.set_step(done)  # schedule arms: validation, the checkpoint and the next forward see `done`
        val_loss = None
        final = done == cfg.steps
        if final:  # validate and save with the record's longer validation windows
            model.set_windows(cfg.ws_validate, cfg.ws_validate_final)
        if final or (cfg.val_every and done % cfg.val_every == 0):
            val_loss = evaluate(model, val_tokens, cfg, dev)
        log.append(dict(step=done, tokens=done * tokens_per_step, train_loss=train_loss, val_loss=val_loss, skipped=not finite,
                        lr_mult=lr_multiplier(step, cfg),  # not lr / initial_lr: 0 with --set embed_lr_mul=0
                        step_seconds=elapsed / max(1, done - start)))
        bar.set_postfix(loss=f"{train_loss:.3f}", **({"val": f"{val_loss:.3f}"} if val_loss is not None else {}))
        checkpoint = done in ckpt_steps or done == stop_at or bool(cfg.checkpoint_every and done % cfg.checkpoint_every == 0)
        # callbacks (the recorders write tables into the run folder) before the checkpoint: every row of
        # the steps a complete checkpoint covers is on disk, so a resume from it loses none
        with stop_on_full_disk():
            for callback in callbacks:
                callback(model=model, step=done, run=run, run_dir=run_dir, inputs=inputs, checkpoint=checkpoint)
        if checkpoint:
            save(done, train_loss, val_loss)
        if done == stop_at:
            break
    bar.close()
    final_val = next((r["val_loss"] for r in reversed(log) if r.get("val_loss") is not None), None)
    return dict(run=str(run_dir), step=done, train_loss=train_loss, val_loss=final_val,
                seconds=elapsed, tokens_per_second=(done - start) * tokens_per_step / max(elapsed, 1e-9))


def write_log(run_dir: Path, log: list[dict]) -> None:
    with atomic_path(Path(run_dir) / LOG_FILE) as tmp:
        pd.DataFrame(log).to_csv(tmp, index=False)


def data_tokenizer(data: str | Path) -> Tokenizer:
    """The tokenizer saved beside the shards; folders of bare FineWeb shards are GPT-2."""
    folder = Path(data) if Path(data).is_dir() else Path(data).parent
    if not folder.is_dir():
        raise DataError(f"--data {data}: no such data folder (make one with `smearlens data`)")
    if not (folder / "tokenizer.json").exists() and any(folder.glob("*.bin")):
        return gpt2_tokenizer()
    return Tokenizer.load(folder)


def make_run(preset_name: str, preset: Preset, arm: str, seed: int, data_dir: str | Path, name: str | None = None,
             train_overrides: dict | None = None, model_overrides: dict | None = None) -> Run:
    """The run for one arm: the preset with the data's vocabulary, the arm and the seed."""
    try:
        spec = arm_spec(arm)
    except ConfigError as e:
        raise ConfigError(f"--arm: {e}") from None
    if not isinstance(seed, int) or seed < 0:  # numpy's generators take no negative seed
        raise ConfigError(f"--seed {seed}: a training seed must be an integer ≥ 0")
    tok = data_tokenizer(data_dir)
    model = replace(preset.model, arm=arm, vocab_size=tok.vocab_size, bos_id=tok.bos_id, **(model_overrides or {}))
    train_cfg = replace(preset.train, seed=seed, **(train_overrides or {}))
    if train_cfg.smear_lr_mult != 1 and not spec.learned_lambda:
        raise ConfigError(f"--set smear_lr_mult={train_cfg.smear_lr_mult}: arm {arm!r} has no learned λ")
    if model.initial_window > train_cfg.ws_schedule[0]:  # windows only grow (YaRN stretches as they do)
        raise ConfigError(f"initial_window = {model.initial_window} is larger than the first window of "
                          f"ws_schedule {list(train_cfg.ws_schedule)}; windows only grow")
    name = name or f"{preset_name}-s{seed}-{arm}"
    return Run(name=name, preset=preset_name, arm=arm, seed=seed, data=str(data_dir), model=model, train=train_cfg,
               tokenizer=dict(kind=tok.kind, vocab_size=tok.vocab_size, bos_id=tok.bos_id))


MANIFEST_KEYS = dict(name=str, preset=str, arm=str, seed=int, data=(str, type(None)), model_config=dict,
                     train_config=dict)


def load_run(run_dir: str | Path) -> Run:
    path = Path(run_dir) / ckpt.RUN_FILE
    m = ckpt.read_json(path, "run manifest")
    ckpt.require(path, m, MANIFEST_KEYS, "manifest")
    tokenizer = m.get("tokenizer", {})
    if not isinstance(tokenizer, dict):
        raise ConfigError(f"{path}: manifest's 'tokenizer' is a {type(tokenizer).__name__}, not a dict")
    try:
        model, train_cfg = from_dict(ModelConfig, m["model_config"]), from_dict(TrainConfig, m["train_config"])
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return Run(name=m["name"], preset=m["preset"], arm=m["arm"], seed=m["seed"], data=m["data"], model=model,
               train=train_cfg, tokenizer=tokenizer)


__all__ = ["Run", "train", "make_run", "load_run", "evaluate", "checkpoint_steps", "NonFiniteLoss"]
