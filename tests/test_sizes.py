"""The size sweep: matched-loss interpolation, the per-size tables on synthetic study folders with known
truth, the sweep report, one real tiny sweep end to end, and bad input as one line."""

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from analysis.stats import sizes
from analysis.stats.sizes import crossing_step, load_size_study, matched_loss, prev_over_steps, sweep_tables, value_at
from commands.cli import main as cli_main
from commands.study import load_plan
from commands.sweep import sweep_plans, sweep_presets
from trainer.config import get_preset, replace, to_dict
from trainer.errors import AnalysisError
from trainer.model import GPT, count_parameters

STEPS = [100, 200, 300, 400]
# per arm: validation curve (piecewise linear), prev mass = a + b·step (two heads, split 3:1), final λ·gate
BASE_VAL, SMEAR_VAL = [5.0, 4.0, 3.0, 2.0], [5.0, 3.5, 2.5, 2.2]


@pytest.mark.parametrize("losses, level, step", [
    ([5.0, 4.0, 3.0, 2.5], 3.5, 250.0),  # inside a segment
    ([5.0, 4.0, 3.0, 2.5], 2.75, 350.0),
    ([5.0, 4.0, 3.0, 2.5], 5.0, 100.0),  # already there at the first point
    ([5.0, 4.0, 3.0, 2.5], 3.0, 300.0),  # exactly at a logged point
    ([5.0, 3.0, 4.0, 2.0], 3.5, 175.0),  # the FIRST crossing, not a later one
    ([5.0, 4.0, 3.0, 2.5], 2.0, math.nan),  # never reached
])
def test_crossing_step_is_exact_on_piecewise_linear_curves(losses, level, step):
    got = crossing_step(STEPS, losses, level)
    assert (math.isnan(got) and math.isnan(step)) or got == pytest.approx(step, abs=1e-9)
    assert crossing_step(STEPS[::-1], losses[::-1], level) == pytest.approx(step, nan_ok=True)  # order-free


def test_value_at_interpolates_and_never_extrapolates():
    assert value_at([50, 100, 150], [1.0, 2.0, 4.0], 125) == pytest.approx(3.0)
    assert value_at([50, 100, 150], [1.0, 2.0, 4.0], 150) == pytest.approx(4.0)
    assert math.isnan(value_at([50, 100, 150], [1.0, 2.0, 4.0], 40))
    assert math.isnan(value_at([50, 100, 150], [1.0, 2.0, 4.0], 151))
    assert math.isnan(value_at([], [], 10))


def _prev_line(arm: str, seed: int) -> tuple[float, float]:
    return (0.2 + 0.01 * seed, 0.001) if arm == "baseline" else (0.1 + 0.01 * seed, 0.0005 + 0.0001 * seed)


def _record_heads(run: str, preset: str, arm: str, seed: int, every: int = 50) -> pd.DataFrame:
    a, b = _prev_line(arm, seed)
    rows = []
    for step in range(every, STEPS[-1] + 1, every):
        total = a + b * step
        for head, share in ((0, 0.75), (1, 0.25)):
            rows.append(dict(run=run, preset=preset, arm=arm, seed=seed, step=step, tokens=step * 512, layer=1,
                             head=head, metric="prev_token", value=total * share))
    return pd.DataFrame(rows)


