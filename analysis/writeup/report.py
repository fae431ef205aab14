"""`smearlens report`: a markdown write-up of whether the smear frees up heads.

Figures (embedded by relative path), per-seed tables, the statistics (paired by seed: the primary
claims fixed in advance, Holm-corrected, with equivalence tests and power; every arm against the
baseline as exploratory comparisons), the conclusion they support (including "too few seeds to
tell"), a dose-response section when the tables hold ≥ 2 fixed doses (`dose-<c>` arms) and one on why the
learned gate stays low when they hold its arms (both in analysis/writeup/report_arms.py), steps saved at matched
loss when `smearlens steps-saved` wrote its tables beside the report (analysis/writeup/report_steps.py), the
speedrun study's questions when the arms include a `-noattn0` or an early-smear arm (analysis/writeup/report_speedrun.py,
with `speedrun_claims.csv` beside the report), the induction study when the tables hold its tables
(analysis/writeup/report_induction.py, with induction_claims.csv beside the report), and the commands and configs that produced them. By default the figures are drawn directly with `analysis.writeup.plots`, so
a report never needs a Jupyter kernel; `--notebooks` executes the notebooks instead (papermill).
"""

from __future__ import annotations

import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterable, Sequence

import pandas as pd

from analysis.stats import dose_response as dr
from analysis.stats import headline as hl
from analysis.stats import mechanism_stats as mech
from analysis.stats import speedrun as sp
from analysis.writeup import plots
from analysis import stats
from analysis.writeup.notebook_runner import run_notebooks
from analysis.writeup.markdown import _ci, _md_table, _num, _p, _seeds, _signflip, seed_ranges
from analysis.writeup.report_arms import canon_markdown_section, dose_markdown, gate_markdown_section, gate_section
from analysis.writeup.report_induction import CLAIMS_FILE as INDUCTION_CLAIMS_FILE, induction_markdown_section
from analysis.writeup.report_mechanism import mechanism_conclusion, mechanism_markdown
from analysis.writeup.report_speedrun import speedrun_markdown_section, speedrun_section
from analysis.writeup.report_steps import steps_markdown_section
from analysis.stats import DEFAULT_THRESHOLD, Summary, Tables
from trainer.errors import AnalysisError, SmearlensError
from trainer.io import atomic_write_text

# drawn in their own sections, only when their arms (or the induction tables) are there
STUDY_FIGURES = plots.DOSE_FIGURES + plots.GATE_FIGURES + plots.SPEEDRUN_FIGURES + plots.INDUCTION_FIGURES
OWN_SECTIONS = plots.SUMMARY_FIGURES + plots.MECHANISM_FIGURES + STUDY_FIGURES  # not in the Figures section


# ---------------------------------------------------------------------------------------------
# The first screen: one sentence per arm, the reference study's verdict, the summary figure


def _headline_value(r: dict) -> str:
    fmt = "{:.1%}" if r["measure"] == hl.SHARE else _fmt(r["measure"])
    ci = f" [{_num(r['ci_low'], fmt)}, {_num(r['ci_high'], fmt)}]" if math.isfinite(r["ci_low"]) else ""
    return f"{_num(r['estimate'], fmt)}{ci}"


def _short_label(measure: str, threshold: float) -> str:
    return {"prev_mass": "previous-token mass", "n_prev_heads": f"heads ≥ {threshold:g}", "best_prev": "best head",
            "val_loss": "validation loss"}.get(measure, stats.claim_label(measure, threshold))


