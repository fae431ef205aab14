"""The report's section "The speedrun's questions" (figures/speedrun/PLAN.md): the four primary claims with their
steps equivalents where `smearlens steps-saved` wrote its tables beside the report, an answer to each of the
plan's questions from the verdicts and their CIs, the exploratory tables and the study's figures.
`analysis/writeup/report.py` adds it when the arms include a `-noattn0` arm or an early-smear arm, and writes
`speedrun_claims.csv` beside the report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from analysis import stats
from analysis.stats import speedrun as sp
from analysis.stats import steps_saved as ss
from analysis.stats.claims import claim_label
from analysis.stats.inference import SD_UPPER_LEVEL
from analysis.writeup.markdown import _interval, _md_table, _num, _p, _signflip
from analysis.writeup.plots.registry import SPEEDRUN_FIGURES
from analysis.stats import Summary, Tables
from trainer.arms import NOATTN0_SUFFIX
from trainer.errors import AnalysisError

NATS = "{:+.4f}"
NO_CURVES_NOTE = (f"{sp.NO_CURVES} (`smearlens steps-saved` writes them beside the report from the baseline trained "
                  "at other step budgets: the plan's part C)")


@dataclass
class SpeedrunSection:
    claims: pd.DataFrame  # speedrun.speedrun_claims, with speedrun.STEP_COLUMNS
    removals: pd.DataFrame  # speedrun.removal_comparisons, with steps
    arms: pd.DataFrame  # speedrun.arm_comparisons, with steps on the loss rows
    by_layer: pd.DataFrame  # speedrun.prev_mass_by_layer
    moves: pd.DataFrame  # speedrun.layer_moves
    early: pd.DataFrame  # speedrun.early_smear
    shape: ss.Shape | None
    steps_note: str  # why there are no steps, or what they rest on

    @property
    def csv(self) -> pd.DataFrame:
        """speedrun_claims.csv: one row per claim."""
        return sp.claims_table(self.claims)


def _ci(lo: float, hi: float, fmt: str = NATS) -> str:
    return _interval(lo, hi, fmt, "(no CI)")


def read_shape(folder: str | Path) -> tuple[ss.Shape | None, str]:
    """The steps-saved shape from the tables in `folder` (the report's), or None and why not."""
    folder = Path(folder)
    rate_path, budgets_path = folder / ss.RATE_FILE, folder / ss.BUDGETS_FILE
    if not rate_path.is_file():
        return None, NO_CURVES_NOTE
    try:
        rate = pd.read_csv(rate_path)
        budgets = pd.read_csv(budgets_path) if budgets_path.is_file() else None
        shape = ss.shape_from_tables(rate, budgets)
    except (AnalysisError, ValueError, OSError, UnicodeDecodeError, pd.errors.ParserError,
            pd.errors.EmptyDataError) as e:
        return None, f"no steps: the budget tables beside the report cannot be used ({e})"
    r = ss.exchange_rate(shape).iloc[0]
    return shape, (f"steps at {shape.n0} steps from `{ss.RATE_FILE}`: {shape.describe()}; 1% more steps lowers the "
                   f"loss by {r['nats_per_pct']:.4f} nats [{r['ci_low']:.4f}, {r['ci_high']:.4f}]")


def speedrun_section(tables: Tables, summary: Summary, folder: str | Path) -> SpeedrunSection | None:
    """The section's numbers, or None when the tables hold no arm of the speedrun study. `folder`: the report's,
    where `smearlens steps-saved` leaves its tables."""
    if not sp.study_present(tables.arms):
        return None
    shape, note = read_shape(folder)
    per_seed = summary.per_seed
    claims = sp.with_steps(sp.speedrun_claims(per_seed), shape)
    removals = sp.removal_comparisons(per_seed)
    arms = sp.arm_comparisons(per_seed)
    if len(removals):
        removals = _steps_on_loss(removals, shape)
    if len(arms):
        arms = _steps_on_loss(arms, shape)
    curves = sp.coefficient_curves(tables.get("record_lambda"), tables.get("record_smear"))
    return SpeedrunSection(claims=claims, removals=removals, arms=arms, by_layer=sp.prev_mass_by_layer(tables.heads),
                           moves=sp.layer_moves(tables.heads), early=sp.early_smear(curves, tables.arms) if len(curves)
                           else pd.DataFrame(columns=sp.EARLY_COLUMNS), shape=shape, steps_note=note)


def _steps_on_loss(rows: pd.DataFrame, shape: ss.Shape | None) -> pd.DataFrame:
    """Steps beside the validation-loss rows only (a previous-token score has no steps)."""
    loss = rows["claim"] == sp.LOSS
    out = sp.with_steps(rows, shape)
    out.loc[~loss, sp.STEP_COLUMNS] = math.nan
    out.loc[~loss, "steps_status"] = ""
    return out


# ---------------------------------------------------------------------------------------------
# Words


def steps_text(r: dict, n0: int | None) -> str:
    """A loss difference's steps equivalent in words, or why there is none."""
    status = r.get("steps_status", "")
    if not status or status == sp.NO_CURVES:  # said once, under the primary table
        return ""
    if status != ss.STATUS_OK:
        return status
    steps = f"{r['steps_equivalent']:+.1f} steps {_ci(r['steps_ci_low'], r['steps_ci_high'], '{:+.1f}')}"
    return f"{steps} of {n0} ({r['pct_equivalent']:+.2f}% of training)"


def _estimate(r: dict, n0: int | None, with_steps: bool = True) -> str:
    text = f"{_num(r['diff'], NATS)} nats {_ci(r['ci_low'], r['ci_high'])}"
    s = steps_text(r, n0) if with_steps else ""
    return text + (f", ≈ {s}" if s.startswith(("+", "-")) else f" ({s})" if s else "")


def _p_is(name: str, p: float) -> str:
    text = _p(p)
    return f"{name} {text}" if text.startswith("<") else f"{name} = {text}"


def _tests(r: dict) -> str:
    parts = [_p_is("Holm p", r["p_holm"])]
    if r["verdict"] not in ("lower", "higher") and math.isfinite(r.get("p_tost", math.nan)):
        parts.append(_p_is("TOST p", r["p_tost"]))
    return ", ".join(parts)


def claim_sentence(r: dict, n0: int | None) -> str:
    """One claim's finding in words from its verdict and CI (never "no difference": a CI that spans 0 but
    reaches past ±SESOI is "too few seeds to tell")."""
    cid, v, sesoi = r["id"], str(r["verdict"]), r["sesoi"]
    if v.startswith("absent"):
        return f"{cid} cannot be tested yet ({v})."
    est, tests = _estimate(r, n0), _tests(r)
    if r["measure"] == sp.COST:
        who = "the learned smear" if r["arm"] == stats.RECORD_ARM else f"the fixed dose ({r['arm']})"
        head = (f"{cid}: the cost of removing layer 0's attention with {who} minus its cost without a smear is "
                f"{est} ({tests})")
        tail = {"lower": f"it costs less with {who}, so {who} makes layer 0's attention partly redundant",
                "higher": f"it costs more with {who}: the opposite of redundancy"}.get(v)
        if tail is None and v.startswith("equivalent"):
            tail = f"the cost is the same with and without {who} within ±{sesoi:g} nats: no redundancy that large"
    else:
        head = f"{cid}: {r['arm']} − {r['reference']} = {est} ({tests})"
        tail = {"lower": f"{r['arm']} ends below the fixed dose: the early strong smear beats it",
                "higher": f"{r['arm']} ends above the fixed dose: it does not beat it"}.get(v)
        if tail is None and v.startswith("equivalent"):
            tail = f"the two are equivalent within ±{sesoi:g} nats: no gain over the fixed dose as large as the SESOI"
    if tail is None:  # too few seeds to tell
        power = _num(r.get("power_obs", math.nan), "{:.2f}")
        tail = (f"too few seeds to tell: the CI reaches past ±{sesoi:g} nats on at least one side and the power at "
                f"±{sesoi:g} is {power}")
    return f"{head}: {tail}."


def question_answer(claims: pd.DataFrame, key: str, n0: int | None, removals: pd.DataFrame | None = None) -> str:
    """The plan's question `key` (speedrun.QUESTIONS) answered from its two claims' verdicts."""
    question, ids = sp.QUESTIONS[key]
    rows = [r for r in claims.to_dict("records") if r["id"] in ids]
    verdicts = [str(r["verdict"]) for r in rows]
    tested = [v for v in verdicts if not v.startswith("absent")]
    if not tested:
        lead = "Not testable yet"
    elif all(v == "lower" for v in tested):
        lead = "Yes" if len(tested) == len(verdicts) else "Yes, where it can be tested"
    elif any(v == "lower" for v in tested):
        lead = "In part"
    elif all(v.startswith("equivalent") for v in tested):
        lead = f"No effect as large as ±{rows[0]['sesoi']:g} nats"
    elif any(v == "higher" for v in tested):
        lead = "No"
    else:
        lead = "Not decided"
    context = ""
    if key == "attn0" and removals is not None and len(removals):
        base = removals[(removals["baseline"] == stats.BASELINE) & (removals["claim"] == sp.LOSS)]
        if len(base) and math.isfinite(base.iloc[0]["diff"]):
            context = (f" Without any smear, removing layer 0's attention costs "
                       f"{_estimate(base.iloc[0].to_dict(), n0)} (exploratory).")
    return f"**{question}** {lead}. " + " ".join(claim_sentence(r, n0) for r in rows) + context


# ---------------------------------------------------------------------------------------------
# Tables


def claims_markdown(claims: pd.DataFrame, n0: int | None) -> str:
    rows = []
    for r in claims.to_dict("records"):
        absent = str(r["verdict"]).startswith("absent")
        power = (f"{_num(r['power_obs'], '{:.2f}')} / {_num(r['power_upper'], '{:.2f}')}" if not absent else "—")
        rows.append([r["id"], r["contrast"], "—" if absent else int(r["n_pairs"]),
                     "—" if absent else f"{_num(r['diff'], NATS)} {_ci(r['ci_low'], r['ci_high'])}",
                     "—" if absent else (steps_text(r, n0) or r["steps_status"]), _p(r["p_holm"]),
                     "—" if absent else _signflip(r), _p(r.get("p_tost", math.nan)), power, r["verdict"]])
    return _md_table(["", "contrast", "pairs", "estimate, nats [95% CI]", "steps equivalent [95% CI]", "Holm p",
                      "sign-flip p", "TOST p", f"power at ±{sp.SESOI_NATS:g} (observed / upper σ)", "verdict"], rows)


def comparisons_markdown(rows: pd.DataFrame, n0: int | None, threshold: float, first: str = "arm") -> str:
    """Exploratory paired comparisons: arm, reference, measure, pairs, difference [CI], steps (loss rows), p, verdict."""
    out = []
    for r in rows.to_dict("records"):
        fmt = stats.CLAIMS.get(r["claim"], ("", "{:.4f}"))[1]
        fmt = "{:+" + fmt[2:] if fmt.startswith("{:") else fmt
        diff = f"{_num(r['diff'], fmt)} {_ci(r['ci_low'], r['ci_high'], fmt)}" if math.isfinite(r["diff"]) else "—"
        out.append([r["arm"] if first == "arm" else r["baseline"], claim_label(r["claim"], threshold),
                    r["n_pairs"] or "—", diff, steps_text(r, n0) or "—", _p(r["p_value"]), r["verdict"]])
    return _md_table([first, "measure", "pairs", "difference [95% CI]", "steps equivalent [95% CI]", "p", "verdict"], out)


def by_layer_markdown(by_layer: pd.DataFrame) -> str:
    """Arms × layers: mean previous-token mass [95% CI]; "no attention" where the arm's layer has none."""
    layers = sorted(by_layer["layer"].unique())
    rows = []
    for arm in stats.arm_order(by_layer["arm"]):
        g = by_layer[by_layer["arm"] == arm].set_index("layer")
        cells = [f"{g.at[l, 'mass']:.3f} {_ci(g.at[l, 'ci_low'], g.at[l, 'ci_high'], '{:.3f}')}" if l in g.index
                 else "no attention" for l in layers]
        rows.append([arm, int(g["n_seeds"].max()), *cells])
    return _md_table(["arm", "seeds", *[f"layer {l}" for l in layers]], rows)


def moves_markdown(moves: pd.DataFrame) -> str:
    rows = [[f"{r['arm']} − {r['baseline']}", r["layer"], r["n_pairs"] or "—",
             f"{_num(r['diff'], '{:+.3f}')} {_ci(r['ci_low'], r['ci_high'], '{:+.3f}')}", _p(r["p_value"]), r["verdict"]]
            for r in moves.to_dict("records")]
    return _md_table(["contrast", "layer", "pairs", "Δ previous-token mass [95% CI]", "p", "verdict"], rows)


def early_markdown(early: pd.DataFrame) -> str:
    f3 = "{:.3f}"
    rows = []
    for r in early.to_dict("records"):
        n = r.get("n_seeds", 0)
        if not n or not math.isfinite(r.get("coef_release", math.nan)):
            rows.append([r["arm"], r["kind"], r["release_step"], n or "—", "—", "—", "—", "—", "—", "—", r["note"]])
            continue
        rows.append([r["arm"], r["kind"], r["release_step"], n, _num(r["coef_release"], f3), _num(r["coef_final"], f3),
                     f"{_num(r['coef_change'], '{:+.3f}')} {_ci(r['coef_change_low'], r['coef_change_high'], '{:+.3f}')}"
                     f" ({r['coef_change_verdict']})", _num(r["lambda_final"], f3),
                     f"{_num(r['pressure_after'], '{:+.2e}')} {_ci(r['pressure_after_low'], r['pressure_after_high'], '{:+.1e}')}",
                     f"{_num(r['pressure_final'], '{:+.2e}')} {_ci(r['pressure_final_low'], r['pressure_final_high'], '{:+.1e}')}",
                     r["note"] or ""])
    return _md_table(["arm", "what it is", "release step k", "seeds", "coefficient at k", "at the end",
                      "change after k [95% CI]", "λ at the end",
                      f"dL/dλ, the {sp.AFTER_RELEASE} steps from k (fewer at the end) [95% CI]",
                      f"dL/dλ, the last {sp.AFTER_RELEASE} steps [95% CI]", "note"], rows)


def speedrun_markdown_section(section: SpeedrunSection, threshold: float,
                              figure_md: Callable[[Sequence[str]], list[str]]) -> list[str]:
    """The section's lines; `figure_md` embeds the named figures (report.py's, so they sit with their captions)."""
    n0 = section.shape.n0 if section.shape is not None else None
    attn0, prev_fig, coef_fig = SPEEDRUN_FIGURES
    body = ["## The speedrun's questions", "",
            "The plan (`figures/speedrun/PLAN.md`, fixed before its runs) asks whether the smear makes layer 0's "
            "attention redundant (record #131 removed it right after the smear landed) and whether an early strong "
            "smear beats the fixed dose 0.8. Four primary claims on the validation loss at the final step, paired "
            f"by seed, their paired-t p-values adjusted together (Holm over the four; a claim without its runs counts "
            f"as p = 1 and is *absent*), each with a smallest effect of interest of {sp.SESOI_NATS:g} nats: *lower* "
            f"/ *higher* when the Holm p < {stats.ALPHA:g}, else *equivalent within ±{sp.SESOI_NATS:g}* when TOST "
            "rejects a difference that large, else *too few seeds to tell*. Power: at the SESOI, at the observed σ "
            f"of the paired differences and at its {SD_UPPER_LEVEL:.0%} upper bound.", "",
            "### Primary claims", "", claims_markdown(section.claims, n0), ""]
    body += [f"*Steps: {section.steps_note}.*" if section.shape is None else
             f"*Steps equivalent: the estimate as baseline steps at matched loss ({section.steps_note}; "
             f"`steps_saved.loss_to_steps`, the CI carrying the shape's error too). Positive: the contrast's loss is "
             "lower by what that many more baseline steps would buy.*", ""]
    body += [question_answer(section.claims, "attn0", n0, section.removals), "",
             question_answer(section.claims, "early", n0), ""]
    body += ["Why these claims:", ""] + [f"- {cid}, {sp.CONTRASTS[cid]}: {c.why}"
                                         for cid, c in zip(sp.CLAIM_IDS, sp.SPEEDRUN_CLAIMS)] + [""]
    body += figure_md([attn0])
    if len(section.removals):
        body += ["### Layer 0's attention removed, arm by arm (exploratory)", "",
                 f"Each `<arm>{NOATTN0_SUFFIX}` against its `<arm>`, paired by seed (uncorrected).", "",
                 comparisons_markdown(section.removals, n0, threshold, first="arm"), ""]
    if len(section.arms):
        body += ["### Every arm against the baseline (exploratory)", "",
                 "Paired by seed, uncorrected; the smear's previous-token claims are the main report's primary "
                 "family and are exploratory here.", "", comparisons_markdown(section.arms, n0, threshold), ""]
    body += ["### Where the previous-token heads go (exploratory)", "",
             "Previous-token mass per layer (the sum of the layer's heads' scores at the final step; mean over seeds "
             "[t 95% CI]). A `-noattn0` arm has no attention in layer 0.", "", by_layer_markdown(section.by_layer), ""]
    if len(section.moves):
        body += ["Per layer with attention in both, the arm without layer 0's attention minus the arm with it, paired "
                 "by seed:", "", moves_markdown(section.moves), ""]
    body += figure_md([prev_fig])
    body += ["### The early smear over training (exploratory)", ""]
    if len(section.early):
        body += ["Each early-smear arm at its release step k (held: λ and the gate learned from k on; annealed: the "
                 "dose reaches 0 at k) and at the end, beside the learned smear and the fixed dose over the same "
                 "steps: the mean coefficient λ·gate on the training batch (record_lambda), its change after k per "
                 "seed (does the coefficient fall once free?), and the pressure dL/dλ (> 0: gradient descent lowers "
                 "λ; for a dose, the loss's pull on c).", "", early_markdown(section.early), ""]
        body += figure_md([coef_fig])
    else:
        body += ["*No early-smear arm with a recorded coefficient (record_lambda or record_smear).*", ""]
    return body


__all__ = ["SpeedrunSection", "speedrun_section", "speedrun_markdown_section", "read_shape", "claim_sentence",
           "question_answer", "claims_markdown", "steps_text", "NO_CURVES_NOTE"]
