"""A study's planned claims: arm against a reference, Holm over the declared family, 2 × 2 interactions as costs."""

import math

import numpy as np
import pandas as pd
import pytest

from analysis.stats.inference import holm, paired_t
from analysis.stats.planned import PlannedClaim, compare_planned, removal_costs
from trainer.errors import AnalysisError


def _per_seed(values: dict[str, list[float]]) -> pd.DataFrame:
    return pd.DataFrame([dict(arm=arm, seed=s, val_loss=v) for arm, vs in values.items() for s, v in enumerate(vs)])


def test_removal_costs_and_the_interaction_of_a_two_by_two():
    rng = np.random.default_rng(0)
    base = 4.0 + rng.normal(0, 0.01, 12)
    # removing layer 0's attention costs 0.05 without the smear and 0.01 with it: interaction −0.04
    per_seed = _per_seed({"baseline": base, "baseline-noattn0": base + 0.05 + rng.normal(0, 0.002, 12),
                          "smear": base - 0.002, "smear-noattn0": base - 0.002 + 0.01 + rng.normal(0, 0.002, 12)})
    costs = removal_costs(per_seed, "val_loss")
    assert sorted(costs["arm"].unique()) == ["baseline", "smear"]
    assert costs[costs.arm == "baseline"]["val_loss_cost"].mean() == pytest.approx(0.05, abs=0.002)
    [row] = compare_planned(costs, [PlannedClaim("val_loss_cost", "smear", 0.01)]).to_dict("records")
    assert row["diff"] == pytest.approx(-0.04, abs=0.002)
    assert row["verdict"] == "lower" and row["n_pairs"] == 12


def test_holm_counts_every_declared_claim_even_one_not_run_yet():
    rng = np.random.default_rng(1)
    base = 4.0 + rng.normal(0, 0.01, 8)
    per_seed = _per_seed({"baseline": base, "a": base - 0.01 + rng.normal(0, 0.01, 8), "b": base + rng.normal(0, 0.01, 8)})
    family = [PlannedClaim("val_loss", "a", 0.01), PlannedClaim("val_loss", "b", 0.01),
              PlannedClaim("val_loss", "c", 0.01), PlannedClaim("val_loss", "b", 0.01, reference="a")]
    out = compare_planned(per_seed, family)
    assert out["verdict"].iloc[2].startswith("absent")
    raw = [paired_t(per_seed[per_seed.arm == x]["val_loss"].to_numpy() - per_seed[per_seed.arm == y]["val_loss"].to_numpy())
           for x, y in (("a", "baseline"), ("b", "baseline"), ("b", "a"))]
    want = holm([raw[0], raw[1], math.nan, raw[2]])
    got = out["p_holm"].to_numpy()
    assert np.allclose(got[[0, 1, 3]], want[[0, 1, 3]]) and math.isnan(got[2])
    assert out["baseline"].iloc[3] == "a" and out["role"].eq("primary").all()


def test_a_planned_claim_refuses_a_nonsense_sesoi_or_self_comparison():
    with pytest.raises(AnalysisError, match="SESOI"):
        PlannedClaim("val_loss", "smear", 0.0)
    with pytest.raises(AnalysisError, match="both"):
        PlannedClaim("val_loss", "smear", 0.01, reference="smear")
    with pytest.raises(AnalysisError, match="no per-seed column"):
        removal_costs(_per_seed({"baseline": [1.0]}), "loss")
