"""Figure (j), inspect one text: attention patterns and smear coefficients precomputed by
`analysis.measures.inspect.inspect_text`, and the notebook cell bodies that find the runs and draw them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib
import numpy as np
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from analysis.writeup.plots.style import (ABSENT_COLOR, ABSENT_EDGE, arm_label, display_markdown, display_token,
                                  figure, show_figure)
from analysis.stats import ARMS, arm_order
from trainer.errors import AnalysisError, SmearlensError

PATTERN_CMAP = "viridis"  # attention weights, 0–1 like the scores


def _check_patterns(patterns: Sequence[np.ndarray | None], tokens: Sequence[str]) -> tuple[int, int, int]:
    present = [np.asarray(p) for p in patterns if p is not None]
    if not present:
        raise AnalysisError("no attention patterns (every layer is None)")
    n_h, t1, t2 = present[0].shape
    if t1 != t2 or t1 != len(tokens) or any(p.shape != (n_h, t1, t2) for p in present):
        raise AnalysisError(f"attention patterns must be (heads, T, T) per layer with T = {len(tokens)} tokens; "
                            f"got {[tuple(p.shape) for p in present][:3]}")
    return len(patterns), n_h, t1


def _token_ticks(ax, tokens: Sequence[str], axis: str) -> None:
    n = len(tokens)
    step = max(1, math.ceil(n / 48))  # past ~48 labels they overlap: label every k-th
    idx = list(range(0, n, step))
    labels = [display_token(tokens[i], 10) for i in idx]
    if axis == "x":
        ax.set_xticks(idx, labels, rotation=90, fontsize=7, family="monospace")
    else:
        ax.set_yticks(idx, labels, fontsize=7, family="monospace")


def _draw_pattern(ax, a: np.ndarray) -> float:
    """One head's (T, T) pattern on the 0–1 scale; returns its previous-token score on this text."""
    ax.imshow(a, vmin=0, vmax=1, cmap=PATTERN_CMAP, interpolation="nearest")
    return float(np.mean(np.diagonal(a, offset=-1))) if len(a) > 1 else float("nan")


def _pattern_colorbar(fig: Figure, axes, label: str, shrink: float) -> None:
    fig.colorbar(ScalarMappable(norm=Normalize(0, 1), cmap=PATTERN_CMAP), ax=axes, label=label, shrink=shrink)


def attention_grid(patterns: Sequence[np.ndarray | None], tokens: Sequence[str], title: str = "") -> Figure:
    """Every head's attention pattern on one text: rows layers, columns heads; no-attention layers marked."""
    n_l, n_h, n_t = _check_patterns(patterns, tokens)
    fig = figure(1.9 * n_h + 1.4, 1.75 * n_l + 0.9)
    axes = fig.subplots(n_l, n_h, squeeze=False)
    for layer, p in enumerate(patterns):
        for head in range(n_h):
            ax = axes[layer, head]
            ax.set_xticks([])
            ax.set_yticks([])
            if p is None:
                ax.set_facecolor(ABSENT_COLOR)
                ax.add_patch(Rectangle((0, 0), 1, 1, transform=ax.transAxes, fill=False, hatch="///",
                                       edgecolor=ABSENT_EDGE, lw=0))
                ax.text(0.5, 0.5, "no attention", ha="center", va="center", fontsize=8, transform=ax.transAxes)
            else:
                prev = _draw_pattern(ax, np.asarray(p)[head])
                ax.text(0.98, 0.04, f"prev {prev:.2f}", ha="right", va="bottom", fontsize=7, color="white",
                        transform=ax.transAxes)
            if layer == 0:
                ax.set_title(f"head {head}", fontsize=9)
            if head == 0:
                ax.set_ylabel(f"layer {layer}", fontsize=9)
    _pattern_colorbar(fig, axes, "attention weight (rows: query, columns: key)", 0.6)
    fig.suptitle(title or f"Attention patterns on {n_t} tokens", fontsize=11)
    return fig


