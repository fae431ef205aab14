"""The report's sections on studies of many arms: the dose-response (≥ 2 fixed doses `dose-<c>`) and why
the learned gate stays low (the gate-question arms). `analysis/writeup/report.py` places them in the report."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from analysis.stats import dose_response as dr
from analysis.stats import gate_arms
from analysis import stats
from analysis.writeup.markdown import _ci, _md_table, _num, _p
from analysis.writeup.plots.gate import PART_LABELS
from analysis.stats import Summary, Tables


# ---------------------------------------------------------------------------------------------
# Dose-response (only with ≥ 2 fixed doses)


def _mean_ci(r: dict | None, fmt: str) -> str:
    if not r or not r["n"]:
        return "—"
    ci = f" [{_num(r['ci_lo'], fmt)}, {_num(r['ci_hi'], fmt)}]" if math.isfinite(r["ci_lo"]) else ""
    return _num(r["mean"], fmt) + ci


def unit_span(units) -> str:
    """Units as seed ranges, study by study: "0–31; screen: 0–2"."""
    by: dict[str, list[int]] = {}
    for u in dr.sorted_units(units):
        study, _, seed = u.rpartition(":")
        by.setdefault(study, []).append(int(seed))
    out = []
    for study, seeds in by.items():
        runs: list[list[int]] = []
        for seed in seeds:
            if runs and seed == runs[-1][-1] + 1:
                runs[-1].append(seed)
            else:
                runs.append([seed])
        text = [f"{r[0]}–{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs]
        out.append((f"{study}: " if study else "") + ", ".join(text))
    return "; ".join(out)


def dose_markdown(result: dr.DoseResponse) -> str:
    """The dose-response: per arm mean [95% t CI] of each measure, the fits, the dose of lowest loss and the
    learned arms against the doses' curve; every number from `result`."""
    t, opt = result.table, result.optimum
    n_units, pooled = result.n_units, "study" in t and t["study"].nunique() > 1
    n_doses = int((t.drop_duplicates("arm")["kind"] == "dose").sum())
    fmt = {m: f for m, (_, f) in dr.MEASURES.items()} | {"coef_mean": "{:.3f}", "val_loss_vs_baseline": "{:+.4f}"}
    cols = ["coef_mean", *dr.MEASURES, "val_loss_vs_baseline"]
    names = {"coef_mean": "mean coefficient on data", "val_loss_vs_baseline": "val loss − baseline (paired)"}
    a = result.arms
    rows = []
    for arm in a["arm"].drop_duplicates():
        g = a[a["arm"] == arm]
        first = g.iloc[0]
        pick = lambda m: next(iter(g[g["measure"] == m].to_dict("records")), None)
        c = "0" if first["kind"] == "baseline" else f"{first['c']:g}" if first["kind"] == "dose" else "learned"
        rows.append([arm, c, int(g["n"].max())] + [_mean_ci(pick(m), fmt[m]) for m in cols])
    parts = [
        f"{n_doses} fixed doses `dose-<c>` (c · e[i−1] added to each token's embedding before the norm; no gate, none "
        f"at a BOS), the baseline (c = 0) and the learned arms, seeds {unit_span(dr.units(t))}. Each arm reuses "
        "the baseline's seeds (same initial weights, same data order), so the fits carry a random intercept per "
        "seed. The share is *measured* (path attribution): the learned arm is gated per token, the doses are not, "
        "so the share, not c, is where the two can be set side by side."
        + (" The tables pool several studies: a seed of a later study (`study:seed`) is a unit of its own, paired "
           "with that study's baseline, since a seed trained again (on another machine kind, say) is another run."
           if pooled else "")
        + (f" With {n_units} seeds this is a screen: it can rank doses and show a trend, not pin down small "
           "differences." if n_units <= 5 else ""), "",
        "#### Per arm (final step; mean [95% t CI] over seeds)", "",
        _md_table(["arm", "c", "seeds"] + [names.get(m) or dr.measure_label(m, result.threshold) for m in cols], rows),
        ""]
    ft = result.fit_table
    shown = ft[ft["term"] != "intercept"]
    frows = []
    for r in shown.to_dict("records"):
        f = dr.MEASURES[r["measure"]][1]
        if r["method"] == "not fitted":
            frows.append([dr.measure_label(r["measure"], result.threshold), dr.XS[r["x"]], r["model"], "—", "—",
                          "—", "—", "not fitted", r["note"]])
            continue
        est_fmt = "{:+.3g}"
        frows.append([dr.measure_label(r["measure"], result.threshold), dr.XS[r["x"]], r["model"],
                      "slope" if r["term"] == "x" else "curvature (x²)",
                      f"{_num(r['estimate'], est_fmt)} [{_num(r['ci_lo'], est_fmt)}, {_num(r['ci_hi'], est_fmt)}]",
                      _p(r["p"]), f"{int(r['n_obs'])} / {int(r['n_seeds'])}", r["method"], r["note"] or ""])
    parts += ["#### Fits", "", _md_table(["measure", "against", "model", "term", "estimate [95% CI]", "p",
                                          "runs / seeds", "method", "note"], frows), "",
              "Each measure is fitted against ln c over the fixed doses and against the measured share over the "
              "baseline and the doses, with a random intercept per seed (statsmodels MixedLM, REML). CIs and p use t "
              "with runs − fixed terms − (seeds − 1) degrees of freedom. Where MixedLM fails, does not converge or "
              "puts the seed variance at 0 (frequent with few seeds), the fit is OLS with seed fixed effects instead, "
              "as *method* says; *note* keeps what the optimiser reported. Intercepts are in the tidy fit table "
              "(`dose_response.fit_table`).", ""]
    parts += ["#### The dose of lowest validation loss", ""]
    lines = []
    if math.isfinite(opt["c_star"]):
        lines.append(f"The quadratic in ln c has its minimum at **c* = {opt['c_star']:.3g}** (95% CI "
                     f"{opt['c_lo']:.3g}–{opt['c_hi']:.3g}, delta method; curvature {opt['curvature']:.3g} "
                     f"[{opt['curvature_lo']:.3g}, {opt['curvature_hi']:.3g}], {opt['method']})"
                     + (f"; {opt['note']}" if opt["note"] else "") + ".")
    else:
        lines.append(f"No fitted dose of lowest loss: {opt['note']}.")
    if opt["best_arm"]:
        lines.append(f"Of the doses tried, the lowest mean paired loss against the baseline is at c = {opt['best_c']:g} "
                     f"(`{opt['best_arm']}`): {opt['best_diff']:+.4f} nats/token [{opt['best_lo']:+.4f}, "
                     f"{opt['best_hi']:+.4f}], paired t p {_p(opt['best_p'])}, {opt['best_n']} pairs. Picking the "
                     "lowest of several doses favours a lucky one: read its CI as optimistic.")
    elif opt["paired_note"]:
        lines.append(f"No paired comparison: {opt['paired_note']}.")
    parts += [" ".join(lines), ""]
    lv = result.learned
    if len(lv):
        lrows = []
        for r in lv.to_dict("records"):
            f = dr.MEASURES[r["measure"]][1]
            if not r.get("n"):
                lrows.append([r["arm"], dr.measure_label(r["measure"], result.threshold), _num(r["share"]), "—", "—",
                              "—", "—", "—", r["verdict"]])
                continue
            lrows.append([r["arm"], dr.measure_label(r["measure"], result.threshold),
                          _num(r["share"]) + (" (beyond the doses' shares)" if r["extrapolated"] else ""),
                          _num(r["observed"], f), _num(r["predicted"], f), _num(r["mean"], f) + " " + _ci(r, f),
                          _p(r["p_value"]), r["n"], r["verdict"]])
        parts += ["#### The learned arm against the doses' curve", "",
                  _md_table(["arm", "measure", "its mean share", "observed", "the doses' curve there",
                             "observed − curve [95% t CI]", "t p", "seeds", "verdict"], lrows), "",
                  "Per seed, the learned run's value minus the doses' fit at that run's measured share (with the "
                  "seed's own offset; validation loss from the quadratic), then the mean over seeds with a t CI. The "
                  "CI counts the seed-to-seed spread of these differences, not the uncertainty of the curve itself. "
                  "*Equivalent* (TOST at the measure's SESOI) or a CI around 0 means the learned arm sits on the "
                  "doses' curve: at its share it does what a fixed dose of that share does.", ""]
    return "\n".join(parts).rstrip()


