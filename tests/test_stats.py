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
    assert n["diff"] == -2 and n["ci_low"] == n["ci_high"] == -2 and n["paired"] and n["n_pairs"] == 3
    assert n["verdict"] == "lower" and n["role"] == "primary" and n["sesoi"] == 0.5
    m = stats.compare_arms(ps, "prev_mass")
    assert m["significant"] and m["p_value"] < 0.01 and m["ci_high"] < 0 < m["ci_high"] + 1
    assert m["ci_low"] <= m["diff"] <= m["ci_high"] and m["test"] == "paired t"
    assert m["verdict"] == "lower" and (m["n_baseline"], m["n_arm"]) == (3, 3)
    # every smear seed is below its baseline: the best the sign-flip test can do at 3 seeds
    assert m["p_signflip"] == m["p_signflip_min"] == 0.25

    summary = stats.summarize(t)
    assert summary.verdict.startswith("Heads are freed up")
    assert list(summary.primary["claim"]) == ["prev_mass", "best_prev", "n_prev_heads"]
    assert (summary.primary["p_holm"] >= summary.primary["p_value"]).all()
    rows = summary.exploratory.set_index("claim")
    assert rows.loc["induction_at_prev", "verdict"] == "higher"
    assert rows.loc["ablation_mean_at_prev", "diff"] < 0
    assert rows["sesoi"].isna().all() and rows["p_tost"].isna().all()  # no SESOI declared: no equivalence test


def test_identical_arms_are_equivalent_never_no_difference():
    t = tables_of(arms=("baseline",))
    smear = t.heads.assign(arm="smear", run=t.heads["run"].str.replace("baseline", "smear"))
    heads = pd.concat([t.heads, smear], ignore_index=True)
    comp = stats.compare_all(stats.per_seed_claims(heads)).set_index("claim")
    assert (comp["diff"].abs() < 1e-12).all() and not comp["significant"].any()
    assert comp.loc["prev_mass", "verdict"] == "equivalent within ±0.05"
    assert comp.loc["n_prev_heads", "verdict"] == "equivalent within ±0.5"
    assert (comp[comp["role"] == "exploratory"]["verdict"] == "too few seeds to tell").all()
    assert not comp["verdict"].str.contains("no difference|no significant").any()
    assert stats.freed_up_verdict(comp.reset_index()).startswith("Heads are not freed up")


def test_same_distribution_in_both_arms_is_not_significant():
    t = tables_of(prev={"baseline": BASE_PREV, "smear": BASE_PREV}, noise=0.03, seeds=(0, 1, 2, 3))
    m = stats.compare_arms(stats.per_seed_claims(t.heads), "prev_mass")
    assert m["verdict"] in ("too few seeds to tell", "equivalent within ±0.05") and m["ci_low"] < 0 < m["ci_high"]


def test_one_seed_gives_no_test_and_says_why():
    t = tables_of(seeds=(0,))
    comp = stats.compare_all(stats.per_seed_claims(t.heads))
    assert (comp["verdict"] == "absent: fewer than 2 seeds per arm (baseline 1, smear 1)").all()
    assert comp["p_value"].isna().all() and comp["ci_low"].isna().all() and comp["p_holm"].isna().all()
    assert comp["diff"].notna().all()  # the difference itself is still reported
    verdict = stats.freed_up_verdict(comp)
    assert verdict.startswith("Cannot decide") and "fewer than 2 seeds" in verdict


def test_missing_arm_gives_no_test_and_says_why():
    t = tables_of(arms=("baseline",))
    r = stats.compare_arms(stats.per_seed_claims(t.heads), "prev_mass")
    assert r["verdict"] == "absent: arm missing (smear: no runs)"
    assert np.isnan(r["diff"]) and r["n_arm"] == 0 and r["n_baseline"] == 3


def test_unpaired_seeds_use_welch_and_the_bootstrap():
    b, s = [1.9, 2.3, 2.0, 2.2], [1.2, 1.9, 1.4, 1.0]
    df = per_seed({"baseline": b, "smear": s}, seeds={"baseline": [0, 1, 2, 3], "smear": [4, 5, 6, 7]})
    r = stats.compare_arms(df, "value")
    assert not r["paired"] and r["test"] == "Welch, unpaired" and r["ci_method"] == "bootstrap, unpaired"
    assert r["p_value"] == pytest.approx(st.ttest_ind(s, b, equal_var=False).pvalue, rel=1e-12)
    assert r["verdict"] == "lower" and np.isnan(r["p_signflip"]) and "unpaired" in r["note"]
    assert r == stats.compare_arms(df, "value")  # fixed RNG seed: the same CI every time


