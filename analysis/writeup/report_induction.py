"""The report's section "Induction": the induction study (figures/induction/PLAN.md) whenever the tables
hold its tables — analyze's `key_shares` / `induction_knockouts` / `head_roles`, or the recorder's
`induction_heldout` rows.

What it states: that half of the training tokens are synthetic (repeated random spans, trainer/repeats.py); the
primary claims (`analysis.stats.induction.INDUCTION_CLAIMS`: each arm − baseline on (a) the copy's cost of
ablating the previous-token heads, (b) the formation step, (c) the key's share through the arm's own mixing, Holm
over all twelve) with the runs that never formed an induction head; one sentence per arm answering "does induction
still need previous-token heads?"; the exploratory measures; the four figures; and what the baseline's
previous-token heads became in each arm. `induction_claims_table` is the tidy CSV the report writes beside itself
(`CLAIMS_FILE`). The notebook 06_induction calls the `notebook_*` functions and `show`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Callable, Sequence

import pandas as pd

from analysis import stats
from analysis.mechanism.composition import INDUCTION_THRESHOLD
from analysis.stats import induction as ind
from analysis.stats.planned import compare_planned
from analysis.writeup import plots
from analysis.writeup.markdown import _md_table, _num, _p
from analysis.stats import DEFAULT_THRESHOLD, Tables
from trainer.config import get_preset
from trainer.errors import SmearlensError

CLAIMS_FILE = "induction_claims.csv"  # written beside report.md
INDUCTION_TABLES = ("key_shares", "induction_knockouts", "head_roles")
# per measure: its label in the report, its unit, the format of a value and of a difference
MEASURES: dict[str, tuple[str, str, str, str]] = {
    "copy_cost_prev": ("(a) copy's cost of ablating the previous-token heads", "nats", "{:.2f}", "{:+.2f}"),
    "formation_step": ("(b) formation step", "steps", "{:,.0f}", "{:+,.0f}"),
    "mix_share": ("(c) key's token j−1 through the arm's own mixing", "share", "{:.2f}", "{:+.2f}"),
    "best_induction": ("best induction score", "0–1", "{:.2f}", "{:+.2f}"),
    "copy_loss_second": ("loss on the second copy", "nats", "{:.2f}", "{:+.2f}"),
    "prev_share": ("key's token j−1 through the previous-token heads", "share", "{:.2f}", "{:+.2f}"),
    "n_induction_heads": ("induction heads", "heads", "{:.1f}", "{:+.1f}"),
    "stable_step": ("stable from step", "steps", "{:,.0f}", "{:+,.0f}"),
    "val_loss": ("text validation loss", "nats", "{:.3f}", "{:+.3f}"),
}
EXPLORATORY = ("best_induction", "copy_loss_second", "prev_share", "n_induction_heads", "stable_step", "val_loss")
# The presets figures/induction/PLAN.md fixed its claims for (the second by its Amendment 3: the same claims).
PLANNED_PRESETS = ("cpu-induction", "cpu-induction-h4")
CLAIMS_COLUMNS = ["claim", "label", "unit", "arm", "baseline", "role", "sesoi", "n_pairs", "mean_baseline", "mean_arm", "diff",
                  "ci_low", "ci_high", "p_value", "p_signflip", "p_holm", "p_tost", "power_obs", "power_upper",
                  "never_formed_baseline", "never_formed_arm", "verdict", "note"]
FREED_LABELS = {"attn_self": "on i", "attn_prev": "on i−1", "attn_prev2": "on i−2", "attn_bos": "on BOS",
                "attn_further": "further", "induction": "induction score", "duplicate_token": "duplicate-token score",
                "ablation_text": "ablation cost, text (nats)", "ablation_copy": "ablation cost, second copy (nats)"}


def has_induction(tables: Tables) -> bool:
    """Whether the tables hold any of the induction study's: analyze's circuit tables or the recorder's scores."""
    if any(tables.get(name) is not None for name in INDUCTION_TABLES):
        return True
    rec = tables.get("record_heads")
    return rec is not None and bool((rec["metric"] == ind.FORMATION_METRIC).any())


