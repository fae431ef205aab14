"""Steps saved at matched loss: the fit, the inversion and its CI on synthetic loss curves with a known answer,
and the `smearlens steps-saved` command on synthetic study folders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.stats import steps_saved as ss
from analysis.stats.inference import t_ci
from trainer.errors import AnalysisError

N0 = 1000
BUDGETS = (850, 930, 1000, 1080)
SLOPE = -0.05  # nats per unit of ln(steps)


def curve_points(budgets=BUDGETS, seeds=range(4), slope=SLOPE, curv=0.0, noise=0.0, rng=None) -> pd.DataFrame:
    """L = a_s + slope·ln(n/N0) + curv·ln(n/N0)², plus noise: every seed at every budget."""
    rows = []
    for s in seeds:
        a = 3.0 + 0.01 * s
        for n in budgets:
            u = math.log(n / N0)
            e = rng.normal(0, noise) if noise else 0.0
            rows.append(dict(seed=s, steps=n, val_loss=a + slope * u + curv * u * u + e))
    return pd.DataFrame(rows)


def study_losses(points: pd.DataFrame, arms: dict[str, float], slope=SLOPE, curv=0.0) -> pd.DataFrame:
    """The study's 1× runs: the baseline's 1× points, and each arm at the baseline's loss at `factor`·N0."""
    base = points[points["steps"] == N0][["seed", "val_loss"]].assign(arm="baseline")
    parts = [base]
    for arm, factor in arms.items():
        u = math.log(factor)
        parts.append(base.assign(arm=arm, val_loss=base["val_loss"] + slope * u + curv * u * u))
    return pd.concat(parts, ignore_index=True)


def test_an_arm_at_the_baselines_loss_at_0_9x_costs_10_percent_and_at_1_05x_saves_5():
    points = curve_points()
    shape, rate, seeds, summary = ss.steps_saved_tables(points, study_losses(points, {"worse": 0.9, "better": 1.05}),
                                                        N0)
    assert shape.degree == 2 and shape.describe().startswith("quadratic")  # 4 budgets
    assert shape.b1 == pytest.approx(SLOPE, abs=1e-10) and shape.b2 == pytest.approx(0, abs=1e-8)
    by = summary.set_index("arm")
    # the worse arm is what the baseline reaches in 0.9 × N0 steps: it costs 10% of the steps
    assert by.loc["worse", "pct_saved"] == pytest.approx(-10.0, abs=1e-6)
    assert by.loc["worse", "steps_saved"] == pytest.approx(-100.0, abs=1e-4)
    assert by.loc["better", "pct_saved"] == pytest.approx(5.0, abs=1e-6)
    assert seeds.loc[seeds["arm"] == "better", "matched_steps"].to_numpy() == pytest.approx([1050.0] * 4, abs=1e-4)
    assert (seeds["status"] == ss.STATUS_OK).all() and (by["n_beyond"] == 0).all()
    # exact data: no error anywhere, so the CI collapses on the value
    assert by.loc["better", "ci_low"] == pytest.approx(50.0, abs=1e-4)
    assert by.loc["better", "ci_high"] == pytest.approx(50.0, abs=1e-4)
    assert rate["nats_per_pct"].iloc[0] == pytest.approx(-SLOPE / 100, abs=1e-12)


def test_three_budgets_fit_a_line_and_say_so():
    points = curve_points(budgets=(850, 1000, 1080))
    shape = ss.fit_shape(points, N0)
    assert shape.degree == 1 and shape.describe().startswith("linear in ln(steps), 3 budgets")
    summary = ss.summarize_steps(ss.per_seed_steps(study_losses(points, {"a": 1.04}), shape), shape)
    assert summary["shape"].iloc[0].startswith("linear")
    assert summary["pct_saved"].iloc[0] == pytest.approx(4.0, abs=1e-6)


def test_a_quadratic_shape_is_inverted_on_its_own_curve():
    curv = 0.05  # the loss flattens with more steps (its turning point, u = 0.5, lies past the budgets)
    points = curve_points(budgets=(800, 900, 1000, 1100, 1200), curv=curv)
    shape, _, seeds, summary = ss.steps_saved_tables(points, study_losses(points, {"a": 1.15, "b": 0.85},
                                                                          curv=curv), N0)
    assert shape.b2 == pytest.approx(curv, abs=1e-8)
    by = summary.set_index("arm")
    assert by.loc["a", "pct_saved"] == pytest.approx(15.0, abs=1e-6)
    assert by.loc["b", "pct_saved"] == pytest.approx(-15.0, abs=1e-6)
    # a line through the same points would miss: the curvature is what makes the answer exact
    line = ss.fit_shape(points, N0, degree=1)
    line_pct = ss.summarize_steps(ss.per_seed_steps(study_losses(points, {"a": 1.15}, curv=curv), line), line)
    assert abs(line_pct["pct_saved"].iloc[0] - 15.0) > 0.1


