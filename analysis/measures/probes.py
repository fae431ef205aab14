"""Probes: run a model on token batches through its hooks and reduce what they see with `metrics`.

Every probe returns per-head results as (n_layers, n_heads) tensors, with NaN rows for the layers
that have no attention (absent, not zero). Probes run under no_grad in eval mode, restore the
model's mode, and leave no hook attached. Patterns are reduced in the hook that sees them, so one
layer's pattern is held at a time; the streaming probe never builds one.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from functools import partial
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from analysis.measures import metrics as M
from trainer.errors import AnalysisError
from trainer.model import GPT
from trainer.repeats import HELD_OUT_LENGTHS

PATTERN_METRICS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "prev_token": M.previous_token_score,
    "entropy": M.attention_entropy,
    "distance": M.attention_distance,
    "bos": M.bos_attention,
}
REPEAT_METRICS: dict[str, Callable[[Tensor, int], Tensor]] = {
    "induction": M.induction_score,
    "duplicate_token": M.duplicate_token_score,
}
ABLATIONS = {"ablation_zero": "zero", "ablation_mean": "mean"}
HEAD_METRICS = (*PATTERN_METRICS, *REPEAT_METRICS, *ABLATIONS)
INDUCTION_PERIOD = 50  # length of the repeated random sequence (capped by the model's shortest window)
# The repeat lengths of the induction measures over training (`repeat_probe`, the recorder): the lengths the
# cpu-induction data holds out of training, and one longer than any of its spans (5–30).
INDUCTION_LENGTHS = (*HELD_OUT_LENGTHS, 40)


def check_metrics(names: Iterable[str], known: Iterable[str] = HEAD_METRICS, kind: str = "") -> tuple[str, ...]:
    """`names` without repeats; an unknown one is an AnalysisError that lists the `known` ones."""
    names, known = tuple(dict.fromkeys(names)), tuple(known)
    unknown = [n for n in names if n not in known]
    if unknown:
        raise AnalysisError(f"unknown {kind + ' ' if kind else ''}metric {unknown[0]!r}; choose from {', '.join(known)}")
    return names


def absent(model: GPT) -> Tensor:
    """(n_layers, n_heads) NaN: the value of every head of a layer without attention."""
    return torch.full((model.config.n_layers, model.config.n_heads), math.nan)


class _StopForward(Exception):
    pass


def _stop(x: Tensor, hook) -> None:
    raise _StopForward


@contextlib.contextmanager
def evaluating(model: GPT) -> Iterator[GPT]:
    """Eval mode and no_grad for the duration; the model's training flag is restored afterwards."""
    was_training = model.training
    try:
        with torch.no_grad():
            yield model.eval()
    finally:
        model.train(was_training)


def run_attention(model: GPT, tokens: Tensor, fwd_hooks: list, attn_impl: str = "auto") -> None:
    """Run the forward with `fwd_hooks` only as far as the last attention layer: the rest (the last
    MLP, the (B, T, vocab) logits) is not needed by attention probes."""
    if not model.config.attn_layers():
        raise AnalysisError("the model has no attention layers to probe")
    last = model.config.attn_layers()[-1]
    try:
        model.run_with_hooks(tokens, fwd_hooks=[*fwd_hooks, (f"blocks.{last}.hook_attn_out", _stop)], attn_impl=attn_impl)
    except _StopForward:
        pass


def long_attn_impl(tokens: Tensor) -> str:
    """An attention path whose memory is linear in T: compiled flex_attention on CUDA, query chunks on CPU."""
    return "flex" if tokens.is_cuda else "chunked"


# ---- attention on data ----------------------------------------------------------------------------


def _reduce_patterns(model: GPT, tokens: Tensor, metrics: Sequence[str], score: Callable[[str, Tensor], Tensor],
                     fwd_hooks: Sequence = (), logits: bool = False) -> dict[str, Tensor]:
    """score(metric, pattern) for each attention layer's pattern on `tokens`, inside its hook (one
    layer's (B, H, T, T) in memory at a time): metric → (n_layers, n_heads), NaN rows where no attention.
    `fwd_hooks` run too (e.g. `ablation_hooks`); with `logits` the forward runs to the end and its
    logits come back under "logits"."""
    out = {m: absent(model) for m in metrics}

    def reduce(pattern: Tensor, hook, layer: int) -> None:
        for m in metrics:
            out[m][layer] = score(m, pattern).cpu()

    hooks = [*fwd_hooks, *((f"blocks.{l}.attn.hook_pattern", partial(reduce, layer=l)) for l in model.config.attn_layers())]
    with evaluating(model):
        if logits:
            out["logits"] = model.run_with_hooks(tokens, fwd_hooks=hooks)
        else:
            run_attention(model, tokens, hooks)
    return out


