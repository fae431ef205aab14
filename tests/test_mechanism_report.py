"""The mechanism statistics on hand-made numbers, their figures (and what happens without their tables)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.stats import mechanism_stats as ms
from analysis.writeup import plots, report
from analysis import stats
from fixtures.synthetic_tables import (BASE_PREV, HEAD_KO, INTERACTION, READOUT, SMEAR_KO, SMEAR_SHARE,
                                       make_mechanism_tables, make_tables)
from trainer.errors import AnalysisError

ARMS3 = ("baseline", "smear", "dose-0.8")


@pytest.fixture(scope="module")
def tables() -> stats.Tables:
    return stats.Tables(**make_tables(arms=ARMS3))


def row(df: pd.DataFrame, **where) -> dict:
    sel = np.ones(len(df), bool)
    for k, v in where.items():
        sel &= (df[k] == v).to_numpy()
    assert sel.sum() == 1, where
    return df[sel].iloc[0].to_dict()


def test_one_sample_matches_the_paired_functions():
    d = np.array([0.020, 0.021, 0.023])
    r = ms.one_sample(d, sesoi=0.01)
    assert r["mean"] == pytest.approx(0.064 / 3) and r["n"] == 3
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(stats.t_ci(d))
    assert r["p_value"] == pytest.approx(stats.paired_t(d)) and r["p_value"] < 0.05
    assert r["p_signflip"] == pytest.approx(0.25) and r["verdict"] == "higher"
    assert ms.one_sample([0.001, -0.001, 0.0005, -0.0005], sesoi=0.01)["verdict"] == "equivalent within ±0.01"
    assert ms.one_sample([0.3])["verdict"].startswith("too few seeds to tell")
    assert ms.one_sample([0.01, -0.03, 0.05], sesoi=0.01)["verdict"] == "too few seeds to tell"


def test_path_shares_equal_their_inputs(tables):
    per = ms.share_per_seed(tables.paths)
    smear = per[per["arm"] == "smear"].set_index("seed")
    assert smear["smear_all"].to_dict() == pytest.approx({0: 0.29, 1: 0.30, 2: 0.31})
    assert (smear["smear_all"] + smear["rest_all"] + smear["leftover_all"]).to_numpy() == pytest.approx(1.0)
    assert per.loc[per["arm"] == "baseline", "smear_open"].isna().all()  # no gate: no split
    tests = ms.share_tests(tables.paths)
    for gate, want in zip(ms.GATES, SMEAR_SHARE["smear"]):
        assert row(tests, kind="share", arm="smear", gate=gate)["mean"] == pytest.approx(want)
    gap = row(tests, kind="open_minus_closed", arm="smear")
    assert gap["mean"] == pytest.approx(0.50) and gap["verdict"] == "higher"
    assert not ((tests["arm"] == "dose-0.8") & (tests["gate"] == "open")).any()  # a dose does not split
    dose = row(tests, kind="vs_reference", arm="dose-0.8")
    assert dose["reference"] == "smear" and dose["mean"] == pytest.approx(0.60) and dose["verdict"] == "higher"
    assert "baseline" not in set(tests["arm"])  # no smear term, no share rows


def test_edge_shares_average_over_seeds(tables):
    e = ms.edge_shares(tables.paths).set_index(["arm", "layer", "head"])
    assert e.loc[("baseline", 1, 0), "mean"] == pytest.approx(0.5 * BASE_PREV[1, 0])
    assert e.loc[("baseline", 1, 0), "n_seeds"] == 3 and 2 not in e.index.get_level_values("layer")
    two = ms.edge_shares(tables.paths, offset=2).set_index(["arm", "layer", "head"])
    assert two.loc[("baseline", 3, 0), "mean"] == pytest.approx(0.2 * BASE_PREV[3, 0])
    with pytest.raises(AnalysisError, match="no head edges for offset 1, source i−5"):
        ms.edge_shares(tables.paths, source=5)


def test_readout_is_compared_per_layer(tables):
    t = ms.readout_tests(tables.readout)
    assert sorted(set(t["layer"])) == [0, 1, 2, 3, 4] and t["final"].sum() == 2
    r = row(t, layer=1, arm="smear")
    assert r["reference"] == "baseline" and r["n"] == 3
    assert (r["mean_reference"], r["mean_arm"]) == pytest.approx((READOUT["baseline"], READOUT["smear"]))
    assert r["mean"] == pytest.approx(READOUT["smear"] - READOUT["baseline"]) and r["verdict"] == "higher"


def test_knockouts_against_zero_and_paired(tables):
    per = ms.knockout_per_seed(tables.knockouts)
    assert set(per["effect"]) == set(ms.KNOCKOUT_EFFECTS)
    t = ms.knockout_tests(tables.knockouts)
    assert row(t, kind="vs_zero", arm="dose-0.8", effect="smear", smear_ablation="zero")["mean"] == pytest.approx(SMEAR_KO["dose-0.8"])
    inter = row(t, kind="vs_zero", arm="smear", effect="interaction", k=1, smear_ablation="zero")
    assert inter["mean"] == pytest.approx(INTERACTION["smear"]) and inter["verdict"] == "lower"
    assert not ((t["arm"] == "baseline") & (t["effect"] != "head")).any()  # no smear term to knock out
    head = row(t, kind="vs_zero", arm="baseline", effect="head", k=2)
    assert head["mean"] == pytest.approx(2 * HEAD_KO)
    paired = row(t, kind="vs_reference", arm="dose-0.8", effect="smear", smear_ablation="mean")
    assert paired["reference"] == "smear" and paired["mean"] == pytest.approx(SMEAR_KO["dose-0.8"] - SMEAR_KO["smear"])
    assert row(t, kind="vs_reference", arm="smear", effect="head", k=1)["verdict"] == "equivalent within ±0.01"


def test_missing_tables_say_what_is_missing(tmp_path):
    heads_only = stats.Tables(make_tables()["heads"])
    summary = ms.summarize_mechanism(heads_only)
    assert set(summary.missing) == {"paths", "readout", "knockouts"}
    assert "no paths table" in summary.missing["paths"]
    drawn = plots.draw_all(heads_only, tmp_path, names=plots.MECHANISM_FIGURES, formats=("png",))
    assert all(isinstance(v, str) and v.startswith("no ") for v in drawn.values()), drawn
    text = report.mechanism_conclusion(summary)
    assert "Path shares absent (no paths table" in text and "Knock-outs absent" in text
    assert "*Absent: no readout table" in report.mechanism_markdown(summary)
    for draw in (plots.path_shares, plots.edge_shares, plots.offset_attention, plots.readout_by_layer,
                 plots.knockout_effects):
        with pytest.raises(AnalysisError, match="^no "):
            draw(None)


def test_every_mechanism_figure_draws(tables, tmp_path):
    out = plots.draw_all(tables, tmp_path, names=plots.MECHANISM_FIGURES, formats=("png",))
    for name, path in out.items():
        assert not isinstance(path, str), f"{name}: {path}"
        with Image.open(path) as im:
            assert im.size[0] > 100 and np.asarray(im.convert("L")).std() > 1
    labels = [t.get_text() for t in plots.path_shares(tables.paths).legends[0].get_texts()]
    assert labels[:3] == ["baseline (no smear)", "smear", "dose-0.8"]
    # one arm only: the figures draw what there is
    one = make_mechanism_tables(arms=("smear",), seeds=(0, 1))
    for fig in (plots.path_shares(one["paths"]), plots.edge_shares(one["paths"]), plots.knockout_effects(one["knockouts"]),
                plots.offset_attention(one["offsets"]), plots.readout_by_layer(one["readout"])):
        assert fig.axes


def test_conclusion_cites_computed_numbers(tables):
    text = report.mechanism_conclusion(ms.summarize_mechanism(tables))
    assert "the smear term carries 0.30 (95% CI [0.28, 0.32], 3 seeds)" in text
    assert "dose-0.8 − smear: +0.60" in text and "open − closed higher than 0" in text
    assert "smear 0.060 (smear − baseline: higher" in text
    assert "interaction of the two in smear is -0.0030" in text and "lower than 0" in text
    assert "no difference" not in text
