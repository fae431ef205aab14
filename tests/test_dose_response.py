"""Dose-response (analysis/stats/dose_response.py, the dose_response figure, the report's section): synthetic runs
whose truth is known — previous-token mass falling linearly in ln c, validation loss quadratic in ln c with
its minimum at c = 0.8 — each seed with its own offset, as a study's paired seeds have."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.stats import dose_response as dr
from analysis.writeup import plots, report
from analysis import stats
from fixtures.synthetic_tables import BASE_PREV, make_tables, write_tables
from trainer.errors import AnalysisError

DOSES = (0.05, 0.08, 0.1, 0.2, 0.4, 0.8, 1.6)  # the study
MASS_A, MASS_B = 1.0, 0.3  # prev_mass = a − b · ln c
C_STAR, CURV, FLOOR = 0.8, 0.01, 4.06  # val_loss = floor + curv · (ln c − ln c*)²


def synthetic_doses(seeds=(0, 1, 2), noise: float = 0.002, rng_seed: int = 0, doses=DOSES) -> pd.DataFrame:
    """A dose table (dr.dose_table's columns) with known truth and a learned arm that sits on the share curve."""
    rng = np.random.default_rng(rng_seed)
    rows = []
    for seed in seeds:
        mass_off, loss_off = rng.normal(0, 0.05), rng.normal(0, 0.003)  # each seed's own level

        def run(arm, kind, c, share, coef, mass, loss):
            rows.append(dict(run=f"s{seed}-{arm}", arm=arm, seed=seed, step=100, kind=kind, c=c,
                             log_c=math.log(c) if c > 0 else math.nan, coef_mean=coef, share=share,
                             prev_mass=mass + mass_off + rng.normal(0, 10 * noise),
                             best_prev=0.3 - 0.05 * (math.log(c) if c > 0 else 0.5) + rng.normal(0, noise),
                             n_prev_heads=float(c < 0.2), val_loss=loss + loss_off + rng.normal(0, noise)))

        share = lambda c: c / (c + 0.4)
        run("baseline", "baseline", 0.0, 0.0, 0.0, 1.9, FLOOR + 0.03)
        for c in doses:
            x = math.log(c)
            run(f"dose-{c:g}", "dose", c, share(c) + rng.normal(0, 0.005), c, MASS_A - MASS_B * x,
                FLOOR + CURV * (x - math.log(C_STAR)) ** 2)
        # on the doses' curve at its share: mass linear in the share between the doses
        run("smear", "learned", math.nan, 0.3, 0.08, MASS_A - MASS_B * math.log(0.3 * 0.4 / 0.7), FLOOR + 0.02)
    return pd.DataFrame(rows)


def test_fit_recovers_the_slope_and_the_dose_of_lowest_loss():
    d = synthetic_doses()
    fitted = dr.fits(d)
    table = dr.fit_table(fitted)
    slope = table[(table["measure"] == "prev_mass") & (table["x"] == "log_c") & (table["term"] == "x")].iloc[0]
    assert slope["ci_lo"] <= -MASS_B <= slope["ci_hi"] and slope["ci_hi"] - slope["ci_lo"] < 0.1
    assert slope["n_obs"] == 21 and slope["n_seeds"] == 3 and slope["p"] < 1e-6
    assert set(table["method"]) <= {"MixedLM (REML), random intercept per seed", "OLS, seed fixed effects (fallback)"}
    opt = dr.lowest_loss_dose(d, fitted[("val_loss", "log_c", 2)])
    assert opt["c_lo"] <= C_STAR <= opt["c_hi"] and abs(opt["c_star"] - C_STAR) < 0.15, opt
    assert opt["curvature_lo"] > 0 and opt["note"] == ""
    assert opt["best_arm"] == "dose-0.8" and opt["best_n"] == 3 and opt["best_hi"] < 0  # paired, below baseline
    # the curve: pointwise CI around the fit over the doses' range
    cv = dr.curves(fitted)
    c = cv[(cv["measure"] == "val_loss") & (cv["x"] == "log_c") & (cv["model"] == "quadratic")]
    assert len(c) == dr.GRID and (c["lo"] <= c["fit"]).all() and (c["fit"] <= c["hi"]).all()
    assert np.isclose(c["at"].min(), math.log(0.05)) and np.isclose(c["at"].max(), math.log(1.6))


def test_learned_arm_on_the_curve_and_off_it():
    d = synthetic_doses()
    lv = dr.learned_vs_curve(d, dr.fits(d)).set_index("measure")
    on = lv.loc["prev_mass"]  # built on the curve (up to the fit's error)
    assert on["n"] == 3 and abs(on["mean"]) < 0.1 and not on["extrapolated"]
    shifted = d.copy()
    shifted.loc[shifted["arm"] == "smear", "prev_mass"] += 0.5  # every seed half a head's mass above the curve
    off = dr.learned_vs_curve(shifted, dr.fits(shifted)).set_index("measure").loc["prev_mass"]
    assert off["ci_low"] > 0.3 and off["verdict"] == "higher"


def test_no_interior_minimum_is_said_not_invented():
    d = synthetic_doses()
    flat = d.assign(val_loss=np.where(d["kind"] == "dose", FLOOR - 0.01 * d["log_c"], d["val_loss"]))  # monotone
    opt = dr.lowest_loss_dose(flat)
    assert math.isnan(opt["c_star"]) and ("not significantly > 0" in opt["note"] or "outside" in opt["note"])
    assert opt["best_arm"] == "dose-1.6"  # the paired minimum is still reported


def test_too_few_doses_and_degenerate_fits():
    d = synthetic_doses(doses=(0.8,))
    with pytest.raises(AnalysisError, match="≥ 2 fixed doses"):
        dr.fits(d)
    two = synthetic_doses(doses=(0.4, 0.8))
    fitted = dr.fits(two)  # a line through 2 doses is fine, a quadratic is not, and says why
    assert isinstance(fitted[("prev_mass", "log_c", 1)], dr.Fit)
    assert "needs ≥ 3" in fitted[("val_loss", "log_c", 2)]
    assert "no quadratic fit" in dr.lowest_loss_dose(two, fitted[("val_loss", "log_c", 2)])["note"]
    one_seed = synthetic_doses(seeds=(0,))
    f = dr.fit(one_seed[one_seed["kind"] == "dose"], "prev_mass", "log_c")
    assert f.method == "OLS (fallback)" and f.note.startswith("1 seed")
    const = dr.fit(two[two["kind"] == "dose"].assign(n_prev_heads=0.0), "n_prev_heads", "log_c")
    assert f"{const.method}" == "none (constant)" and np.all(const.cov == 0)
    with pytest.raises(AnalysisError, match="no degrees of freedom"):
        dr.fit(pd.DataFrame(dict(seed=[0, 1], log_c=[0.0, 1.0], y=[1.0, 2.0])), "y", "log_c")


def test_singular_seed_variance_falls_back_to_seed_fixed_effects():
    # every seed's mean exactly the same: MixedLM's seed variance sits at 0, which must not pass as a mixed model
    rng = np.random.default_rng(3)
    x = np.tile(np.log(DOSES), 3)
    noise = rng.normal(0, 0.01, (3, len(DOSES)))
    noise -= noise.mean(axis=1, keepdims=True)
    d = pd.DataFrame(dict(seed=np.repeat([0, 1, 2], len(DOSES)), log_c=x, y=2 - 0.5 * x + noise.ravel()))
    f = dr.fit(d, "y", "log_c")
    assert f.method == "OLS, seed fixed effects (fallback)" and "MixedLM" in f.note
    t = f.terms().iloc[1]
    assert t["ci_lo"] <= -0.5 <= t["ci_hi"]


# ---------------------------------------------------------------------------------------------
# Tables → figure → report


def dose_tables(folder: Path | None = None):
    """Synthetic analysis tables for baseline, smear and 4 doses × 3 seeds whose previous-token scores fall
    with ln c, smear shares grow with it and losses (loss.csv when written) dip at c = 0.8."""
    doses = (0.1, 0.4, 0.8, 1.6)
    arms = ("baseline", "smear") + tuple(f"dose-{c:g}" for c in doses)
    prev = {"baseline": BASE_PREV, "smear": BASE_PREV * 0.95}
    prev |= {f"dose-{c:g}": BASE_PREV * (0.45 - 0.1 * math.log(c)) for c in doses}
    kw = dict(arms=arms, prev=prev)
    t = make_tables(**kw)
    losses = []
    rng = np.random.default_rng(0)
    for run, arm, seed in t["heads"].drop_duplicates("run")[["run", "arm", "seed"]].itertuples(index=False):
        c = dr.arm_kind(arm)[1]
        dip = 0.01 * (math.log(c) - math.log(C_STAR)) ** 2 - 0.03 if c > 0 else 0.0
        losses.append(dict(run=run, val_loss=4.08 + 0.002 * seed + dip + rng.normal(0, 0.002)))
    losses = pd.DataFrame(losses)
    p = t["paths"]
    for c in doses:  # the fixture gives doses but dose-0.8 no share: share = c / (c + 0.4) + the seed's jitter
        sel = (p["arm"] == f"dose-{c:g}") & (p["path"] == "smear") & (p["metric"] == "share") & (p["offset"] == 1)
        p.loc[sel, "value"] = c / (c + 0.4) + 0.01 * (p.loc[sel, "seed"] - 1)
    if folder is None:
        return stats.Tables(**t, losses=losses)
    write_tables(folder, **kw)
    p.to_parquet(folder / "paths.parquet", index=False)
    for r in losses.itertuples(index=False):
        (folder.parent / r.run / "loss.csv").write_text(f"step,val_loss\n40,{r.val_loss}\n")
    return folder


def test_dose_table_reads_the_runs():
    t = dose_tables()
    table = dr.dose_table(t)
    assert list(table.drop_duplicates("arm")["arm"]) == ["baseline", "dose-0.1", "dose-0.4", "dose-0.8", "dose-1.6",
                                                          "smear"]
    assert list(table.drop_duplicates("arm")["kind"]) == ["baseline"] + ["dose"] * 4 + ["learned"]
    base = table[table["kind"] == "baseline"]
    assert (base["c"] == 0).all() and base["log_c"].isna().all() and (base["share"] == 0).all()
    d08 = table[table["arm"] == "dose-0.8"]
    assert np.allclose(d08["log_c"], math.log(0.8)) and np.allclose(d08["share"], 0.8 / 1.2 + 0.01 * (d08["seed"] - 1))
    smear = table[table["arm"] == "smear"]
    assert smear["coef_mean"].notna().all() and smear["c"].isna().all()
    assert table["val_loss"].notna().all() and len(table) == 18
    per_seed = stats.per_seed_claims(t.heads)
    assert np.allclose(table.set_index("run")["prev_mass"], per_seed.set_index("run")["prev_mass"].loc[table["run"]])
    assert dr.has_doses(t) and not dr.has_doses(stats.Tables(**make_tables(arms=("baseline", "smear", "dose-0.8"))))
    assert dr.arm_kind("dose-0.8-anneal-40")[0] is None and dr.arm_kind("canon4")[0] is None
    assert dr.arm_kind("smear-nogate")[0] == "learned" and dr.arm_kind("no-such-arm")[0] is None


def test_figure_draws_and_skips_cleanly(tmp_path):
    t = dose_tables()
    out = plots.draw_all(t, tmp_path, names=plots.DOSE_FIGURES, formats=("png",))
    with Image.open(out["dose_response"]) as im:
        assert im.size[0] > 600 and im.size[1] > 800
    none = plots.draw_all(stats.Tables(**make_tables()), tmp_path / "none", names=plots.DOSE_FIGURES, formats=("png",))
    assert none["dose_response"].startswith("no dose-response: it needs ≥ 2 fixed doses")


def test_report_has_the_dose_section_only_with_doses(tmp_path):
    tables = dose_tables(tmp_path / "checkpoints" / "analysis")
    out = report.write_report(tables, tmp_path / "figures", tmp_path / "report.md", formats=("png",))
    text = out.read_text()
    section = text[text.index("## Dose-response"):text.index("## Smear gate at the last")]
    assert "this is a screen" in section and "4 fixed doses" in section
    assert "| dose-0.8 | 0.8 | 3 |" in section and "| baseline | 0 | 3 |" in section and "| smear | learned | 3 |" in section
    assert "#### Fits" in section and "| total previous-token mass | ln c (fixed doses) | linear | slope |" in section
    assert "The quadratic in ln c has its minimum at **c* = " in section or "No fitted dose of lowest loss" in section
    assert "(`dose-0.8`)" in section  # the lowest paired loss
    assert "#### The learned arm against the doses' curve" in section and "| smear | total previous-token mass |" in section
    assert "![Dose-response](figures/dose_response.png)" in section
    figures = text[text.index("## Figures"):text.index("## Mechanism")]
    assert "dose_response" not in figures
    # without doses there is no section: tests/test_report.py's report (baseline and smear) checks that


# ---------------------------------------------------------------------------------------------
# Pooling studies: a seed trained again in another study is a unit of its own


def test_pooled_units_pair_within_their_study():
    a = synthetic_doses(seeds=(0, 1, 2), doses=(0.1, 0.8), rng_seed=1)
    b = synthetic_doses(seeds=(0, 1), rng_seed=2)
    pooled = dr.pool_dose_tables([("powered", a), ("screen", b)])
    assert set(pooled["study"]) == {"powered", "screen"} and len(pooled) == len(a) + len(b)
    assert dr.sorted_units(pooled["unit"]) == ["0", "1", "2", "screen:0", "screen:1"]
    # paired by unit: the screen's seed 0 against the screen's own baseline, not the first study's
    summary = dr.arm_summary(pooled)
    d02 = summary[(summary["arm"] == "dose-0.2") & (summary["measure"] == "val_loss_vs_baseline")].iloc[0]
    own = (b.loc[b["arm"] == "dose-0.2", "val_loss"].to_numpy() - b.loc[b["arm"] == "baseline", "val_loss"].to_numpy())
    assert d02["n"] == 2 and np.isclose(d02["mean"], own.mean())
    slope = dr.fit_table(dr.fits(pooled)).query("measure == 'prev_mass' and x == 'log_c' and term == 'x'").iloc[0]
    assert slope["n_seeds"] == 5 and slope["ci_lo"] <= -MASS_B <= slope["ci_hi"]
    kept = dr.pool_dose_tables([("powered", a), ("screen", b)], arms=["baseline", "dose-0.8"])
    assert set(kept["arm"]) == {"baseline", "dose-0.8"}
    with pytest.raises(AnalysisError, match="arms dose-9: in none of the studies"):
        dr.pool_dose_tables([("powered", a)], arms=["baseline", "dose-9"])
    with pytest.raises(AnalysisError, match=r"no baseline run for seed\(s\) screen:0, screen:1"):
        dr.pool_dose_tables([("powered", a), ("screen", b[b["arm"] != "baseline"])])
    with pytest.raises(AnalysisError, match="screen: not a dose table"):
        dr.pool_dose_tables([("powered", a), ("screen", b.drop(columns="share"))])


def test_dose_report_pools_a_study_and_a_dose_table(tmp_path, capsys):
    from commands.cli import main as cli_main

    study = dose_tables(tmp_path / "powered" / "analysis").parent  # a study folder: analysis/ and run folders
    screen = tmp_path / "screen.csv"
    synthetic_doses(seeds=(0, 1)).to_csv(screen, index=False)
    out = tmp_path / "dose"
    assert cli_main(["dose-report", str(study), f"screen={screen}", "--out", str(out)]) == 0
    text = (out / "report.md").read_text()
    assert "| powered | " in text and "| screen | " in text and "seeds 0–2; screen: 0, 1." in text
    assert "a unit of its own" in text and "![Dose-response](figures/dose_response.png)" in text
    table = pd.read_csv(out / "tables" / "dose_table.csv")
    assert len(table) == 18 + 2 * (len(DOSES) + 2) and set(table["study"]) == {"powered", "screen"}
    assert (out / "figures" / "dose_response.png").exists() and (out / "tables" / "fits.parquet").exists()
    assert f"smearlens dose-report {study} screen={screen}" in text
    # bad input: one line naming the path
    for argv, msg in (([str(tmp_path / "nope")], "nope: neither a study folder"),
                      ([str(study), f"powered={screen}"], "two share a name"),
                      ([f"a:b={screen}"], "without ':'")):
        assert cli_main(["dose-report", *argv, "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("smearlens: error:") and msg in err and "\n" not in err
