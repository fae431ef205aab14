"""Why the learned gate stays low: λ and the gradient on it at every training step, and what drives it.

For an arm whose term is c_i · h[i−1] with c_i = λ · g_i (trainer/arms.py), the gradient on λ, holding
the gate fixed, is a sum over positions:

    dL/dλ = Σ_i s_i,    s_i = g_i · ⟨∂L/∂term_i, h[i−1]⟩

(term = `hook_smear_out`, g = `hook_smear_gate`, h = e at the embedding site, norm(e) for
`smear-postnorm`). `LambdaGradRecorder`, a `train()` callback, captures ∂L/∂term with a tensor hook
during each training forward and, after backward and before the optimiser step, splits Σ s_i into parts:

- by `doc`: where token i sits in its document: `bos` (token i is a BOS: the term carries the previous
  document's last token into it), `1` (the previous token is the BOS), `2-3`, `4-15`, `16-63`, `64+`, or
  `no_bos` (no BOS before i in the row: the row starts mid-document);
- by `gate`: the gate value g_i, `<0.4`, `0.4-0.6`, `>=0.6`;
- by `sign`: the positions pushing λ up (`neg`: s_i < 0, descent raises λ) and down (`pos`).

`record_lambda.parquet` in the run folder, one row per (step, by, part), tidy:
run, preset, arm, seed, step, tokens, lambda, grad, pressure, coef_mean, by, part, n, value.

- step: optimiser steps taken before this forward (0: the initial weights); lambda is the λ of that
  forward (`GPT.smear_lambda`: a dose's c, an annealed dose's current c), so it equals record_smear's λ
  at the same step;
- grad: autograd's ∂(mean train loss)/∂λ, what Adam steps on (NaN where λ is not learned: a dose; 0
  while `smear-hold` holds it);
- pressure: Σ s_i, the same derivative for the term's scale whether or not λ is learned (= grad for
  every learned-λ arm outside a hold; for a dose, the loss's pull on c);
- value: Σ s_i over the part's n positions, in the units of grad. `by == "total"` has one part, `all`.

Everything is per mean-loss token (train.py back-propagates loss × tokens per step; this divides it
back). With several ranks, λ and grad are the global ones and the parts are rank 0's share of its batch.
Values stay on the device until the table is written (every `write_every` steps and at the last), so
a GPU run pays no extra synchronisation per step.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import Tensor

from trainer import checkpoint as ckpt
from trainer.errors import ConfigError
from trainer.io import atomic_path
from trainer.model import GPT, norm

LAMBDA_FILE = "record_lambda.parquet"
DOC_PARTS = ("bos", "1", "2-3", "4-15", "16-63", "64+", "no_bos")
DOC_EDGES = (1, 2, 4, 16, 64)  # lower edges of the in-document buckets `1` … `64+`
GATE_PARTS = ("<0.4", "0.4-0.6", ">=0.6")
GATE_EDGES = (0.4, 0.6)
SIGN_PARTS = ("pos", "neg")
PARTS = ([("total", "all")] + [("doc", p) for p in DOC_PARTS] + [("gate", p) for p in GATE_PARTS]
         + [("sign", p) for p in SIGN_PARTS])
WRITE_EVERY = 50


def doc_position(tokens: Tensor, bos_id: int) -> Tensor:
    """(B, T) long: i minus the index of the last BOS at or before i (0 at a BOS); −1 where no BOS
    precedes i in the row."""
    T = tokens.size(1)
    idx = torch.arange(T, device=tokens.device).expand_as(tokens)
    last = torch.where(tokens == bos_id, idx, torch.full_like(idx, -1)).cummax(dim=1).values
    return torch.where(last >= 0, idx - last, torch.full_like(idx, -1))


def part_index(tokens: Tensor, gate: Tensor, bos_id: int) -> tuple[Tensor, Tensor]:
    """(doc part, gate part) of every position i = 1 … T−1, as indices into DOC_PARTS and GATE_PARTS."""
    pos = doc_position(tokens, bos_id)[:, 1:]
    doc = torch.bucketize(pos.contiguous(), torch.tensor(DOC_EDGES, device=pos.device), right=True)  # 1 → 1, …, ≥ 64 → 5
    doc = torch.where(pos == 0, 0, torch.where(pos < 0, len(DOC_PARTS) - 1, doc))
    g = torch.bucketize(gate.float(), torch.tensor(GATE_EDGES, device=gate.device), right=True)
    return doc, g


def lambda_grad_parts(grad_term: Tensor, prev: Tensor, gate: Tensor, tokens: Tensor, bos_id: int) -> tuple[Tensor, Tensor]:
    """The parts of Σ_i s_i, s_i = g_i · ⟨grad_term[i], prev[i]⟩, in the order of PARTS: (values, counts).

    grad_term is ∂L/∂term at positions 1 … T−1 (B, T−1, d), prev the h[i−1] it multiplies (B, T−1, d),
    gate g (B, T−1) and tokens (B, T). Float64 sums; nothing leaves the device."""
    s = gate.double() * (grad_term.double() * prev.double()).sum(-1)
    doc, g = part_index(tokens, gate, bos_id)
    sign = (s < 0).long()
    values, counts = [s.sum()[None]], [s.new_tensor([s.numel()])]
    for idx, n in ((doc, len(DOC_PARTS)), (g, len(GATE_PARTS)), (sign, len(SIGN_PARTS))):
        values.append(torch.zeros(n, dtype=s.dtype, device=s.device).index_add_(0, idx.flatten(), s.flatten()))
        counts.append(torch.bincount(idx.flatten(), minlength=n).to(s.dtype))
    return torch.cat(values), torch.cat(counts)


class LambdaGradRecorder:
    """A `train()` callback with `on_train_start` (hooks on), `on_backward` (read the gradient) and the
    after-step call (write the table). Rank 0 only; a (resumed) run keeps its rows from earlier steps."""

    def __init__(self, write_every: int = WRITE_EVERY):
        if write_every < 1:
            raise ConfigError(f"λ-gradient recorder: write_every={write_every} must be ≥ 1")
        self.write_every = write_every
        self.handles: list = []
        self.seen: dict[str, Tensor] = {}

    @staticmethod
    def applies(model: GPT) -> bool:
        return model.arm_spec.coefficient

    def on_train_start(self, *, model: GPT, step: int, run, run_dir: str | Path, **_) -> None:
        self.remove()
        if _rank() or not self.applies(model):
            return
        self.run, self.run_dir, self.steps = run, Path(run_dir), []
        path = self.run_dir / LAMBDA_FILE
        self.kept = ckpt.read_run_table(path).query("step < @step") if path.exists() else None
        self.site = model.arm_spec.site

        def keep(name: str):
            def hook(module, args, out):
                if torch.is_grad_enabled() and module.training:  # training forwards, not validation or probes
                    self.seen[name] = out.detach()
                    if name == "term" and out.requires_grad:
                        out.register_hook(lambda g: self.seen.__setitem__("grad", g.detach()))
            return hook

        self.seen = {}
        self.handles = [getattr(model, point).register_forward_hook(keep(name))
                        for point, name in (("hook_embed", "e"), ("hook_smear_gate", "gate"), ("hook_smear_out", "term"))]

    def on_backward(self, *, model: GPT, step: int, run, inputs: Tensor, **_) -> None:
        if not self.handles:
            return
        tps = run.train.batch_size * run.train.seq_len
        spec = model.arm_spec
        lam = model.smear_lambda.detach().double()
        grad = model.scalars.grad
        grad = (grad[5 * model.config.n_layers].double() / tps if spec.learned_lambda and grad is not None
                else lam.new_tensor(float("nan")))
        gate = self.seen["gate"][..., 0]
        coef_mean = (lam * gate.double()).mean()
        if self.site == "final" or "grad" not in self.seen:  # Smear-MTP: h[i−1] is the final norm, not hooked
            values = counts = lam.new_full((len(PARTS),), float("nan"))
        else:
            e = self.seen["e"]
            h = norm(e) if self.site == "postnorm" else e
            values, counts = lambda_grad_parts(self.seen["grad"][:, 1:], h[:, :-1], gate, inputs.to(e.device),
                                               model.config.bos_id)
            values = values / tps
        self.steps.append((step, torch.stack([lam, grad, coef_mean]), values, counts))
        self.seen.pop("grad", None)

    def __call__(self, *, step: int, run, checkpoint: bool = False, **_) -> None:
        # written before each checkpoint too: a resume from it finds every row of the steps it covers
        if self.handles and (checkpoint or step % self.write_every == 0 or step == run.train.steps):
            self.write()
        if self.handles and step == run.train.steps:
            self.remove()

    def table(self) -> pd.DataFrame:
        r = self.run
        tps = r.train.batch_size * r.train.seq_len
        rows = []
        for step, head, values, counts in self.steps:
            lam, grad, coef_mean = head.tolist()
            values, counts = values.tolist(), counts.tolist()
            base = dict(run=r.name, preset=r.preset, arm=r.arm, seed=r.seed, step=step, tokens=step * tps,
                        **{"lambda": lam}, grad=grad, pressure=values[0], coef_mean=coef_mean)
            rows += [dict(base, by=by, part=part, n=int(n) if n == n else -1, value=v)  # n −1: not decomposed
                     for (by, part), v, n in zip(PARTS, values, counts)]
        new = pd.DataFrame(rows)
        return new if self.kept is None or self.kept.empty else pd.concat([self.kept, new], ignore_index=True)

    def write(self) -> None:
        with atomic_path(self.run_dir / LAMBDA_FILE) as tmp:
            self.table().to_parquet(tmp, index=False)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles, self.seen = [], {}


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


__all__ = ["LambdaGradRecorder", "lambda_grad_parts", "doc_position", "LAMBDA_FILE", "PARTS", "DOC_PARTS",
           "GATE_PARTS", "SIGN_PARTS"]
