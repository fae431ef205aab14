"""The report's induction section, its claims table, its figures and the tables behind them, on synthetic tables
of the induction study (tests/fixtures/synthetic_tables.py: five arms × three seeds, one smeared-key run that never
forms an induction head). The notebook 06_induction is executed in test_notebooks."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.stats import Tables
from analysis.stats import induction as ind
from analysis.writeup import plots, report
from analysis.writeup import report_induction as ri
from analysis.writeup.notebook_runner import run_notebooks
from fixtures.synthetic_tables import (INDUCTION_NEVER, INDUCTION_PREV_ATTN, make_induction_tables, make_tables,
                                       write_induction_tables, write_tables)
from trainer.errors import AnalysisError

FIGURE_STUB = lambda names: [f"<figure {n}>" for n in names]  # noqa: E731 (the section's figures, not drawn here)


@pytest.fixture(scope="module")
def tables() -> Tables:
    return Tables(**make_induction_tables())


@pytest.fixture(scope="module")
def section(tables) -> tuple[str, pd.DataFrame]:
    lines, claims = ri.induction_markdown_section(tables, FIGURE_STUB)
    return "\n".join(lines), claims


def _image(path: Path) -> None:
    assert path.stat().st_size > 0, path
    with Image.open(path) as im:
        im.load()
        assert im.size[0] > 100 and np.asarray(im.convert("L")).std() > 1  # not a blank canvas


def test_section_states_the_data_the_claims_and_the_censored_runs(section):
    text, claims = section
    assert text.startswith("## Induction\n\n**Synthetic data.** Half of the training tokens are synthetic: spans R R")
    assert "`trainer/repeats.py`" in text
    rows = re.findall(r"^\| \((a|b|c)\) .*", text, re.M)
    assert len(rows) == 12  # 3 measures × 4 arms, all in one table
    assert ("| (a) copy's cost of ablating the previous-token heads | keyshift − baseline | ±1 nats | 3 | 8.00 | 0.16 | "
            "-7.84 |") in text
    assert re.search(r"\| \(b\) formation step \| smeared-key − baseline \|.*\| 0 / 1 \| too few seeds to tell \|", text)
    assert "| smeared-key | 3 | 2 | 1 | seed 1 (counted as step 3,100) |" in text
    assert "| baseline | 3 | 3 | 0 | — |" in text
    assert "| smeared-key | 3 / 2 of 3 | 1 / 0 | 1.000 | 2 |" in text  # formed_pairs: seed 1 formed in one arm only
    # the figures in their places: three after the claims, the fourth after what the heads became
    order = [text.index(f"<figure {n}>") for n in plots.INDUCTION_FIGURES]
    assert order == sorted(order) and text.index("### Primary claims") < order[0]
    assert text.index("| arm | places in seeds |") < order[3]
    assert list(claims.columns) == ri.CLAIMS_COLUMNS and len(claims) == 12


def test_one_sentence_per_arm_from_the_verdicts(section):
    text, _ = section
    sentences = re.findall(r"^- \*\*([\w.-]+)\*\*: (.*)$", text, re.M)
    assert [arm for arm, _ in sentences] == list(ind.STUDY_ARMS)
    said = dict(sentences)
    assert said["keyshift"].startswith("induction needs the previous-token heads less than in the baseline — ablating "
                                       "them costs the second copy 0.16 nats against the baseline's 8.00 (lower: -7.84 nats [")
    assert said["smeared-key"].startswith("too few seeds to tell whether induction needs the previous-token heads less")
    assert said["smeared-key"].endswith("; 1 of its 3 runs never formed an induction head.")
    assert "the head forms at step 1,167 against 1,267 (equivalent within ±300: -100 steps [" in said["smear"]
    assert "the arm's own mixing carries 0.90 of the induction key's token j−1 (higher: +0.90" in said["keyshift"]
    assert "no difference" not in text


def test_sentences_for_equivalent_and_absent_claims():
    def row(claim: str, arm: str, verdict: str, **kw) -> dict:
        return dict(dict(claim=claim, arm=arm, baseline="baseline", verdict=verdict, sesoi=ind.SESOIS[claim], n_pairs=4,
                         mean_baseline=8.0, mean_arm=7.9, diff=-0.1, ci_low=-0.3, ci_high=0.1, p_holm=0.9), **kw)
    nan = math.nan
    claims = pd.DataFrame([row("copy_cost_prev", "smear", "equivalent within ±1"),
                           row("copy_cost_prev", "keyshift", "absent: fewer than 2 seeds per arm (baseline 4, keyshift 1)",
                               mean_arm=0.2, n_pairs=0, diff=nan, ci_low=nan, ci_high=nan, p_holm=nan),
                           row("copy_cost_prev", "smeared-key", "absent: arm missing (smeared-key: no runs)",
                               mean_arm=nan, n_pairs=0),
                           row("copy_cost_prev", "dose-0.8", "higher")])
    per_seed = pd.DataFrame(dict(arm=["baseline", "smear", "dose-0.8", "keyshift"], formed=True, formation_step=1000.0))
    said = ri.answer_sentences(claims, per_seed)
    assert len(said) == 3  # smeared-key has no runs: no sentence (the claims table says why)
    assert said[0].startswith("- **smear**: induction needs the previous-token heads as much as in the baseline "
                              "(equivalent within ±1 nats) — ablating them costs")
    assert said[1].startswith("- **dose-0.8**: induction needs the previous-token heads more than in the baseline")
    # a single pair: the numbers the runs show, without a verdict
    assert said[2] == ("- **keyshift**: whether induction still needs the previous-token heads cannot be answered from "
                       "these runs (absent: fewer than 2 seeds per arm (baseline 4, keyshift 1)) — ablating them costs "
                       "the second copy 0.20 nats against the baseline's 8.00.")


def test_exploratory_and_what_the_heads_became(section):
    text, _ = section
    assert re.search(r"^\| smeared-key \| 3 \| 0\.57 \(0\.00–0\.85\) \| 2\.97 \(0\.30–8\.30\) \|", text, re.M)
    assert "| keyshift − baseline |" in text and "uncorrected" in text
    assert "| cpu-induction-s1-smeared-key | 3000 | 0.00 | 3,100 (never formed) | — |" in text
    heads = {r[0]: r for r in re.findall(r"^\| ([\w.-]+) \| (\d+) in (\d+) \| ([\d.]+) \| ([\d.]+) \|", text, re.M)}
    assert float(heads["baseline"][4]) == pytest.approx(INDUCTION_PREV_ATTN["baseline"], abs=0.006)  # on i−1
    assert float(heads["dose-0.8"][4]) == pytest.approx(INDUCTION_PREV_ATTN["dose-0.8"], abs=0.006)
    assert heads["smear"][1:3] == ("3", "3")  # one place in each of 3 seeds


def test_the_report_has_the_section_the_figures_and_the_claims_csv(tmp_path, monkeypatch):
    folder = write_induction_tables(tmp_path / "ck" / "analysis")
    draw = plots.draw_all  # the other figures are drawn in test_report; only the induction ones here
    monkeypatch.setattr(report.plots, "draw_all", lambda t, f, th=0.4, names=None, formats=("png",):
                        draw(t, f, th, names=[n for n in (names or plots.FIGURES) if n in plots.INDUCTION_FIGURES],
                             formats=("png",)))
    out = report.write_report(folder, tmp_path / "figs", tmp_path / "figs" / "report.md", formats=("png",))
    text = out.read_text()
    section = text.split("## Induction", 1)[1].split("\n## ", 1)[0]
    for name in plots.INDUCTION_FIGURES:
        assert f"]({name}.png)" in section
        _image(tmp_path / "figs" / f"{name}.png")
    assert text.index("## Conclusion") < text.index("## Induction") < text.index("## Statistics")
    csv = pd.read_csv(tmp_path / "figs" / ri.CLAIMS_FILE)
    assert len(csv) == 12 and list(csv.columns) == ri.CLAIMS_COLUMNS
    row = csv[(csv["claim"] == "copy_cost_prev") & (csv["arm"] == "keyshift")].iloc[0]
    assert row["verdict"] == "lower" and row["ci_low"] < row["diff"] < row["ci_high"] < 0
    assert csv.loc[csv["arm"] == "smeared-key", "never_formed_arm"].eq(1).all()


def test_no_induction_tables_no_section(tmp_path, monkeypatch):
    demo = Tables(**make_tables())  # the demo's tables: prev_token records, no induction rows
    assert not ri.has_induction(demo)
    assert ri.induction_markdown_section(demo, FIGURE_STUB) == ([], None)
    # the recorder's scores alone make the section, which says what is missing for the claims
    t = make_induction_tables()
    only_records = Tables(heads=t["heads"], record_heads=t["record_heads"])
    lines, claims = ri.induction_markdown_section(only_records, FIGURE_STUB)
    text = "\n".join(lines)
    assert claims is None and "*The induction claims are absent: the induction claims need the tables " \
                              "induction_knockouts, key_shares" in text
    assert "<figure induction_formation>" in text and "*Absent: no head_roles table" in text
    # a stale claims file from an earlier report goes: the README must not cite claims these tables cannot make
    (tmp_path / ri.CLAIMS_FILE).write_text("old")
    folder = write_tables(tmp_path / "ck" / "analysis", seeds=(0, 1))
    monkeypatch.setattr(report.plots, "draw_all", lambda *a, **k: {n: "skipped" for n in plots.FIGURES})
    text = report.write_report(folder, tmp_path / "figs", tmp_path / "report.md").read_text()
    assert "## Induction" not in text and not (tmp_path / ri.CLAIMS_FILE).exists()


def test_the_induction_notebook_runs_only_where_its_tables_are(tmp_path):
    demo = write_tables(tmp_path / "ck" / "analysis")
    assert run_notebooks(demo, tmp_path / "figs", names=["06_induction"]) == {}  # nothing started


def test_each_figure_is_written(tables, tmp_path):
    drawn = plots.draw_all(tables, tmp_path, names=plots.INDUCTION_FIGURES, formats=("png",))
    for name in plots.INDUCTION_FIGURES:
        assert isinstance(drawn[name], Path), drawn[name]
        _image(drawn[name])
    formation = plots.formation_over_training(tables.record_heads)
    titles = [ax.get_title() for ax in formation.axes if ax.get_visible()]
    assert titles[0] == "baseline (no smear) — formed in 3 of 3 runs" and titles[-1].endswith("formed in 2 of 3 runs")
    crosses = [l for ax in formation.axes for l in ax.get_lines() if l.get_marker() == "x"]
    assert len(crosses) == 1  # the run that never formed, at the right edge
    assert crosses[0].get_xdata()[0] == 3000
    shares = plots.key_share_bars(tables.key_shares)
    assert [t.get_text() for t in shares.axes[0].get_xticklabels()][-1] == "smeared-key\n2 of 3 runs"
    knock = plots.knockout_copy_losses(tables.induction_knockouts)
    assert "no mixing\nto knock out" in [t.get_text() for t in knock.axes[0].texts]
    heights = sorted(round(p.get_height(), 2) for p in knock.axes[0].patches)
    assert len(heights) == 4 * 4 + 2  # every arm's four conditions but the baseline's mixing and both


def test_figures_say_what_is_missing(tables):
    with pytest.raises(AnalysisError, match="no key_shares table"):
        plots.key_share_bars(None)
    with pytest.raises(AnalysisError, match="no 'induction_heldout' rows"):
        plots.formation_over_training(tables.record_heads.assign(metric="prev_token"))
    with pytest.raises(AnalysisError, match="no previous-token head"):
        plots.freed_head_offsets(tables.heads.assign(value=0.1), tables.head_roles)


def test_the_tables_behind_the_figures(tables):
    curve = ind.score_over_training(tables.record_heads)
    one = curve[(curve["run"] == "cpu-induction-s0-baseline")].set_index("step")["value"]
    assert one[1100] < 0.2 <= one[1200]  # the max over heads crosses where formation_step says
    assert one[3000] == pytest.approx(0.85, abs=0.02)  # the induction head's score, not a mean over heads
    shares = ind.route_shares(tables.key_shares).set_index("run")
    assert "cpu-induction-s1-smeared-key" not in shares.index  # no induction head, no shares
    r = shares.loc["cpu-induction-s0-keyshift"]
    assert r["mixing"] == pytest.approx(0.90) and r[["prev_heads", "mixing", "rest"]].sum() == pytest.approx(1.0)
    assert shares.loc["cpu-induction-s0-baseline", "mixing"] == 0.0
    losses = ind.copy_losses(tables.induction_knockouts)
    base = losses[losses["run"] == "cpu-induction-s0-baseline"].set_index("condition")
    assert not base["has_mixing"].any() and base.loc["first_copy", "value"] == pytest.approx(8.4)
    freed = ind.freed_roles(tables.heads, tables.head_roles, 0.4)
    assert set(freed["arm"]) == set(make_induction_tables()["heads"]["arm"]) and (freed["n_places"] == 1).all()
    assert math.isclose(freed.groupby("metric")["value"].size()["attn_prev"], 15)


def test_a_partial_study_names_the_arms_without_runs():
    lines, claims = ri.induction_markdown_section(
        Tables(**make_induction_tables(arms=("baseline", "smear"), seeds=(0, 1))), FIGURE_STUB)
    text = "\n".join(lines)
    assert "No runs of dose-0.8, keyshift, smeared-key in these tables" in text
    assert len(claims) == 12 and claims["verdict"].str.startswith("absent: arm missing").sum() == 9
    assert re.findall(r"^- \*\*([\w.-]+)\*\*", text, re.M) == ["smear"]


def test_a_run_without_records_is_not_counted_as_never_formed():
    t = make_induction_tables(seeds=(0, 1, 2))
    t["record_heads"] = t["record_heads"][t["record_heads"]["run"] != "cpu-induction-s2-baseline"]
    lines, claims = ri.induction_markdown_section(Tables(**t), FIGURE_STUB)
    text = "\n".join(lines)
    assert "| baseline | 3 | 2 | 0 | — | 1 |" in text and "no records (left out of (b))" in text
    assert "| cpu-induction-s2-baseline | 3000 | 8.06 | — (not recorded) |" in text
    assert "| smeared-key | 3 | 2 | 1 | seed 1 (counted as step 3,100) | 0 |" in text
    assert "The baseline itself never formed" not in text
    b = claims[(claims["claim"] == "formation_step") & (claims["arm"] == "smear")].iloc[0]
    assert b["n_pairs"] == 2 and b["never_formed_baseline"] == 0


def test_a_baseline_run_without_an_induction_head_is_said():
    t = make_induction_tables(unformed=frozenset({("baseline", 0)}))
    text = "\n".join(ri.induction_markdown_section(Tables(**t), FIGURE_STUB)[0])
    assert "The baseline itself never formed an induction head in 1 of its 3 runs." in text
    assert re.search(r"\| \(b\) formation step \| smear − baseline \|.*\| 1 / 0 \|", text)


def test_another_preset_reads_the_plans_claims_as_exploratory_and_no_baseline_circuit_is_said():
    """The one-layer test: claims fixed for cpu-induction are exploratory elsewhere, and a baseline that never
    formed an induction head has no previous-token heads to free, so (a) and (c) are not read as an answer."""
    never = frozenset(("baseline", s) for s in (0, 1, 2))
    t = make_induction_tables(preset="cpu-induction-1layer", unformed=never)
    lines, claims = ri.induction_markdown_section(Tables(**t), FIGURE_STUB)
    text = "\n".join(lines)
    assert "### The plan's claims, read as exploratory" in text and "### Primary claims" not in text
    assert "The baseline formed no induction head in any of its 3 runs" in text
    assert not re.findall(r"^- \*\*([\w.-]+)\*\*", text, re.M)  # no per-arm answer built on an absent circuit
    assert set(ri.induction_claims_table(claims)["role"]) == {"exploratory"}
    for preset in ("cpu-induction", "cpu-induction-h4"):  # the plan's preset and its Amendment 3's
        section = ri.induction_markdown_section(Tables(**make_induction_tables(preset=preset)), FIGURE_STUB)[1]
        assert set(ri.induction_claims_table(section)["role"]) == {"primary"}


def test_formed_pairs_counts_discordant_seeds_and_reads_the_cost_where_both_formed():
    """Six seeds: the baseline forms an induction head in all, the arm in seeds 0–1 only. McNemar's exact p over
    the 4 discordant seeds is 2 · 0.5⁴; the copy cost is read over seeds 0–1 alone, where the arm's heads cost 0.5
    against the baseline's 8 (the arm's 0-cost runs without a head do not enter)."""
    rows = []
    for seed in range(6):
        rows.append(dict(arm="baseline", seed=seed, formed=True, copy_cost_prev=8.0, prev_share=1.0, mix_share=0.0))
        formed = seed < 2
        rows.append(dict(arm="keyshift", seed=seed, formed=formed, copy_cost_prev=0.5 if formed else 0.0,
                         prev_share=0.1 if formed else math.nan, mix_share=0.9 if formed else math.nan))
    out = ind.formed_pairs(pd.DataFrame(rows)).iloc[0]
    assert (out["arm"], out["pairs"], out["formed_baseline"], out["formed_arm"]) == ("keyshift", 6, 6, 2)
    assert (out["baseline_only"], out["arm_only"], out["both_formed"]) == (4, 0, 2)
    assert out["p_mcnemar"] == pytest.approx(2 * 0.5 ** 4)
    assert (out["copy_cost_baseline"], out["copy_cost_arm"]) == (8.0, 0.5)
    assert (out["prev_share_arm"], out["mix_share_arm"]) == (pytest.approx(0.1), pytest.approx(0.9))
    assert ind.formed_pairs(pd.DataFrame(rows[1::2])).empty  # no baseline, nothing to pair


def test_the_claims_are_read_again_over_the_seeds_whose_baseline_formed_an_induction_head():
    """Four seeds, the baseline of seed 0 without an induction head: the claims again over seeds 1–3 (3 pairs),
    where the paired differences are those of the full family's seeds 1–3; absent when every baseline formed."""
    t = make_induction_tables(seeds=(0, 1, 2, 3), unformed=frozenset({("baseline", 0)}))
    per_seed = ind.induction_per_seed(Tables(**t))
    text = ri.baseline_formed_markdown(per_seed)
    assert "over the 3 seeds whose baseline formed an induction head (all but 0)" in text
    rows = [line for line in text.splitlines() if line.startswith("| (a) copy")]
    assert len(rows) == 4 and all(line.split(" | ")[3] == "3" for line in rows)  # n pairs
    full = ri.induction_claims(per_seed[per_seed["seed"] != 0]).set_index(["claim", "arm"])["diff"]
    sub = ri.induction_claims(per_seed).set_index(["claim", "arm"])["diff"]
    assert not full.equals(sub)  # seed 0 moves the full family, so the subset is its own computation
    section = "\n".join(ri.induction_markdown_section(Tables(**t), FIGURE_STUB)[0])
    assert text in section
    assert ri.baseline_formed_markdown(ind.induction_per_seed(Tables(**make_induction_tables(unformed=frozenset())))) == ""