def test_a_loss_beyond_the_fitted_budgets_gets_no_number():
    points = curve_points()
    losses = study_losses(points, {"far": 1.5, "worse": 0.5, "edge": 1.08})
    # one seed of a fourth arm beyond, the others inside
    mixed = study_losses(points, {"mixed": 1.05})
    mixed.loc[(mixed["arm"] == "mixed") & (mixed["seed"] == 0), "val_loss"] -= 0.05
    shape, _, seeds, summary = ss.steps_saved_tables(points, pd.concat([losses, mixed[mixed["arm"] == "mixed"]]), N0)
    by, s = summary.set_index("arm"), seeds.set_index(["arm", "seed"])
    for arm, end in (("far", "below the largest budget's loss"), ("worse", "above the smallest budget's loss")):
        assert s.loc[arm, "pct_saved"].isna().all() and s.loc[arm, "matched_steps"].isna().all()
        assert all(st == f"{ss.BEYOND} ({end})" for st in s.loc[arm, "status"])
        assert math.isnan(by.loc[arm, "pct_saved"]) and math.isnan(by.loc[arm, "ci_low"])
        assert by.loc[arm, "n_beyond"] == 4 and by.loc[arm, "verdict"].startswith(f"{ss.BEYOND} for every seed")
    assert by.loc["edge", "pct_saved"] == pytest.approx(8.0, abs=1e-6)  # exactly at the largest budget: inside
    assert math.isnan(s.loc[("mixed", 0), "pct_saved"])
    assert by.loc["mixed", "n"] == 3 and by.loc["mixed", "n_beyond"] == 1
    assert by.loc["mixed", "pct_saved"] == pytest.approx(5.0, abs=1e-6)
    assert f"1 of 4 seeds {ss.BEYOND}" in by.loc["mixed", "verdict"]


def test_a_curve_that_turns_before_the_arms_loss_gets_no_number():
    # convex: the fitted loss bottoms out at u = −β1/(2β2) ≈ 0.025, below which no steps reach
    shape = ss.Shape(n0=N0, beta=np.array([-0.05, 1.0]), cov=np.zeros((2, 2)), df=4, sigma=0.0,
                     budgets=(900, 1000, 1100, 1200), n_seeds=2, n_points=8)
    u, status = ss.matched_log_steps(np.array([-0.01, -0.0001]), shape)
    assert math.isnan(u[0]) and status[0].startswith(ss.BEYOND)
    assert math.isfinite(u[1]) and status[1] == ss.STATUS_OK


def test_a_seed_without_a_baseline_run_is_said_to_lack_one():
    points = curve_points()
    losses = study_losses(points, {"a": 1.05})
    losses = pd.concat([losses, pd.DataFrame([dict(arm="a", seed=9, val_loss=3.0)])], ignore_index=True)
    shape, _, seeds, summary = ss.steps_saved_tables(points, losses, N0)
    row = seeds[(seeds["arm"] == "a") & (seeds["seed"] == 9)].iloc[0]
    assert row["status"] == ss.STATUS_NO_BASELINE and math.isnan(row["pct_saved"])
    assert summary["n_seeds"].iloc[0] == 4 and summary["n_beyond"].iloc[0] == 0


def test_a_study_seed_without_budget_runs_gets_the_pooled_shape_through_its_own_baseline():
    points = curve_points(seeds=range(3))
    extra = pd.DataFrame([dict(seed=7, steps=N0, val_loss=3.5)])  # seed 7: only its study baseline
    losses = study_losses(pd.concat([points, extra]), {"a": 1.05})
    _, _, seeds, _ = ss.steps_saved_tables(pd.concat([points, extra]), losses, N0)
    assert seeds.set_index("seed").loc[7, "pct_saved"] == pytest.approx(5.0, abs=1e-6)


def test_the_ci_covers_the_truth_with_noise():
    rng = np.random.default_rng(3)
    points = curve_points(seeds=range(8), noise=0.0005, rng=rng)
    losses = study_losses(points, {"a": 1.05})
    arm = losses["arm"] == "a"
    losses.loc[arm, "val_loss"] += rng.normal(0, 0.0005, arm.sum())
    shape, rate, _, summary = ss.steps_saved_tables(points, losses, N0)
    r = summary.iloc[0]
    assert r["ci_low"] < 50 < r["ci_high"] and r["pct_ci_low"] < 5 < r["pct_ci_high"]
    assert r["ci_high"] - r["ci_low"] > 1  # noise gives a real interval
    # the shape's error is in it: wider than the seeds' t interval alone
    seed_lo, seed_hi = t_ci(ss.per_seed_steps(losses, shape)["pct_saved"].to_numpy())
    assert r["pct_ci_high"] - r["pct_ci_low"] > seed_hi - seed_lo
    assert rate["ci_low"].iloc[0] < -SLOPE / 100 < rate["ci_high"].iloc[0]