def make_study(folder: Path, preset: str = "tiny", seeds=(0, 1, 2), model_over: dict | None = None,
               coef: dict[int, float] | None = None, shift: float = 0.0) -> Path:
    """A finished study folder with known values: analysis/heads.parquet and smear.parquet at the last
    step, and per run run.json, loss.csv (validation every 100 steps) and record_heads.parquet."""
    p = get_preset(preset)
    coef = coef or {s: 0.05 + 0.01 * s for s in seeds}
    heads, smear = [], []
    for seed in seeds:
        for arm in ("baseline", "smear"):
            run = f"{preset}-s{seed}-{arm}"
            (folder / run).mkdir(parents=True)
            model = replace(p.model, arm=arm, **(model_over or {}))
            train = replace(p.train, steps=STEPS[-1])
            (folder / run / "run.json").write_text(json.dumps(dict(
                name=run, preset=preset, arm=arm, seed=seed, model_config=to_dict(model), train_config=to_dict(train))))
            val = np.array(BASE_VAL if arm == "baseline" else SMEAR_VAL) + shift + 0.01 * seed
            pd.DataFrame(dict(step=STEPS, val_loss=val)).to_csv(folder / run / "loss.csv", index=False)
            rec = _record_heads(run, preset, arm, seed)
            rec.to_parquet(folder / run / "record_heads.parquet", index=False)
            final = rec[rec["step"] == STEPS[-1]].assign(value=lambda d: d["value"] + 0.1)  # the analysis's probe
            heads.append(final)
            if arm == "smear":
                c = coef[seed]
                smear.append(dict(run=run, preset=preset, arm=arm, seed=seed, step=STEPS[-1], tokens=STEPS[-1] * 512,
                                  **{"lambda": 2 * c}, gate_mean=0.5, coef_mean=c, coef_std=0.01, coef_p05=c / 2,
                                  coef_p50=c, coef_p95=2 * c))
    (folder / "analysis").mkdir()
    pd.concat(heads, ignore_index=True).to_parquet(folder / "analysis" / "heads.parquet", index=False)
    pd.DataFrame(smear).to_parquet(folder / "analysis" / "smear.parquet", index=False)
    (folder / "study.json").write_text(json.dumps(dict(preset=preset, arms=["baseline", "smear"], seeds=list(seeds),
                                                       steps=STEPS[-1])))
    return folder


def test_matched_loss_on_known_curves():
    val = pd.DataFrame([dict(arm=arm, seed=s, step=st, val_loss=v + 0.01 * s)
                        for s in (0, 1, 2) for arm, curve in (("baseline", BASE_VAL), ("smear", SMEAR_VAL))
                        for st, v in zip(STEPS, curve)])
    rec = pd.concat([_record_heads(f"r{s}{arm}", "tiny", arm, s) for s in (0, 1, 2) for arm in ("baseline", "smear")])
    prev = prev_over_steps(rec)
    m = matched_loss(val, prev)
    # level = the higher final loss, the smear's 2.2 (+ seed offset); baseline gets there at 300 + 0.8·100 = 380,
    # the smear at its last point, 400
    assert m["loss_level"].to_numpy() == pytest.approx(np.repeat([2.2, 2.21, 2.22], 2))
    b, s = m[m["arm"] == "baseline"].set_index("seed"), m[m["arm"] == "smear"].set_index("seed")
    assert b["step"].to_numpy() == pytest.approx([380, 380, 380]) and s["step"].to_numpy() == pytest.approx([400] * 3)
    for seed in (0, 1, 2):
        (ab, bb), (as_, bs) = _prev_line("baseline", seed), _prev_line("smear", seed)
        assert b.loc[seed, "prev_mass"] == pytest.approx(ab + bb * 380)
        assert b.loc[seed, "best_prev"] == pytest.approx(0.75 * (ab + bb * 380))
        assert s.loc[seed, "prev_mass"] == pytest.approx(as_ + bs * 400)
        assert b.loc[seed, "prev_mass_end"] == pytest.approx(ab + bb * 400)
    rows = sizes.compare_size("x", pd.DataFrame(columns=["arm", "seed"]), m)
    got = rows[rows["when"] == "matched loss"].set_index("measure").loc["prev_mass"]
    want = [(_prev_line("smear", k)[0] + _prev_line("smear", k)[1] * 400)
            - (_prev_line("baseline", k)[0] + _prev_line("baseline", k)[1] * 380) for k in (0, 1, 2)]
    assert got["diff"] == pytest.approx(np.mean(want)) and got["n_pairs"] == 3
    assert got["ci_low"] < got["diff"] < got["ci_high"]