def attention_head(patterns_by_arm: Mapping[str, Sequence[np.ndarray | None]], tokens: Sequence[str],
                   layer: int, head: int) -> Figure:
    """One head's attention pattern on one text, for each arm side by side, on one 0–1 scale."""
    if not patterns_by_arm:
        raise AnalysisError("no attention patterns to draw")
    arms = [a for a in ARMS if a in patterns_by_arm] + [a for a in patterns_by_arm if a not in ARMS]
    n_t = len(tokens)
    side = min(7.0, 2.5 + 0.13 * n_t)
    fig = figure(side * len(arms) + 1.2, side + 0.6)
    axes = np.atleast_1d(fig.subplots(1, len(arms), squeeze=False)).ravel()
    for ax, arm in zip(axes, arms):
        patterns = patterns_by_arm[arm]
        n_l, n_h, _ = _check_patterns(patterns, tokens)
        if not (0 <= layer < n_l and 0 <= head < n_h):
            raise AnalysisError(f"layer {layer}, head {head} is outside the model ({n_l} layers × {n_h} heads)")
        label = arm_label(arm)
        if patterns[layer] is None:
            ax.set_facecolor(ABSENT_COLOR)
            ax.text(0.5, 0.5, f"layer {layer} has no attention", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(label, fontsize=10)
            continue
        prev = _draw_pattern(ax, np.asarray(patterns[layer])[head])
        ax.set_title(f"{label}: layer {layer}, head {head}\nprevious-token score on this text {prev:.2f}", fontsize=10)
        _token_ticks(ax, tokens, "x")
        _token_ticks(ax, tokens, "y")
        ax.set_xlabel("key (attended-to) token")
        ax.set_ylabel("query token")
    _pattern_colorbar(fig, list(axes), "attention weight", 0.8)
    return fig


def coefficients_over_text(tokens: Sequence[str], coefficients_by_arm: Mapping[str, np.ndarray | None],
                           width: int = 72) -> Figure:
    """The text itself, each token boxed and shaded by its smear coefficient; one block per smear arm.

    Arms given None (no smear) are named in the title instead of drawing an uncoloured copy of the text.
    """
    if not len(tokens):
        raise AnalysisError("no tokens to draw")
    drawn = {a: np.asarray(c, float) for a, c in coefficients_by_arm.items() if c is not None}
    if not drawn:
        raise AnalysisError("no smear coefficients: none of these models has a smear")
    for c in drawn.values():
        if c.shape != (len(tokens),):
            raise AnalysisError(f"coefficients must have one value per token ({len(tokens)}); got shape {c.shape}")
    vmax = max([float(np.nanmax(c)) for c in drawn.values() if np.isfinite(c).any()] + [1e-6])
    norm = Normalize(0, vmax)
    cmap = matplotlib.colormaps["Oranges"]

    # Lay the tokens out as text in character cells: wrap at `width`, break after newlines.
    cells, x, line = [], 0, 0
    for i, tok in enumerate(tokens):
        shown = tok.replace("\n", "⏎").replace("\t", "→") or "∅"
        if x + len(shown) > width and x > 0:
            x, line = 0, line + 1
        cells.append((i, x, line, shown))
        x += len(shown)
        if "\n" in tok:
            x, line = 0, line + 1
    n_lines = line + 1
    font = 9.5
    char_in = 0.6 * font / 72  # DejaVu Sans Mono advances 0.6 em per character
    fig_w = max(7.5, char_in * width + 0.4)  # titles need ~7.5 in; the text keeps its character grid
    fig = figure(fig_w, len(drawn) * (0.2 * n_lines + 0.45) + 1.4)
    axes = np.atleast_1d(fig.subplots(len(drawn), 1, squeeze=False)).ravel()
    for ax, (arm, coef) in zip(axes, drawn.items()):
        ax.set_xlim(0, (fig_w - 0.4) / char_in)
        ax.set_ylim(n_lines, 0)
        ax.axis("off")
        ax.set_title(f"{arm_label(arm)}: mean coefficient {np.nanmean(coef):.3f}, "
                     f"max {np.nanmax(coef):.3f}", fontsize=9, loc="left")
        for i, cx, cy, shown in cells:
            c = coef[i]
            level = norm(c) if np.isfinite(c) else 0.0
            face = cmap(level) if np.isfinite(c) else "#f2f2f2"
            ax.add_patch(Rectangle((cx, cy + 0.06), len(shown), 0.88, facecolor=face, edgecolor="white", lw=0.8))
            ax.text(cx + len(shown) / 2, cy + 0.5, shown, ha="center", va="center", family="monospace",
                    fontsize=font, color="white" if level > 0.6 else "black")
    fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), ax=list(axes), location="bottom", shrink=0.6, aspect=40,
                 label="smear coefficient λ·σ(w·e): share of the previous token's embedding added")
    absent = [arm_label(a) for a, c in coefficients_by_arm.items() if c is None]
    fig.suptitle("Smear coefficient of each token, over the text"
                 + (f"\n({', '.join(absent)}: no smear, coefficient 0)" if absent else ""), fontsize=10)
    return fig


