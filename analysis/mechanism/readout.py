"""Where the previous token becomes readable: linear probes on the residual stream.

At each layer's residual input (`blocks.{l}.hook_resid_pre`) and the final residual (the last block's
`hook_resid_post`, reported as layer = n_layers), one multinomial logistic probe per target reads the
identity of token i−1 ("prev"), and as controls token i ("curr") and token i−2 ("prev2"), over the
K most frequent non-BOS tokens of the data. The probe is fit on half of the documents and scored on
the other half (split by document, with a fixed generator: the same split for every model on the
same data), and compared with a count-based baseline that predicts the target from token i alone
(the backward bigram for "prev"; trivially exact for "curr"). Everything here but `residuals` is a
pure function of tensors, so it can be pinned on synthetic residuals.
"""

from __future__ import annotations

import pandas as pd
import torch
from torch import Tensor

from analysis.measures.probes import _as_batch, evaluating
from trainer.errors import AnalysisError
from trainer.model import GPT

TARGETS = {"prev": 1, "curr": 0, "prev2": 2}  # target name → offset back from the position
DEFAULT_K = 64
FIT_FRACTION = 0.5
SPLIT_SEED = 0
WEIGHT_DECAY = 1e-3  # L2 on the standardised-feature weights (mean-loss scale)
LBFGS_ITERS = 50  # on cpu-small the held-out accuracy moves < 0.002 from 50 to 100 iterations, at half the time
MAX_POSITIONS = 8192  # per target and split: bounds the fit time on long data


def document_index(tokens: Tensor, bos_id: int) -> Tensor:
    """(N, T) global document number, row-major: a BOS or the start of a row starts a new document
    (a row never continues the previous row's document in the validation batches)."""
    starts = tokens == bos_id
    starts[:, 0] = True
    return starts.flatten().cumsum(0).view_as(tokens) - 1


def fit_documents(docs: Tensor, fraction: float = FIT_FRACTION, seed: int = SPLIT_SEED) -> Tensor:
    """(N, T) bool: positions in the fit documents; the rest are held out. A fixed generator's
    permutation of the document numbers picks round(fraction · n) of them (at least one each side)."""
    n = int(docs.max()) + 1
    if n < 2:
        raise AnalysisError(f"readout: the data hold {n} document; fit and held-out documents need at least 2")
    n_fit = min(n - 1, max(1, round(fraction * n)))
    fit = torch.zeros(n, dtype=torch.bool)
    fit[torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:n_fit]] = True
    return fit[docs]


def frequent_tokens(tokens: Tensor, where: Tensor, k: int, exclude: int) -> Tensor:
    """The k most frequent token ids among positions `where` (ties: smaller id first), `exclude` left out."""
    counts = torch.bincount(tokens[where].flatten(), minlength=exclude + 1).double()
    counts[exclude] = -1
    order = torch.sort(-counts, stable=True).indices[:k]  # stable: ties keep the smaller id first
    return order[counts[order] > 0]


def target_positions(tokens: Tensor, docs: Tensor, offset: int, bos_id: int) -> tuple[Tensor, Tensor]:
    """(rows, cols) of positions i whose token i−offset is in the same document, and that are not BOS."""
    N, T = tokens.shape
    ok = tokens != bos_id
    ok[:, :offset] = False
    if offset:
        ok[:, offset:] &= docs[:, offset:] == docs[:, :-offset]
    return ok.nonzero(as_tuple=True)


def bigram_baseline(cur_fit: Tensor, y_fit: Tensor, cur_eval: Tensor, y_eval: Tensor, n_classes: int) -> float:
    """Accuracy of predicting the class from the current token alone by counts on the fit positions:
    the most common class seen with that token (ties: the smaller class index, i.e. the more frequent
    token); a token never seen at fit time gets the most common class overall."""
    if y_eval.numel() == 0:
        raise AnalysisError("readout: no held-out positions to score")
    vocab = int(torch.cat([cur_fit, cur_eval]).max()) + 1
    counts = torch.zeros(vocab, n_classes, dtype=torch.long)
    counts.index_put_((cur_fit, y_fit), torch.ones_like(y_fit), accumulate=True)
    overall = int(torch.bincount(y_fit, minlength=n_classes).argmax()) if y_fit.numel() else 0
    guess = torch.where(counts.sum(1) > 0, counts.argmax(1), torch.full((vocab,), overall))  # argmax: first max
    return float((guess[cur_eval] == y_eval).double().mean())


