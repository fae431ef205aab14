"""The report's mechanism section: where the previous token travels (path attribution, offsets, read-outs,
knock-outs), each arm's mean against 0 or its paired difference from a reference arm, and a conclusion in words."""

from __future__ import annotations

import math

import pandas as pd

from analysis.stats import mechanism_stats as mech
from analysis import stats
from analysis.writeup.markdown import _ci, _md_table, _num, _p, _signflip


def _vs(r: dict) -> str:
    return f"{r['arm']} − {r['reference']}" if r.get("reference") else f"{r['arm']} vs 0"


def _said(r: dict) -> str:
    """A verdict as a phrase: "higher than 0" for a one-sample test, "smear − baseline: lower" for a pair."""
    v = r["verdict"]
    if not r.get("reference"):
        return f"{v} than 0" if v in ("higher", "lower") else v
    return f"{_vs(r)}: {v}"


def mechanism_rows_markdown(df: pd.DataFrame | None, fmt: str = "{:.3f}") -> str:
    """Rows of mechanism_stats tests: each arm's mean against 0 or its paired difference from a reference arm."""
    if df is None or not len(df):
        return "*No rows.*"
    rows = []
    for r in df.to_dict("records"):
        means = (f"{_num(r.get('mean_reference'), fmt)} → {_num(r.get('mean_arm'), fmt)}"
                 if r.get("reference") else "—")
        rows.append([r["label"], _vs(r), r["n"], means, _num(r["mean"], fmt), _ci(r, fmt), _p(r["p_value"]),
                     _signflip(r), f"{_p(r['p_tost'])} (±{r['sesoi']:g})" if math.isfinite(r["p_tost"]) else "—",
                     r["verdict"]])
    return _md_table(["measure (per run, final checkpoint)", "test", "n seeds (pairs)", "means (reference → arm)",
                      "mean or mean paired difference", "95% CI (t)", "t p", "sign-flip p (min reachable)",
                      "TOST p (±SESOI)", "verdict"], rows)


def mechanism_markdown(summary: mech.MechanismSummary) -> str:
    """The per-arm numbers of the mechanism tables with their t CIs and paired comparisons."""
    parts = []
    for key, title, df, fmt in (
            ("paths", "Path shares (token i−1, Fisher-linear share of its effect on the prediction at i)",
             summary.share_tests, "{:.3f}"),
            ("readout", "Read-out of token i−1 above the backward-bigram baseline (probe accuracy)",
             summary.readout_tests, "{:.3f}"),
            ("knockouts", "Knock-outs (loss increase, nats/token; heads mean-ablated)", summary.knockout_tests, "{:.4f}")):
        parts += [f"#### {title}", ""]
        parts += [f"*Absent: {summary.missing[key]}.*" if key in summary.missing else mechanism_rows_markdown(df, fmt), ""]
    parts.append(
        "Each row is exploratory (not in the primary family, not corrected). *vs 0*: a quantity measured within each "
        "run (a share, a loss increase, open − closed) against 0 across seeds; *arm − reference*: paired by seed. "
        f"Verdicts: *higher* / *lower* at p < {stats.ALPHA:g} (paired t), else *equivalent within ±SESOI* (TOST), else "
        "*too few seeds to tell*. SESOIs: " + ", ".join(f"{k} ±{v:g}" for k, v in mech.SESOI.items()) + ".")
    return "\n".join(parts)


def _pick(df: pd.DataFrame | None, **where) -> dict | None:
    if df is None or not len(df):
        return None
    sel = pd.Series(True, index=df.index)
    for k, v in where.items():
        if k not in df.columns:
            return None
        sel &= df[k].fillna("") == v if isinstance(v, str) else df[k] == v
    rows = df[sel].to_dict("records")
    return rows[0] if rows else None


def _with_ci(r: dict, fmt: str) -> str:
    return f"{_num(r['mean'], fmt)} (95% CI {_ci(r, fmt)}, {seed_count(r['n'])})"


