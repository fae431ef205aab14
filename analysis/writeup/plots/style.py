"""The look shared by every figure (arm colours and names, metric units, the 0–1 score scale), the
drawing pieces more than one family uses, and saving and showing a figure."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch, Rectangle
from matplotlib.ticker import EngFormatter

from analysis import stats
from trainer.errors import AnalysisError, SmearlensError
from trainer.io import atomic_path



class _ArmStyle(dict):
    """Per-arm style; an arm not listed (e.g. "dose-0.8") gets the next free colour, or its own name."""

    def __init__(self, known: dict, spare: Sequence[str] | None = None):
        super().__init__(known)
        self._spare = list(spare) if spare is not None else None

    def __missing__(self, arm: str) -> str:
        if self._spare is None:
            return arm
        free = [c for c in self._spare if c not in self.values()]
        self[arm] = free[0] if free else self._spare[len(self) % len(self._spare)]  # past them all: cycle
        return self[arm]


def _palette() -> list[str]:
    """Distinct colours for arms beyond baseline and smear: tab10's, then tab20's and tab20b's lighter and
    darker tones (a screen has 20 arms)."""
    from matplotlib import colormaps
    from matplotlib.colors import to_hex

    first = ["#2ca02c", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f", "#d62728"]
    more = [to_hex(c) for name in ("tab20", "tab20b") for c in colormaps[name].colors]
    taken = {"#3b6fb6", "#e07b28", "#1f77b4", "#ff7f0e"}  # baseline's and smear's, and the tab blues/oranges
    return first + [c for c in more if c not in first and c not in taken]


ARM_COLORS = _ArmStyle({"baseline": "#3b6fb6", "smear": "#e07b28"}, _palette())
ARM_LABELS = _ArmStyle({"baseline": "baseline (no smear)", "smear": "smear"})


def arms_in(df: pd.DataFrame) -> list[str]:
    """baseline and smear (panels say when they have no runs), then every other arm in `df`."""
    return stats.arm_order(set(stats.ARMS) | set(df["arm"].astype(str)))


def bar_offset(i: int, n_arms: int) -> tuple[float, float]:
    """Arm i's bar offset and width when `n_arms` bars share a slot (two arms: 0.36 wide, 0.38 apart)."""
    w = 0.76 / n_arms
    return (i - (n_arms - 1) / 2) * w, w - 0.02
# (name, unit) per head metric; units as the analysis defines them (SPEC, Metrics).
METRIC_LABELS = {
    "prev_token": ("previous-token score", "attention on token i−1, 0–1"),
    "induction": ("induction score", "0–1"),
    "duplicate_token": ("duplicate-token score", "0–1"),
    "entropy": ("attention entropy", "nats"),
    "distance": ("mean attention distance", "tokens"),
    "bos": ("attention to BOS", "fraction, 0–1"),
    "ablation_zero": ("loss increase, head zero-ablated", "nats/token"),
    "ablation_mean": ("loss increase, head mean-ablated", "nats/token"),
}
PROFILE_METRICS = ("prev_token", "induction", "duplicate_token", "entropy", "distance", "bos")
ABSENT_COLOR = "#d9d9d9"
ABSENT_EDGE = "#8c8c8c"  # the hatching over layers without attention
OUTLINE_COLOR = "#d62728"  # outlines previous-token heads
SCORE_CMAP = matplotlib.colormaps["viridis"].with_extremes(bad=ABSENT_COLOR)
DPI = 110
MAX_SEED_LEGEND = 8  # past this many seeds a figure draws them unnamed (a legend of 32 seeds buries the axes)


def figure(width: float, height: float) -> Figure:
    """A new figure, no pyplot: no global state, no GUI backend."""
    return Figure(figsize=(width, height), layout="constrained", dpi=DPI)


def need(df: pd.DataFrame | None, what: str) -> pd.DataFrame:
    """`df`, or AnalysisError("no <what>") when it is missing or empty."""
    if df is None or not len(df):
        raise AnalysisError(f"no {what}")
    return df


def preset_text(df: pd.DataFrame) -> str:
    return ", ".join(sorted(set(df["preset"].astype(str))))


def seed_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def arm_label(arm: str) -> str:
    return ARM_LABELS.get(arm, arm)


def display_token(text: str, limit: int = 18) -> str:
    """A decoded token made visible: spaces as ␣, newlines as ⏎, tabs as →, other control characters as \\xNN."""
    if not isinstance(text, str) or text == "":
        return "∅"
    shown = text.replace(" ", "␣").replace("\n", "⏎").replace("\t", "→").replace("\r", "␍")
    # other control characters have no glyph in any font: show their code (a byte-level BPE has them as tokens)
    shown = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in shown)
    return shown if len(shown) <= limit else shown[: limit - 1] + "…"


# ---------------------------------------------------------------------------------------------
# Axes over training