def probe_accuracy(x_fit: Tensor, y_fit: Tensor, x_eval: Tensor, y_eval: Tensor, n_classes: int,
                   weight_decay: float = WEIGHT_DECAY, iters: int = LBFGS_ITERS) -> float:
    """Held-out accuracy of a multinomial logistic probe (features standardised on the fit set),
    fit full-batch with L-BFGS (float32); deterministic on a CPU at a fixed thread count."""
    if y_fit.numel() == 0 or y_eval.numel() == 0:
        raise AnalysisError("readout: no fit or no held-out positions for the probe")
    x_fit, x_eval = x_fit.float(), x_eval.float()
    mean, std = x_fit.mean(0), x_fit.std(0, correction=0)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))  # a constant feature carries nothing
    x_fit, x_eval = (x_fit - mean) / std, (x_eval - mean) / std
    W = torch.zeros(x_fit.size(1), n_classes, dtype=torch.float32, requires_grad=True)
    b = torch.zeros(n_classes, dtype=torch.float32, requires_grad=True)
    opt = torch.optim.LBFGS([W, b], lr=1, max_iter=iters, history_size=20, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x_fit @ W + b, y_fit) + weight_decay * W.square().sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((x_eval @ W + b).argmax(1) == y_eval).double().mean())


def _cap(rows: Tensor, cols: Tensor, limit: int, seed: int) -> tuple[Tensor, Tensor]:
    if rows.numel() <= limit:
        return rows, cols
    keep = torch.randperm(rows.numel(), generator=torch.Generator().manual_seed(seed))[:limit].sort().values
    return rows[keep], cols[keep]


def readout_scores(resid: dict[int, Tensor], tokens: Tensor, bos_id: int, k: int = DEFAULT_K,
                   targets: tuple[str, ...] = tuple(TARGETS), max_positions: int = MAX_POSITIONS) -> pd.DataFrame:
    """Probe accuracy, baseline and accuracy above baseline for each residual (layer → (N, T, d)) and
    target: a tidy frame of layer, target, metric, value (metrics accuracy, baseline, above_baseline).

    The classes are the K most frequent non-BOS tokens of the fit documents; each target uses the
    positions whose target token is one of them (and in the same document)."""
    unknown = [t for t in targets if t not in TARGETS]
    if unknown:
        raise AnalysisError(f"readout: unknown target {unknown[0]!r}; choose from {', '.join(TARGETS)}")
    tokens = tokens.cpu()
    docs = document_index(tokens, bos_id)
    fit = fit_documents(docs)
    classes = frequent_tokens(tokens, fit, k, bos_id)
    label_of = torch.full((int(tokens.max()) + 1,), -1, dtype=torch.long)
    label_of[classes] = torch.arange(len(classes))  # class index, or −1 outside the K tokens
    rows = []
    for name in targets:
        offset = TARGETS[name]
        r, c = target_positions(tokens, docs, offset, bos_id)
        y = label_of[tokens[r, c - offset]]
        r, c, y = r[y >= 0], c[y >= 0], y[y >= 0]
        in_fit = fit[r, c]
        split = {}
        for part, sel in (("fit", in_fit), ("eval", ~in_fit)):
            pr, pc = _cap(r[sel], c[sel], max_positions, seed=offset)
            split[part] = (pr, pc, label_of[tokens[pr, pc - offset]])
        (fr, fc, fy), (er, ec, ey) = split["fit"], split["eval"]
        if fy.numel() == 0 or ey.numel() == 0:
            raise AnalysisError(f"readout: no {'fit' if fy.numel() == 0 else 'held-out'} position for target "
                                f"{name!r} among the {len(classes)} most frequent tokens; use more data")
        base = bigram_baseline(tokens[fr, fc], fy, tokens[er, ec], ey, len(classes))
        for layer, x in sorted(resid.items()):
            x = x.cpu()
            acc = probe_accuracy(x[fr, fc], fy, x[er, ec], ey, len(classes))
            rows += [dict(layer=layer, target=name, metric=m, value=v)
                     for m, v in (("accuracy", acc), ("baseline", base), ("above_baseline", acc - base))]
    return pd.DataFrame(rows, columns=["layer", "target", "metric", "value"])


class _Stop(Exception):
    pass


def residuals(model: GPT, tokens: Tensor) -> dict[int, Tensor]:
    """layer → (N, T, d_model) float32 residual at each block's input, and (key n_layers) the last
    block's output, from one forward that stops there (no logits)."""
    tokens = _as_batch(model, tokens)
    n = model.config.n_layers
    out: dict[int, Tensor] = {}

    def keep(x: Tensor, hook, layer: int) -> None:
        out[layer] = x.detach().float().cpu()
        if layer == n:
            raise _Stop

    hooks = [(f"blocks.{l}.hook_resid_pre", lambda x, hook, l=l: keep(x, hook, l)) for l in range(n)]
    hooks.append((f"blocks.{n - 1}.hook_resid_post", lambda x, hook: keep(x, hook, n)))
    with evaluating(model):
        try:
            model.run_with_hooks(tokens, fwd_hooks=hooks)
        except _Stop:
            pass
    return out


def readout(model: GPT, tokens: Tensor, k: int = DEFAULT_K, targets: tuple[str, ...] = tuple(TARGETS)) -> pd.DataFrame:
    """`readout_scores` of the model's residual streams on `tokens` (N, T)."""
    return readout_scores(residuals(model, tokens), tokens, model.config.bos_id, k, targets)


__all__ = ["TARGETS", "DEFAULT_K", "document_index", "fit_documents", "frequent_tokens", "target_positions",
           "bigram_baseline", "probe_accuracy", "readout_scores", "residuals", "readout"]