def test_partly_shared_seeds_pair_on_the_shared_ones():
    df = per_seed({"baseline": [1.0, 2.0, 3.0, 4.0], "smear": [1.9, 2.8, 3.95, 9.0]},
                  seeds={"baseline": [0, 1, 2, 3], "smear": [1, 2, 3, 4]})
    r = stats.compare_arms(df, "value")
    assert r["paired"] and r["n_pairs"] == 3 and "paired on the 3 shared seeds (1, 2, 3)" in r["note"]
    assert r["p_value"] == pytest.approx(st.ttest_rel([1.9, 2.8, 3.95], [2.0, 3.0, 4.0]).pvalue, rel=1e-12)


@pytest.mark.parametrize("n", [2, 3, 5, 12])
def test_paired_p_value_is_scipys_ttest_rel(n):
    rng = np.random.default_rng(n)
    b = rng.normal(2, 0.1, n)
    s = b - 0.05 + rng.normal(0, 0.05, n)
    r = stats.compare_arms(per_seed({"baseline": list(b), "smear": list(s)}), "value")
    assert r["p_value"] == pytest.approx(st.ttest_rel(s, b).pvalue, rel=1e-12)
    t = st.t.ppf(0.975, n - 1) * np.std(s - b, ddof=1) / np.sqrt(n)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx(((s - b).mean() - t, (s - b).mean() + t), rel=1e-12)
    if n >= 3:
        assert r["r_pairs"] == pytest.approx(np.corrcoef(b, s)[0, 1])


def brute_sign_flip(d) -> float:
    d = np.asarray(d, float)
    obs = abs(d.sum())
    hits = sum(abs(sum(x * (1 if (k >> i) & 1 else -1) for i, x in enumerate(d))) >= obs - 1e-9
               for k in range(2 ** len(d)))
    return hits / 2 ** len(d)


@pytest.mark.parametrize("d", [
    [-0.121, -0.152, 0.010], [1.0, 2.0, 3.0], [1.0, -1.0, 2.0, -2.0], [0.0, 0.0, 1.0], [0.0, 0.0, 0.0],
    [1.0, 1.0, 1.0, -1.0, 2.0], [0.5, 0.0, -0.25, 0.25, 1.5, -0.75, 0.125], [3.0], [-2.0, 0.0],
    list(np.random.default_rng(1).normal(0.3, 1, 11)), list(np.round(np.random.default_rng(2).normal(0, 1, 12), 1)),
])
def test_sign_flip_p_is_the_enumeration_of_all_patterns(d):
    assert stats.sign_flip_p(d) == pytest.approx(brute_sign_flip(d), abs=1e-15)


def test_sign_flip_floor_and_monte_carlo_above_the_exact_limit(monkeypatch):
    assert stats.sign_flip_min_p(3) == 0.25 and stats.sign_flip_min_p(10) == 2 / 1024
    assert stats.sign_flip_p([-0.121, -0.152, 0.010]) == 0.5  # the 3-seed demo's prev mass
    d = list(np.random.default_rng(3).normal(0.4, 1, 10))
    exact = brute_sign_flip(d)
    monkeypatch.setattr(stats, "SIGN_FLIP_EXACT_MAX", 6)
    assert stats.sign_flip_p(d) == pytest.approx(exact, abs=0.003)  # 2²⁰ draws: SE ≈ 0.0005


def test_tost_is_two_one_sided_t_tests():
    d = np.array([0.01, -0.02, 0.015, 0.0, -0.005])
    by_hand = max(st.ttest_1samp(d, -0.05, alternative="greater").pvalue,
                  st.ttest_1samp(d, 0.05, alternative="less").pvalue)
    assert stats.tost_p(d, 0.05) == pytest.approx(by_hand, rel=1e-12) and by_hand < 0.001
    far = d - 0.2
    assert stats.tost_p(far, 0.05) > 0.99
    assert stats.tost_p([0.01, 0.01], 0.05) == 0.0 and stats.tost_p([0.1, 0.1], 0.05) == 1.0  # no spread