def seed_count(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def mechanism_conclusion(summary: mech.MechanismSummary) -> str:
    """What the mechanism tables say, in sentences whose numbers are all computed from them."""
    out = []
    st = summary.share_tests
    share = _pick(st, kind="share", arm=stats.RECORD_ARM, gate="all")
    if share:
        text = f"In the smear arm the smear term carries {_with_ci(share, '{:.2f}')} of token i−1's effect on the next-token prediction"
        opened, closed = _pick(st, kind="share", arm=stats.RECORD_ARM, gate="open"), _pick(st, kind="share", arm=stats.RECORD_ARM, gate="closed")
        gap = _pick(st, kind="open_minus_closed", arm=stats.RECORD_ARM)
        if opened and closed and gap:
            text += (f" ({_num(opened['mean'], '{:.2f}')} where its gate is open, {_num(closed['mean'], '{:.2f}')} where "
                     f"it is closed; open − closed {_said(gap)})")
        others = [r for r in st.to_dict("records") if r["kind"] == "vs_reference"] if st is not None and len(st) else []
        text += "".join(f"; {r['arm']} − smear: {_num(r['mean'], '{:+.2f}')} {_ci(r, '{:.2f}')}, {r['verdict']}" for r in others)
        out.append(text + ".")
    elif "paths" in summary.missing:
        out.append(f"Path shares absent ({summary.missing['paths']}).")
    rt = summary.readout_tests
    if rt is not None and len(rt):
        first, last = int(rt["layer"].min()), int(rt["layer"].max())
        bits = []
        for layer in (first, last):
            where = "the final residual" if layer == last else f"the input of layer {layer}"
            rows = [r for r in rt[rt["layer"] == layer].to_dict("records")]
            if rows:
                bits.append(f"at {where}, baseline {_num(rows[0]['mean_reference'])}, "
                            + ", ".join(f"{r['arm']} {_num(r['mean_arm'])} ({_said(r)}, difference "
                                        f"{_num(r['mean'], '{:+.3f}')} {_ci(r, '{:.3f}')})" for r in rows))
        out.append("Token i−1's linear read-out above the backward-bigram baseline (probe accuracy): "
                   + "; ".join(bits) + ".")
    elif "readout" in summary.missing:
        out.append(f"Read-out absent ({summary.missing['readout']}).")
    kt = summary.knockout_tests
    if kt is not None and len(kt):
        bits = []
        for arm in stats.arm_order(kt["arm"]):
            r = _pick(kt, kind="vs_zero", arm=arm, effect="smear", smear_ablation="zero")
            if r:
                bits.append(f"knocking the smear term out (λ = 0) raises the loss of {arm} by {_with_ci(r, '{:.4f}')} "
                            f"nats/token ({_said(r)})")
        k1 = int(kt.loc[kt["effect"] == "head", "k"].min()) if (kt["effect"] == "head").any() else None
        if k1 is not None:
            base = _pick(kt, kind="vs_zero", arm=stats.BASELINE, effect="head", k=k1)
            if base:
                bits.append(f"ablating the top-{k1} previous-token head raises the baseline's by {_with_ci(base, '{:.4f}')}")
            for r in (kt[(kt["kind"] == "vs_reference") & (kt["effect"] == "head") & (kt["k"] == k1)].to_dict("records")):
                bits.append(f"{r['arm']}'s by {_num(r['mean_arm'], '{:.4f}')} ({_said(r)})")
            for arm in stats.arm_order(kt["arm"]):
                r = _pick(kt, kind="vs_zero", arm=arm, effect="interaction", k=k1, smear_ablation="zero")
                if r:
                    bits.append(f"the interaction of the two in {arm} is {_num(r['mean'], '{:+.4f}')} {_ci(r, '{:.4f}')} "
                                f"({_said(r)})")
        out.append("Knock-outs: " + "; ".join(bits) + " (an interaction above 0: the two routes stand in for each "
                   "other, so knocking out both costs more than the sum of each).")
    elif "knockouts" in summary.missing:
        out.append(f"Knock-outs absent ({summary.missing['knockouts']}).")
    return " ".join(out)