# ---------------------------------------------------------------------------------------------
# Why the learned gate stays low


def _answer(v, verdict: str) -> str:
    if v is pd.NA or v is None or (isinstance(v, float) and math.isnan(v)):
        return verdict if verdict.startswith("absent") else "too few seeds to tell"
    return "yes" if bool(v) else "no"


def _diff_cell(r: dict, key: str, fmt: str) -> str:
    if not math.isfinite(r[key]):
        return r[f"{key}_verdict"] or "—"
    ci = (f" [{_num(r[f'{key}_low'], fmt)}, {_num(r[f'{key}_high'], fmt)}]" if math.isfinite(r[f"{key}_low"]) else "")
    return f"{_num(r[key], fmt)}{ci}: {r[f'{key}_verdict']}"


def gate_markdown(gate: gate_arms.GateSummary) -> str:
    """One row per arm: definition, losses and mass against the baseline and the best dose (mean paired
    difference, 95% t CI, verdict), final λ and coefficient, and the two answers."""
    mult = bool(gate.lr_mult)
    rows = []
    for r in gate.table.to_dict("records"):
        rows.append([r["arm"] + (" (best fixed dose)" if r["arm"] == gate.best_dose else ""), r["definition"]]
                    + ([_num(r["lr_mult"], "{:g}")] if mult else [])
                    + [r["n_seeds"], _num(r["val_loss"], "{:.4f}"), _diff_cell(r, "loss_vs_baseline", "{:+.4f}"),
                       _diff_cell(r, "loss_vs_dose", "{:+.4f}"), _diff_cell(r, "mass_vs_baseline", "{:+.3f}"),
                       _num(r["lambda_final"]), _num(r["coef_final"]),
                       _answer(r["reaches_best_dose"], r["loss_vs_dose_verdict"]),
                       _answer(r["frees_heads"], r["mass_vs_baseline_verdict"])])
    dose = gate.best_dose or "best dose"
    return _md_table(["arm", "definition"] + (["λ lr ×"] if mult else [])
                     + ["seeds", "val loss (mean)", "val loss − baseline", f"val loss − {dose}",
                        "prev-token mass − baseline", "final λ", "final mean coefficient",
                        f"reaches {dose}'s loss", "frees heads"], rows)