def test_sweep_tables_on_synthetic_studies(tmp_path):
    narrow = make_study(tmp_path / "narrow", model_over=dict(d_model=32, d_head=16, attn_scale=0.8))
    wide = make_study(tmp_path / "wide", coef={0: 0.10, 1: 0.12, 2: 0.14})
    t = sweep_tables([load_size_study(wide), load_size_study(narrow)])
    assert list(t.sizes["size"]) == ["narrow", "wide"]  # ordered by parameters
    assert list(t.sizes["d_model"]) == [32, 64] and list(t.sizes["d_head"]) == [16, 32]
    model = dataclasses.replace(get_preset("tiny").model, arm="baseline")
    assert t.sizes.iloc[1]["params_total"] == count_parameters(GPT(model))
    assert t.sizes.iloc[1]["tokens"] == STEPS[-1] * 8 * 64
    assert t.sizes.iloc[1]["tokens_per_param"] == pytest.approx(STEPS[-1] * 8 * 64 / t.sizes.iloc[1]["params_total"])
    coef = t.coefficients.set_index(["size", "measure"])
    assert coef.loc[("wide", "coef_mean"), "mean"] == pytest.approx(0.12)
    assert coef.loc[("narrow", "lambda"), "mean"] == pytest.approx(2 * 0.06)
    end = t.comparisons[(t.comparisons["when"] == "end") & (t.comparisons["measure"] == "val_loss")]
    assert end.set_index("size")["diff"].to_numpy() == pytest.approx([0.2, 0.2])  # 2.2 − 2.0 at the last step
    assert set(t.comparisons["when"]) == {"end", "end (recorder)", "matched loss"}


def test_sweep_report_writes_report_figure_and_tables(tmp_path, capsys):
    a = make_study(tmp_path / "d32", model_over=dict(d_model=32, d_head=16, attn_scale=0.8))
    b = make_study(tmp_path / "d64")
    assert cli_main(["sweep-report", str(a), str(b), "--out", str(tmp_path / "sweep")]) == 0
    report = (tmp_path / "sweep" / "report.md").read_text()
    assert "figures/size_sweep.png" in report and "record (speedrun-124m)" in report and "matched loss" in report
    assert (tmp_path / "sweep" / "figures" / "size_sweep.svg").stat().st_size > 0
    matched = pd.read_parquet(tmp_path / "sweep" / "tables" / "matched.parquet")
    assert len(matched) == 2 * 3 * 2 and set(matched["size"]) == {"d32", "d64"}
    trends = pd.read_parquet(tmp_path / "sweep" / "tables" / "trends.parquet")
    assert "## Across sizes" in report and set(trends["when"]) == {"end", "matched loss"}
    assert (trends["n_sizes"] == 2).all() and trends["slope"].notna().all()


def test_size_trends_recover_a_known_slope():
    rng = np.random.default_rng(0)
    shapes = pd.DataFrame(dict(size=["a", "b", "c"], params_total=[1e6, 2e6, 4e6]))  # one doubling apart
    rows = []
    for i, size in enumerate(shapes["size"]):
        for seed in range(4):
            base = rng.normal(1.8, 0.05)
            rows += [dict(size=size, seed=seed, arm="baseline", prev_mass=base, best_prev=0.5, val_loss=4.0,
                          coef_mean=math.nan),
                     dict(size=size, seed=seed, arm="smear", prev_mass=base - 0.1 - 0.05 * i + rng.normal(0, 0.005),
                          best_prev=0.5 + rng.normal(0, 0.01), val_loss=4.0 + rng.normal(0, 0.001),
                          coef_mean=0.07 + rng.normal(0, 0.002))]
    per_seed = pd.DataFrame(rows)
    t = sizes.size_trends(per_seed, pd.DataFrame(columns=["arm", "seed", "size"]), shapes).set_index("measure")
    mass = t.loc["prev_mass"]
    assert mass["n_points"] == 12 and mass["ci_low"] <= -0.05 <= mass["ci_high"]
    assert mass["verdict"] == "shrinks with size"
    assert t.loc["coef_mean", "n_points"] == 12 and t.loc["best_prev", "verdict"].startswith("no trend shown")
    one = sizes.size_trends(per_seed[per_seed["size"] == "a"], pd.DataFrame(columns=["arm", "seed", "size"]),
                                shapes)
    assert one["slope"].isna().all() and (one["verdict"] == "too few sizes or runs for a slope").all()


def _one_line_error(capsys, code: int) -> str:
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("smearlens: error:") and "\n" not in err
    return err


