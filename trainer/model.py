"""The speedrun GPT (modded-nanogpt record of 2025-09-18), with an optional smear gate.

One definition serves training, hooks and analysis. It is a TransformerLens `HookedRootModule`:
every `HookPoint` is an identity until a hook is attached, and the T×T attention pattern is only
built (explicit path) when a hook on `attn.hook_attn_scores` or `attn.hook_pattern` asks for it;
otherwise attention runs fused (SDPA on CPU, flex_attention on CUDA) with the same masks.

Parameter names and shapes follow the record (`embed.weight`, `blocks.{l}.attn.qkvo_w`, `scalars`,
...); see tests/test_model.py for the full table of `speedrun-124m`.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformer_lens import HookedRootModule
from transformer_lens.hook_points import HookPoint

from trainer.config import GATE_DIM, ModelConfig

ATTN_IMPLS = ("auto", "explicit", "sdpa", "flex")


def norm(x: Tensor) -> Tensor:
    return F.rms_norm(x, (x.size(-1),))


def rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., j], x[..., j + D/2]); x is (B, T, H, D), cos/sin are (T, D/2)."""
    cos, sin = cos[None, :, None, :], sin[None, :, None, :]
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos + x2 * sin, x2 * cos - x1 * sin), dim=-1)


class Yarn(nn.Module):
    """Half-truncated rotary frequencies and the attention scale, both stretched (YaRN) as windows grow.

    Both are persistent buffers, so a checkpoint carries the state it was trained (or validated) in.
    """

    def __init__(self, d_head: int, block_size: int, attn_scale: float):
        super().__init__()
        self.block_size = block_size
        self.base_attn_scale = attn_scale
        self.register_buffer("angular_freq", torch.zeros(d_head // 2))
        self.register_buffer("attn_scale", torch.zeros(()))
        self.reset()

    def reset(self) -> None:
        quarter = self.angular_freq.numel() // 2
        freq = (1 / 1024) ** torch.linspace(0, 1, steps=quarter, dtype=torch.float32)
        with torch.no_grad():
            self.angular_freq.copy_(torch.cat([freq, freq.new_zeros(quarter)]))
            self.attn_scale.fill_(self.base_attn_scale)

    @torch.no_grad()
    def extend(self, old_window: int, new_window: int, alpha: float = 1.0, beta: float = 32.0) -> None:
        """Stretch low frequencies from `old_window` to `new_window` blocks; sharpen the scale to match."""
        rotations = self.block_size * old_window * self.angular_freq / (2 * math.pi)
        ratio = old_window / new_window
        keep = ((rotations - alpha) / (beta - alpha)).clamp(0, 1)  # fast frequencies are kept as they are
        self.angular_freq.mul_(ratio + keep * (1 - ratio))
        self.attn_scale.mul_(0.2 * math.log(new_window / old_window) + 1)

    def cos_sin(self, T: int, device: torch.device) -> tuple[Tensor, Tensor]:
        theta = torch.outer(torch.arange(T, dtype=torch.float32, device=device), self.angular_freq)
        return theta.cos(), theta.sin()


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


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.d_head = cfg.n_heads, cfg.d_head
        self.qkvo_w = nn.Parameter(torch.empty(4, cfg.d_model, cfg.d_model))  # q, k, v, o as in the record
        self.attn_gate = nn.Linear(GATE_DIM, cfg.n_heads, bias=False)  # sparse per-head output gate
        self.hook_q, self.hook_k, self.hook_v = HookPoint(), HookPoint(), HookPoint()  # q, k after QK-norm
        self.hook_rot_q, self.hook_rot_k = HookPoint(), HookPoint()
        self.hook_attn_scores, self.hook_pattern = HookPoint(), HookPoint()
        self.hook_gate = HookPoint()  # (B, T, H) sigmoid gate on each head's output
        self.hook_z = HookPoint()  # (B, T, H, D) gated head outputs, the input of W_O

    def wants_pattern(self) -> bool:
        return any(h._forward_hooks or h._backward_hooks for h in (self.hook_attn_scores, self.hook_pattern))

    def forward(self, x: Tensor, ve: Tensor | None, sa_lambdas: Tensor, window: int, ctx: AttnContext) -> Tensor:
        B, T, _ = x.shape
        H, D = self.n_heads, self.d_head
        q, k, v = F.linear(x, self.qkvo_w[:3].flatten(0, 1)).view(B, T, 3 * H, D).chunk(3, dim=-2)
        q, k = self.hook_q(norm(q)), self.hook_k(norm(k))
        q, k = self.hook_rot_q(rotary(q, ctx.cos, ctx.sin)), self.hook_rot_k(rotary(k, ctx.cos, ctx.sin))
        v = sa_lambdas[0] * v + (sa_lambdas[1] * ve.view_as(v) if ve is not None else 0)
        v = self.hook_v(v)

        impl = "explicit" if (ctx.impl == "explicit" or self.wants_pattern()) else ctx.impl
        if impl == "explicit":
            scores = torch.einsum("bqhd,bkhd->bhqk", q, k) * ctx.scale
            scores = scores.masked_fill(~dense_mask(ctx.docs, window), float("-inf"))
            pattern = self.hook_pattern(self.hook_attn_scores(scores).softmax(dim=-1))
            z = torch.einsum("bhqk,bkhd->bqhd", pattern, v)
        else:
            attend = flex if impl == "flex" else sdpa
            z = attend(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), ctx.mask(window), ctx.scale)
            z = z.transpose(1, 2)
        gate = self.hook_gate(torch.sigmoid(self.attn_gate(x[..., :GATE_DIM])))
        z = self.hook_z(z * gate[..., None])
        return F.linear(z.reshape(B, T, H * D), self.qkvo_w[3])


def sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        hidden = cfg.mlp_ratio * cfg.d_model
        # both (d_model, hidden), as in the record, so Muon sees one shape for the whole MLP
        self.c_fc = nn.Parameter(torch.empty(cfg.d_model, hidden))
        self.c_proj = nn.Parameter(torch.empty(cfg.d_model, hidden))
        self.hook_pre, self.hook_post = HookPoint(), HookPoint()

    def forward(self, x: Tensor) -> Tensor:
        h = self.hook_post(F.relu(self.hook_pre(x @ self.c_fc)).square())
        return F.linear(h, self.c_proj)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int):
        super().__init__()
        self.attn = CausalSelfAttention(cfg) if layer not in cfg.no_attn_layers else None
        self.mlp = MLP(cfg) if layer not in cfg.no_mlp_layers else None
        self.hook_resid_pre = HookPoint()  # after the x0 mix: attention reads norm(resid_pre)
        if self.attn is not None:  # a skipped sublayer has no hooks at all
            self.hook_attn_out, self.hook_resid_mid = HookPoint(), HookPoint()
        if self.mlp is not None:
            self.hook_mlp_out = HookPoint()
        self.hook_resid_post = HookPoint()

    def forward(self, x, x0, lambdas, ve, sa_lambdas, window: int, ctx: AttnContext) -> Tensor:
        x = self.hook_resid_pre(lambdas[0] * x + lambdas[1] * x0)
        if self.attn is not None:
            x = self.hook_resid_mid(x + self.hook_attn_out(self.attn(norm(x), ve, sa_lambdas, window, ctx)))
        if self.mlp is not None:
            x = x + self.hook_mlp_out(self.mlp(norm(x)))
        return self.hook_resid_post(x)