def _arms(df: pd.DataFrame) -> list[str]:
    present = set(df["arm"].astype(str))
    order = [ind.BASELINE, *ind.STUDY_ARMS]
    return [a for a in order if a in present] + sorted(present - set(order))


# ---- the data ---------------------------------------------------------------------------------------------------


def _copy_settings(tables: Tables) -> tuple[set[float], set[str]]:
    """The runs' copy_share values and span lengths (from their run.json), else the preset's."""
    shares, lengths = set(), set()
    for manifest in tables.configs.values():
        train = manifest.get("train_config") if isinstance(manifest, dict) else None
        if isinstance(train, dict) and "copy_share" in train:
            shares.add(float(train["copy_share"]))
            if len(train.get("copy_lengths") or ()) == 2:
                held = ", ".join(str(x) for x in train.get("copy_holdout") or ())
                lengths.add("{}–{}".format(*train["copy_lengths"]) + (f" without {held}" if held else ""))
    if not shares:
        try:
            train = get_preset(tables.preset).train
        except SmearlensError:
            return shares, lengths
        shares.add(float(train.copy_share))
        held = ", ".join(map(str, train.copy_holdout))
        lengths.add(f"{train.copy_lengths[0]}–{train.copy_lengths[1]}" + (f" without {held}" if held else ""))
    return shares, lengths


def data_paragraph(tables: Tables) -> str:
    """The section's first words: how much of the training data is synthetic, and what the test sequences are."""
    shares, lengths = _copy_settings(tables)
    if len(shares) == 1:
        share = next(iter(shares))
        how_much = "Half of the training tokens are" if share == 0.5 else f"{share:.0%} of the training tokens are"
    elif shares:
        how_much = f"Between {min(shares):.0%} and {max(shares):.0%} of the training tokens (the runs differ) are"
    else:
        how_much = "Part of the training tokens (the runs' copy_share is not recorded) are"
    spans = f" (|R| {'; '.join(sorted(lengths))})" if lengths else ""
    return (f"**Synthetic data.** {how_much} synthetic: spans R R of uniformly random tokens{spans}, written twice "
            "back to back and placed among the corpus's text (`trainer/repeats.py`). The rest is text, and the "
            "validation loss is measured on text only. Induction is measured on further random sequences BOS + R + R "
            "at the held-out lengths 11, 19, 27 and 40, which training never shows; a head is an induction head at "
            f"a score ≥ {INDUCTION_THRESHOLD:g}.")


# ---- (i) the primary claims -------------------------------------------------------------------------------------


def _censored(per_seed: pd.DataFrame) -> pd.Series:
    """Runs recorded to the end without an induction head (a run without records has no formation step at all)."""
    return ~per_seed["formed"].astype(bool) & per_seed["formation_step"].notna()


def never_formed(per_seed: pd.DataFrame) -> dict[str, tuple[int, int]]:
    """arm → (runs that never formed an induction head, runs)."""
    censored = _censored(per_seed)
    return {arm: (int(censored[g.index].sum()), len(g)) for arm, g in per_seed.groupby("arm")}


def induction_claims(per_seed: pd.DataFrame) -> pd.DataFrame:
    """The primary family (`compare_planned` on INDUCTION_CLAIMS) with each claim's label, unit and the runs of
    either arm that never formed an induction head."""
    claims = compare_planned(per_seed, ind.INDUCTION_CLAIMS)
    censored = never_formed(per_seed)
    claims["label"] = [MEASURES[c][0] for c in claims["claim"]]
    claims["unit"] = [MEASURES[c][1] for c in claims["claim"]]
    claims["never_formed_baseline"] = censored.get(ind.BASELINE, (0, 0))[0]
    claims["never_formed_arm"] = [censored.get(a, (0, 0))[0] for a in claims["arm"]]
    return claims


def induction_claims_table(claims: pd.DataFrame) -> pd.DataFrame:
    """The tidy table the report writes as CLAIMS_FILE: one row per claim, its estimate, CI, tests and verdict."""
    return claims.reindex(columns=CLAIMS_COLUMNS)