def pattern_metrics(model: GPT, tokens: Tensor, metrics: Sequence[str] = tuple(PATTERN_METRICS)) -> dict[str, Tensor]:
    """Per-head metrics of the attention patterns on `tokens` (B, T): name → (n_layers, n_heads)."""
    metrics = check_metrics(metrics, PATTERN_METRICS, "pattern")
    tokens = _as_batch(model, tokens)
    docs = M.document_ids(tokens, model.config.bos_id)
    return _reduce_patterns(model, tokens, metrics, lambda m, pattern: PATTERN_METRICS[m](pattern, docs))


def data_pattern_metrics(model: GPT, batches: Iterable[Tensor], metrics: Sequence[str] = tuple(PATTERN_METRICS)) -> dict[str, Tensor]:
    """`pattern_metrics` pooled over several batches, weighted by their counted query positions."""
    total, weight = None, 0
    for tokens in batches:
        tokens = _as_batch(model, tokens)
        n = int(M.counted_positions(M.document_ids(tokens, model.config.bos_id)).sum())
        if n == 0:
            continue
        part = pattern_metrics(model, tokens, metrics)
        total = {m: v * n for m, v in part.items()} if total is None else {m: total[m] + part[m] * n for m in total}
        weight += n
    if total is None:
        raise AnalysisError("no data: the batches hold no query position with a previous token in its document")
    return {m: v / weight for m, v in total.items()}


@dataclass
class StreamResult:
    prev_token: Tensor  # (n_layers, n_heads), NaN for layers without attention
    smear_gate: Tensor | None  # (B, T−1) gate values on the batch; None for a model without smear


def streaming_probe(model: GPT, tokens: Tensor, attn_impl: str | None = None, chunk: int | None = None) -> StreamResult:
    """Previous-token score per head without building any pattern, plus the smear gate on the batch.

    The forward runs on a path whose memory is linear in T; at each attention layer the hooks on
    `hook_rot_q` and `hook_rot_k` hand q and k to `metrics.previous_token_score_qk` with that layer's
    window and the model's current attention scale, and drop them."""
    tokens = _as_batch(model, tokens)
    docs = M.document_ids(tokens, model.config.bos_id)
    windows, scale = model.layer_windows(), float(model.yarn.attn_scale)
    prev, q_of, gate = absent(model), {}, []

    def keep_q(q: Tensor, hook, layer: int) -> None:
        q_of[layer] = q

    def score(k: Tensor, hook, layer: int) -> None:
        prev[layer] = M.previous_token_score_qk(q_of.pop(layer), k, docs, windows[layer], scale, chunk).cpu()

    hooks = [(f"blocks.{l}.attn.{name}", partial(fn, layer=l))
             for l in model.config.attn_layers() for name, fn in (("hook_rot_q", keep_q), ("hook_rot_k", score))]
    spec = model.arm_spec
    if spec.coefficient and spec.site != "final":
        hooks.append(("hook_smear_gate", lambda g, hook: gate.append(g[..., 0].float())))
    with evaluating(model):
        run_attention(model, tokens, hooks, attn_impl or long_attn_impl(tokens))
    if spec.coefficient and spec.site == "final":  # Smear-MTP, after the last attention layer: its gate is 1
        gate.append(torch.ones(tokens.shape[0], tokens.shape[1] - 1, device=tokens.device))
    return StreamResult(prev, gate[0] if gate else None)


def previous_token_scores(model: GPT, tokens: Tensor, attn_impl: str | None = None, chunk: int | None = None) -> Tensor:
    """(n_layers, n_heads) previous-token score, streaming (memory linear in T)."""
    return streaming_probe(model, tokens, attn_impl, chunk).prev_token


