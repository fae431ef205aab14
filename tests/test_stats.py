"""Statistics on synthetic tables with a known difference, and the checks on bad tables."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as st

from analysis import stats
from analysis.stats import Tables
from fixtures.synthetic_tables import BASE_PREV, make_tables, write_tables
from trainer.errors import AnalysisError, SmearlensError


def tables_of(**kw) -> Tables:
    frames = make_tables(**kw)
    return Tables(**{k: v if len(v) else None for k, v in frames.items()})


def per_seed(rows: dict[str, list[float]], seeds: dict[str, list[int]] | None = None) -> pd.DataFrame:
    seeds = seeds or {arm: list(range(len(v))) for arm, v in rows.items()}
    return pd.DataFrame([dict(arm=arm, seed=s, value=v) for arm, vs in rows.items() for s, v in zip(seeds[arm], vs)])


def test_analysis_error_is_a_smearlens_error():
    assert issubclass(AnalysisError, SmearlensError)


def test_known_difference_is_significant():
    t = tables_of()
    ps = stats.per_seed_claims(t.heads, 0.4)
    base, smear = ps[ps["arm"] == "baseline"], ps[ps["arm"] == "smear"]
    assert (base["n_prev_heads"] == 2).all() and (smear["n_prev_heads"] == 0).all()
    assert base["prev_mass"].between(1.8, 2.0).all() and smear["prev_mass"].between(1.0, 1.2).all()
    assert (ps["n_heads"] == 6).all()  # the no-attention layer has no heads

    n = stats.compare_arms(ps, "n_prev_heads")
    assert n["diff"] == -2 and n["ci_low"] == n["ci_high"] == -2 and n["paired"]
    assert n["verdict"].startswith("smear arm lower, significant")
    m = stats.compare_arms(ps, "prev_mass")
    assert m["significant"] and m["p_value"] < 0.01 and m["ci_high"] < 0 < m["ci_high"] + 1
    assert m["ci_low"] <= m["diff"] <= m["ci_high"]
    assert m["verdict"].startswith("smear arm lower, significant (p")
    assert (m["n_baseline"], m["n_smear"]) == (3, 3)

    summary = stats.summarize(t)
    assert summary.verdict.startswith("Heads are freed up")
    rows = summary.comparisons.set_index("claim")
    assert rows.loc["induction_at_prev", "verdict"].startswith("smear arm higher, significant")
    assert rows.loc["ablation_mean_at_prev", "diff"] < 0


def test_identical_arms_show_no_significant_difference():
    t = tables_of(arms=("baseline",))
    smear = t.heads.assign(arm="smear", run=t.heads["run"].str.replace("baseline", "smear"))
    heads = pd.concat([t.heads, smear], ignore_index=True)
    ps = stats.per_seed_claims(heads)
    comp = stats.compare_all(ps)
    assert (comp["diff"].abs() < 1e-12).all()
    assert comp["verdict"].str.startswith("no significant difference").all()
    assert not comp["significant"].any()
    assert stats.freed_up_verdict(comp).startswith("The numbers do not show heads freed up")


def test_same_distribution_in_both_arms_is_not_significant():
    t = tables_of(prev={"baseline": BASE_PREV, "smear": BASE_PREV}, noise=0.03, seeds=(0, 1, 2, 3))
    m = stats.compare_arms(stats.per_seed_claims(t.heads), "prev_mass")
    assert m["verdict"].startswith("no significant difference") and m["ci_low"] < 0 < m["ci_high"]


def test_one_seed_gives_no_test_and_says_why():
    t = tables_of(seeds=(0,))
    comp = stats.compare_all(stats.per_seed_claims(t.heads))
    assert (comp["verdict"] == "absent: fewer than 2 seeds per arm (baseline 1, smear 1)").all()
    assert comp["p_value"].isna().all() and comp["ci_low"].isna().all()
    assert comp["diff"].notna().all()  # the difference itself is still reported
    verdict = stats.freed_up_verdict(comp)
    assert verdict.startswith("Cannot decide") and "fewer than 2 seeds" in verdict


def test_missing_arm_gives_no_test_and_says_why():
    t = tables_of(arms=("baseline",))
    r = stats.compare_arms(stats.per_seed_claims(t.heads), "prev_mass")
    assert r["verdict"] == "absent: arm missing (smear: no runs)"
    assert np.isnan(r["diff"]) and r["n_smear"] == 0 and r["n_baseline"] == 3


def test_unpaired_seeds_resample_each_arm():
    df = per_seed({"baseline": [2.0, 2.1, 1.9], "smear": [1.0, 1.1, 1.2]},
                  seeds={"baseline": [0, 1, 2], "smear": [3, 4, 5]})
    r = stats.compare_arms(df, "value")
    assert not r["paired"] and r["significant"]


def test_welch_p_value_is_scipys_and_the_bootstrap_is_reproducible():
    b, s = [1.9, 2.3, 2.0, 2.2], [1.2, 1.9, 1.4, 1.0]
    df = per_seed({"baseline": b, "smear": s})
    r = stats.compare_arms(df, "value")
    assert r["p_value"] == pytest.approx(st.ttest_ind(s, b, equal_var=False).pvalue, rel=1e-12)
    assert r == stats.compare_arms(df, "value")  # fixed RNG seed: the same CI every time


def test_bootstrap_ci_covers_the_true_difference():
    rng = np.random.default_rng(123)
    true_diff, n, reps, covered = -0.8, 10, 200, 0
    for i in range(reps):
        b = 1.9 + rng.normal(0, 0.15, n)
        s = b + true_diff + rng.normal(0, 0.1, n)  # paired: same seed, correlated arms
        r = stats.compare_arms(per_seed({"baseline": list(b), "smear": list(s)}), "value", n_boot=2000, rng_seed=i)
        covered += r["ci_low"] <= true_diff <= r["ci_high"]
    assert covered / reps >= 0.85  # percentile bootstrap with 10 seeds: close to the nominal 95%


def test_threshold_sweep_is_monotone_and_compared_per_threshold():
    t = tables_of()
    sweep = stats.threshold_sweep(t.heads)
    for _, g in sweep.groupby("run"):
        assert (np.diff(g.sort_values("threshold")["n_prev_heads"].to_numpy()) <= 0).all()
    comp = stats.compare_thresholds(t.heads)
    assert list(comp["threshold"]) == list(stats.THRESHOLDS)
    assert comp.set_index("threshold").loc[0.4, "verdict"].startswith("smear arm lower")


def test_final_step_is_each_runs_last():
    t = tables_of()
    early = t.heads[~((t.heads["run"] == "tiny-s0-smear") & (t.heads["step"] == 40))]
    ps = stats.per_seed_claims(early).set_index("run")
    assert ps.loc["tiny-s0-smear", "step"] == 13 and ps.loc["tiny-s1-smear", "step"] == 40
    notes = stats.validate_tables(Tables(early))
    assert any("different steps" in n for n in notes)


def test_freed_places_follow_the_seed():
    t = tables_of()
    pos = stats.baseline_prev_positions(t.heads)
    assert set(zip(pos["layer"], pos["head"])) == {(1, 0), (3, 0)} and set(pos["seed"]) == {0, 1, 2}


# -- loading and validation -------------------------------------------------------------------------


def test_load_tables_reads_tables_and_records(tmp_path):
    folder = write_tables(tmp_path / "analysis")
    t = stats.load_tables(folder)
    assert t.notes == [] and t.preset == "tiny" and t.seeds("smear") == [0, 1, 2]
    assert t.get("record_heads") is not None and set(t.record_heads["run"]) == set(t.heads["run"])
    assert t.get("record_smear") is not None


def test_window_growth_follows_the_runs_schedule(tmp_path):
    import json

    from trainer.config import get_preset, replace, to_dict

    # tiny: windows 3, 7, 11 blocks over thirds of 40 steps → they grow before steps 14 and 28 (of 8 × 64 tokens)
    train = to_dict(replace(get_preset("tiny").train, steps=40))
    configs = {"a": {"train_config": train}, "b": {"train_config": {"nonsense": 1}}, "c": {}}
    assert stats.window_growth_tokens(configs) == [14 * 512, 28 * 512]
    assert stats.window_growth_tokens({}) == []
    # load_tables reads the manifests of the tables' runs from the run folders
    assert stats.window_growth_tokens({"partial": {"train_config": dict(steps=40, batch_size=8)}}) == []
    # load_tables reads the manifests of the tables' runs from the run folders beside the tables
    folder = write_tables(tmp_path / "analysis")
    runs = sorted(set(pd.read_parquet(folder / "heads.parquet")["run"]))
    (tmp_path / runs[0] / "run.json").write_text(json.dumps({"train_config": train}))
    t = stats.load_tables(folder)
    assert sorted(t.configs) == runs and stats.window_growth_tokens(t.configs) == [7168, 14336]


def test_mixed_presets_are_refused_with_the_runs_named(tmp_path):
    a = make_tables(preset="tiny")["heads"]
    b = make_tables(preset="cpu-small", seeds=(7,))["heads"]
    folder = tmp_path / "analysis"
    folder.mkdir()
    pd.concat([a, b]).to_parquet(folder / "heads.parquet")
    with pytest.raises(AnalysisError, match=r"mix runs of different presets: 'cpu-small' \(runs cpu-small-s7"):
        stats.load_tables(folder)
    t = stats.load_tables(folder, preset="cpu-small")
    assert t.preset == "cpu-small" and t.seeds("baseline") == [7]
    with pytest.raises(AnalysisError, match="no runs of preset 'nope'.*cpu-small, tiny"):
        stats.load_tables(folder, preset="nope")


@pytest.mark.parametrize("change, message", [
    (lambda h: h.assign(arm=h["arm"].replace("smear", "smeared")), "unknown arm"),
    (lambda h: h.assign(run=h["run"].str.replace(r"-s1-", "-s0-", regex=True)), "several arm or seed labels"),
    (lambda h: pd.concat([h, h[h["run"] == "tiny-s0-smear"].assign(run="again")]), "several runs for the same arm"),
    (lambda h: h[h["metric"] != "prev_token"], "no prev_token rows"),
    (lambda h: h.iloc[:0], "empty"),
])
def test_bad_tables_are_refused(change, message):
    t = tables_of()
    with pytest.raises(AnalysisError, match=message):
        stats.validate_tables(Tables(change(t.heads)))


def test_notes_name_what_limits_the_analysis():
    notes = stats.validate_tables(tables_of(arms=("baseline",), seeds=(0,)))
    assert any("smear arm is missing" in n for n in notes)
    assert any("baseline arm has 1 seed" in n for n in notes)
    t = tables_of()
    smear = t.heads[t.heads["arm"] == "smear"].assign(seed=lambda d: d["seed"] + 10,
                                                       run=lambda d: d["run"] + "x")
    h = pd.concat([t.heads[t.heads["arm"] == "baseline"], smear])
    h.loc[h.index[0], "value"] = np.nan
    v = Tables(h)
    notes = stats.validate_tables(v)
    assert any("seeds differ between arms" in n for n in notes)
    assert any("non-finite" in n for n in notes) and v.heads["value"].notna().all()


def test_file_problems_are_named(tmp_path):
    with pytest.raises(AnalysisError, match="no such tables folder"):
        stats.load_tables(tmp_path / "missing")
    (tmp_path / "smear.parquet").write_bytes(b"")
    with pytest.raises(AnalysisError, match="no heads.parquet here.*smear.parquet"):
        stats.load_tables(tmp_path)
    (tmp_path / "heads.parquet").write_bytes(b"not parquet")
    with pytest.raises(AnalysisError, match="heads.parquet: not a readable parquet table"):
        stats.load_tables(tmp_path)
    make_tables()["heads"].drop(columns=["layer"]).to_parquet(tmp_path / "heads.parquet")
    with pytest.raises(AnalysisError, match="lacks column.*layer"):
        stats.load_tables(tmp_path)


def test_compare_unknown_column():
    with pytest.raises(AnalysisError, match="no per-seed column 'nope'"):
        stats.compare_arms(per_seed({"baseline": [1.0]}), "nope")


# -- smear gate ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, cls", [
    (" the", "word start"), (" Élan", "word start"), ("ing", "continuation"), ("é", "continuation"),
    (".", "punctuation"), (" ,", "punctuation"), ("?!", "punctuation"), ("$", "punctuation"),
    ("1850", "digits"), (" 12", "digits"), ("\n", "whitespace"), ("\n\n", "whitespace"), (" ", "whitespace"),
    ("<|endoftext|>", "other"), ("", "other"), ("a1", "continuation"), ("'s", "other"),
])
def test_token_class(text, cls):
    assert stats.token_class(text) == cls


def test_vocab_extremes_and_smear_final():
    t = tables_of()
    top, bottom = stats.vocab_extremes(t.smear_vocab, 5)
    assert len(top) == len(bottom) == 5
    assert top["coefficient"].is_monotonic_decreasing and bottom["coefficient"].is_monotonic_increasing
    assert top["coefficient"].min() > bottom["coefficient"].max() and (top["n_seeds"] == 3).all()
    final = stats.smear_final(t.smear)
    assert list(final["seed"]) == [0, 1, 2] and (final["step"] == 40).all()
    classes = stats.with_token_class(t.smear_tokens)["token_class"]
    assert set(classes) <= set(stats.TOKEN_CLASSES)