def _power(r: dict) -> str:
    return (f"{_num(r['power_obs'], '{:.2f}')} / {_num(r['power_upper'], '{:.2f}')}"
            if math.isfinite(r.get("power_obs", math.nan)) else "—")


def _diff_ci(r: dict) -> tuple[str, str]:
    fmt, dfmt = MEASURES[r["claim"]][2:]
    ci = (f"[{_num(r['ci_low'], dfmt)}, {_num(r['ci_high'], dfmt)}]"
          if math.isfinite(r.get("ci_low", math.nan)) else "—")
    return _num(r.get("diff", math.nan), dfmt), ci


def claims_markdown(claims: pd.DataFrame) -> str:
    rows = []
    for r in claims.to_dict("records"):
        fmt = MEASURES[r["claim"]][2]
        diff, ci = _diff_ci(r)
        rows.append([r["label"], f"{r['arm']} − {r['baseline']}", f"±{r['sesoi']:g} {r['unit']}",
                     r.get("n_pairs", 0) or 0, _num(r.get("mean_baseline", math.nan), fmt),
                     _num(r.get("mean_arm", math.nan), fmt), diff, ci, _p(r.get("p_holm", math.nan)),
                     _p(r.get("p_tost", math.nan)), _power(r),
                     f"{r['never_formed_baseline']} / {r['never_formed_arm']}", r["verdict"]])
    return _md_table(["claim (per run, final checkpoint)", "arms", "SESOI", "n pairs", "baseline", "arm",
                      "mean paired difference", "95% CI (t)", "Holm p", "TOST p",
                      "power at SESOI (observed σ / upper σ)", "never formed (baseline / arm)", "verdict"], rows)


def formation_markdown(per_seed: pd.DataFrame) -> str:
    """Per arm: runs, runs that formed an induction head, runs that never did (censored) and where, and runs
    without the recorder's scores (no formation step: left out of claim (b))."""
    censored, unrecorded = _censored(per_seed), per_seed["formation_step"].isna()
    rows = []
    for arm in _arms(per_seed):
        g = per_seed[per_seed["arm"] == arm]
        at = ", ".join(f"seed {int(r['seed'])} (counted as step {r['formation_step']:,.0f})"
                       for r in g[censored[g.index]].to_dict("records"))
        rows.append([arm, len(g), int(g["formed"].astype(bool).sum()), int(censored[g.index].sum()), at or "—"]
                    + ([int(unrecorded[g.index].sum())] if unrecorded.any() else []))
    return _md_table(["arm", "runs", "formed an induction head", "never formed (censored)", "censored runs"]
                     + (["no records (left out of (b))"] if unrecorded.any() else []), rows)


def baseline_formed_markdown(per_seed: pd.DataFrame) -> str:
    """The plan's claims again over the seeds whose baseline formed an induction head ("" when every baseline
    did, or none): the comparison the preset promised, every baseline with a circuit to free its heads from."""
    baseline = per_seed[per_seed["arm"] == ind.BASELINE]
    seeds = sorted(baseline.loc[baseline["formed"].astype(bool), "seed"].astype(int))
    if not seeds or len(seeds) == baseline["seed"].nunique():
        return ""
    claims = induction_claims(per_seed[per_seed["seed"].isin(seeds)])
    left = sorted(set(baseline["seed"].astype(int)) - set(seeds))
    return (f"Exploratory: the plan's claims again over the {len(seeds)} seeds whose baseline formed an induction "
            f"head (all but {', '.join(map(str, left))}), so that every baseline has a circuit to free its heads "
            "from (selected by the baseline's outcome, not the arm's; Holm over these):\n\n"
            + claims_markdown(claims))