# ---- repeated random tokens ---------------------------------------------------------------------------


def induction_period(model: GPT, longest: int = INDUCTION_PERIOD) -> int:
    """The repeat length: at most `longest`, and short enough that every attention layer's window
    reaches one period back (else induction is masked out, not absent)."""
    windows = [model.layer_windows()[l] for l in model.config.attn_layers()]
    return max(1, min([longest, *windows]))


def repeated_tokens(vocab_size: int, bos_id: int, period: int, batch: int = 8, seed: int = 0) -> Tensor:
    """(batch, 2·period + 1): BOS, then `period` uniform random non-BOS tokens, then the same again.
    Its own generator: the global RNG (and so a training run) is untouched."""
    gen = torch.Generator().manual_seed(seed)
    r = torch.randint(0, vocab_size - 1, (batch, period), generator=gen)
    r += (r >= bos_id).long()  # skip the BOS id
    return torch.cat([torch.full((batch, 1), bos_id), r, r], dim=1)


def repeat_metrics(model: GPT, metrics: Sequence[str] = tuple(REPEAT_METRICS), period: int | None = None,
                   batch: int = 8, seed: int = 0, tokens: Tensor | None = None,
                   fwd_hooks: Sequence = ()) -> dict[str, Tensor]:
    """Induction and duplicate-token scores on repeated random tokens: name → (n_layers, n_heads).
    `tokens`: BOS + R + R rows to use instead of `repeated_tokens`; `fwd_hooks` run too (e.g. an ablation)."""
    metrics = check_metrics(metrics, REPEAT_METRICS, "repeat")
    if tokens is None:
        period = period or induction_period(model)
        tokens = repeated_tokens(model.config.vocab_size, model.config.bos_id, period, batch, seed)
    else:
        period = (torch.as_tensor(tokens).shape[-1] - 1) // 2
    tokens = _as_batch(model, tokens)
    return _reduce_patterns(model, tokens, metrics, lambda m, pattern: REPEAT_METRICS[m](pattern, period), fwd_hooks)


@dataclass
class RepeatResult:
    """Induction measures on repeated random tokens, one entry per repeat length."""

    lengths: tuple[int, ...]
    induction: Tensor  # (n_lengths, n_layers, n_heads), NaN rows for layers without attention
    duplicate_token: Tensor  # (n_lengths, n_layers, n_heads)
    loss_first: Tensor  # (n_lengths,) mean loss on R[1:] of the first copy (`metrics.repeat_losses`)
    loss_second: Tensor  # (n_lengths,) the same on the second copy: low when the model copies


def repeat_probe(model: GPT, lengths: Sequence[int] = INDUCTION_LENGTHS, batch: int = 8, seed: int = 0,
                 fwd_hooks: Sequence = ()) -> RepeatResult:
    """Per repeat length L: every head's induction and duplicate-token scores (TransformerLens's definition,
    `metrics.induction_score`) and the loss on each copy, on `batch` rows of BOS + R + R (|R| = L, uniform
    random non-BOS tokens), one forward per length. The scores are what the model does at its current
    windows: a head whose window is shorter than L cannot reach the earlier copy and scores ~0."""
    ind, dup, first, second = [], [], [], []
    for L in lengths:
        tokens = _as_batch(model, repeated_tokens(model.config.vocab_size, model.config.bos_id, L, batch, seed))
        out = _reduce_patterns(model, tokens, list(REPEAT_METRICS), lambda m, pattern: REPEAT_METRICS[m](pattern, L),
                               fwd_hooks, logits=True)
        logits = out.pop("logits").float()
        losses = F.cross_entropy(logits[:, :-1].flatten(0, 1), tokens[:, 1:].flatten(), reduction="none")
        loss_first, loss_second = M.repeat_losses(losses.view(batch, -1).cpu(), L)
        ind.append(out["induction"])
        dup.append(out["duplicate_token"])
        first.append(loss_first)
        second.append(loss_second)
    return RepeatResult(tuple(lengths), torch.stack(ind), torch.stack(dup), torch.stack(first), torch.stack(second))