def inspect_arrays(result: Any) -> tuple[list[np.ndarray | None], list[str], np.ndarray | None]:
    """(patterns, tokens, coefficients) from `analysis.measures.inspect.inspect_text`'s result (mapping or object).

    patterns: per layer (heads, T, T) or None where the layer has no attention; tokens: T decoded
    strings; coefficients: T smear coefficients, or None for a model without smear.
    """
    get = (lambda k: result.get(k)) if isinstance(result, Mapping) else (lambda k: getattr(result, k, None))
    patterns, tokens, coef = get("patterns"), get("tokens"), get("coefficients")
    if patterns is None or tokens is None:
        raise AnalysisError("inspect_text returned no 'patterns' or 'tokens'")
    patterns = [None if p is None else np.asarray(p, dtype=float) for p in patterns]
    return patterns, [str(t) for t in tokens], None if coef is None else np.asarray(coef, dtype=float).reshape(-1)


# ---------------------------------------------------------------------------------------------
# Notebook cell bodies (04_inspect)


def _study_arms(root: Path) -> list[str]:
    """The arms a study folder's study.json plans, in its order ([] without one): the order pages show them."""
    try:
        arms = json.loads((root / "study.json").read_text()).get("arms", [])
    except (OSError, json.JSONDecodeError, AttributeError):
        return []  # no plan (a folder of train-pair runs) or an unreadable one: the default order
    return [str(a) for a in arms] if isinstance(arms, list) else []


def pick_runs(checkpoints: str | Path, preset: str | None = None, seed: int | None = None,
              arms: Sequence[str] | None = None) -> dict[str, Path]:
    """One run folder per arm of one seed, in the study's arm order (study.json's, else baseline, smear, the
    rest by name). `arms`: only these, in this order; `seed` None: the lowest seed with every arm wanted."""
    root = Path(checkpoints)
    if not root.is_dir():
        raise AnalysisError(f"{root}: no such checkpoints folder")
    found = []
    for manifest in sorted(root.glob("*/run.json")):
        try:
            m = json.loads(manifest.read_text())
        except (OSError, ValueError, RecursionError):
            continue  # a half-written run folder is not a candidate
        if not isinstance(m, dict) or not isinstance(m.get("seed"), int):
            continue  # nor a damaged one
        if preset is None or m.get("preset") == preset:
            found.append((m.get("preset"), str(m.get("arm")), m.get("seed"), manifest.parent))
    if not found:
        raise AnalysisError(f"{root}: no run folders with a run.json" + (f" of preset {preset!r}" if preset else ""))
    presets = sorted({str(p) for p, *_ in found})
    if len(presets) > 1:
        raise AnalysisError(f"{root} holds runs of several presets ({', '.join(presets)}): choose one (preset)")
    by_seed: dict[int, dict[str, Path]] = {}
    for _, arm, s, path in found:
        by_seed.setdefault(s, {})[arm] = path
    if seed is None:
        every = set(arms) if arms else {a for runs in by_seed.values() for a in runs}
        complete = [s for s in sorted(by_seed) if every <= set(by_seed[s])]
        seed = complete[0] if complete else min(by_seed)
    if seed not in by_seed:
        raise AnalysisError(f"no run of seed {seed} in {root} (seeds: {', '.join(map(str, sorted(by_seed)))})")
    runs = by_seed[seed]
    planned = _study_arms(root)
    order = [a for a in planned if a in runs] + [a for a in arm_order(runs) if a not in planned]
    missing = [a for a in arms or () if a not in runs]
    if missing:
        raise AnalysisError(f"no {missing[0]} run of seed {seed} in {root} (arms there: {', '.join(order)})")
    return {a: runs[a] for a in (arms or order)}