def formed_pairs_markdown(per_seed: pd.DataFrame) -> str:
    """`ind.formed_pairs` as a table with the sentence that says why it is there ("" without a baseline)."""
    pairs = ind.formed_pairs(per_seed)
    if pairs.empty:
        return ""
    f2 = lambda v: _num(v, "{:.2f}")
    rows = [[r["arm"], f"{r['formed_baseline']} / {r['formed_arm']} of {r['pairs']}",
             f"{r['baseline_only']} / {r['arm_only']}", _p(r["p_mcnemar"]), r["both_formed"],
             f"{f2(r['copy_cost_baseline'])} / {f2(r['copy_cost_arm'])}",
             f"{f2(r['prev_share_baseline'])} / {f2(r['prev_share_arm'])}", f2(r["mix_share_arm"])]
            for r in pairs.to_dict("records")]
    return ("Exploratory: claim (a) mixes two things, since a run without an induction head has no copy to lose "
            "(its cost is ~0 whether or not its previous-token heads would matter to one). Paired by seed, how often "
            "each formed one (exact McNemar p over the seeds where only one did) and, over the seeds where both did, "
            "what induction needs (`analysis.stats.induction.formed_pairs`; selected by an outcome, so not a "
            "finding):\n\n" + _md_table(
                ["arm", "formed (baseline / arm)", "only one formed (baseline / arm)", "McNemar p", "both formed",
                 "(a) copy cost, nats (baseline / arm)", "key's token j−1 through previous-token heads (baseline / arm)",
                 "through the arm's mixing"], rows))


def _verdict_phrase(r: dict) -> str:
    """A claim's verdict with its numbers, for a sentence."""
    if r["verdict"].startswith("absent"):
        return r["verdict"]
    diff, ci = _diff_ci(r)
    unit = {"nats": " nats", "steps": " steps"}.get(MEASURES[r["claim"]][1], "")
    p = f", Holm p {_p(r['p_holm'])}" if math.isfinite(r.get("p_holm", math.nan)) else ""
    return f"{r['verdict']}: {diff}{unit} {ci}{p}, {int(r.get('n_pairs', 0) or 0)} pairs"


def answer_sentences(claims: pd.DataFrame, per_seed: pd.DataFrame) -> list[str]:
    """Per arm, does induction still need previous-token heads? From claim (a)'s verdict, with (c) and (b) and
    the runs that never formed a head beside it. A verdict is lower / higher / equivalent within ±SESOI / too few
    seeds to tell (or why the claim is absent), never a bare "no difference"."""
    censored = never_formed(per_seed)
    out = []
    for arm in ind.STUDY_ARMS:
        rows = {r["claim"]: r for r in claims[claims["arm"] == arm].to_dict("records")}
        if not rows or arm not in censored:  # an arm without runs: the claims table says so
            continue
        a, b, c = rows.get("copy_cost_prev"), rows.get("formation_step"), rows.get("mix_share")
        v = a["verdict"]
        answer = {"lower": "induction needs the previous-token heads less than in the baseline",
                  "higher": "induction needs the previous-token heads more than in the baseline"}.get(v)
        if answer is None and v.startswith("equivalent"):
            answer = f"induction needs the previous-token heads as much as in the baseline ({v} nats)"
        elif answer is None and v.startswith("absent"):
            answer = f"whether induction still needs the previous-token heads cannot be answered from these runs ({v})"
        elif answer is None:
            answer = "too few seeds to tell whether induction needs the previous-token heads less than in the baseline"
        fmt = MEASURES["copy_cost_prev"][2]
        said = f"- **{arm}**: {answer}"
        # the means even where no test can be made (a pilot's single pair): what the runs show, not a verdict
        measured = lambda r: r is not None and all(math.isfinite(r.get(k, math.nan)) for k in ("mean_arm", "mean_baseline"))
        tested = lambda r: "" if r["verdict"].startswith("absent") else f" ({_verdict_phrase(r)})"
        if measured(a):
            said += (f" — ablating them costs the second copy {_num(a['mean_arm'], fmt)} nats against the baseline's "
                     f"{_num(a['mean_baseline'], fmt)}{tested(a)}")
        if measured(c):
            said += (f"; the arm's own mixing carries {_num(c['mean_arm'], '{:.2f}')} of the induction key's token "
                     f"j−1{tested(c)}")
        if measured(b):
            said += (f"; the head forms at step {_num(b['mean_arm'], '{:,.0f}')} against "
                     f"{_num(b['mean_baseline'], '{:,.0f}')}{tested(b)}")
        n_never, n = censored.get(arm, (0, 0))
        if n_never:
            said += f"; {n_never} of its {n} runs never formed an induction head"
        out.append(said + ".")
    return out