def test_across_presets_puts_each_runs_measures_side_by_side():
    """The same arms and seeds on two presets: each (arm, seed, measure) once, second − first for the numbers; a
    seed in one study only is dropped."""
    first = ind.induction_per_seed(Tables(**make_induction_tables(seeds=(0, 1, 2))))
    second = ind.induction_per_seed(Tables(**make_induction_tables(preset="cpu-induction-h4", seeds=(1, 2, 3),
                                                                    unformed=INDUCTION_NEVER | {("baseline", 2)})))
    second["formation_step"] += 250.0  # the second preset's heads form 250 steps later, run for run
    out = ind.across_presets(first, second)
    assert set(out["seed"]) == {1, 2} and not out.duplicated(["arm", "seed", "measure"]).any()
    assert set(out["preset_first"]) == {"cpu-induction"} and set(out["preset_second"]) == {"cpu-induction-h4"}
    steps = out[(out["measure"] == "formation_step") & ~((out["arm"] == "baseline") & (out["seed"] == 2))]
    assert steps["diff"].to_numpy() == pytest.approx(250.0)
    row = out[(out["arm"] == "keyshift") & (out["seed"] == 1) & (out["measure"] == "copy_cost_prev")].iloc[0]
    assert row["first"] == first.set_index(["arm", "seed"]).loc[("keyshift", 1), "copy_cost_prev"]
    formed = out[(out["measure"] == "formed") & (out["arm"] == "baseline")].set_index("seed")
    assert bool(formed.loc[2, "first"]) and not bool(formed.loc[2, "second"]) and formed["diff"].isna().all()