def notebook_inspect(checkpoints: str | Path, text: str, inspect_text: Callable | None, preset: str | None = None,
                     seed: int | None = None, load_model: Callable | None = None) -> dict[str, tuple] | None:
    """Notebook cell body: run `inspect_text` on the last checkpoint of every arm of one seed, in the study's
    arm order; (patterns, tokens, coefficients) per arm."""
    if inspect_text is None:
        return None  # the import cell said why
    try:
        runs = pick_runs(checkpoints, preset, seed)
        if load_model is None:  # torch: imported only when there is a model to load
            from analysis.loading import load_checkpoint_model as load_model  # attaches the run's tokenizer
        for arm in ARMS:
            if arm not in runs:
                display_markdown(f"*No {arm} run for this seed: the other arms are shown.*")
        out = {}
        for arm, run in runs.items():
            model, _ = load_model(run)
            out[arm] = inspect_arrays(inspect_text(model, text))
    except SmearlensError as e:
        display_markdown(f"**Inspect not possible:** {e}.")
        return None
    display_markdown("Inspecting " + "; ".join(f"{arm_label(a)}: `{runs[a]}`" for a in out) + ".")
    return out


def _best_head(patterns: Sequence[np.ndarray | None]) -> tuple[int, int]:
    best, where = -1.0, (0, 0)
    for layer, p in enumerate(patterns):
        if p is None or np.asarray(p).shape[-1] < 2:
            continue
        scores = np.diagonal(np.asarray(p), offset=-1, axis1=-2, axis2=-1).mean(-1)
        if scores.max() > best:
            best, where = float(scores.max()), (layer, int(scores.argmax()))
    return where


def show_inspect(results: Mapping[str, tuple] | None, figures_dir: str | Path, what: str = "head",
                 layer: int | None = None, head: int | None = None) -> Path | None:
    """Notebook cell body for the inspect results: what = "head" (every arm), "grid", or "coefficients".

    With no layer/head given, "head" shows the baseline's strongest previous-token head on this text.
    """
    if not results:
        display_markdown("*Nothing to draw: no inspect results (see above).*")
        return None
    tokens = next(iter(results.values()))[1]
    if any(r[1] != tokens for r in results.values()):
        display_markdown("**The arms tokenised the text differently**; the figures need one token sequence.")
        return None
    if what == "head":
        ref = results.get("baseline", next(iter(results.values())))[0]
        if layer is None or head is None:
            layer, head = _best_head(ref)
        return show_figure("Attention pattern", lambda: attention_head({a: r[0] for a, r in results.items()}, tokens,
                                                                       layer, head), figures_dir, "inspect_head")
    if what == "grid":
        paths = [show_figure(f"Attention grid ({arm})", lambda r=r, arm=arm: attention_grid(
            r[0], tokens, f"{arm_label(arm)}: every head's attention on this text"),
            figures_dir, f"inspect_grid_{arm}") for arm, r in results.items()]
        return next((p for p in paths if p), None)
    if what == "coefficients":
        return show_figure("Smear coefficients over the text", lambda: coefficients_over_text(
            tokens, {a: r[2] for a, r in results.items()}), figures_dir, "inspect_coefficients")
    raise AnalysisError(f"what={what!r}: choose head, grid or coefficients")