def method_markdown(claims: pd.DataFrame) -> str:
    n = len(ind.INDUCTION_CLAIMS)
    sesois = ", ".join(f"{MEASURES[m][0].split(' ')[0]} ±{s:g} {MEASURES[m][1]}" for m, s in ind.SESOIS.items())
    return (f"Each arm against the {ind.BASELINE}, paired by seed (a seed's arms share initial weights and data), on "
            f"three per-run measures fixed in `figures/induction/PLAN.md` before the runs: (a) the loss on the second "
            "copy with every previous-token head before the best induction head mean-ablated, minus clean; (b) the "
            f"first recorded step at which any head's held-out induction score reaches {INDUCTION_THRESHOLD:g}; (c) "
            "the share of the strongest induction head's token j−1 that reaches its key through the arm's own mixing "
            f"(0 for the baseline). {n} claims, their paired-t p-values adjusted together (Holm, counting every "
            f"declared claim); SESOIs {sesois}. Verdicts: *lower* / *higher* at a Holm p < {stats.ALPHA:g}; else "
            "*equivalent within ±SESOI* when the two one-sided tests (TOST) reject a difference of the SESOI; else "
            "*too few seeds to tell*. A run that never formed an induction head enters (b) censored one record past "
            "its last step (a lower bound, which shrinks a difference whichever arm failed), (a) with the cost "
            "measured on its best head, and (c) not at all (it has no induction head's key to split).")


# ---- (iii) exploratory ------------------------------------------------------------------------------------------


def _range(v: pd.Series, fmt: str) -> str:
    v = v.dropna()
    if v.empty:
        return "—"
    return _num(v.mean(), fmt) + (f" ({_num(v.min(), fmt)}–{_num(v.max(), fmt)})" if len(v) > 1 else "")


def exploratory_markdown(per_seed: pd.DataFrame) -> str:
    """Per arm, each exploratory measure's mean (min–max over seeds); then each arm − baseline, paired by seed,
    uncorrected."""
    cols = [c for c in EXPLORATORY if per_seed[c].notna().any()]
    rows = [[arm, int((per_seed["arm"] == arm).sum())] + [_range(per_seed.loc[per_seed["arm"] == arm, c],
                                                                 MEASURES[c][2]) for c in cols]
            for arm in _arms(per_seed)]
    values = _md_table(["arm", "runs"] + [f"{MEASURES[c][0]} ({MEASURES[c][1]})" for c in cols], rows)
    diffs = []
    for arm in [a for a in _arms(per_seed) if a != ind.BASELINE]:
        cells = []
        for c in cols:
            r = stats.compare_arms(per_seed, c, arm=arm, baseline=ind.BASELINE, role="exploratory")
            r["claim"] = c
            diff, ci = _diff_ci(r)
            cells.append(f"{diff} {ci}, {_p(r['p_value'])}" if math.isfinite(r["p_value"]) else
                         (f"{diff} {ci}" if math.isfinite(r.get("diff", math.nan)) else "—"))
        diffs.append([f"{arm} − {ind.BASELINE}"] + cells)
    compared = _md_table(["arms"] + [MEASURES[c][0] for c in cols], diffs) if diffs else ""
    return values + ("\n\nEach arm − baseline, mean paired difference [95% t CI], paired-t p (uncorrected: leads "
                     "for the next study, not findings):\n\n" + compared if compared else "")


def per_seed_markdown(per_seed: pd.DataFrame) -> str:
    cols = ["copy_cost_prev", "formation_step", "mix_share", *EXPLORATORY]
    def cell(r: dict, c: str) -> str:
        if c == "formation_step" and not r["formed"]:
            return (f"{_num(r[c], MEASURES[c][2])} (never formed)" if math.isfinite(r[c]) else "— (not recorded)")
        return _num(r[c], MEASURES[c][2])

    rows = [[r["arm"], int(r["seed"]), r["run"], int(r["step"])] + [cell(r, c) for c in cols]
            for r in per_seed.to_dict("records")]
    return _md_table(["arm", "seed", "run", "step"] + [MEASURES[c][0] for c in cols], rows)