def test_power_of_the_paired_t_test():
    # n = 10 pairs, effect one SD, two-sided α 0.05: power 0.803 (noncentral t, as in G*Power)
    assert stats.paired_power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    df, nc, crit = 9, np.sqrt(10), st.t.ppf(0.975, 9)
    assert stats.paired_power(1.0, 1.0, 10) == pytest.approx(st.nct.sf(crit, df, nc) + st.nct.cdf(-crit, df, nc))
    # and the share of simulated experiments that reject agrees
    rng = np.random.default_rng(0)
    d = rng.normal(0.5, 0.5, (20_000, 10))
    t = d.mean(1) / (d.std(1, ddof=1) / np.sqrt(10))
    assert (np.abs(t) > crit).mean() == pytest.approx(0.803, abs=0.01)


def test_sd_upper_bound_and_planning_reproduce_the_issue():
    sd = np.std([-0.121, -0.152, 0.010], ddof=1)
    assert sd == pytest.approx(0.086, abs=5e-4)
    upper = stats.sd_upper(sd, 3)
    assert upper == pytest.approx(sd * np.sqrt(2 / st.chi2.ppf(0.2, 2))) and upper == pytest.approx(0.182, abs=1e-3)
    # power 0.8, two-sided α 0.05: 8 / 28 paired seeds for 0.1, 26 / 106 for 0.05 (observed / upper SD)
    assert [stats.seeds_needed(0.1, sd), stats.seeds_needed(0.1, upper)] == [8, 28]
    assert [stats.seeds_needed(0.05, sd), stats.seeds_needed(0.05, upper)] == [26, 106]
    n = stats.seeds_needed(0.05, upper)
    assert stats.paired_power(0.05, upper, n - 1) < 0.8 <= stats.paired_power(0.05, upper, n)
    assert stats.seeds_needed(1.0, 0.01) == 2
    with pytest.raises(AnalysisError, match="seeds_needed"):
        stats.seeds_needed(0.0, 0.1)


def test_holm_against_a_hand_example():
    # sorted 0.01, 0.03, 0.04 → ×3, ×2, ×1 = 0.03, 0.06, 0.04 → monotone: 0.03, 0.06, 0.06
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert stats.holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])
    out = stats.holm([0.01, np.nan, 0.02])  # an untested claim keeps its share of α
    assert out[0] == pytest.approx(0.03) and np.isnan(out[1]) and out[2] == pytest.approx(0.04)


def primary_table(base: list[float], smear: list[float]) -> pd.DataFrame:
    return pd.DataFrame([dict(arm=a, seed=i, prev_mass=v) for a, vs in (("baseline", base), ("smear", smear))
                         for i, v in enumerate(vs)])


def test_verdicts_on_constructed_data():
    base = [1.77, 1.80, 1.78, 1.75, 1.79]
    lower = stats.compare_all(primary_table(base, [b - 0.3 + e for b, e in zip(base, [0.01, -0.01, 0.02, 0, -0.02])]))
    assert lower.iloc[0]["verdict"] == "lower" and lower.iloc[0]["role"] == "primary"
    equal = stats.compare_all(primary_table(base, [b + e for b, e in zip(base, [0.004, -0.003, 0.002, -0.001, 0.0])]))
    r = equal.iloc[0]
    assert r["verdict"] == "equivalent within ±0.05" and r["p_tost"] < 0.05 and r["power_obs"] >= r["power_upper"] > 0.99
    demo = stats.compare_all(primary_table([1.771, 1.803, 1.777], [1.650, 1.651, 1.787])).iloc[0]
    assert demo["verdict"] == "too few seeds to tell"
    assert demo["p_value"] == pytest.approx(0.2195, abs=1e-4) and demo["p_signflip"] == 0.5
    assert demo["sd_diff_upper"] == pytest.approx(0.182, abs=1e-3) and demo["power_upper"] < demo["power_obs"] < 0.5
    plan = stats.plan_seeds(demo.to_frame().T)
    assert plan.iloc[0][["seeds_obs", "seeds_upper"]].tolist() == [26, 106]


