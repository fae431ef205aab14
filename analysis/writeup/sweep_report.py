"""The size sweep's report: one markdown page, its figure and its tables, over finished study folders.

    write_sweep_report(["studies/sizes/cpu-small-d96", ...], "studies/sizes", commands=[...])

writes `report.md`, `figures/size_sweep.{png,svg}` and `tables/{sizes,comparisons,matched,
coefficients,per_seed,trends}.{parquet,csv}` under the output folder. Each study's own report (its folder's
report.md) has every per-size table and figure; this page sets the sizes side by side.
"""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

import pandas as pd

from analysis.writeup.markdown import _ci, _md_table, _num, _p
from analysis.writeup.plots import save
from analysis.writeup.plots.sizes import size_sweep
from analysis.stats.sizes import RECORD_COEF, SweepTables, load_size_study, record_reference, sweep_tables
from analysis.tables import write_table
from trainer.io import atomic_write_text

FIGURE = "size_sweep"
TABLES = ("sizes", "comparisons", "matched", "coefficients", "per_seed", "trends")
FMT = {"prev_mass": "{:+.3f}", "best_prev": "{:+.3f}", "val_loss": "{:+.4f}"}


def sizes_markdown(sizes: pd.DataFrame) -> str:
    rows = [[r["size"], r["preset"], r["d_model"], f"{r['n_heads']} × {r['d_head']}", r["n_layers"],
             f"{r['attn_scale']:.3g}", f"{r['params_total']:,}", f"{r['params_nonembed']:,}", f"{r['tokens']:,}",
             f"{r['tokens_per_param']:.2f}", f"{r['tokens_per_nonembed_param']:.2f}"]
            for r in sizes.to_dict("records")]
    return _md_table(["size", "preset", "d_model", "heads × head size", "layers", "attention scale", "parameters",
                      "without embeddings", "tokens a run", "tokens / parameter", "tokens / non-emb. parameter"],
                     rows)


def coefficients_markdown(coefs: pd.DataFrame, sizes: pd.DataFrame) -> str:
    params = dict(zip(sizes["size"], sizes["params_nonembed"]))
    rows = []
    for size in sizes["size"]:
        c = {r["measure"]: r for r in coefs[coefs["size"] == size].to_dict("records")}
        cells = [size, f"{params[size]:,}"]
        for m in ("lambda", "coef_mean"):
            r = c.get(m)
            cells += [f"{_num(r['mean'], '{:.4f}')} {_ci(r, '{:.4f}')}" if r else "—", r["seeds"] if r else "—"]
        rows.append(cells)
    ref = record_reference()
    rows.append([ref["size"], f"{ref['params_nonembed']:,}", "—", "—", f"≈ {RECORD_COEF:g} (SPEC)", "—"])
    return _md_table(["size", "parameters w/o embeddings", "final λ, mean [95% t CI]", "per seed",
                      "mean coefficient λ·gate [95% t CI]", "per seed"], rows)


def comparisons_markdown(comp: pd.DataFrame) -> str:
    rows = []
    for r in comp.to_dict("records"):
        fmt = FMT.get(r["measure"], "{:+.3f}")
        rows.append([r["size"], r["when"], r["label"], r["n_pairs"], _num(r["mean_baseline"], fmt.replace("+", "")),
                     _num(r["mean_arm"], fmt.replace("+", "")), _num(r["diff"], fmt), _ci(r, fmt), _p(r["p_value"]),
                     r["verdict"]])
    return _md_table(["size", "when", "measure", "pairs", "baseline", "smear", "smear − baseline", "95% t CI",
                      "paired t p", "verdict"], rows)


def trends_markdown(trends: pd.DataFrame) -> str:
    rows = []
    for r in trends.to_dict("records"):
        fmt = FMT.get(r["measure"], "{:+.4f}")
        rows.append([r["label"], r["when"], f"{r['n_points']} / {r['n_sizes']}", _num(r["slope"], fmt), _ci(r, fmt),
                     _p(r["p_value"]), r["verdict"]])
    return _md_table(["measure", "when", "runs or pairs / sizes", "slope per doubling of parameters", "95% t CI",
                      "p", "reading"], rows)