def _arm_list(arms: list[str]) -> str:
    return ", ".join(f"*{a}*" for a in arms) if arms else "none"


def gate_conclusion(gate: gate_arms.GateSummary, early: pd.DataFrame) -> str:
    """The section's summary in words, every number read from the tables."""
    t = gate.table
    out = []
    sesoi = stats.SESOI["val_loss"]
    if gate.best_dose is not None:
        best = t[t["arm"] == gate.best_dose].iloc[0]
        others = t[t["arm"] != gate.best_dose]
        said = lambda mask: _arm_list(list(others.loc[mask, "arm"]))
        out.append(f"The best fixed dose here is *{gate.best_dose}* (validation loss {_num(best['val_loss'], '{:.4f}')}). "
                   f"Reach its loss (lower, or equivalent within ±{sesoi:g} nats): {said(others['reaches_best_dose'].eq(True).fillna(False))}; "
                   f"do not (higher): {said(others['reaches_best_dose'].eq(False).fillna(False))}; "
                   f"too few seeds to tell: {said(others['reaches_best_dose'].isna())}.")
    else:
        out.append("No fixed dose arm (`dose-<c>`) is in these tables, so no arm is compared with the best dose.")
    frees = t["frees_heads"]
    out.append(f"Previous-token mass lower than the baseline's (heads freed): {_arm_list(list(t.loc[frees.eq(True).fillna(False), 'arm']))}; "
               f"not lower: {_arm_list(list(t.loc[frees.eq(False).fillna(False), 'arm']))}; "
               f"too few seeds to tell: {_arm_list(list(t.loc[frees.isna(), 'arm']))}.")
    both = t.loc[(t["reaches_best_dose"].eq(True) & frees.eq(True)).fillna(False) & (t["arm"] != gate.best_dose), "arm"]
    if gate.best_dose is not None:
        out.append(f"Both (the dose's loss and freed heads) without being a fixed dose: {_arm_list(list(both))}.")
    learned = [r for r in t.to_dict("records") if math.isfinite(r["lambda_final"]) and gate_arms.fixed_dose(r["arm"]) is None]
    if learned:
        out.append("At the last checkpoint λ (mean coefficient on data) is " + ", ".join(
            f"{r['arm']} {_num(r['lambda_final'])} ({_num(r['coef_final'])})" for r in learned) + ".")
    total = early[early["by"] == "total"] if len(early) else early
    if len(total):
        n = int(total["steps"].max())
        bits = [f"{r['arm']} {_num(r['value'], '{:+.3g}')}" for r in total.to_dict("records")]
        text = (f"Averaged over the first {n} steps, the pressure on λ (dL/dλ; > 0: descent lowers λ) is "
                + ", ".join(bits) + ".")
        arm = stats.RECORD_ARM if (total["arm"] == stats.RECORD_ARM).any() else str(total["arm"].iloc[0])
        doc = early[(early["arm"] == arm) & (early["by"] == "doc")]
        tot = float(total.loc[total["arm"] == arm, "value"].iloc[0])
        if len(doc) and tot != 0:
            top = doc.iloc[int(np.argmax(np.sign(tot) * doc["value"].to_numpy(float)))]
            label = PART_LABELS.get(("doc", top["part"]), top["part"])
            text += (f" In {arm} the largest share of it comes from positions where {label} "
                     f"({_num(top['value'], '{:+.3g}')}, {top['value'] / tot:.0%} of the total).")
        out.append(text)
    n_min = int(t["n_seeds"].min()) if len(t) else 0
    if n_min < gate_arms.SCREEN_SEEDS:
        out.append(f"With {n_min} seed{'s' if n_min != 1 else ''} per arm this is a screen: it points at arms worth a "
                   "powered study, and *too few seeds to tell* is its usual answer.")
    return " ".join(out)