def in_context_losses(model: GPT, inputs: Tensor, targets: Tensor, early: tuple[int, int],
                      late: tuple[int, int]) -> dict[str, float]:
    """Olsson's in-context learning score on (inputs, targets) rows (`metrics.in_context_score`): the loss of
    targets at document positions in `late` minus that of targets in `early` (half-open ranges)."""
    inputs, targets = _as_batch(model, inputs), _as_batch(model, targets)
    with evaluating(model):
        logits = model(inputs).float()
    losses = F.cross_entropy(logits.flatten(0, 1), targets.flatten(), reduction="none").view(targets.shape)
    # the target of input p is token p + 1: its document position is one more than p's, unless it opens a document
    docs = M.document_ids(torch.cat([inputs, targets[:, -1:]], dim=1), model.config.bos_id)
    positions = M.document_positions(docs)[:, 1:]
    return M.in_context_score(losses.cpu(), positions.cpu(), early, late)


# ---- ablation -------------------------------------------------------------------------------------


def _loss(model: GPT, batches: list[tuple[Tensor, Tensor]], fwd_hooks: list) -> float:
    """Mean next-token loss over every target of `batches` (batches may differ in size)."""
    total = 0.0
    for inputs, targets in batches:
        total += float(model.run_with_hooks(inputs, targets, return_type="loss", fwd_hooks=fwd_hooks)) * targets.numel()
    return total / sum(y.numel() for _, y in batches)


def ablation_losses(model: GPT, batches: Sequence[tuple[Tensor, Tensor]], kinds: Sequence[str] = ("zero", "mean")) -> dict[str, Tensor]:
    """Loss increase when one head's output is ablated: kind → (n_layers, n_heads).

    The head's output is its slice of `attn.hook_z`, the gated head output before W_O: "zero" sets
    it to 0 (the head is removed), "mean" to its mean over every position of `batches` (the head
    keeps its average contribution but no longer depends on the input). Batches are (inputs,
    targets); the loss is the mean next-token loss over all their targets."""
    bad = [k for k in kinds if k not in ("zero", "mean")]
    if bad:
        raise AnalysisError(f"unknown ablation {bad[0]!r}; choose zero or mean")
    if not batches:
        raise AnalysisError("ablation needs at least one batch of data")
    batches = [(_as_batch(model, x), _as_batch(model, y)) for x, y in batches]
    layers = model.config.attn_layers()
    out = {k: absent(model) for k in kinds}
    with evaluating(model):
        clean, means = _clean_loss_and_head_means(model, batches)
        for l in layers:
            for h in range(model.config.n_heads):
                for kind in kinds:
                    out[kind][l, h] = _loss(model, batches, ablation_hooks(model, [(l, h)], kind, means)) - clean
    return out


def _clean_loss_and_head_means(model: GPT, batches: list[tuple[Tensor, Tensor]]) -> tuple[float, dict[int, Tensor]]:
    """The unablated loss and, from the same forwards, each attention layer's mean `hook_z` (H, D)
    over every position of `batches`."""
    sums: dict[int, Tensor] = {}

    def accumulate(z: Tensor, hook, layer: int) -> None:
        sums[layer] = sums.get(layer, 0) + z.double().sum(dim=(0, 1))

    layers = model.config.attn_layers()
    clean = _loss(model, batches, [(f"blocks.{l}.attn.hook_z", partial(accumulate, layer=l)) for l in layers])
    count = sum(x.numel() for x, _ in batches)
    return clean, {l: (s / count).to(model.cfg.dtype) for l, s in sums.items()}


def head_means(model: GPT, batches: Sequence[tuple[Tensor, Tensor]]) -> dict[int, Tensor]:
    """layer → (n_heads, d_head) mean gated head output (`attn.hook_z`) over every position of `batches`."""
    with evaluating(model):
        return _clean_loss_and_head_means(model, [(_as_batch(model, x), _as_batch(model, y)) for x, y in batches])[1]


def _ablate(z: Tensor, hook, head: int, value: Tensor | None) -> Tensor:
    z = z.clone()
    z[:, :, head] = 0 if value is None else value
    return z


