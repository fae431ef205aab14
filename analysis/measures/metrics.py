"""Per-head attention metrics and smear statistics: pure functions, tensors in, tensors out.

Patterns are (B, H, T, T) (or (H, T, T) for one sequence), rows summing to 1 over visible keys.
`docs` (B, T) holds each position's document index (a BOS starts a new document, as in the model).

Row metrics (previous-token score, entropy, distance, attention to BOS) average over the *counted*
query positions: those whose position i−1 is in the same document, i.e. every position but the
first of each document (whose row is trivially all on itself). Averages pool every counted
position of the batch, so a batch scores like one long sequence.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from trainer.errors import AnalysisError
from trainer.attention import chunk_size, window_band

QUANTILES = (0.05, 0.5, 0.95)


def document_ids(tokens: Tensor, bos_id: int) -> Tensor:
    """(B, T) document index of each position, exactly as the model's mask computes it."""
    return (tokens == bos_id).cumsum(dim=-1)


def _batched(pattern: Tensor, docs: Tensor) -> tuple[Tensor, Tensor]:
    if pattern.ndim == 3:
        pattern = pattern[None]
    if docs.ndim == 1:
        docs = docs[None]
    B, _, T, T2 = pattern.shape
    if T != T2 or docs.shape != (B, T):
        raise AnalysisError(f"pattern of shape {tuple(pattern.shape)} does not fit documents of shape {tuple(docs.shape)}")
    return pattern, docs


def counted_positions(docs: Tensor) -> Tensor:
    """(B, T) bool: query i is counted when i−1 is in the same document (never position 0)."""
    counted = torch.zeros_like(docs, dtype=torch.bool)
    counted[:, 1:] = docs[:, 1:] == docs[:, :-1]
    return counted


def counted_mean(per_row: Tensor, counted: Tensor) -> Tensor:
    """(B, H, T) per-query values → (H,) mean over the counted query positions."""
    n = counted.sum()
    if n == 0:
        raise AnalysisError("no query position has a previous token in its own document (every row is one token long)")
    return (per_row * counted[:, None]).sum(dim=(0, 2)) / n


def previous_token_score(pattern: Tensor, docs: Tensor) -> Tensor:
    """(H,) mean of pattern[i, i−1] over the counted positions: 1 for a perfect previous-token head."""
    pattern, docs = _batched(pattern, docs)
    prev = torch.zeros(pattern.shape[:3], dtype=pattern.dtype, device=pattern.device)
    prev[..., 1:] = pattern.diagonal(offset=-1, dim1=-2, dim2=-1)
    return counted_mean(prev, counted_positions(docs))


def attention_entropy(pattern: Tensor, docs: Tensor) -> Tensor:
    """(H,) mean row entropy in nats (0 · log 0 = 0): log(n) for uniform attention over n keys."""
    pattern, docs = _batched(pattern, docs)
    return counted_mean(torch.special.entr(pattern).sum(-1), counted_positions(docs))


def attention_distance(pattern: Tensor, docs: Tensor) -> Tensor:
    """(H,) mean over counted queries i of Σ_j pattern[i, j] · (i − j), in tokens."""
    pattern, docs = _batched(pattern, docs)
    T = pattern.size(-1)
    pos = torch.arange(T, device=pattern.device, dtype=pattern.dtype)
    offset = (pos[:, None] - pos[None, :]).clamp(min=0)  # keys after the query carry no weight anyway
    return counted_mean((pattern * offset).sum(-1), counted_positions(docs))


def document_starts(docs: Tensor) -> Tensor:
    """(B, T) index of the first position of each position's document (its BOS)."""
    T = docs.size(-1)
    pos = torch.arange(T, device=docs.device).expand_as(docs)
    first = torch.ones_like(docs, dtype=torch.bool)
    first[:, 1:] = docs[:, 1:] != docs[:, :-1]
    return torch.where(first, pos, torch.zeros_like(pos)).cummax(dim=-1).values