def test_holm_can_turn_a_primary_claim_but_not_an_exploratory_one():
    base = np.array([1.0, 1.1, 0.9, 1.05, 0.95, 1.02])
    smear = base - 0.02 + 1.5 * np.array([0.012, -0.01, 0.006, -0.012, 0.01, -0.003])
    df = pd.DataFrame([dict(arm=a, seed=i, prev_mass=v, value=v) for a, vs in (("baseline", base), ("smear", smear))
                       for i, v in enumerate(vs)])
    comp = stats.compare_all(df, ["prev_mass", "value"]).set_index("claim")
    p = st.ttest_rel(smear, base).pvalue
    assert 0.05 / 3 < p < 0.05  # significant alone, not after Holm over the three declared claims
    assert comp.loc["prev_mass", "p_holm"] == pytest.approx(3 * p)
    assert comp.loc["prev_mass", "verdict"] != "lower" and comp.loc["value", "verdict"] == "lower"


def test_every_arm_is_compared_with_the_baseline():
    t = tables_of(arms=("baseline", "smear", "dose-0.8"))
    assert t.arms == ["baseline", "smear", "dose-0.8"]
    assert stats.arm_order(["canon4", "smear", "baseline", "dose-0.8"]) == ["baseline", "smear", "canon4", "dose-0.8"]
    assert stats.validate_tables(t) == []
    summary = stats.summarize(t)
    comp = summary.comparisons
    assert set(comp["arm"]) == {"smear", "dose-0.8"} and (comp["baseline"] == "baseline").all()
    assert set(summary.primary["arm"]) == {"smear"} and len(summary.primary) == 3
    dose = comp[comp["arm"] == "dose-0.8"].set_index("claim")
    assert (dose["role"] == "exploratory").all() and dose.loc["prev_mass", "paired"]
    assert dose.loc["prev_mass", "sesoi"] == 0.05 and np.isfinite(dose.loc["prev_mass", "p_tost"])  # the measure's SESOI
    assert -0.8 < dose.loc["prev_mass", "diff"] < 0  # the fixture's third arm lies between the two
    assert set(summary.thresholds["arm"]) == {"smear", "dose-0.8"}
    assert summary.verdict.startswith("Heads are freed up")  # the record's claim is about smear alone


def test_paired_t_ci_covers_the_true_difference():
    rng = np.random.default_rng(123)
    true_diff, n, reps, covered = -0.8, 10, 200, 0
    for i in range(reps):
        b = 1.9 + rng.normal(0, 0.15, n)
        s = b + true_diff + rng.normal(0, 0.1, n)  # paired: same seed, correlated arms
        r = stats.compare_arms(per_seed({"baseline": list(b), "smear": list(s)}), "value")
        covered += r["ci_low"] <= true_diff <= r["ci_high"]
    assert 0.9 <= covered / reps <= 0.99  # a t CI of normal differences: 95% up to chance


def test_welch_ci_covers_the_true_difference_of_unpaired_samples():
    rng = np.random.default_rng(7)
    covered = sum(lo <= -0.3 <= hi for lo, hi in (stats.welch_ci(rng.normal(0.7, 0.1, 8), rng.normal(1.0, 0.4, 12))
                                                 for _ in range(300)))
    assert 0.9 <= covered / 300 <= 0.99  # unequal spreads and sizes: Welch's df keep the 95% coverage
    a, b = np.array([1.0, 2.0, 4.0]), np.array([0.0, 1.0])
    lo, hi = stats.welch_ci(a, b)
    assert lo < (a.mean() - b.mean()) < hi
    assert all(np.isnan(stats.welch_ci(a, b[:1])))  # one value has no spread to read


def test_threshold_sweep_is_monotone_and_compared_per_threshold():
    t = tables_of()
    sweep = stats.threshold_sweep(t.heads)
    for _, g in sweep.groupby("run"):
        assert (np.diff(g.sort_values("threshold")["n_prev_heads"].to_numpy()) <= 0).all()
    comp = stats.compare_thresholds(t.heads)
    assert list(comp["threshold"]) == list(stats.THRESHOLDS) and (comp["role"] == "exploratory").all()
    by_t = comp.set_index("threshold")
    assert by_t.loc[0.4, "verdict"] == "lower" and by_t.loc[0.8, "verdict"] == "equivalent within ±0.5"  # 0 vs 0 heads


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
    (lambda h: h.assign(arm=h["arm"].replace("smear", "")), "rows without an arm label"),
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