def gate_section(tables: Tables, summary: Summary) -> tuple[gate_arms.GateSummary, pd.DataFrame] | None:
    """The section's numbers, or None when the tables hold no arm of this question."""
    if not gate_arms.arms_present(tables.arms, tables.configs):
        return None
    gate = gate_arms.gate_summary(summary.per_seed, tables.get("smear"), tables.get("record_smear"), tables.configs)
    return gate, gate_arms.early_pressure(tables.get("record_lambda"))


def gate_markdown_section(gate: gate_arms.GateSummary, early: pd.DataFrame) -> list[str]:
    return ["## Why the learned gate stays low", "",
            "The learned smear ends with a small coefficient while a fixed dose can have lower loss. The arms below "
            "ask why: λ started high, the dose held for the first steps then learned, or annealed to 0 (does the gain "
            "survive without the smear at the end?), the gate removed, the gate reading norm(e), and λ's learning "
            "rate scaled (a study-wide `--set smear_lr_mult=…`). Each arm is paired by seed with the baseline and "
            "with the best fixed dose present (mean paired difference, 95% t CI, exploratory verdict: *lower* / "
            f"*higher* at p < {stats.ALPHA:g}, else *equivalent within ±SESOI* by TOST, else *too few seeds to "
            "tell*). *Reaches the dose's loss*: lower or equivalent; *frees heads*: previous-token mass lower than "
            "the baseline's.", "",
            f"**Summary:** {gate_conclusion(gate, early)}", "", gate_markdown(gate), ""]


# ---------------------------------------------------------------------------------------------
# Canon layers (arms with canon_w)


def canon_markdown_section(tables: Tables) -> list[str]:
    """What each canon arm learned per offset k (w_k ⊙ e[i−k]): seed mean [95% t CI] of the weights' RMS
    and mean, and of the input ratio ‖w_k ⊙ e[i−k]‖ / ‖e[i]‖ on data; [] without canon rows."""
    from analysis.stats.mechanism_stats import one_sample

    canon = tables.get("canon")
    if canon is None:
        return []
    labels = {"weight_rms": ("RMS of w_k", "{:.4f}"), "weight_mean": ("mean of w_k", "{:+.4f}"),
              "input_ratio": ("‖w_k ⊙ e[i−k]‖ / ‖e[i]‖ on data", "{:.4f}")}
    rows = []
    for (arm, k), g in canon.groupby(["arm", "offset"], sort=True):
        cells = []
        for metric, (_, fmt) in labels.items():
            r = one_sample(g.loc[g["metric"] == metric, "value"])
            cells.append(_mean_ci(dict(r, ci_lo=r["ci_low"], ci_hi=r["ci_high"]), fmt))
        rows.append([arm, f"i−{k}" if k else "i (itself)", len(g["seed"].unique()), *cells])
    return ["## Canon layer: what each offset mixes in", "",
            "A canon arm adds Σ_k w_k ⊙ e[i−k] (k = 0..3, same document only) to the raw embedding before "
            "the norm, w zero-initialised. Per offset, at each run's final checkpoint: the learned weights' "
            "RMS and mean over the channels, and the size of what offset k adds against the token's own "
            "embedding on the analysis tokens (0 where i−k is in another document); seed mean [95% t CI].", "",
            _md_table(["arm", "offset", "seeds", *[label for label, _ in labels.values()]], rows), ""]