def bos_attention(pattern: Tensor, docs: Tensor) -> Tensor:
    """(H,) mean attention a counted query pays to the first token (the BOS) of its own document."""
    pattern, docs = _batched(pattern, docs)
    B, H, T, _ = pattern.shape
    index = document_starts(docs)[:, None, :, None].expand(B, H, T, 1)
    return counted_mean(pattern.gather(-1, index)[..., 0], counted_positions(docs))


def _repeated(pattern: Tensor, period: int) -> Tensor:
    if pattern.ndim == 3:
        pattern = pattern[None]
    if pattern.size(-1) != 2 * period + 1:
        raise AnalysisError(f"pattern of {pattern.size(-1)} positions is not BOS + 2 × {period} repeated tokens")
    return pattern


def induction_score(pattern: Tensor, period: int) -> Tensor:
    """(H,) on BOS + R + R (|R| = period): mean over second-copy queries i of pattern[i, i − period + 1],
    the token after the previous occurrence of the current one."""
    pattern = _repeated(pattern, period)
    stripe = pattern.diagonal(offset=-(period - 1), dim1=-2, dim2=-1)  # queries period−1 … 2·period
    return stripe[..., -period:].mean(dim=(0, 2))


def duplicate_token_score(pattern: Tensor, period: int) -> Tensor:
    """(H,) on BOS + R + R: mean over second-copy queries i of pattern[i, i − period], the previous
    occurrence of the same token."""
    pattern = _repeated(pattern, period)
    stripe = pattern.diagonal(offset=-period, dim1=-2, dim2=-1)  # queries period … 2·period
    return stripe[..., -period:].mean(dim=(0, 2))


def repeat_losses(losses: Tensor, period: int) -> tuple[Tensor, Tensor]:
    """(first, second) mean next-token loss on BOS + R + R rows: `losses` (B, 2·period) holds the loss of
    each target (position p predicting token p + 1). Both copies count the targets R[1:], the tokens an
    induction head can predict in the second copy (R[0] follows nothing it could match): first copy
    tokens 2 … period, second copy period + 2 … 2·period. A model that copies has second ≪ first."""
    if losses.ndim == 1:
        losses = losses[None]
    if losses.size(-1) != 2 * period or period < 2:
        raise AnalysisError(f"losses of {losses.size(-1)} targets are not those of BOS + 2 × {period} repeated tokens")
    # target of position p is token p + 1: token t of the row is losses[:, t − 1]
    return losses[:, 1:period].double().mean(), losses[:, period + 1:].double().mean()


def document_positions(docs: Tensor) -> Tensor:
    """(B, T) each position's index in its own document (its BOS is 0)."""
    pos = torch.arange(docs.size(-1), device=docs.device).expand_as(docs)
    return pos - document_starts(docs)


def in_context_score(losses: Tensor, positions: Tensor, early: tuple[int, int], late: tuple[int, int]) -> dict[str, float]:
    """Olsson et al.'s in-context learning score: the mean loss of targets late in their document minus
    that of targets early in it (they take token 500 minus token 50; negative when later tokens are
    predicted better from the context before them). `losses` and `positions` are (B, T): each target's loss
    and its index in its document; `early` and `late` are half-open ranges of that index.
    Returns loss_early, loss_late and icl_score (late − early)."""
    out = {}
    for name, (lo, hi) in (("early", early), ("late", late)):
        chosen = (positions >= lo) & (positions < hi)
        if not bool(chosen.any()):
            raise AnalysisError(f"in-context score: no target at document positions {lo}…{hi - 1} "
                                f"(documents here reach {int(positions.max())})")
        out[f"loss_{name}"] = float(losses[chosen].double().mean())
    out["icl_score"] = out["loss_late"] - out["loss_early"]
    return out


@functools.lru_cache(maxsize=8)
def _band_bias(rows: int, cols: int, diagonal: int, window: int, device: torch.device) -> Tensor:
    """`window_band` as an additive float mask (0 or −inf), so masking rides on the score matmul."""
    return torch.zeros(rows, cols, device=device).masked_fill_(~window_band(rows, cols, diagonal, window, device), -torch.inf)