def matched_markdown(matched: pd.DataFrame) -> str:
    if not len(matched):
        return "*No matched-loss rows (no validation logs or no pairs of seeds).*"
    rows = []
    for (size, seed), g in matched.groupby(["size", "seed"], sort=False):
        a = {r["arm"]: r for r in g.to_dict("records")}
        b, s = a.get("baseline", {}), a.get("smear", {})
        rows.append([size, seed, _num(g["loss_level"].iloc[0], "{:.4f}"),
                     _num(b.get("step"), "{:.0f}"), _num(s.get("step"), "{:.0f}"),
                     _num(b.get("prev_mass"), "{:.3f}"), _num(s.get("prev_mass"), "{:.3f}"),
                     _num(s.get("prev_mass", math.nan) - b.get("prev_mass", math.nan), "{:+.3f}")])
    return _md_table(["size", "seed", "matched val loss", "baseline step there", "smear step there",
                      "baseline prev mass there", "smear prev mass there", "difference"], rows)


def sweep_markdown(t: SweepTables, *, figure: str | None, commands: Sequence[str] = (),
                   folders: dict[str, Path] | None = None) -> str:
    """The report's markdown: sizes, the learned coefficient, the paired comparisons, matched loss, notes."""
    parts = ["# Size sweep: learned smear vs baseline at several widths", "",
             f"*Generated {datetime.now(timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}.*", "",
             "Each size is one study folder (arms × seeds of one preset, paired by seed: same initial weights "
             "and data order); its own report.md has every per-size table and figure. Differences are smear − "
             "baseline, paired by seed, with a 95% t CI; all are exploratory (no correction across sizes).", ""]
    if figure:
        parts += [f"![size sweep]({figure})", ""]
    parts += ["## Sizes", "", "Parameters are counted from the model definition for the baseline (the smear adds "
              "its gate's 12 weights; λ lives in the scalars); \"without embeddings\" leaves out the token "
              "embedding, the value embeddings and the head.", "", sizes_markdown(t.sizes), "",
              "## The learned coefficient", "",
              "At each run's final checkpoint: λ and the mean over positions of λ·σ(w·e[:12]), the coefficient "
              "on the previous token. The record's 124M model learns about "
              f"{RECORD_COEF:g}.", "", coefficients_markdown(t.coefficients, t.sizes), "",
              "## Smear − baseline, at the end and at matched validation loss", "",
              "At the end: the study's final-checkpoint measures and each run's last validation loss. \"End "
              "(recorder)\": the previous-token measures at the last step on the training recorder's probe batch, "
              "which the matched-loss values also use (compare those two like for like). At matched "
              "loss: per seed, the higher of the two arms' final validation losses; each arm's step there (its "
              "validation curve, linear between logged points, first reaching it); the recorded previous-token "
              "measures (record_heads, linear between recorded steps) at that step.", "",
              comparisons_markdown(t.comparisons), "", "### Matched loss, per seed", "",
              matched_markdown(t.matched), "", "## Across sizes", "",
              "Exploratory: each paired difference (per seed) and the learned coefficient (per smear run) against "
              "log2 of the parameter count, one OLS line over the points of every size (the sizes share no "
              "weights, so each point is its own), with its slope per doubling of parameters.", "",
              trends_markdown(t.trends), ""]
    if t.notes:
        parts += ["## Notes", ""] + [f"- {n}" for n in t.notes] + [""]
    parts += ["## Provenance", ""]
    if folders:
        parts += [f"- {size}: `{folder}`" for size, folder in folders.items()] + [""]
    if commands:
        parts += ["```bash", *commands, "```", ""]
    return "\n".join(parts)


def write_sweep_report(studies: Sequence[str | Path], out: str | Path, *, commands: Sequence[str] = ()) -> Path:
    """Read the finished study folders (one size each), write the sweep's tables, figure and report.md
    under `out`; returns the report's path."""
    out = Path(out)
    loaded = [load_size_study(f) for f in studies]
    t = sweep_tables(loaded)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        write_table(getattr(t, name), out / "tables", name)
    png = save(size_sweep(t), out / "figures", FIGURE)[0]
    text = sweep_markdown(t, figure=str(png.relative_to(out)), commands=commands,
                          folders={s.size: s.folder for s in loaded})
    path = out / "report.md"
    atomic_write_text(path, text)
    return path


__all__ = ["write_sweep_report", "sweep_markdown", "FIGURE", "TABLES"]
