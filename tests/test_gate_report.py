"""Why the learned gate stays low: the per-arm statistics (analysis/stats/gate_arms.py), the two figures
(analysis/writeup/plots/gate.py) and the report section, on synthetic tables with known answers and on tiny runs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.stats import gate_arms
from analysis.writeup import plots, report
from analysis import stats
from analysis.measures.lambda_grad import PARTS, LambdaGradRecorder
from analysis.measures.recorder import make_recorder
from analysis.analyze import analyze
from fixtures.synthetic_tables import BASE_PREV, SMEAR_PREV, write_tables
from trainer.config import get_preset
from trainer.errors import AnalysisError
from trainer.train import make_run, train

SEEDS = (0, 1, 2)
# mean validation loss per arm; seed s adds 0.002·s to every arm (pairs share it) and a small arm noise
LOSS = {"baseline": 4.10, "smear": 4.09, "dose-0.8": 4.05, "dose-0.4": 4.07, "smear-hold-0.8-5": 4.052,
        "smear-nogate": 4.09, "smear-normgate": 4.05}
NORMGATE_SPREAD = (-0.05, 0.05, 0.0)  # smear-normgate: mean at the dose's loss, far too noisy to tell
ARMS = tuple(LOSS)
FINAL_LAMBDA = {"smear": 0.16, "smear-hold-0.8-5": 1.2, "smear-nogate": 0.3, "smear-normgate": 0.2}
BOS_PUSH, OTHER_PUSH = 0.004, 0.0005  # record_lambda: per-step pressure from the BOS part, from each other doc part
LAST = 40


def val_loss(arm: str, seed: int) -> float:
    noise = np.random.default_rng([seed, len(arm)]).normal(0, 0.0005)
    spread = NORMGATE_SPREAD[seed] if arm == "smear-normgate" else 0.0
    return LOSS[arm] + 0.002 * seed + noise + spread


def write_gate_tables(folder: Path, arms=ARMS, lr_mult: float | None = None) -> Path:
    """Synthetic tables (fixtures.synthetic_tables) for `arms`, with loss.csv, record_smear and record_lambda
    for every arm with a coefficient. smear-nogate keeps the baseline's heads (mass equivalent), the rest
    have fewer."""
    prev = {"baseline": BASE_PREV, "smear": SMEAR_PREV, "smear-nogate": BASE_PREV}
    folder = write_tables(folder, arms=tuple(arms), noise=0.002, prev=prev, steps=(1, 4, 13, LAST))
    rec, ck, lam_rows = [], [], []
    for arm in arms:
        for seed in SEEDS:
            run = f"tiny-s{seed}-{arm}"
            run_dir = folder.parent / run
            pd.DataFrame(dict(step=[LAST // 2, LAST], tokens=[LAST // 2 * 512, LAST * 512], train_loss=[5.0, 4.5],
                              val_loss=[4.6, val_loss(arm, seed)], lr_mult=1.0, step_seconds=0.1)) \
                .to_csv(run_dir / "loss.csv", index=False)
            if lr_mult is not None and arm != "baseline":  # the trainer refuses it for an arm without a learned λ
                meta = run_dir / "run.json"
                meta.write_text(meta.read_text().replace('"train_config": {', f'"train_config": {{"smear_lr_mult": {lr_mult}, '))
            if arm == "baseline":
                continue
            ident = dict(run=run, preset="tiny", arm=arm, seed=seed)
            c = gate_arms.fixed_dose(arm)
            rows = []
            for step in range(0, LAST + 1, 5):
                lam = c if c is not None else FINAL_LAMBDA[arm] * (0.5 + 0.5 * step / LAST)
                rows.append(dict(ident, step=step, tokens=step * 512, **{"lambda": lam}, gate_mean=0.5,
                                 coef_mean=0.5 * lam, coef_std=0.1, coef_p05=0.1, coef_p50=0.5 * lam, coef_p95=lam))
            if arm != "smear":  # the fixture wrote the smear arm's own
                rec += rows
                ck += [r for r in rows if r["step"] in (1, 4, 13, LAST) or r["step"] == LAST]
            for step in range(60):
                doc = {p: (BOS_PUSH if p == "bos" else OTHER_PUSH) for by, p in PARTS if by == "doc"}
                total = sum(doc.values())
                base = dict(ident, step=step, tokens=step * 512, **{"lambda": 0.1}, grad=total, pressure=total,
                            coef_mean=0.05)
                for by, part in PARTS:
                    value = total if by == "total" else doc[part] if by == "doc" else \
                        (total if part in ("pos", ">=0.6") else 0.0)
                    lam_rows.append(dict(base, by=by, part=part, n=10, value=value))
    for run, g in (pd.DataFrame(rec).groupby("run") if rec else ()):
        pd.concat([pd.read_parquet(p) for p in [folder.parent / run / "record_smear.parquet"] if p.exists()] + [g]) \
            .to_parquet(folder.parent / run / "record_smear.parquet", index=False)
    for run, g in pd.DataFrame(lam_rows).groupby("run"):
        g.to_parquet(folder.parent / run / "record_lambda.parquet", index=False)
    smear = pd.read_parquet(folder / "smear.parquet")
    pd.concat([smear] + ([pd.DataFrame(ck)] if ck else [])).to_parquet(folder / "smear.parquet", index=False)
    return folder


@pytest.fixture(scope="module")
def gate_folder(tmp_path_factory) -> Path:
    return write_gate_tables(tmp_path_factory.mktemp("gate") / "study" / "analysis")


@pytest.fixture(scope="module")
def gate_tables(gate_folder):
    return stats.load_tables(gate_folder)


@pytest.fixture(scope="module")
def summary(gate_tables):
    return stats.summarize(gate_tables)


@pytest.fixture
def gate_drawing_only(monkeypatch):
    """The report draws only the gate figures (the others are checked in test_report; this keeps it fast)."""
    draw = plots.draw_all
    monkeypatch.setattr(report.plots, "draw_all", lambda tables, folder, threshold=0.4, names=None, formats=("png",):
                        draw(tables, folder, threshold, names=plots.GATE_FIGURES, formats=formats))


# ---- statistics ------------------------------------------------------------------------------------------------


def test_question_arms_and_doses_are_recognised():
    assert [a for a in ("smear", "dose-0.8", "smear-init-1.6", "smear-hold-0.8-400", "dose-0.8-anneal-800",
                        "smear-nogate", "smear-normgate", "canon4", "dose-x") if gate_arms.is_question_arm(a)] == \
        ["smear-init-1.6", "smear-hold-0.8-400", "dose-0.8-anneal-800", "smear-nogate", "smear-normgate"]
    assert gate_arms.fixed_dose("dose-0.8") == 0.8 and gate_arms.fixed_dose("dose-0.8-anneal-800") is None
    assert gate_arms.fixed_dose("smear") is None and gate_arms.fixed_dose("not-an-arm") is None
    assert gate_arms.describe("smear-hold-0.8-400") == "coefficient held at 0.8 for 400 steps, then learned"
    # every arm of the registry reads as what it is, none as a generic "… mixing term"
    from trainer.arms import ARMS
    assert not [a for a in ARMS if "mixing term" in gate_arms.describe(a)]
    assert gate_arms.describe("smear-mtp") == "Smear-MTP: λ·h[i−1] after the final norm"


def test_verdicts_and_best_dose_match_the_known_truth(gate_tables, summary):
    gate = gate_arms.gate_summary(summary.per_seed, gate_tables.get("smear"), gate_tables.get("record_smear"),
                                  gate_tables.configs)
    t = gate.table.set_index("arm")
    assert gate.best_dose == "dose-0.8" and list(gate.table.columns) == gate_arms.GATE_COLUMNS
    assert list(t.index) == [a for a in stats.arm_order(ARMS) if a != "baseline"]
    reach = t["reaches_best_dose"].to_dict()
    assert reach["dose-0.8"] is True and reach["smear-hold-0.8-5"] is True  # 0.002 above the dose: within ±0.01
    assert reach["smear"] is False and reach["smear-nogate"] is False and reach["dose-0.4"] is False
    assert pd.isna(t.loc["smear-normgate", "reaches_best_dose"]) and t.loc["smear-normgate", "loss_vs_dose_verdict"] == "too few seeds to tell"
    # 0.002 higher on quiet seeds: significant, and inside ±0.01 as well: it reaches the dose's loss
    assert t.loc["smear-hold-0.8-5", "loss_vs_dose_verdict"] == "higher (and equivalent within ±0.01)"
    assert t.loc["smear-hold-0.8-5", "loss_vs_dose"] == pytest.approx(0.002, abs=0.0015)
    assert t.loc["dose-0.8", "loss_vs_dose_verdict"] == "reference (best fixed dose)"
    assert t.loc["dose-0.8", "loss_vs_baseline"] == pytest.approx(-0.05, abs=0.0015)
    assert t.loc["dose-0.8", "loss_vs_baseline_verdict"] == "lower"
    frees = t["frees_heads"].to_dict()
    assert frees["smear"] is True and frees["dose-0.8"] is True and frees["smear-hold-0.8-5"] is True
    assert frees["smear-nogate"] is False and t.loc["smear-nogate", "mass_vs_baseline_verdict"].startswith("equivalent")
    assert t.loc["smear-hold-0.8-5", "lambda_final"] == pytest.approx(1.2)
    assert t.loc["smear-hold-0.8-5", "coef_final"] == pytest.approx(0.6)
    assert t.loc["dose-0.8", "lambda_final"] == pytest.approx(0.8) and not gate.lr_mult
    c = gate.comparisons
    assert set(c["reference"]) == {"baseline", "best dose"}
    assert (c.loc[c["reference"] == "best dose", "baseline"] == "dose-0.8").all()


def test_without_a_dose_arm_nothing_reaches_a_dose(summary):
    per_seed = summary.per_seed[~summary.per_seed["arm"].str.startswith("dose-")]
    gate = gate_arms.gate_summary(per_seed)
    assert gate.best_dose is None and gate.table["reaches_best_dose"].isna().all()
    assert (gate.table["loss_vs_dose_verdict"] == "absent: no fixed dose arm").all()
    assert gate.table["lambda_final"].isna().all()  # no smear table given


def test_early_pressure_finds_what_drives_lambda(gate_tables):
    early = gate_arms.early_pressure(gate_tables.get("record_lambda"), steps=50)
    smear = early[early["arm"] == "smear"].set_index(["by", "part"])
    assert smear.loc[("total", "all"), "value"] == pytest.approx(BOS_PUSH + 6 * OTHER_PUSH)
    assert smear.loc[("doc", "bos"), "value"] == pytest.approx(BOS_PUSH)
    assert (early["steps"] == 50).all() and (early["n_seeds"] == 3).all()
    assert gate_arms.early_pressure(None).empty


def test_lr_mult_alone_brings_the_section(tmp_path, gate_drawing_only):
    folder = write_gate_tables(tmp_path / "lr" / "analysis", arms=("baseline", "smear"), lr_mult=0.1)
    tables = stats.load_tables(folder)
    assert gate_arms.arms_present(tables.arms, tables.configs)
    gate = gate_arms.gate_summary(stats.summarize(tables).per_seed, configs=tables.configs)
    assert gate.lr_mult == {"smear": 0.1}
    text = report.write_report(folder, tmp_path / "figs", tmp_path / "r.md", formats=("png",)).read_text()
    assert "| λ lr × |" in text and "| smear | learned λ·gate (the record) | 0.1 | 3 |" in text
    assert "No fixed dose arm (`dose-<c>`) is in these tables" in text


# ---- figures ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", plots.GATE_FIGURES)
def test_gate_figures_draw(gate_tables, tmp_path, name):
    png = plots.save(plots.draw_figure(name, gate_tables), tmp_path, name, ("png",))[0]
    with Image.open(png) as im:
        assert im.size[0] > 600 and im.size[1] > 300


def test_gate_figures_say_what_they_lack(gate_tables):
    bare = stats.Tables(heads=gate_tables.heads)
    for name, missing in (("coefficient_over_training", "no smear table"), ("lambda_gradient", "no record_lambda")):
        with pytest.raises(AnalysisError, match=missing):
            plots.draw_figure(name, bare)
    only_doses = stats.Tables(heads=gate_tables.heads,
                              record_smear=gate_tables.record_smear.query("arm.str.startswith('dose-')"))
    with pytest.raises(AnalysisError, match="no arm with a changing coefficient"):
        plots.draw_figure("coefficient_over_training", only_doses)


# ---- report ----------------------------------------------------------------------------------------------------


def test_report_has_the_gate_section(gate_folder, tmp_path, gate_drawing_only):
    out = report.write_report(gate_folder, tmp_path / "figures", tmp_path / "report.md", formats=("png",))
    text = out.read_text()
    section = text[text.index("## Why the learned gate stays low"):text.index("## Smear gate at the last")]
    summary = section.split("**Summary:** ", 1)[1].split("\n", 1)[0]
    assert "The best fixed dose here is *dose-0.8* (validation loss 4.05" in summary
    assert "Reach its loss (lower, or equivalent within ±0.01 nats): *smear-hold-0.8-5*;" in summary
    assert "do not (higher): *smear*, *dose-0.4*, *smear-nogate*;" in summary
    assert "too few seeds to tell: *smear-normgate*." in summary
    assert "not lower: *smear-nogate*;" in summary
    assert "Both (the dose's loss and freed heads) without being a fixed dose: *smear-hold-0.8-5*." in summary
    assert "In smear the largest share of it comes from positions where token i is a BOS" in summary
    assert "With 3 seeds per arm this is a screen" in summary
    row = next(line for line in section.splitlines() if line.startswith("| smear-hold-0.8-5 |"))
    assert "higher (and equivalent within ±0.01)" in row and row.endswith("| 1.200 | 0.600 | yes | yes |")
    for name in plots.GATE_FIGURES:
        assert f"](figures/{name}.png)" in section
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 0
    figures = text[text.index("## Figures"):text.index("## Mechanism")]
    assert not any(f"{name}.png" in figures for name in plots.GATE_FIGURES)
    assert "`record_lambda` (" in text


def test_report_without_gate_arms_has_no_section(tmp_path, gate_drawing_only):
    folder = write_tables(tmp_path / "ck" / "analysis")
    text = report.write_report(folder, tmp_path / "figs", tmp_path / "r.md", formats=("png",)).read_text()
    assert "Why the learned gate stays low" not in text and "coefficient_over_training.png" not in text
    assert "## Mechanism: where the previous token travels" in text  # the rest of the report is there


# ---- end to end: tiny runs ---------------------------------------------------------------------------------------


def test_tiny_runs_give_the_section(tiny_data, tmp_path, one_thread, gate_drawing_only):
    root = tmp_path / "study"
    for arm in ("baseline", "dose-0.8", "smear-hold-0.8-3"):
        run = make_run("tiny", get_preset("tiny"), arm, 0, tiny_data,
                       train_overrides=dict(steps=6, val_every=0, n_checkpoints=1, val_tokens=512))
        train(root / run.name, run, device="cpu", progress=False,
              callbacks=(make_recorder(3), LambdaGradRecorder(write_every=3)))
    analyze(sorted(root.glob("tiny-s0-*")), out=root / "analysis", tokens=512, progress=False, metrics=["prev_token"],
            path_positions=8, path_draws=1)
    tables = stats.load_tables(root / "analysis")
    assert set(tables.record_lambda["arm"]) == {"dose-0.8", "smear-hold-0.8-3"} and len(tables.losses) == 3
    text = report.write_report(root / "analysis", root / "figures", root / "report.md", formats=("png",)).read_text()
    section = text[text.index("## Why the learned gate stays low"):text.index("## Smear gate at the last")]
    assert "The best fixed dose here is *dose-0.8*" in section and "With 1 seed per arm this is a screen" in section
    assert "absent: fewer than 2 seeds per arm" in section
    assert "| smear-hold-0.8-3 | coefficient held at 0.8 for 3 steps, then learned | 1 |" in section
    for name in plots.GATE_FIGURES:
        assert f"](figures/{name}.png)" in section