# ---- (v) what the baseline's previous-token heads became ----------------------------------------------------------


def freed_markdown(tables: Tables, threshold: float = DEFAULT_THRESHOLD) -> str:
    """Per arm, at the baseline's previous-token places of each seed: attention by offset, the induction and
    duplicate-token scores and what ablating the place costs (mean over seeds of each seed's mean over its places)."""
    per = ind.freed_roles(tables.heads, tables.get("head_roles"), threshold)
    metrics = [m for m in ind.FREED_METRICS if (per["metric"] == m).any()]
    rows = []
    for arm in _arms(per):
        a = per[per["arm"] == arm]
        runs = a.drop_duplicates("seed")
        means = a.groupby("metric")["value"].mean()
        rows.append([arm, f"{int(runs['n_places'].sum())} in {len(runs)}"]
                    + [_num(means.get(m, math.nan), "{:.3f}" if m.startswith("ablation") else "{:.2f}")
                       for m in metrics])
    return _md_table(["arm", "places in seeds"] + [FREED_LABELS[m] for m in metrics], rows)


# ---- the section ------------------------------------------------------------------------------------------------


def induction_markdown_section(tables: Tables, figures: Callable[[Sequence[str]], list[str]],
                               threshold: float = DEFAULT_THRESHOLD) -> tuple[list[str], pd.DataFrame | None]:
    """The section's lines, and the claims table to write as CLAIMS_FILE (None when the claims cannot be made);
    ([], None) when the tables hold no induction study. `figures(names)` embeds the drawn figures."""
    if not has_induction(tables):
        return [], None
    body = ["## Induction", "", data_paragraph(tables), ""]
    claims = per_seed = None
    try:
        per_seed = ind.induction_per_seed(tables)
    except SmearlensError as e:
        body += [f"*The induction claims are absent: {e}.*", ""]
    if per_seed is not None and per_seed.empty:
        body += ["*The induction claims are absent: the knock-out table has no runs.*", ""]
        per_seed = None
    if per_seed is not None:
        claims = induction_claims(per_seed)
        planned = tables.preset in PLANNED_PRESETS  # the plan fixed its claims for these presets only
        if not planned:
            claims = claims.assign(role="exploratory")
        n_never, n = never_formed(per_seed).get(ind.BASELINE, (0, 0))
        body += ["### Does induction still need previous-token heads?", ""]
        if n and n_never == n:  # no baseline circuit: nothing for a previous-token head to be freed from
            body += [f"The baseline formed no induction head in any of its {n} runs, so there is no previous-token "
                     "head in an induction circuit to free: claims (a) and (c) are not read here. Which arms form an "
                     "induction head at all, and when, is in the tables below.", ""]
        else:
            sentences = answer_sentences(claims, per_seed)
            body += (["Per arm, from claim (a), with (c) and (b) beside it (verdicts of the primary family below):", ""]
                     + sentences + [""] if sentences else [])
            if n_never:
                body += [f"The baseline itself never formed an induction head in {n_never} of its {n} runs.", ""]
        missing = [a for a in ind.STUDY_ARMS if a not in set(per_seed["arm"])]
        if missing:
            body += [f"No runs of {', '.join(missing)} in these tables: their claims are absent below, and still "
                     "count in the Holm correction.", ""]
        body += (["### Primary claims", ""] if planned else [
            "### The plan's claims, read as exploratory", "",
            f"These twelve claims were fixed for {' and '.join(f'`{p}`' for p in PLANNED_PRESETS)} "
            "(figures/induction/PLAN.md); on "
            f"`{tables.preset}` they are exploratory, their Holm-adjusted p-values given for comparison only.", ""])
        body += [claims_markdown(claims), "", method_markdown(claims), "",
                 "Runs that formed an induction head (any head ≥ "
                 f"{INDUCTION_THRESHOLD:g} at a record):", "", formation_markdown(per_seed), ""]
        for part in (formed_pairs_markdown(per_seed), baseline_formed_markdown(per_seed)):
            body += [part, ""] if part else []
    body += figures(plots.INDUCTION_FIGURES[:3])
    if per_seed is not None:
        body += ["### Exploratory measures", "", exploratory_markdown(per_seed), "",
                 "Per run:", "", per_seed_markdown(per_seed), ""]
    body += ["### What the baseline's previous-token heads became", "",
             f"The places (layer, head) that are previous-token heads (score ≥ {threshold:g}) in the baseline run of "
             "a seed, followed into every arm of that seed: where a query on text looks, the induction and "
             "duplicate-token scores on repeated random sequences, and what mean-ablating the place alone costs "
             "the text and the second copy. Each seed's places averaged, then the seeds.", ""]
    try:
        body += [freed_markdown(tables, threshold), ""]
    except SmearlensError as e:
        body += [f"*Absent: {e}.*", ""]
    body += figures(plots.INDUCTION_FIGURES[3:])
    return body, (induction_claims_table(claims) if claims is not None else None)


