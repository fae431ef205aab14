"""The speedrun study's report (figures/speedrun/PLAN.md): its four claims (analysis/stats/speedrun.py), the
section "The speedrun's questions" (analysis/writeup/report_speedrun.py), its figures and speedrun_claims.csv, on
synthetic tables with known effects: removing layer 0's attention costs 0.05 nats without a smear, 0.01 with the
learned smear (P1: an interaction of −0.04), 0.05 with the dose (P2: none); the anneal arm ends 0.02 below the dose
(P3); the hold arm is the dose's loss with a noisy seed-to-seed spread (P4: too few seeds to tell)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis import stats
from analysis.stats import speedrun as sp
from analysis.stats import steps_saved as ss
from analysis.stats.inference import holm
from analysis.writeup import plots, report
from fixtures.synthetic_tables import BASE_PREV, MID_PREV, SMEAR_PREV, write_tables
from trainer.errors import AnalysisError

SEEDS = tuple(range(8))
EFFECT = {"baseline": 0.0, "smear": -0.005, "dose-0.8": -0.010, "baseline-noattn0": 0.050, "smear-noattn0": 0.005,
          "dose-0.8-noattn0": 0.040, "dose-0.8-anneal-800": -0.030, "smear-hold-0.8-400": -0.010}
HOLD_SPREAD = 0.03  # the hold arm's extra noise per seed: its 8 pairs cannot tell ±0.01
ARMS = tuple(EFFECT)
LAST = 40  # the synthetic runs' final step (the heads tables')
RECORD_STEPS = 1000  # the early smear's record_lambda runs this long, past the plan's release steps
HOLD_FINAL, SMEAR_FINAL, HOLD_PUSH = 0.3, 0.15, 0.002
SLOPE = -0.5  # the budget curves: nats per unit of ln(steps) → 0.005 nats per 1% of steps


def val_loss(arm: str, seed: int) -> float:
    rng = np.random.default_rng([seed, len(arm), sum(map(ord, arm))])
    level = 4.0 + 0.01 * math.sin(seed)  # shared by a seed's arms: pairs remove it
    spread = HOLD_SPREAD * (1 if seed % 2 else -1) * (1 + 0.3 * seed) if arm == "smear-hold-0.8-400" else 0.0
    return level + EFFECT[arm] + rng.normal(0, 0.001) + spread


def _noattn0(prev: np.ndarray) -> np.ndarray:
    """Layer 0 without attention: its mass moves to layer 1."""
    out = prev.copy()
    out[1] = np.clip(out[1] + np.nan_to_num(out[0]), 0, 1)
    out[0] = np.nan
    return out


def coefficient(arm: str, step: int) -> float:
    if arm == "smear-hold-0.8-400":
        return 0.8 if step < 400 else 0.8 - (0.8 - HOLD_FINAL) * (step - 400) / (RECORD_STEPS - 1 - 400)
    if arm == "dose-0.8-anneal-800":
        return 0.8 * max(0.0, 1 - step / 800)
    if arm == "dose-0.8":
        return 0.79
    return SMEAR_FINAL * step / (RECORD_STEPS - 1)  # the learned smear


def write_speedrun(folder: Path, arms=ARMS, seeds=SEEDS) -> Path:
    prev = {"baseline": BASE_PREV, "smear": SMEAR_PREV, "baseline-noattn0": _noattn0(BASE_PREV),
            "smear-noattn0": _noattn0(SMEAR_PREV), "dose-0.8-noattn0": _noattn0(MID_PREV)}
    folder = write_tables(folder, arms=tuple(arms), seeds=tuple(seeds), noise=0.005, prev=prev,
                          steps=(1, 4, 13, LAST))
    for arm in arms:
        for seed in seeds:
            run = f"tiny-s{seed}-{arm}"
            pd.DataFrame(dict(step=[LAST // 2, LAST], train_loss=[5.0, 4.5], val_loss=[4.6, val_loss(arm, seed)])) \
                .to_csv(folder.parent / run / "loss.csv", index=False)
            if arm not in ("smear", "dose-0.8") and not sp.is_early_smear(arm):
                continue
            steps = np.arange(0, RECORD_STEPS, 5)
            push = [HOLD_PUSH if (arm == "smear-hold-0.8-400" and s >= 400) else 0.0 for s in steps]
            coef = [coefficient(arm, int(s)) for s in steps]
            pd.DataFrame(dict(run=run, preset="tiny", arm=arm, seed=seed, step=steps, tokens=steps * 512,
                              **{"lambda": [2 * c for c in coef]}, grad=push, pressure=push, coef_mean=coef,
                              by="total", part="all", n=10, value=push)) \
                .to_parquet(folder.parent / run / "record_lambda.parquet", index=False)
    return folder


def write_budget_tables(where: Path, seeds=SEEDS) -> ss.Shape:
    """steps_saved_rate.csv and steps_saved_budgets.csv as `smearlens steps-saved` writes them: the baseline at
    30, 40 (the study's 1×) and 50 steps on L = a_s + SLOPE·ln(n/40)."""
    points = pd.DataFrame([dict(seed=s, steps=n, val_loss=val_loss("baseline", s) + SLOPE * math.log(n / LAST)
                                + 0.0005 * ((s + n) % 3 - 1)) for s in seeds for n in (30, 40, 50)])
    losses = pd.DataFrame([dict(arm=a, seed=s, val_loss=val_loss(a, s)) for a in ARMS for s in seeds])
    shape, rate, _, _ = ss.steps_saved_tables(points, losses, LAST)
    anchors = losses[losses["arm"] == "baseline"].set_index("seed")["val_loss"]
    rate.to_csv(where / ss.RATE_FILE, index=False)
    ss.fitted_points(points, shape, anchors).to_csv(where / ss.BUDGETS_FILE, index=False)
    return shape


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    return write_speedrun(tmp_path_factory.mktemp("speedrun") / "study" / "analysis")


@pytest.fixture(scope="module")
def per_seed(study) -> pd.DataFrame:
    return stats.summarize(stats.load_tables(study)).per_seed


@pytest.fixture
def speedrun_drawing_only(monkeypatch):
    """The report draws only the speedrun figures (the others are checked in test_report; this keeps it fast)."""
    draw = plots.draw_all
    monkeypatch.setattr(report.plots, "draw_all", lambda tables, folder, threshold=0.4, names=None, formats=("png", "svg"):
                        draw(tables, folder, threshold, names=plots.SPEEDRUN_FIGURES, formats=formats))


def _section(text: str) -> str:
    return text.split("## The speedrun's questions", 1)[1].split("\n## ", 1)[0]


# ---- the claims -------------------------------------------------------------------------------------------------


def test_the_four_claims_come_out_as_built(per_seed):
    c = sp.speedrun_claims(per_seed).set_index("id")
    assert list(c.index) == ["P1", "P2", "P3", "P4"]
    assert c.at["P1", "estimate"] == pytest.approx(-0.04, abs=0.002)  # (0.005 + 0.005) − 0.05
    assert c.at["P1", "ci_low"] < -0.04 < c.at["P1", "ci_high"]
    assert c.at["P2", "estimate"] == pytest.approx(0.0, abs=0.002)
    assert c.at["P3", "estimate"] == pytest.approx(-0.02, abs=0.002)
    assert c.at["P3", "reference"] == "dose-0.8" and c.at["P3", "arm"] == "dose-0.8-anneal-800"
    assert dict(c["verdict"]) == {"P1": "lower", "P2": "equivalent within ±0.01", "P3": "lower",
                                  "P4": "too few seeds to tell"}
    assert (c["n_pairs"] == len(SEEDS)).all() and (c["sesoi"] == 0.01).all()


def test_holm_runs_over_all_four_and_a_claim_without_its_arms_is_absent_at_p_1(per_seed):
    full = sp.speedrun_claims(per_seed)
    assert np.allclose(full["p_holm"], holm(full["p_value"]), rtol=1e-9, atol=0)
    partial = sp.speedrun_claims(per_seed[per_seed["arm"] != "smear-noattn0"]).set_index("id")
    assert partial.at["P1", "verdict"] == "absent: no runs of smear-noattn0"
    assert math.isnan(partial.at["P1", "p_holm"])
    tested = partial.drop(index="P1")
    # the absent claim still takes its share of α: the family is four, not the three that ran
    assert np.allclose(tested["p_holm"], holm(list(tested["p_value"]) + [1.0])[:3], rtol=1e-9, atol=0)
    assert tested.at["P3", "p_holm"] == pytest.approx(4 * tested.at["P3", "p_value"], rel=1e-9)


def test_without_loss_logs_every_claim_is_absent_and_says_why(per_seed):
    c = sp.speedrun_claims(per_seed.drop(columns=["val_loss"]))
    assert (c["verdict"] == "absent: no validation loss (the runs' loss.csv)").all()
    with pytest.raises(AnalysisError, match="lacks column"):
        sp.claims_per_seed(per_seed.drop(columns=["seed"]))


def test_steps_equivalents_convert_each_claim_with_the_budget_curves(per_seed, tmp_path):
    shape = write_budget_tables(tmp_path)
    rebuilt = ss.shape_from_tables(pd.read_csv(tmp_path / ss.RATE_FILE), pd.read_csv(tmp_path / ss.BUDGETS_FILE))
    assert rebuilt.b1 == pytest.approx(shape.b1) and np.allclose(rebuilt.cov, shape.cov)
    c = sp.with_steps(sp.speedrun_claims(per_seed), rebuilt).set_index("id")
    p1 = c.loc["P1"]
    want = ss.loss_to_steps(p1["diff"], shape, p1["ci_low"], p1["ci_high"], df=p1["n_pairs"] - 1)
    assert p1["steps_equivalent"] == pytest.approx(want["steps_saved"])
    assert p1["steps_ci_low"] == pytest.approx(want["ci_low"]) and p1["steps_status"] == ss.STATUS_OK
    # −0.04 nats at 0.005 nats per 1% of steps: about 8% more baseline steps, i.e. +3.3 of 40
    assert p1["steps_equivalent"] == pytest.approx(LAST * (math.exp(0.04 / -SLOPE) - 1), rel=0.1)
    assert c.loc["P3", "steps_equivalent"] > 0 and c.loc["P4", "steps_equivalent"] != 0
    none = sp.with_steps(sp.speedrun_claims(per_seed), None)
    assert (none["steps_status"] == "no budget curves yet").all() and none["steps_equivalent"].isna().all()


def test_a_quadratic_rate_without_its_budget_points_is_refused(tmp_path):
    rate = pd.DataFrame([dict.fromkeys(ss.RATE_COLUMNS, 1.0) | dict(curve="baseline", beta2=0.1, budgets="30 40 50")])
    with pytest.raises(AnalysisError, match="quadratic"):
        ss.shape_from_tables(rate)
    with pytest.raises(AnalysisError, match="not an exchange-rate table"):
        ss.shape_from_tables(rate.drop(columns=["beta1"]))


def test_early_smear_arms_are_found_by_pattern_not_name():
    found = [a for a in ("dose-0.8-anneal-800", "smear-hold-0.8-400", "dose-0.8-anneal-20", "smear-hold-0.8-10",
                         "dose-0.8", "smear", "smear-noattn0", "not-an-arm") if sp.is_early_smear(a)]
    assert found == ["dose-0.8-anneal-800", "smear-hold-0.8-400", "dose-0.8-anneal-20", "smear-hold-0.8-10"]
    assert sp.release_step("smear-hold-0.8-10") == 10 and sp.release_step("dose-0.8-anneal-20") == 20
    assert sp.study_present(["baseline", "smear-hold-0.8-10"]) and sp.study_present(["baseline", "smear-noattn0"])
    assert not sp.study_present(["baseline", "smear", "dose-0.8", "smear-init-1.6"])


# ---- exploratory ------------------------------------------------------------------------------------------------


def test_the_removal_costs_and_where_the_mass_goes(study, per_seed):
    rem = sp.removal_comparisons(per_seed)
    loss = rem[rem["claim"] == "val_loss"].set_index("baseline")
    assert loss.at["baseline", "diff"] == pytest.approx(0.05, abs=0.002) and loss.at["baseline", "verdict"] == "higher"
    assert loss.at["smear", "diff"] == pytest.approx(0.01, abs=0.002)
    heads = stats.load_tables(study).heads
    by_layer = sp.prev_mass_by_layer(heads)
    assert not ((by_layer["arm"] == "baseline-noattn0") & (by_layer["layer"] == 0)).any()  # no attention there
    assert ((by_layer["arm"] == "baseline") & (by_layer["layer"] == 0)).any()
    moves = sp.layer_moves(heads)
    l1 = moves[(moves["baseline"] == "baseline") & (moves["layer"] == 1)].iloc[0]
    assert l1["verdict"] == "higher" and l1["diff"] == pytest.approx(float(np.nansum(BASE_PREV[0])), abs=0.03)
    assert 0 not in set(moves["layer"])


def test_the_hold_arms_coefficient_falls_after_release_and_the_smears_rises(study):
    t = stats.load_tables(study)
    early = sp.early_smear(sp.coefficient_curves(t.get("record_lambda"), t.get("record_smear")), t.arms)
    hold = early[(early["arm"] == "smear-hold-0.8-400")].iloc[0]
    assert hold["coef_release"] == pytest.approx(0.8, abs=0.01) and hold["coef_final"] == pytest.approx(HOLD_FINAL, abs=0.01)
    assert hold["coef_change_verdict"] == "falls"
    assert hold["pressure_after"] == pytest.approx(HOLD_PUSH)
    smear = early[(early["arm"] == "smear") & (early["release_step"] == 400)].iloc[0]
    assert smear["coef_change_verdict"] == "rises" and smear["pressure_after"] == pytest.approx(0.0)
    anneal = early[early["arm"] == "dose-0.8-anneal-800"].iloc[0]
    assert anneal["coef_final"] == pytest.approx(0.0) and anneal["coef_change_verdict"] == "scheduled, not learned"
    short = sp.early_smear(sp.coefficient_curves(t.get("record_lambda")).query("step < 300"), ["smear-hold-0.8-400"])
    assert "before the release at step 400" in short.iloc[0]["note"]


# ---- the report section, its figures and its csv ----------------------------------------------------------------


def test_the_section_renders_with_its_answers_figures_and_csv(study, tmp_path, speedrun_drawing_only):
    out = report.write_report(study, tmp_path / "figures", tmp_path / "report.md")
    text = out.read_text()
    sec = _section(text)
    assert "| P1 | (smear-noattn0 − smear) − (baseline-noattn0 − baseline) | 8 |" in sec
    assert "**Does the smear make layer 0's attention redundant at this size?** In part." in sec
    assert "the learned smear makes layer 0's attention partly redundant" in sec
    assert "within ±0.01 nats: no redundancy that large" in sec  # P2
    assert "**Does an early strong smear beat the fixed dose?** In part." in sec
    assert "dose-0.8-anneal-800 ends below the fixed dose" in sec and "P4" in sec and "too few seeds to tell" in sec
    assert "no budget curves yet" in sec and "no difference" not in sec.lower()
    for heading in ("### Layer 0's attention removed", "### Every arm against the baseline",
                    "### Where the previous-token heads go", "### The early smear over training"):
        assert heading in sec
    for name in plots.SPEEDRUN_FIGURES:
        png = tmp_path / "figures" / f"{name}.png"
        assert f"]({png.relative_to(tmp_path).as_posix()})" in sec
        assert png.with_suffix(".svg").stat().st_size > 0
        with Image.open(png) as im:
            assert im.size[0] > 300
    csv = pd.read_csv(tmp_path / sp.CLAIMS_FILE)
    assert list(csv["id"]) == ["P1", "P2", "P3", "P4"]
    assert {"estimate", "ci_low", "ci_high", "p_holm", "verdict", "steps_equivalent"} <= set(csv.columns)
    assert list(csv["verdict"]) == ["lower", "equivalent within ±0.01", "lower", "too few seeds to tell"]
    assert csv["steps_equivalent"].isna().all()


def test_with_budget_tables_every_nats_number_has_its_steps(study, tmp_path, speedrun_drawing_only):
    write_budget_tables(tmp_path)
    out = report.write_report(study, tmp_path / "figures", tmp_path / "report.md")
    sec = _section(out.read_text())
    csv = pd.read_csv(tmp_path / sp.CLAIMS_FILE).set_index("id")
    steps = csv.at["P1", "steps_equivalent"]
    assert steps == pytest.approx(3.3, abs=0.5)
    assert f"{steps:+.1f} steps" in sec and "no budget curves yet" not in sec
    assert "1% more steps lowers the loss by 0.0050 nats" in sec
    removed = sec.split("### Layer 0's attention removed", 1)[1].split("###", 1)[0]
    loss_rows = [l for l in removed.splitlines() if "| validation loss" in l]
    assert len(loss_rows) == 3 and all("] of 40 (" in l for l in loss_rows)


def test_early_smear_arms_by_other_names_still_get_their_rows(tmp_path, speedrun_drawing_only):
    arms = ("baseline", "smear", "dose-0.8", "smear-hold-0.8-10", "dose-0.8-anneal-20")
    EFFECT.update({"smear-hold-0.8-10": -0.01, "dose-0.8-anneal-20": -0.02})
    try:
        folder = write_speedrun(tmp_path / "other" / "analysis", arms=arms, seeds=(0, 1, 2))
    finally:
        del EFFECT["smear-hold-0.8-10"], EFFECT["dose-0.8-anneal-20"]
    out = report.write_report(folder, tmp_path / "figures", tmp_path / "report.md")
    sec = _section(out.read_text())
    assert "| smear-hold-0.8-10 | coefficient held at 0.8 for 10 steps, then learned | 10 |" in sec
    assert "| dose-0.8-anneal-20 | dose 0.8 falling linearly to 0 at step 20 | 20 |" in sec
    c = pd.read_csv(tmp_path / sp.CLAIMS_FILE)
    assert c["verdict"].str.startswith("absent").all()  # the plan's claims name the plan's arms
    assert "**Does an early strong smear beat the fixed dose?** Not testable yet. P3 cannot be tested yet " \
           "(absent: no runs of dose-0.8-anneal-800)." in sec


def test_a_study_without_its_arms_gets_no_section_no_csv_and_no_figures(tmp_path, speedrun_drawing_only):
    folder = write_tables(tmp_path / "plain" / "analysis", arms=("baseline", "smear", "dose-0.8"))
    out = report.write_report(folder, tmp_path / "figures", tmp_path / "report.md")
    assert "The speedrun's questions" not in out.read_text()
    assert not (tmp_path / sp.CLAIMS_FILE).exists()
    assert not list((tmp_path / "figures").glob("speedrun_*"))


def test_the_two_by_two_figure_needs_an_arm_run_both_ways(per_seed):
    with pytest.raises(AnalysisError, match="with and without layer 0's attention"):
        plots.attn0_grid(per_seed[~per_seed["arm"].str.endswith("-noattn0")])
    with pytest.raises(AnalysisError, match="no validation loss"):
        plots.attn0_grid(per_seed.drop(columns=["val_loss"]))