class GPT(HookedRootModule):
    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        self.config = config = config.validate()
        V, d = config.padded_vocab, config.d_model
        self.embed = nn.Embedding(V, d)
        self.value_embeds = nn.ModuleList(nn.Embedding(V, d) for _ in range(config.n_value_embeds))
        self.blocks = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.yarn = Yarn(config.d_head, config.block_size, config.attn_scale)
        self.lm_head = nn.Linear(d, V, bias=False)
        self.scalars = nn.Parameter(torch.empty(config.n_scalars))
        self.smear_gate = nn.Linear(GATE_DIM, 1, bias=False) if config.smear else None
        # long window and last-layer window, in blocks; grown by `set_windows` (YaRN)
        self.register_buffer("window_blocks", torch.tensor([0, 0]))
        self.hook_embed = HookPoint()  # raw token embedding e
        self.hook_smear_gate = HookPoint()  # (B, T-1, 1) sigmoid(w · e[1:, :12]); coefficient = λ · gate
        self.hook_smear_out = HookPoint()  # e after the smear, before the norm that makes x0
        self.init_weights(seed)
        self.setup()

    # ---- parameters -------------------------------------------------------------------------

    @torch.no_grad()
    def init_weights(self, seed: int) -> None:
        """The record's initialisation, each parameter drawn from its own generator seeded by
        (seed, name): the arms with and without the smear start with identical shared weights."""
        cfg = self.config
        bound = 3**0.5 * 0.5 * cfg.d_model**-0.5
        for name, p in self.named_parameters():
            gen = torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))
            if name.startswith(("embed.", "value_embeds.")):
                p.copy_(torch.randn(p.shape, generator=gen))
            elif name.endswith("qkvo_w"):
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
                p[3].zero_()  # output projection starts at zero
            elif name.endswith("c_fc"):
                p.copy_(torch.empty(p.shape).uniform_(-bound, bound, generator=gen))
            elif name == "scalars":
                p.copy_(self.initial_scalars())
            else:  # c_proj, lm_head, attention gates, smear gate: zero, as in the record
                p.zero_()
        self.yarn.reset()
        self.window_blocks.fill_(cfg.initial_window)

    def initial_scalars(self) -> Tensor:
        n = self.config.n_layers
        parts = [
            torch.full((n,), -1.5),  # U-net skip weights (first n/2 used): sigmoid(-1.5) ≈ 0.18
            torch.tensor([1.0, 0.0]).repeat(n),  # block lambdas: x, x0
            torch.tensor([0.5, 0.5]).repeat(n),  # SA lambdas: v, value embedding
            torch.zeros(n),  # smear lambda (first), the rest unused
        ]
        pad = self.config.n_scalars - 6 * n
        return torch.cat(parts + [torch.ones(pad)])

    @property
    def smear_lambda(self) -> Tensor:
        return self.scalars[5 * self.config.n_layers]

    # ---- sliding windows ----------------------------------------------------------------------

    def set_windows(self, long_blocks: int, final_blocks: int | None = None) -> None:
        """Set the long window (blocks); YaRN-stretch rotary and scale when it grows."""
        final_blocks = long_blocks if final_blocks is None else final_blocks
        old = int(self.window_blocks[0])
        if long_blocks < old:
            raise ValueError(f"windows only grow (YaRN): {old} -> {long_blocks} blocks")
        if long_blocks > old:
            self.yarn.extend(old, long_blocks)
        self.window_blocks.copy_(torch.tensor([long_blocks, final_blocks]))

    def layer_windows(self) -> list[int]:
        """Window of each layer in tokens: long, half of it, or the last layer's own."""
        cfg = self.config
        long_blocks, final_blocks = (int(w) for w in self.window_blocks)
        sizes = [
            (long_blocks if i in cfg.long_window_layers else long_blocks // 2) * cfg.block_size
            for i in range(cfg.n_layers)
        ]
        sizes[-1] = final_blocks * cfg.block_size
        return sizes

    # ---- forward ------------------------------------------------------------------------------

    def embed_tokens(self, tokens: Tensor) -> Tensor:
        """x0: the token embedding, smeared with the previous token's in the smear arm, normed."""
        e = self.hook_embed(self.embed(tokens))
        if self.smear_gate is not None:
            gate = self.hook_smear_gate(torch.sigmoid(self.smear_gate(e[:, 1:, :GATE_DIM])))
            e = self.hook_smear_out(torch.cat([e[:, :1], e[:, 1:] + self.smear_lambda * gate * e[:, :-1]], dim=1))
        return norm(e)

    def forward(
        self,
        tokens: Tensor,
        targets: Tensor | None = None,
        return_type: str = "logits",
        attn_impl: str = "auto",
    ) -> Tensor | tuple[Tensor, Tensor]:
        """tokens (B, T) or (T,) → logits (B, T, padded vocab), the mean loss, or both."""
        if tokens.ndim == 1:
            tokens = tokens[None]
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl {attn_impl!r}: choose one of {ATTN_IMPLS}")
        if attn_impl == "auto":
            attn_impl = "flex" if tokens.is_cuda else "sdpa"
        cfg, n = self.config, self.config.n_layers
        cos, sin = self.yarn.cos_sin(tokens.size(1), tokens.device)
        docs = (tokens == cfg.bos_id).cumsum(dim=1)
        ctx = AttnContext(docs, cos, sin, float(self.yarn.attn_scale), attn_impl, {})
        windows = self.layer_windows()

        x = x0 = self.embed_tokens(tokens)
        ve = [embed(tokens) for embed in self.value_embeds]
        skip_weights = self.scalars[: n // 2]
        lambdas = self.scalars[n : 3 * n].view(-1, 2)
        sa_lambdas = self.scalars[3 * n : 5 * n].view(-1, 2)
        skips = []
        for i, block in enumerate(self.blocks):
            if i >= n // 2:  # U-net: decoder layers take the matching encoder output back
                x = x + torch.sigmoid(skip_weights[i - n // 2]) * skips.pop()
            j = cfg.value_embed_index(i)
            x = block(x, x0, lambdas[i], ve[j] if j is not None else None, sa_lambdas[i], windows[i], ctx)
            if i < n // 2:
                skips.append(x)
        logits = self.lm_head(norm(x)).float()
        logits = cfg.softcap * torch.sigmoid(logits / cfg.softcap_div)
        if return_type == "logits":
            return logits
        if targets is None:
            raise ValueError(f"return_type={return_type!r} needs targets")
        if targets.ndim == 1:
            targets = targets[None]
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))
        return loss if return_type == "loss" else (logits, loss)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