def token_axis(ax, x: np.ndarray) -> None:
    ax.set_xlabel("tokens seen")
    x = np.asarray(x, float)
    if len(x) and x.min() > 0 and x.max() / x.min() >= 20:
        ax.set_xscale("log")  # checkpoints are log-spaced
    ax.xaxis.set_major_formatter(EngFormatter(sep=""))


# ---------------------------------------------------------------------------------------------
# Layer × head grids (the previous-token heatmaps, and the ablation when there are many heads)


def layout(scores: pd.DataFrame, n_layers: int | None = None) -> tuple[int, int]:
    """(layers, heads) of the grid; layers without attention rows show as gaps."""
    layers = int(scores["layer"].max()) + 1
    return max(layers, n_layers or 0), int(scores["head"].max()) + 1


def grid_size(n_l: int, n_h: int, panels: int, rows: int = 1) -> tuple[float, float]:
    return 2.4 + panels * max(3.2, 0.62 * n_h + 0.8), rows * (0.9 + 0.42 * n_l) + 1.0


def head_grid(ax, values: pd.Series, n_l: int, n_h: int, present: set[int], cmap, norm: Normalize,
              fmt: str, outline: set[tuple[int, int]] = frozenset()) -> None:
    """One layer × head heatmap: values written in the cells, outlined cells, absent layers hatched."""
    ax.set_xticks(range(n_h))
    ax.set_yticks(range(n_l))
    ax.set_xlabel("head")
    ax.set_xlim(-0.5, n_h - 0.5)
    ax.set_ylim(n_l - 0.5, -0.5)
    grid = np.full((n_l, n_h), np.nan)
    for (layer, head), v in values.items():
        grid[int(layer), int(head)] = v
    ax.imshow(grid, norm=norm, cmap=cmap, aspect="auto")
    small = n_h > 8  # past 8 heads two decimals no longer fit a cell
    for layer in range(n_l):
        if layer not in present:
            ax.add_patch(Rectangle((-0.5, layer - 0.5), n_h, 1, facecolor=ABSENT_COLOR, hatch="///",
                                   edgecolor=ABSENT_EDGE, lw=0))
            ax.text((n_h - 1) / 2, layer, "no attention", ha="center", va="center", fontsize=8, color="#333",
                    bbox=dict(facecolor="white", edgecolor="none", alpha=0.8, pad=1))
            continue
        for head in range(n_h):
            v = grid[layer, head]
            if np.isnan(v):
                continue
            if not small:
                r, g, b, _ = cmap(norm(v))
                ax.text(head, layer, fmt.format(v), ha="center", va="center", fontsize=8,
                        color="white" if 0.299 * r + 0.587 * g + 0.114 * b < 0.5 else "black")
            if (layer, head) in outline:
                ax.add_patch(Rectangle((head - 0.46, layer - 0.46), 0.92, 0.92, fill=False, edgecolor=OUTLINE_COLOR,
                                       lw=2.2))


def outline_handle(label: str) -> Patch:
    """The legend entry for `head_grid`'s outlined cells."""
    return Patch(facecolor="none", edgecolor=OUTLINE_COLOR, lw=2, label=label)


def no_runs(ax, arm: str) -> None:
    ax.set_title(f"{ARM_LABELS[arm]}\n(no runs)", fontsize=10)
    ax.text(0.5, 0.5, f"no {arm} runs in these tables", ha="center", va="center", transform=ax.transAxes)


# ---------------------------------------------------------------------------------------------
# Saving and showing


def save(fig: Figure, folder: str | Path, name: str, formats: Sequence[str] = ("png", "svg")) -> list[Path]:
    """Write `name.png` and `name.svg` into `folder`, each to a temporary file renamed into place. The same figure
    gives the same bytes (no date, SVG ids salted by the name), so a figure redrawn unchanged is no change in git."""
    out = []
    for fmt in formats:
        path = Path(folder) / f"{name}.{fmt}"
        with atomic_path(path) as tmp, matplotlib.rc_context({"svg.hashsalt": name}):
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"Date": None} if fmt == "svg" else None)
        out.append(path)
    return out


def display_markdown(text: str) -> None:
    """Markdown in a notebook, plain text elsewhere."""
    try:
        from IPython.display import Markdown, display

        display(Markdown(text))
    except ImportError:
        print(text)


def show_figure(title: str, make: Callable[[], Figure], figures_dir: str | Path, name: str) -> Path | None:
    """Draw, save and display one figure, or show why it is absent."""
    try:
        png = save(make(), figures_dir, name)[0]
    except SmearlensError as e:
        display_markdown(f"**{title}: not drawn** — {e}.")
        return None
    try:
        from IPython.display import Image, display

        display(Image(filename=str(png)))
    except ImportError:
        print(f"saved {png}")
    return png