def simulated(rng, budget_seeds: int, study_seeds: int, slope: float, noise: float, factor: float):
    """Budget runs of `budget_seeds` seeds, the study's baseline and arm at 1× for `study_seeds` seeds (the first
    ones shared), every loss with noise; the arm is worth `factor` × N0 baseline steps."""
    points = curve_points(seeds=range(budget_seeds), slope=slope, noise=noise, rng=rng)
    more = [dict(seed=s, steps=N0, val_loss=3.0 + 0.01 * s + rng.normal(0, noise)) for s in range(budget_seeds, study_seeds)]
    points = pd.concat([points, pd.DataFrame(more, columns=ss.POINT_COLUMNS)], ignore_index=True)
    losses = study_losses(points, {"a": factor}, slope=slope)
    arm = losses["arm"] == "a"
    losses.loc[arm, "val_loss"] += rng.normal(0, noise, arm.sum())
    return points, losses


def test_the_ci_covers_the_truth_about_95_percent_of_the_time():
    """The approximation (the seeds' error + the shape's, Welch–Satterthwaite) holds up on simulated studies:
    4 seeds, the per-seed mean (no seed beyond the budgets at this noise)."""
    rng = np.random.default_rng(0)
    runs = 200
    hits = sum(ss.steps_saved_tables(*simulated(rng, 4, 4, SLOPE, 0.0005, 1.03), N0)[3].eval(
        "pct_ci_low < 3.0 < pct_ci_high").iloc[0] for _ in range(runs))
    assert 0.90 <= hits / runs <= 0.995


def test_noisy_seeds_beyond_the_budgets_bias_the_seed_mean_but_not_the_mean_loss_converted():
    """At the powered study's scale (8 budget seeds, 32 study seeds, 0.01 nats of noise a run, a guessed slope
    of 0.3 nats per ln step) single seeds often land beyond 1.08×: the mean over the others is biased low and
    its CI misses; the mean loss difference converted covers the truth."""
    rng = np.random.default_rng(0)
    runs, truth = 100, 100 * 0.036
    tables = [ss.steps_saved_tables(*simulated(rng, 8, 32, -0.3, 0.01, 1.036), N0)[3].iloc[0] for _ in range(runs)]
    assert sum(r["n_beyond"] > 0 for r in tables) > runs / 2
    assert np.mean([r["pct_saved"] for r in tables]) < truth - 0.5  # the seeds left out are the best ones
    assert sum(r["pct_at_mean_ci_low"] < truth < r["pct_at_mean_ci_high"] for r in tables) / runs >= 0.9
    assert abs(np.mean([r["pct_at_mean_loss"] for r in tables]) - truth) < 0.3
    assert all(f"{ss.BEYOND}, left out" in r["verdict"] for r in tables if r["n_beyond"])


def test_loss_to_steps_converts_a_difference_and_its_ci():
    rng = np.random.default_rng(1)
    shape = ss.fit_shape(curve_points(seeds=range(8), noise=0.002, rng=rng), N0)
    d = SLOPE * math.log(1.03)  # what 3% more steps gives
    alone = ss.loss_to_steps(d, shape)
    assert alone["pct_saved"] == pytest.approx(100 * math.expm1(ss.matched_log_steps(d, shape)[0][0]))
    assert alone["pct_saved"] == pytest.approx(3.0, abs=0.5)  # the noisy fit is close to the truth
    assert alone["pct_ci_low"] < alone["pct_saved"] < alone["pct_ci_high"]
    with_loss = ss.loss_to_steps(d, shape, ci_low=d - 0.002, ci_high=d + 0.002, df=7)
    assert with_loss["pct_saved"] == alone["pct_saved"]
    assert with_loss["pct_ci_high"] - with_loss["pct_ci_low"] > alone["pct_ci_high"] - alone["pct_ci_low"]
    assert with_loss["steps_saved"] == pytest.approx(N0 * with_loss["pct_saved"] / 100)
    beyond = ss.loss_to_steps(-1.0, shape)
    assert math.isnan(beyond["pct_saved"]) and beyond["status"].startswith(ss.BEYOND)