# ---- the notebook 06_induction ----------------------------------------------------------------------------------


def notebook_tables(tables_dir: str | Path, preset: str | None = None,
                    runs_dir: str | Path | None = None) -> Tables | None:
    """Load the tables; None, with one line saying why, when they hold no induction study (the demo's)."""
    try:
        tables = stats.load_tables(tables_dir, runs_dir=runs_dir, preset=preset)
    except SmearlensError as e:
        plots.display_markdown(f"**No analysis possible:** {e}.")
        return None
    if not has_induction(tables):
        plots.display_markdown(f"*No induction tables in `{tables_dir}` (key_shares, induction_knockouts, "
                               "head_roles, or recorded induction scores): nothing to show here.*")
        return None
    arms = _arms(tables.heads)
    lines = [f"Preset **{tables.preset}**, tables from `{tables_dir}`: "
             + "; ".join(f"{arm}: {len(tables.seeds(arm))} seeds" for arm in arms) + ".", "", data_paragraph(tables)]
    lines += [f"- **Note:** {n}" for n in tables.notes]
    plots.display_markdown("\n".join(lines))
    return tables


def notebook_claims(tables: Tables | None) -> pd.DataFrame | None:
    """The answer per arm, the primary claims and who formed a head; nothing when `tables` is None (said above)."""
    if tables is None:
        return None
    try:
        per_seed = ind.induction_per_seed(tables)
    except SmearlensError as e:
        plots.display_markdown(f"**Induction claims absent:** {e}.")
        return None
    claims = induction_claims(per_seed)
    plots.display_markdown("\n".join(answer_sentences(claims, per_seed) + ["", claims_markdown(claims), "",
                                                                          formation_markdown(per_seed)]))
    return claims


def notebook_exploratory(tables: Tables | None) -> None:
    if tables is None:
        return
    try:
        plots.display_markdown(exploratory_markdown(ind.induction_per_seed(tables)))
    except SmearlensError as e:
        plots.display_markdown(f"**Exploratory measures absent:** {e}.")


def notebook_freed(tables: Tables | None, threshold: float = DEFAULT_THRESHOLD) -> None:
    if tables is None:
        return
    try:
        plots.display_markdown(freed_markdown(tables, threshold))
    except SmearlensError as e:
        plots.display_markdown(f"**What the previous-token heads became: absent** — {e}.")


def show(name: str, tables: Tables | None, figures_dir: str | Path, threshold: float = DEFAULT_THRESHOLD) -> Path | None:
    """`plots.show`, silent when `tables` is None: the loading cell has said why in one line."""
    return None if tables is None else plots.show(name, tables, figures_dir, threshold)


__all__ = ["CLAIMS_FILE", "has_induction", "data_paragraph", "induction_claims", "induction_claims_table",
           "claims_markdown", "formation_markdown", "answer_sentences", "exploratory_markdown", "freed_markdown",
           "induction_markdown_section", "notebook_tables", "notebook_claims", "notebook_exploratory",
           "notebook_freed", "show"]
