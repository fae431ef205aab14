"""Markdown pieces the report's sections share: a table, numbers, p-values and CIs as the report writes them."""

from __future__ import annotations

import math
from typing import Any, Iterable, Sequence


def _md_table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return str(v).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(map(cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def _num(v: Any, fmt: str = "{:.3f}") -> str:
    try:
        return "—" if v is None or not math.isfinite(float(v)) else fmt.format(float(v))
    except (TypeError, ValueError):
        return str(v)


def _p(p: float) -> str:
    if p is None or not math.isfinite(p):
        return "—"
    if p == 0:
        return "0"
    return "< 0.0001" if p < 1e-4 else f"{p:.4f}" if p < 0.01 else f"{p:.3f}"


def _interval(lo: float, hi: float, fmt: str, missing: str = "—") -> str:
    """[lo, hi] in `fmt`, or `missing` where there is no interval."""
    return f"[{_num(lo, fmt)}, {_num(hi, fmt)}]" if math.isfinite(lo) else missing


def _ci(r: dict, fmt: str) -> str:
    return _interval(r["ci_low"], r["ci_high"], fmt)


def seed_ranges(seeds) -> str:
    """Seeds as runs of consecutive numbers: 0–31 rather than 32 numbers; 0, 2, 5–7; "none"."""
    seeds = sorted(set(int(s) for s in seeds))
    runs: list[list[int]] = []
    for s in seeds:
        if runs and s == runs[-1][-1] + 1:
            runs[-1].append(s)
        else:
            runs.append([s])
    return ", ".join(f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs) or "none"


def _seeds(r: dict) -> str:
    return str(r["n_pairs"]) if r["paired"] else f"unpaired ({r['n_baseline']} / {r['n_arm']})"


def _signflip(r: dict) -> str:
    # the floor 2/2ⁿ in two digits: with 32 pairs "< 0.0001" would hide how far below it can go
    floor = r["p_signflip_min"]
    return f"{_p(r['p_signflip'])} (≥ {floor:.2g})" if math.isfinite(r["p_signflip"]) else "—"