def test_bad_sweep_input_gives_one_line_error(tmp_path, capsys):
    assert "unknown preset 'nope'" in _one_line_error(capsys, cli_main(
        ["sweep", "--out", str(tmp_path / "s"), "--presets", "tiny,nope"]))
    assert not (tmp_path / "s").exists()
    assert "needs --presets" in _one_line_error(capsys, cli_main(["sweep", "--out", str(tmp_path / "s")]))
    # a study folder under the sweep planned for another preset: refused before any training
    (tmp_path / "s" / "tiny").mkdir(parents=True)
    (tmp_path / "s" / "tiny" / "study.json").write_text(json.dumps(dict(
        preset="cpu-small", arms=["baseline", "smear"], seeds=[0, 1], steps=10)))
    err = _one_line_error(capsys, cli_main(["sweep", "--out", str(tmp_path / "s"), "--presets", "tiny"]))
    assert "planned with preset 'cpu-small', not 'tiny'" in err
    assert not any(p.is_dir() for p in (tmp_path / "s" / "tiny").iterdir())
    # sweep-report: a folder that is no study, one whose plan names another preset, one mixing two widths
    assert "not a finished study folder" in _one_line_error(capsys, cli_main(
        ["sweep-report", str(tmp_path), "--out", str(tmp_path / "r")]))
    other = make_study(tmp_path / "other")
    (other / "study.json").write_text(json.dumps(dict(preset="cpu-small", arms=["baseline"], seeds=[0], steps=1)))
    assert "plans preset 'cpu-small' but the tables hold runs of 'tiny'" in _one_line_error(capsys, cli_main(
        ["sweep-report", str(other), "--out", str(tmp_path / "r")]))
    mixed = make_study(tmp_path / "mixed")
    manifest = json.loads((mixed / "tiny-s1-smear" / "run.json").read_text())
    manifest["model_config"].update(d_model=32, d_head=16)
    (mixed / "tiny-s1-smear" / "run.json").write_text(json.dumps(manifest))
    assert "runs of different model shapes" in _one_line_error(capsys, cli_main(
        ["sweep-report", str(mixed), "--out", str(tmp_path / "r")]))
    dup = load_size_study(make_study(tmp_path / "dup"))
    with pytest.raises(AnalysisError, match="share a size label"):
        sweep_tables([dup, dup])


def test_tiny_sweep_end_to_end(tiny_data, tmp_path, capsys):
    """The real thing, small: one tiny study (2 seeds × 2 arms, 8 steps, validation and recording every 2),
    then the sweep report; the bare command would continue the same plan (run_study's resuming is tested
    in test_study.py)."""
    out = tmp_path / "sweep"
    args = ["sweep", "--out", str(out), "--presets", "tiny", "--seeds", "2", "--steps", "8", "--set", "val_every=2",
            "--record-every", "2", "--metrics", "prev_token", "--data", str(tiny_data), "--no-progress"]
    assert cli_main(args) == 0
    assert json.loads((out / "sweep.json").read_text()) == {"presets": ["tiny"]}
    comp = pd.read_parquet(out / "tables" / "comparisons.parquet")
    matched = comp[comp["when"] == "matched loss"].set_index("measure")
    assert matched.loc["prev_mass", "n_pairs"] == 2 and np.isfinite(matched.loc["prev_mass", "diff"])
    coef = pd.read_parquet(out / "tables" / "coefficients.parquet").set_index("measure")
    assert coef.loc["coef_mean", "n_seeds"] == 2 and coef.loc["coef_mean", "mean"] > 0
    assert "smearlens sweep --out" in (out / "report.md").read_text()
    assert sweep_plans(out, sweep_presets(out, None)) == [load_plan(out / "tiny")]
    # carried without checkpoints (`study-copy` on the sweep's folder), it goes on elsewhere with nothing to train
    moved = tmp_path / "moved"
    assert cli_main(["study-copy", str(out), str(moved)]) == 0
    assert "4 analysed runs" in capsys.readouterr().out
    assert not list(moved.glob("tiny/*/step_*")) and not list(moved.glob("tiny/*/train.log"))
    (moved / "report.md").unlink()
    assert cli_main(["sweep", "--out", str(moved), "--no-progress"]) == 0
    assert not list(moved.glob("tiny/*/train.log")) and (moved / "report.md").exists()  # nothing trained again
    pd.testing.assert_frame_equal(pd.read_parquet(moved / "tables" / "comparisons.parquet"), comp)