@pytest.mark.parametrize("points, message", [
    (pd.DataFrame(dict(seed=[0, 1], steps=[N0, N0], val_loss=[3.0, 3.1])), "1 budget(s)"),
    (pd.DataFrame(dict(seed=[0, 1], steps=[N0, 900], val_loss=[3.0, 3.1])), "no seed has runs at 2 or more"),
    (pd.DataFrame(dict(seed=[0, 0, 0], steps=[N0, N0, 900], val_loss=[3.0, 3.0, 3.1])), "seed 0 at 1000 steps"),
])
def test_a_fit_without_what_it_needs_says_what_is_missing(points, message):
    with pytest.raises(AnalysisError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ss.fit_shape(points, N0)


def test_a_baseline_that_does_not_improve_with_steps_has_no_exchange_rate():
    points = curve_points(slope=+0.05)
    with pytest.raises(AnalysisError, match="does not fall with more steps"):
        ss.steps_saved_tables(points, study_losses(points, {"a": 1.05}), N0)


# ---------------------------------------------------------------------------------------------
# The arm's own curve: the steps the arm needs to reach the baseline's 1× loss


def arm_points(arm: str, gain: float, slope: float = SLOPE, budgets=(850, 930, 1000), seeds=range(4)) -> pd.DataFrame:
    """An arm `gain` nats below the baseline at every budget, on its own slope: its runs, `arm` column set."""
    return curve_points(budgets=budgets, seeds=seeds, slope=slope).assign(
        val_loss=lambda d: d["val_loss"] - gain, arm=arm)


def test_a_better_arm_beyond_the_baselines_budgets_is_read_on_its_own_curve():
    """The arm is 0.0053 nats better than the baseline: more than the baseline's largest budget (1.08×) reaches,
    so no number on the baseline's curve; on its own curve (the same slope) it reaches the baseline's 1× loss at
    exactly 0.9 × N0 steps: 10% saved."""
    gain = SLOPE * math.log(0.9)
    base = curve_points().assign(arm="baseline")
    arm = arm_points("dose-0.8", gain)
    losses = pd.concat([base, arm])[lambda d: d["steps"] == N0][["arm", "seed", "val_loss"]]
    points = pd.concat([base, arm], ignore_index=True)
    _, _, _, on_base = ss.steps_saved_tables(points, losses, N0)
    assert math.isnan(on_base["pct_saved"].iloc[0]) and on_base["curve"].iloc[0] == "baseline"
    shapes, rate, seeds, summary = ss.arm_curve_tables(points, losses, N0)
    assert list(shapes) == ["dose-0.8"] and shapes["dose-0.8"].curve == "dose-0.8"
    assert shapes["dose-0.8"].degree == 1  # its own 3 budgets: a line
    r = summary.iloc[0]
    assert r["arm"] == "dose-0.8" and r["curve"] == "dose-0.8"
    assert r["pct_saved"] == pytest.approx(10.0, abs=1e-6) and r["steps_saved"] == pytest.approx(100.0, abs=1e-4)
    assert r["pct_at_mean_loss"] == pytest.approx(10.0, abs=1e-6)
    assert seeds["matched_steps"].to_numpy() == pytest.approx([900.0] * 4, abs=1e-4)  # the arm's steps
    assert rate["curve"].tolist() == ["dose-0.8"] and rate["nats_per_pct"].iloc[0] == pytest.approx(-SLOPE / 100)


def test_the_arms_own_slope_is_the_one_inverted():
    """An arm whose loss falls twice as fast with steps needs half the distance in ln(steps)."""
    gain = 2 * SLOPE * math.log(0.9)
    base = curve_points().assign(arm="baseline")
    points = pd.concat([base, arm_points("steep", gain, slope=2 * SLOPE)], ignore_index=True)
    losses = points[points["steps"] == N0][["arm", "seed", "val_loss"]]
    _, _, _, summary = ss.arm_curve_tables(points, losses, N0)
    assert summary["pct_saved"].iloc[0] == pytest.approx(10.0, abs=1e-6)


def test_an_arm_its_budgets_cannot_bring_to_the_baselines_loss_is_beyond_them():
    """An arm 0.02 nats better reaches the baseline's 1× loss only below 0.67 × N0: past its smallest budget."""
    base = curve_points().assign(arm="baseline")
    points = pd.concat([base, arm_points("far", 0.02)], ignore_index=True)
    losses = points[points["steps"] == N0][["arm", "seed", "val_loss"]]
    _, _, seeds, summary = ss.arm_curve_tables(points, losses, N0)
    assert seeds["pct_saved"].isna().all()
    assert (seeds["status"] == f"{ss.BEYOND} (above the smallest budget's loss)").all()  # even its fewest steps beat it
    assert summary["verdict"].iloc[0].startswith(f"{ss.BEYOND} for every seed")


def test_the_ci_on_an_arms_own_curve_covers_the_truth_with_noise():
    rng = np.random.default_rng(5)
    gain = SLOPE * math.log(0.95)
    base = curve_points(seeds=range(8), noise=0.0005, rng=rng).assign(arm="baseline")
    arm = curve_points(seeds=range(8), budgets=(850, 930, 1000), noise=0.0005, rng=rng).assign(
        val_loss=lambda d: d["val_loss"] - gain, arm="a")
    points = pd.concat([base, arm], ignore_index=True)
    losses = points[points["steps"] == N0][["arm", "seed", "val_loss"]]
    _, _, _, summary = ss.arm_curve_tables(points, losses, N0)
    r = summary.iloc[0]
    assert r["pct_ci_low"] < 5.0 < r["pct_ci_high"] and r["pct_ci_high"] - r["pct_ci_low"] > 0.5


def test_no_arm_budget_runs_gives_empty_tables_with_their_columns():
    points = curve_points().assign(arm="baseline")
    shapes, rate, seeds, summary = ss.arm_curve_tables(points, study_losses(points, {"a": 1.05}), N0)
    assert shapes == {} and list(rate.columns) == ss.RATE_COLUMNS and list(seeds.columns) == ss.SEED_COLUMNS
    assert summary.empty and list(summary.columns) == ss.SUMMARY_COLUMNS


def test_the_record_authors_estimate_is_0_30_percent():
    assert ss.record_author_pct() == pytest.approx(0.304, abs=0.001)


# ---------------------------------------------------------------------------------------------
# `smearlens steps-saved` on study folders (written here: a study's plan and its runs' loss logs)


def fake_study(folder: Path, steps: int, losses: dict[tuple[str, int], float], preset: str = "tiny",
               overrides: tuple[str, ...] = (), unfinished: bool = False) -> Path:
    """A study folder as `smearlens study` leaves it, as far as steps-saved reads it: study.json and each run's
    loss.csv (a validation at the middle and, unless `unfinished`, at the last step)."""
    arms = list(dict.fromkeys(a for a, _ in losses))
    seeds = sorted({s for _, s in losses})
    folder.mkdir(parents=True)
    (folder / "study.json").write_text(json.dumps(dict(preset=preset, arms=arms, seeds=seeds, steps=steps,
                                                       overrides=list(overrides), data=None)))
    for (arm, seed), loss in losses.items():
        run = folder / f"{preset}-s{seed}-{arm}"
        run.mkdir()
        last = steps - 1 if unfinished else steps
        run.joinpath("loss.csv").write_text(f"step,train_loss,val_loss\n{steps // 2},5.0,{loss + 0.3}\n"
                                            f"{last - 1},4.0,\n{last},4.0,{loss}\n")
    return folder


def budget_grid(root: Path, arms: dict[str, float], seeds=range(3)) -> tuple[Path, list[Path]]:
    """The study (baseline and `arms` at N0, each arm worth factor × N0 baseline steps) and budget studies at
    850, 930 and 1080 steps, on L = a_s − 0.05·ln(n)."""
    loss = lambda s, n: 3.0 + 0.01 * s + SLOPE * math.log(n / N0)
    main = {("baseline", s): loss(s, N0) for s in seeds}
    main.update({(arm, s): loss(s, N0 * f) for arm, f in arms.items() for s in seeds})
    study = fake_study(root / "study", N0, main)
    budgets = [fake_study(root / f"budgets-{n}", n, {("baseline", s): loss(s, n) for s in seeds}) for n in (850, 930, 1080)]
    return study, budgets


def test_the_command_writes_the_tables_the_figure_and_the_reports_section(tmp_path, capsys, monkeypatch):
    from analysis.writeup import plots, report
    from commands.cli import main as cli_main
    from fixtures.synthetic_tables import write_tables

    study, budgets = budget_grid(tmp_path, {"smear": 1.003, "dose-0.8": 1.05})
    assert cli_main(["steps-saved", str(study), "--budgets", *map(str, budgets)]) == 0
    printed = capsys.readouterr().out
    assert "smear: Δ loss" in printed and "wrote" in printed
    summary = pd.read_csv(study / ss.SUMMARY_FILE).set_index("arm")
    assert list(summary.reset_index().columns) == ss.SUMMARY_COLUMNS
    assert summary.loc["dose-0.8", "steps_saved"] == pytest.approx(50.0, abs=1e-3)
    assert summary.loc["smear", "pct_saved"] == pytest.approx(0.3, abs=1e-6)
    seeds = pd.read_csv(study / ss.SEEDS_FILE)
    assert list(seeds.columns) == ss.SEED_COLUMNS and len(seeds) == 6
    rate = pd.read_csv(study / ss.RATE_FILE)
    assert rate["nats_per_pct"].iloc[0] == pytest.approx(0.0005) and rate["budgets"].iloc[0] == "850 930 1000 1080"
    assert len(pd.read_csv(study / ss.BUDGETS_FILE)) == 12
    assert (study / "figures" / "steps_saved.png").stat().st_size > 10_000
    assert (study / "figures" / "steps_saved.svg").is_file()

    # the study's report, written beside the tables, gains the section
    monkeypatch.setattr(report.plots, "draw_all", lambda *a, **k: {n: "skipped" for n in plots.FIGURES})
    tables = write_tables(tmp_path / "tables", arms=("baseline", "smear", "dose-0.8"))
    text = report.write_report(tables, study / "figures", study / "report.md").read_text()
    section = text.split("## Steps saved at matched loss", 1)[1].split("\n## ", 1)[0]
    # lower loss, steps saved and their share of training
    assert "| dose-0.8 | -0.0024 " in section and "+50.0 [+50.0, +50.0] | +5.00% [+5.00, +5.00] | 3 of 3 |" in section
    assert "about 5 steps of 1,645 (0.30% of training" in section
    # noiseless: the CI has no width, and 5/1,645 = 0.304% is not 0.300%
    assert ("The learned smear here (its mean loss difference converted): +0.30% [+0.30, +0.30] of 1000 steps; "
            "0.30% lies outside that 95% CI") in section
    assert "![Steps saved at matched loss](figures/steps_saved.png)" in section
    assert "1% more steps lowers the validation loss by 0.0005 nats" in section


def test_the_command_reads_an_arm_with_budget_runs_on_its_own_curve_too(tmp_path, capsys):
    from analysis.writeup.report_steps import steps_markdown_section
    from commands.cli import main as cli_main

    # dose-0.8 is worth 1.3 × N0 baseline steps: beyond the baseline's budgets (up to 1.08×)
    study, budgets = budget_grid(tmp_path, {"smear": 1.003, "dose-0.8": 1.3})
    loss = lambda s, n: 3.0 + 0.01 * s + SLOPE * math.log(n * 1.3 / N0)  # the arm at n steps, on the same slope
    arm_budgets = [fake_study(tmp_path / f"arm-{n}", n, {("dose-0.8", s): loss(s, n) for s in range(3)})
                   for n in (700, 850)]
    assert cli_main(["steps-saved", str(study), "--budgets", *map(str, budgets + arm_budgets)]) == 0
    printed = capsys.readouterr().out
    assert "dose-0.8 (on its own curve: its steps to the baseline's 1× loss)" in printed
    summary = pd.read_csv(study / ss.SUMMARY_FILE)
    assert summary["curve"].tolist() == ["baseline", "baseline", "dose-0.8"]
    own = summary[summary["curve"] == "dose-0.8"].iloc[0]
    # the arm reaches the baseline's 1× loss at N0 / 1.3 = 769.2 steps: 230.8 saved
    assert own["steps_saved"] == pytest.approx(N0 - N0 / 1.3, abs=1e-3)
    base_row = summary[(summary["curve"] == "baseline") & (summary["arm"] == "dose-0.8")].iloc[0]
    assert math.isnan(base_row["steps_saved"]) and base_row["verdict"].startswith(ss.BEYOND)
    rate = pd.read_csv(study / ss.RATE_FILE).set_index("curve")
    assert rate.loc["dose-0.8", "budgets"] == "700 850 1000" and str(arm_budgets[0]) in rate.loc["dose-0.8", "folders"]
    budget_rows = pd.read_csv(study / ss.BUDGETS_FILE)
    assert budget_rows.groupby("arm").size().to_dict() == {"baseline": 12, "dose-0.8": 9}
    assert budget_rows["fitted"].to_numpy() == pytest.approx(budget_rows["val_loss"].to_numpy(), abs=1e-9)
    section = "\n".join(steps_markdown_section(study, study / "figures", study))
    assert "### On the arm's own curve: its steps to the baseline's loss" in section
    assert "| dose-0.8 | -0.0131 [-0.0131, -0.0131] | +230.8 [+230.8, +230.8] | +23.08% [+23.08, +23.08] | 3 of 3 |" in section
    # the speedrun section's shape is still the baseline's
    shape = ss.shape_from_tables(pd.read_csv(study / ss.RATE_FILE), budget_rows)
    assert shape.curve == "baseline" and shape.budgets == (850, 930, 1000, 1080)


def test_another_study_is_converted_on_a_shape_fitted_elsewhere(tmp_path, capsys):
    """The powered study's case: fp32 runs without budget runs of their own, converted on the bf16 speedrun
    study's baseline curve, each seed anchored at its own baseline; the tables say where the shape came from."""
    from commands.cli import main as cli_main

    study, budgets = budget_grid(tmp_path, {"smear": 1.003})
    assert cli_main(["steps-saved", str(study), "--budgets", *map(str, budgets)]) == 0
    loss = lambda s, n: 3.2 + 0.02 * s + SLOPE * math.log(n / N0)  # other levels: the anchors are its own
    other = fake_study(tmp_path / "powered", N0, {**{("baseline", s): loss(s, N0) for s in range(5)},
                                                   **{("dose-0.8", s): loss(s, N0 * 1.05) for s in range(5)}},
                       overrides=("autocast=fp32",))
    capsys.readouterr()
    assert cli_main(["steps-saved", str(other), "--shape-from", str(study)]) == 0
    assert "dose-0.8: Δ loss" in capsys.readouterr().out
    summary = pd.read_csv(other / ss.SUMMARY_FILE)
    assert summary["arm"].tolist() == ["dose-0.8"] and summary["n"].iloc[0] == 5
    assert summary["pct_saved"].iloc[0] == pytest.approx(5.0, abs=1e-6)
    assert f"fitted in {study}; its runs' overrides [], this study's ['autocast=fp32']" in summary["shape"].iloc[0]
    rate = pd.read_csv(other / ss.RATE_FILE)
    assert rate["folders"].iloc[0] == str(study) and rate["nats_per_pct"].iloc[0] == pytest.approx(0.0005)
    assert (other / "figures" / "steps_saved.png").is_file()


def test_a_study_of_the_baseline_alone_gives_the_curve_and_the_exchange_rate(tmp_path, capsys):
    """Part C before part B's arms: the baseline's 1× runs and its budget runs give the exchange rate and the
    curve that another study is converted on; no arm is converted, and the command says so."""
    from analysis.writeup.report_steps import steps_markdown_section
    from commands.cli import main as cli_main

    study, budgets = budget_grid(tmp_path, {})
    assert cli_main(["steps-saved", str(study), "--budgets", *map(str, budgets)]) == 0
    printed = capsys.readouterr().out
    assert "exchange rate on the baseline's curve at 1000 steps: 0.00050 nats per 1% of steps" in printed
    assert "not monotone" not in printed
    assert "no arm but the baseline has finished runs" in printed
    assert pd.read_csv(study / ss.SUMMARY_FILE).empty
    assert pd.read_csv(study / ss.RATE_FILE)["nats_per_pct"].iloc[0] == pytest.approx(SLOPE / -100)
    section = "\n".join(steps_markdown_section(study, study / "figures", study))
    assert "lowers the validation loss by 0.0005 nats" in section and "No arm is converted here" in section
    other = fake_study(tmp_path / "powered", N0, {("baseline", 0): 3.0, ("dose-0.8", 0): 3.0 + SLOPE * math.log(1.05)})
    assert cli_main(["steps-saved", str(other), "--shape-from", str(study)]) == 0
    assert pd.read_csv(other / ss.SUMMARY_FILE)["pct_saved"].iloc[0] == pytest.approx(5.0, abs=1e-6)


def test_the_verdict_reads_the_mean_loss_converted_not_the_seeds_inside_the_budgets(tmp_path):
    """The powered study's case: an arm better than the baseline in half its seeds (beyond the budgets, left out
    of the per-seed mean) and worse in the other half. The per-seed mean keeps only the worse seeds and costs
    steps; the verdict reads the mean loss difference converted, which is about 0."""
    loss = lambda s, n: 3.0 + 0.01 * s + SLOPE * math.log(n / N0)
    factor = lambda s: 1.3 if s % 2 else 1 / 1.3  # equal and opposite in ln(steps): a mean difference of 0
    study = fake_study(tmp_path / "study", N0, {**{("baseline", s): loss(s, N0) for s in range(6)},
                                                **{("smear", s): loss(s, N0 * factor(s)) for s in range(6)}})
    budgets = [fake_study(tmp_path / f"b-{n}", n, {("baseline", s): loss(s, n) for s in range(6)}) for n in (700, 850, 930)]
    from commands.steps_saved import run_steps_saved

    summary = run_steps_saved(study, budgets).iloc[0]
    assert summary["n_beyond"] == 3 and summary["pct_saved"] == pytest.approx(100 * (1 / 1.3 - 1))  # biased
    assert summary["pct_at_mean_loss"] == pytest.approx(0.0, abs=1e-9)
    assert summary["verdict"].startswith("not distinguishable from 0 steps (95% CI spans 0); 3 of 6 seeds")


def test_a_curve_that_turns_inside_its_budgets_is_said_to_wherever_it_is_read(tmp_path, capsys):
    """cpu-small's case (part C: the baseline's final loss at 0.7× below the one at 0.79× in every seed): a
    quadratic with its turning point inside the budgets. The inversion stays on the branch through 1×, and the
    shape, the verdicts, the command and the report's section say that the curve is not monotone."""
    from analysis.writeup.report_steps import steps_markdown_section
    from commands.cli import main as cli_main

    b1, b2 = -0.5, -1.25  # turns at u = −b1 / 2b2 = −0.2: 1000·e^−0.2 = 818.7 steps
    loss = lambda s, n: 3.0 + 0.01 * s + b1 * math.log(n / N0) + b2 * math.log(n / N0) ** 2
    u = 0.5 * math.log(0.95)  # the arm: the baseline's loss at 0.95^0.5 × N0 = 974.7 steps on the branch
    study = fake_study(tmp_path / "study", N0, {**{("baseline", s): loss(s, N0) for s in range(3)},
                                                **{("smear", s): loss(s, N0 * math.exp(u)) for s in range(3)}})
    budgets = [fake_study(tmp_path / f"b-{n}", n, {("baseline", s): loss(s, n) for s in range(3)}) for n in (700, 800, 900)]
    assert cli_main(["steps-saved", str(study), "--budgets", *map(str, budgets)]) == 0
    assert "not monotone: it turns at 819 steps, inside the budgets" in capsys.readouterr().out
    summary = pd.read_csv(study / ss.SUMMARY_FILE).iloc[0]
    assert summary["pct_saved"] == pytest.approx(100 * math.expm1(u), abs=1e-6)  # the branch through 1×
    assert "the fitted curve turns at 819 steps" in summary["verdict"] and "not monotone" in summary["shape"]
    section = "\n".join(steps_markdown_section(study, study / "figures", study))
    assert "**The baseline's final loss is not monotone in its budget here** (the baseline's mean final loss by " \
           "budget: 700 steps" in section


@pytest.mark.parametrize("case, message", [
    ("no tables", "--shape-from {src}: no steps_saved_rate.csv here (write it first"),
    ("other budget", "--shape-from {src}: its shape is fitted around 1000 steps, but {s} trained for 1200"),
    ("other preset", "--shape-from {src}: a shape of preset 'tiny', but {s} has 'cpu-small'"),
    ("garbled", "--shape-from {src}/steps_saved_rate.csv: not a steps-saved table"),
    ("no arm", "{s}: no finished runs of an arm other than the baseline to convert"),
])
def test_a_bad_shape_source_is_one_line_naming_it(case, message, tmp_path, capsys):
    from commands.cli import main as cli_main

    src, budgets = budget_grid(tmp_path, {"smear": 1.003})
    if case != "no tables":
        assert cli_main(["steps-saved", str(src), "--budgets", *map(str, budgets)]) == 0
    if case == "garbled":
        (src / ss.RATE_FILE).write_bytes(b"\xff\xfe\x00garbage")
    steps = 1200 if case == "other budget" else N0
    runs = {("baseline", 0): 3.0} if case == "no arm" else {("baseline", 0): 3.0, ("smear", 0): 2.9}
    study = fake_study(tmp_path / "other", steps, runs,
                       preset="cpu-small" if case == "other preset" else "tiny")
    capsys.readouterr()
    assert cli_main(["steps-saved", str(study), "--shape-from", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("smearlens: error: " + message.format(src=src, s=study)), err


def test_the_command_says_when_an_arm_is_beyond_the_fitted_budgets(tmp_path, capsys):
    from commands.cli import main as cli_main

    study, budgets = budget_grid(tmp_path, {"dose-0.8": 1.3})
    assert cli_main(["steps-saved", str(study), "--budgets", *map(str, budgets), "--out", str(tmp_path / "o")]) == 0
    assert f"{ss.BEYOND} for every seed (3): no number" in capsys.readouterr().out
    seeds = pd.read_csv(tmp_path / "o" / ss.SEEDS_FILE)
    assert seeds["steps_saved"].isna().all() and seeds["status"].str.startswith(ss.BEYOND).all()


@pytest.mark.parametrize("case, message", [
    ("other preset", "--budgets {b}: a budget study of preset 'cpu-small', but {s} has 'tiny'"),
    ("other override", "--budgets {b}: a budget study of overrides ['val_every=5']"),
    ("unfinished", "--budgets {b}: no finished runs (train them: smearlens study --out {b} --preset tiny"),
    ("same steps", "--budgets {b}: trained for 1000 steps, the study's own budget"),
    ("twice", "--budgets {b}: the same folder as {b}"),
    ("not a study", "--budgets {b}: no study.json here: not a study folder"),
    ("disjoint seeds", "--budgets: no seed has runs at 2 or more budgets"),
])
def test_bad_budgets_are_one_line_naming_the_folder(case, message, tmp_path, capsys):
    from commands.cli import main as cli_main

    losses = {("baseline", 0): 3.0, ("baseline", 1): 3.0, ("smear", 0): 2.9, ("smear", 1): 2.9}
    study = fake_study(tmp_path / "study", N0, losses if case != "no arm" else {("baseline", 0): 3.0})
    b = tmp_path / "b"
    budget = {("baseline", 0): 3.1, ("baseline", 1): 3.1} if case != "disjoint seeds" else {("baseline", 5): 3.1}
    if case == "not a study":
        b.mkdir()
    else:
        fake_study(b, N0 if case == "same steps" else 900, budget,
                   preset="cpu-small" if case == "other preset" else "tiny", overrides=("val_every=5",) if case == "other override" else (), unfinished=case == "unfinished")
    given = [str(b), str(b)] if case == "twice" else [str(b)]
    assert cli_main(["steps-saved", str(study), "--budgets", *given]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("smearlens: error: " + message.format(b=b, s=study)), err


def test_steps_saved_needs_budgets_or_a_shape_not_both(tmp_path, capsys):
    from commands.cli import main as cli_main

    for given in ([], ["--budgets", "a", "--shape-from", "b"]):
        with pytest.raises(SystemExit) as e:
            cli_main(["steps-saved", str(tmp_path), *given])
        assert e.value.code == 2 and "--budgets" in capsys.readouterr().err


def test_the_record_comparison_reads_the_mean_loss_converted_and_says_when_it_cannot_tell():
    from analysis.writeup.report_steps import record_comparison

    row = dict(arm="smear", preset_steps=1600, pct_saved=-1.37, pct_ci_low=-1.93, pct_ci_high=-0.80,  # biased
               pct_at_mean_loss=-0.10, pct_at_mean_ci_low=-0.67, pct_at_mean_ci_high=0.46, at_mean_status="ok")
    text = record_comparison(pd.DataFrame([row]))
    assert ("The learned smear here (its mean loss difference converted): -0.10% [-0.67, +0.46] of 1600 steps; both 0 "
            "and 0.30% lie inside that 95% CI: too few seeds to tell them apart") in text
    beyond = dict(row, pct_at_mean_loss=math.nan, at_mean_status=f"{ss.BEYOND} (below the largest budget's loss)")
    assert f"mean loss difference here is {ss.BEYOND} (below the largest budget's loss): no number" in \
        record_comparison(pd.DataFrame([beyond]))
