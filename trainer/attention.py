"""How attention is computed, once q, k and v are there: the document and sliding-window masks and the
fused (SDPA, flex_attention) and query-chunked kernels. `CausalSelfAttention` (trainer/model.py) builds
q, k and v, runs the explicit path when a hook asks for the pattern, and calls one of these otherwise."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

CHUNK_QUERIES, CHUNK_ELEMENTS = 256, 2**23  # "chunked" attention: queries per block; most scores held at once


@dataclass
class AttnContext:
    """What every attention layer of one forward pass shares."""

    docs: Tensor  # (B, T) document index of each position (a BOS starts a new document)
    cos: Tensor
    sin: Tensor
    scale: float
    impl: str
    masks: dict  # window (tokens) -> mask in the form the chosen implementation takes

    def mask(self, window: int):
        if window not in self.masks:
            self.masks[window] = (block_mask if self.impl == "flex" else dense_mask)(self.docs, window)
        return self.masks[window]


def dense_mask(docs: Tensor, window: int) -> Tensor:
    """(B, 1, T, T) bool: key j is visible from query i iff i−window ≤ j ≤ i in the same document."""
    T = docs.size(1)
    pos = torch.arange(T, device=docs.device)
    offset = pos[:, None] - pos[None, :]
    causal = (offset >= 0) & (offset <= window)
    return (causal & (docs[:, :, None] == docs[:, None, :]))[:, None]


def block_mask(docs: Tensor, window: int):
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q, k):
        return (k <= q) & (q - k <= window) & (docs[b, q] == docs[b, k])

    B, T = docs.shape
    return create_block_mask(mask_mod, B, None, T, T, device=docs.device)


_flex_compiled = None


def flex(q: Tensor, k: Tensor, v: Tensor, mask, scale: float) -> Tensor:
    global _flex_compiled
    from torch.nn.attention.flex_attention import flex_attention

    if q.is_cuda:  # flex_attention is only fast (and only differentiable) compiled
        _flex_compiled = _flex_compiled or torch.compile(flex_attention, dynamic=False)
        return _flex_compiled(q, k, v, block_mask=mask, scale=scale)
    return flex_attention(q, k, v, block_mask=mask, scale=scale)


@functools.lru_cache(maxsize=8)
def window_band(rows: int, cols: int, diagonal: int, window: int, device: torch.device) -> Tensor:
    """(rows, cols) bool: column j visible from row i iff diagonal−window ≤ j−i ≤ diagonal. Cached:
    every full chunk of a layer has the same band, and building it costs as much as the attention."""
    return torch.ones(rows, cols, dtype=torch.bool, device=device).tril(diagonal).triu(diagonal - window)


def band_mask(docs: Tensor, q0: int, q1: int, k0: int, window: int) -> Tensor:
    """`dense_mask` restricted to queries q0..q1−1 and keys k0..q1−1: (B or 1, 1, q1−q0, q1−k0) bool."""
    visible = window_band(q1 - q0, q1 - k0, q0 - k0, window, docs.device)
    if bool((docs[:, k0] == docs[:, q1 - 1]).all()):  # one document spans the block: no document mask
        return visible[None, None]
    return (visible & (docs[:, q0:q1, None] == docs[:, None, k0:q1]))[:, None]


def chunk_size(B: int, H: int, T: int, window: int) -> int:
    """Queries per chunk: small blocks stay in cache and waste little work on keys before the window
    (measured on 2 CPU cores, windows of 768–8,192: 256 queries matched or beat 512–2,048, by up to
    4×), and one block's scores stay near CHUNK_ELEMENTS numbers however long the window."""
    span = min(window, T) + 1
    return max(16, min(T, CHUNK_QUERIES, CHUNK_ELEMENTS // (B * H * span)))


def chunked(q: Tensor, k: Tensor, v: Tensor, docs: Tensor, window: int, scale: float) -> Tensor:
    """Exact masked attention, one block of queries at a time against the keys its window can reach.

    q, k, v are (B, H, T, D). Memory is O(chunk · (chunk + window)) per head instead of O(T²), and
    the work is O(T · window): the fused CPU path builds a dense (T, T) mask, which at 65,536 tokens
    alone is 4 GiB.
    """
    B, H, T, _ = q.shape
    C = chunk_size(B, H, T, window)
    out = torch.empty_like(q)
    for q0 in range(0, T, C):
        q1 = min(q0 + C, T)
        k0 = max(0, q0 - window)
        out[:, :, q0:q1] = F.scaled_dot_product_attention(
            q[:, :, q0:q1], k[:, :, k0:q1], v[:, :, k0:q1], attn_mask=band_mask(docs, q0, q1, k0, window), scale=scale)
    return out


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    if q.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
        # CPU's bf16 flash-attention backward is slower than its fp32 one (cpu-small: 5.8 vs 3.5 ms a
        # layer, fwd + bwd): under bf16 autocast attend in fp32. Without autocast nothing changes.
        with torch.autocast("cpu", enabled=False):
            z = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), attn_mask=mask, scale=scale)
        return z.to(torch.get_autocast_dtype("cpu"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)