def headline_sentences(headline: pd.DataFrame, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """One sentence per arm: the share of token i−1 its smear term carries, then each measure against the
    baseline (mean paired difference [95% t CI]: verdict), and which of them were primary claims."""
    out = []
    for arm, g in headline.groupby("arm", sort=False):
        rows = {r["measure"]: r for r in g.to_dict("records")}
        share = rows.pop(hl.SHARE, None)
        carries = f"carries {_headline_value(share)} of token i−1's effect" if share else "has no smear term"
        said = [f"{_short_label(m, threshold)} {_headline_value(r)}: **{r['verdict']}**" for m, r in rows.items()]
        primary = [_short_label(m, threshold) for m, r in rows.items() if r["role"] == "primary"]
        n = int(max((r["n"] for r in rows.values()), default=0))
        how = (f"primary claims ({', '.join(primary)}) fixed before the runs, Holm" if primary else "exploratory")
        how += "; the rest exploratory" if primary and len(primary) < len(rows) else ""
        out.append(f"- **{arm}** {carries}. Against the baseline, paired by seed: {'; '.join(said)} ({n} pairs; {how}).")
    return out


def reference_markdown(reference: str | Path, where: Path, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """The verdicts of a reference study (its report's summary.csv), for a report whose own seeds are few."""
    table = hl.read_headline(reference)
    folder = Path(reference) if Path(reference).is_dir() else Path(reference).parent
    link = (f"[its report]({_rel(folder / 'report.md', where)})" if (folder / "report.md").is_file()
            else f"`{folder}`")
    presets, steps = ", ".join(sorted(set(table["preset"].astype(str)))), ", ".join(sorted(set(table["step"].astype(str))))
    n = int(table["n"].max()) if len(table) else 0
    return ([f"The reference study, with the seeds to decide ({n} pairs at `{presets}`, step {steps}; {link}):", ""]
            + headline_sentences(table, threshold))


def summary_section(headline: pd.DataFrame, summary: Summary, drawn: dict, where: Path,
                    reference: str | Path | None, threshold: float = DEFAULT_THRESHOLD) -> list[str]:
    """The report's first screen: the answer per arm, the reference study's verdict, the summary figure."""
    body = ["## Summary", "", summary.verdict, ""] + headline_sentences(headline, threshold) + [""]
    if reference is not None:
        body += reference_markdown(reference, where, threshold) + [""]
    return body + _figures_markdown(plots.SUMMARY_FIGURES, drawn, where, level="")


# ---------------------------------------------------------------------------------------------
# The arms: statistics, per-seed values, the smear gate (formatting helpers in analysis/writeup/markdown.py)


def _fmt(claim: str) -> str:
    return stats.CLAIMS.get(claim, ("", "{:.3f}"))[1]


def primary_markdown(primary: pd.DataFrame) -> str:
    """The primary claims (fixed before the runs): paired tests, Holm, TOST, power at the SESOI, verdict."""
    rows = []
    for r in primary.to_dict("records"):
        fmt = _fmt(r["claim"])
        test_p = _p(r["p_value"]) + ("" if r["paired"] or not math.isfinite(r["p_value"]) else " (Welch)")
        power = (f"{_num(r['power_obs'], '{:.2f}')} / {_num(r['power_upper'], '{:.2f}')}"
                 if math.isfinite(r["power_obs"]) else "—")
        rows.append([r["label"], f"{r['arm']} − {r['baseline']}", _num(r["sesoi"], "{:g}"), _seeds(r),
                     _num(r["diff"], fmt), _ci(r, fmt), test_p, _signflip(r), _p(r["p_holm"]), _p(r["p_tost"]),
                     power, r["verdict"]])
    return _md_table(["claim (per run, final step)", "arms", "SESOI", "n pairs", "mean paired difference",
                      "95% CI (t)", "paired-t p", "sign-flip p (min reachable)", "Holm p", "TOST p",
                      "power at SESOI (observed σ / upper σ)", "verdict"], rows)


def exploratory_markdown(df: pd.DataFrame) -> str:
    """Every other comparison, uncorrected: each arm − baseline on each claim."""
    rows = []
    for r in df.to_dict("records"):
        fmt = _fmt(r["claim"])
        rows.append([f"{r['arm']} − {r['baseline']}", r["label"], _num(r["mean_baseline"], fmt),
                     _num(r["mean_arm"], fmt), _num(r["diff"], fmt),
                     _ci(r, fmt) + (f" ({r['ci_method']})" if r["ci_method"] else ""),
                     f"{_p(r['p_value'])} ({r['test']})" if r["test"] else "—", _signflip(r),
                     _num(r["r_pairs"], "{:.2f}"), _seeds(r),
                     f"{_p(r['p_tost'])} (±{r['sesoi']:g})" if math.isfinite(r["p_tost"]) else "—", r["verdict"]])
    return _md_table(["arms", "claim (per run, final step)", "baseline", "arm", "difference", "95% CI", "p (test)",
                      "sign-flip p (min reachable)", "r within pairs", "n pairs", "TOST p (±SESOI)", "verdict"], rows)


def planning_markdown(comparisons: pd.DataFrame) -> str:
    """Paired seeds needed for power 0.8 at each primary claim's SESOI (observed and upper-bound σ)."""
    plan = stats.plan_seeds(comparisons)
    if not len(plan):
        return ""
    lines = [f"- {r['label']} (SESOI {r['sesoi']:g}): σ of the paired differences {_num(r['sd_diff'], '{:.3g}')} "
             f"from {r['n_pairs']} pairs, {stats.SD_UPPER_LEVEL:.0%} upper bound {_num(r['sd_diff_upper'], '{:.3g}')} → "
             f"{_num(r['seeds_obs'], '{:.0f}')} / {_num(r['seeds_upper'], '{:.0f}')} paired seeds"
             for r in plan.to_dict("records")]
    return ("Paired seeds for power 0.8 at the SESOI (two-sided α = "
            f"{stats.ALPHA:g}; at the observed σ / at its upper bound), for sizing the next study:\n\n"
            + "\n".join(lines))


def statistics_markdown(summary: Summary) -> str:
    """The primary claims' table with how it was tested, then the exploratory comparisons."""
    primary, exploratory = summary.primary, summary.exploratory
    parts = []
    if len(primary):
        why = "\n".join(f"- {stats.claim_label(p.measure, summary.threshold)}, {p.arm} − {stats.BASELINE}, "
                        f"SESOI {p.sesoi:g}: {p.why}" for p in stats.PRIMARY_CLAIMS)
        notes = [f"- {r['label']}: {r['note']}." for r in primary.to_dict("records") if r["note"]]
        parts += ["### Primary claims (fixed before the runs)", "", primary_markdown(primary), ""]
        parts += ["Notes:", ""] + notes + [""] if notes else []
        n = int(primary["n_pairs"].max())
        floor = f" (it cannot go below 2/2ⁿ: {stats.sign_flip_min_p(n):.2g} with these {n} pairs)" if n else ""
        parts += [
                  "Arms of one seed share initial weights and data order, so they are compared as pairs: the mean "
                  "paired difference with its t-based 95% CI, the paired t-test, and the exact sign-flip "
                  f"permutation test over all 2ⁿ sign patterns{floor}. The "
                  f"{len(stats.PRIMARY_CLAIMS)} claims were declared in advance with a smallest effect of interest "
                  f"(SESOI) each, and their paired-t p-values are adjusted together (Holm). Verdicts: *lower* / "
                  f"*higher* when the Holm p < {stats.ALPHA:g}; else *equivalent within ±SESOI* when the two "
                  f"one-sided tests (TOST) reject a difference of ±SESOI at {stats.ALPHA:g}; else *too few seeds to "
                  "tell*. The power is the chance the paired t-test would find a true difference of the SESOI with "
                  f"these pairs, at the observed σ of the differences and at its {stats.SD_UPPER_LEVEL:.0%} upper "
                  "confidence bound (χ²), since a few differences barely estimate their spread. Arms whose seeds do "
                  "not pair are compared unpaired (Welch p, bootstrap CI) and labelled so.", "",
                  "Why these claims and SESOIs:", "", why, ""]
        plan = planning_markdown(summary.comparisons)
        if plan:
            parts += [plan, ""]
    if len(exploratory):
        parts += ["### Exploratory comparisons (not corrected for multiple comparisons)", "",
                  exploratory_markdown(exploratory), "",
                  f"Every arm is compared with the {stats.BASELINE}, paired by seed; *lower* / *higher* at an "
                  f"uncorrected p < {stats.ALPHA:g}, else *equivalent within ±SESOI* (TOST) where the measure has a "
                  "declared SESOI, else *too few seeds to tell*. Read them as leads for the next study, not as "
                  "findings.", ""]
    return "\n".join(parts).rstrip() if parts else "*No comparisons.*"


def thresholds_markdown(df: pd.DataFrame) -> str:
    """The previous-token head count per arm at each threshold (exploratory)."""
    rows = [[f"{r['threshold']:.2f}", f"{r['arm']} − {r['baseline']}", _num(r["mean_baseline"], "{:.2f}"),
             _num(r["mean_arm"], "{:.2f}"), _num(r["diff"], "{:+.2f}"), _ci(r, "{:.2f}"),
             f"{_p(r['p_value'])} ({r['test']})" if r["test"] else "—", r["verdict"]] for r in df.to_dict("records")]
    return _md_table(["threshold", "arms", "baseline heads", "arm heads", "difference", "95% CI", "p (test)",
                      "verdict"], rows)


def per_seed_markdown(per_seed: pd.DataFrame) -> str:
    cols = [c for c in stats.CLAIMS if c in per_seed and per_seed[c].notna().any()]
    rows = []
    for r in per_seed.to_dict("records"):
        rows.append([r["arm"], r["seed"], r["run"], r["step"], f"{int(r['tokens']):,}"]
                    + [_num(r[c], stats.CLAIMS[c][1]) for c in cols])
    t = float(per_seed["threshold"].iloc[0]) if len(per_seed) else DEFAULT_THRESHOLD
    return _md_table(["arm", "seed", "run", "step", "tokens"] + [stats.claim_label(c, t) for c in cols], rows)


def smear_markdown(tables: Tables | None) -> str:
    """Final λ and coefficient summary per seed, and the vocabulary's extremes."""
    if tables is None:
        return "*No tables (see above).*"
    smear = tables.get("smear") if tables.get("smear") is not None else tables.get("record_smear")
    if smear is None or not (smear["arm"] == "smear").any():
        return "*No smear table: λ and the coefficients are not reported.*"
    final = stats.smear_final(smear)
    rows = [[r["seed"], r["run"], r["step"], _num(r["lambda"]), _num(r["gate_mean"]), _num(r["coef_mean"]),
             f"{_num(r['coef_p05'])} / {_num(r['coef_p50'])} / {_num(r['coef_p95'])}"] for r in final.to_dict("records")]
    text = _md_table(["seed", "run", "step", "λ", "mean gate σ(w·e)", "mean coefficient on data",
                      "coefficient 5% / 50% / 95%"], rows)
    vocab = tables.get("smear_vocab")
    if vocab is not None and (vocab["arm"] == "smear").any():
        top, bottom = stats.vocab_extremes(vocab[vocab["arm"] == "smear"], 8)
        shown = lambda df: ", ".join(f"`{plots.display_token(t)}` {c:.3f}" for t, c in zip(df["text"], df["coefficient"]))
        text += f"\n\nHighest coefficients (vocabulary, mean over seeds): {shown(top)}.\n\nLowest: {shown(bottom)}."
    return text


def _runs_markdown(tables: Tables, per_seed: pd.DataFrame) -> str:
    last = stats.final_rows(tables.heads).drop_duplicates("run").sort_values(["arm", "seed"])
    rows = [[r["arm"], r["seed"], r["run"], r["step"], f"{int(r['tokens']):,}",
             "{cpu} ({bf16_gemm})".format(**{"cpu": "not recorded", "bf16_gemm": "?"} | _machine(tables, r["run"]))]
            for r in last.to_dict("records")]
    return (_md_table(["arm", "seed", "run", "final step", "tokens seen", "trained on (bf16 GEMMs)"], rows)
            + "\n\n" + machines_sentence(tables) + arms_by_machine(tables, per_seed)
            + machine_offsets(tables, per_seed))


def _machine(tables: Tables, run: str) -> dict:
    return (tables.configs.get(str(run)) or {}).get("machine") or {}


def _run_kinds(tables: Tables) -> dict[tuple[str, int], str]:
    """Each run's kind of bf16 GEMMs, keyed by (arm, seed)."""
    runs = stats.final_rows(tables.heads).drop_duplicates("run")
    return {(str(r["arm"]), int(r["seed"])): _machine(tables, r["run"]).get("bf16_gemm", "not recorded")
            for r in runs.to_dict("records")}


def _seed_kinds(tables: Tables, arms: Sequence[str] | None = None) -> dict[int, set[str]]:
    """Each seed's kinds of bf16 GEMMs, over its runs of `arms` (default: every arm)."""
    kinds: dict[int, set[str]] = {}
    for (arm, seed), kind in _run_kinds(tables).items():
        if arms is None or arm in arms:
            kinds.setdefault(seed, set()).add(kind)
    return kinds


def _machine_measures(per_seed: pd.DataFrame) -> list[str]:
    """What the machine checks compare: the primary measures and validation loss."""
    return [c.measure for c in stats.PRIMARY_CLAIMS] + (["val_loss"] if "val_loss" in per_seed else [])


def arms_by_machine(tables: Tables, per_seed: pd.DataFrame) -> str:
    """For each arm whose pairs with the baseline span machines of more than one kind (pairs of several kinds, or
    pairs split across kinds): its paired differences on the primary measures and validation loss within each
    kind's unsplit pairs (exploratory: a check that the kinds agree, not a test)."""
    measures = _machine_measures(per_seed)
    rows = []
    for arm in stats.arm_order(set(per_seed["arm"].astype(str)) - {stats.BASELINE}):
        groups: dict[str, list[int]] = {}
        kinds = _seed_kinds(tables, [stats.BASELINE, arm])
        for seed, k in kinds.items():
            if len(k) == 1:  # a pair split across kinds belongs to neither
                groups.setdefault(min(k), []).append(seed)
        if len(groups) + any(len(k) > 1 for k in kinds.values()) < 2:
            continue  # every pair on one kind
        for kind, seeds in sorted(groups.items()):
            for m in measures if len(seeds) >= 2 else []:
                r = stats.compare_arms(per_seed[per_seed["seed"].isin(seeds)], m, arm=arm, role="exploratory")
                if r["paired"]:
                    fmt = stats.CLAIMS[m][1]
                    rows.append([stats.claim_label(m), f"{arm} − {stats.BASELINE}", kind, r["n_pairs"],
                                 _num(r["diff"], fmt), f"[{_num(r['ci_low'], fmt)}, {_num(r['ci_high'], fmt)}]"])
    header = ["measure", "arms", "bf16 GEMMs", "n pairs", "mean paired difference", "95% CI (t)"]
    intro = ("\n\nEach arm within each kind's pairs, where its pairs span kinds (exploratory: do the kinds agree? "
             "pairs split across kinds are left out here):\n\n")
    return intro + _md_table(header, rows) if rows else ""


def machine_offsets(tables: Tables, per_seed: pd.DataFrame) -> str:
    """For each arm whose runs span two or more machine kinds: its runs' mean on each kind and each later kind's
    difference from the first (unpaired: different seeds; Welch t). A pair split across kinds carries such an
    offset into its difference, so this is the check that split pairs need (exploratory)."""
    measures, kind_of = _machine_measures(per_seed), _run_kinds(tables)
    df = per_seed.assign(kind=[kind_of.get((str(a), int(s))) for a, s in zip(per_seed["arm"], per_seed["seed"])])
    rows = []
    for arm in stats.arm_order(set(df["arm"].astype(str))):
        by_kind = {k: g for k, g in df[df["arm"] == arm].groupby("kind") if len(g) >= 2}
        if len(by_kind) < 2:
            continue
        (first, ref), *others = sorted(by_kind.items())
        for kind, g in others:
            for m in measures:
                fmt = stats.CLAIMS[m][1]
                lo, hi = stats.welch_ci(g[m].to_numpy(), ref[m].to_numpy())
                a, b = g[m].mean(), ref[m].mean()
                rows.append([stats.claim_label(m), arm, f"{kind} − {first}", f"{len(g)} / {len(ref)}",
                             f"{_num(a, fmt)} − {_num(b, fmt)}", _num(a - b, fmt),
                             f"[{_num(lo, fmt)}, {_num(hi, fmt)}]", _p(stats.welch_p(g[m], ref[m]))])
    header = ["measure", "arm", "kinds (bf16 GEMMs)", "runs", "means", "difference", "95% CI (Welch t)", "Welch p"]
    intro = ("\n\nEach arm's runs by machine kind, unpaired (exploratory: a machine offset, read through the spread "
             "of the seeds, since each kind trained other seeds; a pair split across kinds carries any such offset "
             "into its difference):\n\n")
    return intro + _md_table(header, rows) if rows else ""


def machines_sentence(tables: Tables) -> str:
    """How many seeds (all their arms: a seed is a pair) trained with each kind of bf16 GEMMs. Muon's
    Newton–Schulz differs in its last bits between the kinds (trainer.optim); a seed of mixed kinds is named."""
    kinds = _seed_kinds(tables)
    whole = pd.Series([min(k) for k in kinds.values() if len(k) == 1], dtype=str).value_counts().sort_index()
    split = ", ".join(str(seed) for seed, k in sorted(kinds.items()) if len(k) > 1) or "none"
    counts = "; ".join(f"{n} with {kind}" for kind, n in whole.items()) or "none on one kind"
    return f"Seeds by the machine's bf16 GEMMs (every arm of a seed on one kind): {counts}. Seeds split across kinds: {split}."


def notebook_statistics(tables: Tables | None, threshold: float = DEFAULT_THRESHOLD,
                        claims: Sequence[str] | None = None, sweep: bool = False) -> Summary | None:
    """Notebook cell body: show the comparisons (and the conclusion), or why they are absent."""
    if tables is None:
        plots.display_markdown("*Statistics: absent (no tables, see above).*")
        return None
    try:
        summary = stats.summarize(tables, threshold)
    except SmearlensError as e:
        plots.display_markdown(f"**Statistics absent:** {e}.")
        return None
    shown = summary
    if claims is not None:
        keep = summary.comparisons["claim"].isin(list(claims)) if len(summary.comparisons) else []
        shown = Summary(summary.per_seed, summary.comparisons[keep], summary.thresholds, summary.verdict, threshold)
    parts = [f"**Conclusion:** {summary.verdict}", "", statistics_markdown(shown)]
    if sweep:
        parts += ["", "Previous-token heads at each threshold:", "", thresholds_markdown(summary.thresholds)]
    parts += ["", "Per-seed values:", "", per_seed_markdown(summary.per_seed)]
    plots.display_markdown("\n".join(parts))
    return summary


def notebook_mechanism(tables: Tables | None) -> mech.MechanismSummary | None:
    """Notebook cell body: the mechanism numbers with their tests and what they say, or why absent."""
    if tables is None:
        plots.display_markdown("*Mechanism statistics: absent (no tables, see above).*")
        return None
    summary = mech.summarize_mechanism(tables)
    plots.display_markdown(f"**What the mechanism tables say:** {mechanism_conclusion(summary)}\n\n"
                           + mechanism_markdown(summary))
    return summary


# ---------------------------------------------------------------------------------------------
# Provenance


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def configs_markdown(configs: dict | None, runs: Sequence[str] = ()) -> str:
    """Settings shared by every run once, then the settings that differ, run by run."""
    if not configs:
        return ("*No configs recorded: no `run.json` found in the run folders and none passed "
                "(`write_report(configs=…)`).*")
    if not all(isinstance(v, dict) for v in configs.values()):
        configs = {"config": configs}
    flat = {name: _flatten(c) for name, c in configs.items()}
    keys = sorted(set().union(*flat.values()))
    common = {k: flat[next(iter(flat))].get(k) for k in keys
              if len({json.dumps(f.get(k), sort_keys=True, default=str) for f in flat.values()}) == 1}
    differing = [k for k in keys if k not in common]
    parts = ["Shared by all runs:", "```json", json.dumps(common, indent=1, default=str), "```"]
    if differing and len(flat) > 1:
        parts += ["", "Differing between runs:", "",
                  _md_table(["run"] + differing, [[n] + [json.dumps(f.get(k), default=str) for k in differing]
                                                  for n, f in flat.items()])]
    missing = [r for r in runs if r not in configs]
    if missing and len(configs) > 1:
        parts += ["", f"No `run.json` for: {', '.join(missing)}."]
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# The report


def _rel(path: Path, start: Path) -> str:
    return Path(os.path.relpath(Path(path).resolve(), start.resolve())).as_posix()


def write_report(tables_dir: str | Path, figures_dir: str | Path, out_path: str | Path,
                 commands: list[str] | None = None, configs: dict | None = None, *,
                 preset: str | None = None, threshold: float = DEFAULT_THRESHOLD, notebooks: bool = False,
                 runs_dir: str | Path | None = None, formats: Sequence[str] = ("png", "svg"),
                 reference: str | Path | None = None) -> Path:
    """Write the markdown report to `out_path`, and its headline table (summary.csv) beside it; return the report.

    `formats`: the files each figure is saved as (the first is embedded). `reference`: an earlier report's
    folder or summary.csv whose verdicts the summary states too (the demo's 3 seeds cannot decide the primary
    claims; the powered study can). Tables that cannot be
    read raise AnalysisError. Tables that can be read but not analysed
    together (presets mixed, …) still give a report, which says why its statistics are absent.
    """
    tables_dir, figures_dir, out_path = Path(tables_dir), Path(figures_dir), Path(out_path)
    if reference is not None:
        hl.read_headline(reference)  # a wrong path fails before the work, not after it
    tables = stats.load_tables(tables_dir, runs_dir=runs_dir, preset=preset, validate=False)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    head = ["# Does the smear gate free up attention heads?", ""]
    try:
        tables.notes = stats.validate_tables(tables)
    except AnalysisError as e:
        presets = ", ".join(sorted(set(tables.heads["preset"].astype(str)))) if len(tables.heads) else "none"
        body = head + [f"*Tables: `{tables_dir}` · presets: {presets} · written {now}*", "",
                       "## No analysis", "", f"The statistics and figures are absent: {e}.", ""]
        body += _provenance(commands, configs, tables, runs_dir)
        atomic_write_text(out_path, "\n".join(body) + "\n")
        return out_path

    summary = stats.summarize(tables, threshold)
    mechanism = mech.summarize_mechanism(tables)
    figures_dir.mkdir(parents=True, exist_ok=True)
    executed: dict[str, Path | str] = {}
    if notebooks:
        started = time.time() - 1
        executed = run_notebooks(tables_dir, figures_dir, checkpoints=runs_dir, preset=preset, threshold=threshold)
        fresh = lambda p: p.exists() and p.stat().st_mtime >= started  # an old PNG from another run is not ours
        drawn = {n: (figures_dir / f"{n}.png") if fresh(figures_dir / f"{n}.png") else
                 "not drawn by the notebook (see the executed notebook for why)" for n in plots.FIGURES}
        # the summary and the study figures are drawn here: no notebook draws the first two kinds, and 06_induction
        # runs only where its tables are (notebook_runner.NEEDS) while the recorder's scores alone draw a figure
        drawn.update(plots.draw_all(tables, figures_dir, threshold, names=plots.SUMMARY_FIGURES + STUDY_FIGURES,
                                    formats=formats))
    else:
        drawn = plots.draw_all(tables, figures_dir, threshold, formats=formats)
    gate = gate_section(tables, summary)
    speedrun = speedrun_section(tables, summary, out_path.parent)  # its steps come from the tables beside the report

    arms = stats.arm_order(set(tables.arms) | set(stats.ARMS))
    per_arm = {arm: seed_ranges(tables.seeds(arm)) for arm in arms}
    seeds = (f"{next(iter(per_arm.values()))} in every arm" if len(set(per_arm.values())) == 1
             else "; ".join(f"{arm} {s}" for arm, s in per_arm.items()))
    final_steps = sorted(set(stats.final_rows(tables.heads)["step"]))
    headline = hl.headline(summary, tables.get("paths"))
    body = head + [
        f"*Preset `{tables.preset}` · seeds: {seeds} · final step {', '.join(map(str, final_steps))} · "
        f"previous-token threshold {threshold:g} · written {now}*", ""]
    body += summary_section(headline, summary, drawn, out_path.parent, reference, threshold)
    body += [
        "## Conclusion", "",
        "How the previous token travels (exploratory; see *Mechanism* below): " + mechanism_conclusion(mechanism), ""]
    if tables.notes:
        body += ["Limits of these data:", ""] + [f"- {n}" for n in tables.notes] + [""]
    body += [
        "A head's previous-token score is its mean attention from each token to the token just before it "
        "(within a document); a head scoring ≥ the threshold is a *previous-token head*, and the total "
        "previous-token mass is the sum of the scores over all heads. Heads count as *freed up* when the "
        "smear arm has both fewer previous-token heads and less previous-token mass than the baseline, "
        "significantly across paired seeds after the Holm correction over the primary claims.", "",
    ]
    figure_md = lambda names: _figures_markdown(names, drawn, out_path.parent)
    body += steps_markdown_section(out_path.parent, figures_dir, out_path.parent)  # after `smearlens steps-saved`
    if speedrun is not None:
        body += speedrun_markdown_section(speedrun, threshold, figure_md)
    induction, induction_claims = induction_markdown_section(tables, figure_md, threshold)
    body += induction
    body += [
        "## Statistics", "", statistics_markdown(summary), "",
        "### Previous-token heads at each threshold", "", thresholds_markdown(summary.thresholds), "",
        "## Per-seed values", "", per_seed_markdown(summary.per_seed), "",
        "## Figures", ""]
    body += figure_md([n for n in plots.FIGURES if n not in OWN_SECTIONS])
    body += ["## Mechanism: where the previous token travels", "",
             "At each run's final checkpoint: token i−1 is resampled and the change of the prediction at i is traced "
             "through the smear term, the rest of the model and each attention head's key and value (path "
             "attribution); the attention of query i on its neighbours; where a linear probe can read token i−1; "
             "and what knocking the smear term and the previous-token heads out does to the loss.", "",
             "### Numbers", "", mechanism_markdown(mechanism), ""]
    body += figure_md(plots.MECHANISM_FIGURES)
    if dr.has_doses(tables):
        body += ["## Dose-response", ""]
        try:
            body += [dose_markdown(dr.dose_response(tables, threshold)), ""]
        except SmearlensError as e:
            body += [f"*Absent: {e}.*", ""]
        body += figure_md(plots.DOSE_FIGURES)
    if gate is not None:
        body += gate_markdown_section(*gate) + figure_md(plots.GATE_FIGURES)
    body += canon_markdown_section(tables)
    body += ["## Smear gate at the last checkpoint", "", smear_markdown(tables), "", "## Runs", "",
             _runs_markdown(tables, summary.per_seed), ""]
    if executed:
        body += ["## Notebooks", ""] + [f"- `{n}`: " + (f"[executed copy]({_rel(p, out_path.parent)})"
                                                        if isinstance(p, Path) else f"failed — {p}")
                                        for n, p in executed.items()] + [""]
    body += _provenance(commands, configs, tables, runs_dir)
    atomic_write_text(out_path.parent / hl.FILE, headline.to_csv(index=False))
    if speedrun is not None:
        atomic_write_text(out_path.parent / sp.CLAIMS_FILE, speedrun.csv.to_csv(index=False))
    if induction_claims is not None:
        atomic_write_text(out_path.parent / INDUCTION_CLAIMS_FILE, induction_claims.to_csv(index=False))
    else:  # an earlier report's claims are not these tables' (a README may cite the file)
        (out_path.parent / INDUCTION_CLAIMS_FILE).unlink(missing_ok=True)
    atomic_write_text(out_path, "\n".join(body) + "\n")
    return out_path


def _figures_markdown(names: Iterable[str], drawn: dict, where: Path, level: str = "### ") -> list[str]:
    """Each figure embedded by relative path with its caption (under a heading at `level`, or none), or why
    it was not drawn."""
    body = []
    for name in names:
        spec, got = plots.FIGURES[name], drawn.get(name)
        body += [f"{level}{spec.title}", ""] if level else []
        if isinstance(got, Path):
            body += [f"![{spec.title}]({_rel(got, where)})", "", f"*{spec.caption}*", ""]
        else:
            body += [f"*Not drawn: {got}.*", ""]
    return body


def _provenance(commands: list[str] | None, configs: dict | None, tables: Tables,
                runs_dir: str | Path | None) -> list[str]:
    out = ["## How these numbers were made", "", "Commands:", ""]
    if commands:
        out += ["```bash"] + list(commands) + ["```"]
    else:
        out += ["*Not recorded: pass `commands` to `write_report` or `--command` to `smearlens report`.*"]
    files = []
    for name in list(stats.ALL_COLUMNS) + list(stats.RECORD_TABLES):
        df = tables.get(name)
        if df is not None:
            files.append(f"`{name}` ({len(df):,} rows)")
    out += ["", f"Tables from `{tables.folder}`: {', '.join(files)}.", "", "Configs:", ""]
    runs = sorted(set(tables.heads["run"].astype(str)))
    out += [configs_markdown(configs if configs is not None else tables.configs, runs), ""]
    return out