def ablation_hooks(model: GPT, heads: Sequence[tuple[int, int]], kind: str, means: dict[int, Tensor] | None = None) -> list:
    """Forward hooks that ablate each (layer, head) of `heads`: "zero" sets its `hook_z` slice to 0,
    "mean" to `means[layer][head]` (see `head_means`)."""
    if kind not in ("zero", "mean"):
        raise AnalysisError(f"unknown ablation {kind!r}; choose zero or mean")
    if kind == "mean" and means is None:
        raise AnalysisError("mean ablation needs the heads' mean outputs (head_means)")
    return [(f"blocks.{l}.attn.hook_z", partial(_ablate, head=h, value=None if kind == "zero" else means[l][h]))
            for l, h in heads]


# ---- smear ----------------------------------------------------------------------------------------


def _require_smear(model: GPT) -> None:
    """Every arm whose term is λ · gate · h[i−1] (trainer/arms.py) has smear statistics."""
    if not model.arm_spec.coefficient:
        raise AnalysisError(f"this model has no smear gate (arm {model.config.arm!r}: no term λ · gate · h[i−1])")


def smear_lambda(model: GPT) -> float:
    _require_smear(model)
    return float(model.smear_lambda.detach())


def smear_gates(model: GPT, tokens: Tensor) -> Tensor:
    """(B, T−1) gate σ(w · e[t, :12]) at positions t = 1 … T−1 (from `hook_smear_gate`); the effective
    coefficient there is λ · gate, applied to the embedding of token t−1."""
    _require_smear(model)
    tokens = _as_batch(model, tokens)
    seen = []
    with evaluating(model), model.hooks(fwd_hooks=[("hook_smear_gate", lambda g, hook: seen.append(g))]):
        if model.arm_spec.site == "final":
            model(tokens)  # Smear-MTP mixes after the last layer
        else:
            model.embed_tokens(tokens)  # the gate needs only the embedding
    return seen[0][..., 0].float().cpu()


def smear_vocab(model: GPT) -> tuple[Tensor, Tensor]:
    """(gate, coefficient), each (vocab_size,): the smear for every token id as the current token."""
    _require_smear(model)
    if not model.arm_spec.vocab_gate:
        raise AnalysisError(f"arm {model.config.arm!r}: the gate is not a function of the current token id alone")
    with torch.no_grad():
        gate = M.smear_vocab_gates(model.embed.weight, model.smear_gate.weight, model.config.vocab_size).cpu()
    return gate, M.smear_coefficients(smear_lambda(model), gate)


# ---- helpers --------------------------------------------------------------------------------------


def _as_batch(model: GPT, tokens: Tensor) -> Tensor:
    tokens = torch.as_tensor(tokens)
    if tokens.ndim == 1:
        tokens = tokens[None]
    if tokens.ndim != 2 or tokens.size(1) < 2:
        raise AnalysisError(f"tokens of shape {tuple(tokens.shape)}: expected (batch, T) with T ≥ 2")
    if tokens.dtype not in (torch.int64, torch.int32):
        raise AnalysisError(f"tokens must be integer ids, got {tokens.dtype}")
    lo, hi = int(tokens.min()), int(tokens.max())
    if lo < 0 or hi >= model.config.vocab_size:
        raise AnalysisError(f"token id {hi if hi >= model.config.vocab_size else lo} is outside the model's "
                            f"vocabulary [0, {model.config.vocab_size})")
    return tokens.to(model.cfg.device)


def mean_loss(model: GPT, batches: Sequence[tuple[Tensor, Tensor]]) -> float:
    """Mean next-token loss over every target of (inputs, targets) batches, no hooks."""
    with evaluating(model):
        return _loss(model, [(_as_batch(model, x), _as_batch(model, y)) for x, y in batches], [])


__all__ = ["HEAD_METRICS", "PATTERN_METRICS", "REPEAT_METRICS", "ABLATIONS", "check_metrics", "absent",
           "pattern_metrics", "data_pattern_metrics", "streaming_probe", "StreamResult", "previous_token_scores",
           "induction_period", "repeated_tokens", "repeat_metrics", "INDUCTION_LENGTHS", "RepeatResult", "repeat_probe",
           "in_context_losses", "ablation_losses", "smear_lambda",
           "smear_gates", "smear_vocab", "mean_loss", "run_attention", "evaluating", "head_means", "ablation_hooks"]