def previous_token_probs_qk(q: Tensor, k: Tensor, docs: Tensor, window: int, scale: float,
                            chunk: int | None = None) -> Tensor:
    """(B, H, T) attention each query pays its previous token (0 at position 0), without the pattern.

    pattern[i, i−1] = exp(s[i, i−1] − lse_i), where s = scale · q·k and lse_i is the log-sum-exp of
    row i over the keys the model lets it see (same document, i−window ≤ j ≤ i). The row lse is
    found one block of queries at a time, against only the keys its window reaches: memory
    O(chunk · (chunk + window)), work O(T · window). q and k are (B, T, H, D) as the hooks
    `attn.hook_rot_q` / `attn.hook_rot_k` give them (after QK-norm and rotary).
    """
    B, T, H, D = q.shape
    q, k = q.transpose(1, 2).float(), k.transpose(1, 2).float()  # (B, H, T, D)
    C = chunk or chunk_size(B, H, T, window)
    out = torch.zeros(B, H, T, device=q.device)
    if window < 1:  # the previous token is never visible
        return out
    for q0 in range(1, T, C):
        q1 = min(q0 + C, T)
        k0 = max(0, q0 - window)
        bias = _band_bias(q1 - q0, q1 - k0, q0 - k0, window, q.device)
        scores = torch.baddbmm(bias, q[:, :, q0:q1].reshape(B * H, q1 - q0, D),
                               k[:, :, k0:q1].reshape(B * H, q1 - k0, D).transpose(1, 2), alpha=scale)
        scores = scores.view(B, H, q1 - q0, q1 - k0)
        if not bool((docs[:, k0] == docs[:, q1 - 1]).all()):  # documents meet inside the block
            scores.masked_fill_(docs[:, None, q0:q1, None] != docs[:, None, None, k0:q1], -torch.inf)
        prev = scores.diagonal(offset=q0 - 1 - k0, dim1=-2, dim2=-1)  # s[i, i−1] for i = q0 … q1−1 (−inf across a BOS)
        out[:, :, q0:q1] = (prev - scores.logsumexp(-1)).exp()
    return out


def previous_token_score_qk(q: Tensor, k: Tensor, docs: Tensor, window: int, scale: float,
                            chunk: int | None = None) -> Tensor:
    """(H,) the previous-token score from q and k (streaming, memory linear in T); equals
    `previous_token_score` on the pattern the model would build."""
    if docs.ndim == 1:
        docs = docs[None]
    return counted_mean(previous_token_probs_qk(q, k, docs, window, scale, chunk), counted_positions(docs))


def smear_coefficients(smear_lambda: Tensor | float, gate: Tensor) -> Tensor:
    """Effective smear coefficient λ · gate (the fraction of the previous embedding added)."""
    return torch.as_tensor(smear_lambda, dtype=gate.dtype) * gate


def smear_vocab_gates(embed_weight: Tensor, gate_weight: Tensor, vocab_size: int) -> Tensor:
    """(vocab_size,) σ(w · E[tok, :12]) for every token id: the gate reads the current token's raw
    embedding only, so it is a function of the token id."""
    dim = gate_weight.size(-1)
    return torch.sigmoid(embed_weight[:vocab_size, :dim].float() @ gate_weight.float().reshape(dim))


def summary_stats(values: Tensor, quantiles: tuple[float, ...] = QUANTILES) -> dict[str, float]:
    """mean, std (population) and the named quantiles of a flat set of values."""
    v = values.detach().flatten().double()
    if v.numel() == 0:
        raise AnalysisError("no values to summarise")
    stats = {"mean": float(v.mean()), "std": float(v.std(correction=0))}
    for q, x in zip(quantiles, torch.quantile(v, torch.tensor(quantiles, dtype=v.dtype)).tolist()):
        stats[f"p{round(q * 100):02d}"] = x
    return stats
