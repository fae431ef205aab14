"""The notebooks execute headless (papermill) on synthetic tables, draw non-empty figures, and show
clear messages instead of tracebacks on bad input; the figure functions they call, in-process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from PIL import Image

from analysis.writeup import plots
from analysis import stats
from conftest import built_once
from fixtures.synthetic_tables import make_tables, write_induction_tables, write_tables
from trainer.errors import AnalysisError

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = ROOT / "notebooks"


def outputs(path: Path) -> tuple[str, list[dict]]:
    """All text a notebook showed, and its error outputs."""
    nb = nbformat.read(path, as_version=4)
    texts, errors = [], []
    for cell in nb.cells:
        for out in cell.get("outputs", []):
            if out.get("output_type") == "error":
                errors.append(out)
            texts.append(out.get("text", ""))
            data = out.get("data", {})
            texts.append(data.get("text/markdown", "") + data.get("text/plain", ""))
    return "\n".join(texts), errors


def check_image(path: Path) -> None:
    assert path.exists() and path.stat().st_size > 0, path
    with Image.open(path) as im:
        im.load()
        w, h = im.size
        assert w > 100 and h > 100
        assert np.asarray(im.convert("L")).std() > 1  # not a blank canvas


@pytest.fixture(scope="module")
def executed(tmp_path_factory) -> dict[str, Path | str]:
    """The notebooks executed once for the whole test run (the slowest fixture: nine kernels)."""
    done = built_once(tmp_path_factory, "notebooks", execute_notebooks)
    return {key: value if key.endswith("-terminal") else Path(value) for key, value in done.items()}


def execute_notebooks(root: Path) -> dict[str, str]:
    """Execute the notebooks on good and bad synthetic tables, in parallel (each starts its own kernel): each
    executed notebook's path, and the runner's terminal output."""
    good = write_tables(root / "good" / "checkpoints" / "analysis")
    mixed = root / "mixed" / "analysis"
    mixed.mkdir(parents=True)
    pd.concat([make_tables(preset="tiny")["heads"], make_tables(preset="cpu-small", seeds=(5,))["heads"]]) \
        .to_parquet(mixed / "heads.parquet")
    thin = root / "thin" / "analysis"
    thin.mkdir(parents=True)
    make_tables(arms=("baseline",), seeds=(0,))["heads"].to_parquet(thin / "heads.parquet")

    induction = write_induction_tables(root / "induction" / "checkpoints" / "analysis")

    figs = root / "figures"
    jobs = {
        "01": ("01_previous_token_heads", dict(tables_dir=good, figures_dir=figs)),
        "02": ("02_smear_gate", dict(tables_dir=good, figures_dir=figs)),
        "03": ("03_freed_heads", dict(tables_dir=good, figures_dir=figs)),
        "05": ("05_mechanism", dict(tables_dir=good, figures_dir=figs)),
        "01-mixed": ("01_previous_token_heads", dict(tables_dir=mixed, figures_dir=root / "figs-mixed")),
        "03-thin": ("03_freed_heads", dict(tables_dir=thin, figures_dir=root / "figs-thin")),
        "02-thin": ("02_smear_gate", dict(tables_dir=thin, figures_dir=root / "figs-thin")),
        "06": ("06_induction", dict(tables_dir=induction, figures_dir=figs)),
        "06-none": ("06_induction", dict(tables_dir=good, figures_dir=root / "figs-none")),  # the demo's: no induction
    }
    # the kernels import this checkout's packages, whichever checkout the environment was installed from
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, PYDEVD_DISABLE_FILE_VALIDATION="1", PYTHONPATH=path)
    procs, done = {}, {}
    # 04 goes through the report's runner, as `smearlens demo` does, so its terminal output is checked too
    # with a second notebook beside it: two at a time must leave this process's working folder alone (papermill
    # changes it while a notebook runs; in threads, the demo's report once went to notebooks/figures/)
    runner = ("import os, sys; from analysis.writeup.notebook_runner import run_notebooks; cwd = os.getcwd(); "
              "r = run_notebooks(sys.argv[1], sys.argv[2], names=['04_inspect', '02_smear_gate'], out_dir=sys.argv[3]); "
              "assert os.getcwd() == cwd, os.getcwd(); "
              "sys.exit(None if all(not isinstance(v, str) for v in r.values()) else repr(r))")
    procs["04"] = (subprocess.Popen([sys.executable, "-c", runner, str(good), str(figs), str(root / "executed")],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env),
                   root / "executed" / "04_inspect.ipynb")
    # the others one process each, as the runner runs each: its kernels on local sockets, not TCP ports
    # (eight kernels starting at once on TCP once raced for a port: "Kernel died before replying")
    one = ("import json, sys; from analysis.writeup.notebook_runner import execute_notebook; "
           "ok, r = execute_notebook(sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), sys.argv[4]); "
           "sys.exit(None if ok else r)")
    (root / "sockets").mkdir()
    for key, (name, params) in jobs.items():
        out = root / "executed" / f"{key}.ipynb"
        out.parent.mkdir(exist_ok=True)
        cmd = [sys.executable, "-c", one, str(NOTEBOOKS / f"{name}.ipynb"), str(out),
               json.dumps({k: str(v) for k, v in params.items()}), str(root / "sockets" / key)]
        procs[key] = (subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env), out)
    for key, (proc, out) in procs.items():
        log, _ = proc.communicate(timeout=300)
        assert proc.returncode == 0, f"notebook {key} failed:\n{log[-3000:]}"
        done[key] = str(out)
        done[f"{key}-terminal"] = log
    done["figures"] = str(figs)
    return done


def test_notebooks_match_their_builder(tmp_path):
    sys.path.insert(0, str(NOTEBOOKS))
    try:
        import build_notebooks
    finally:
        sys.path.remove(str(NOTEBOOKS))
    for built in build_notebooks.build(tmp_path):
        committed = nbformat.read(NOTEBOOKS / built.name, as_version=4)
        fresh = nbformat.read(built, as_version=4)
        assert [(c.cell_type, c.source) for c in committed.cells] == [(c.cell_type, c.source) for c in fresh.cells], \
            f"{built.name} is out of date: run python notebooks/build_notebooks.py"
        assert any("parameters" in c.metadata.get("tags", []) for c in committed.cells)
        assert not any(c.get("outputs") for c in committed.cells if c.cell_type == "code")


@pytest.mark.parametrize("key", ["01", "02", "03", "05"])
def test_notebook_draws_its_figures(executed, key):
    text, errors = outputs(executed[key])
    assert not errors
    assert "Preset **tiny**" in text
    name = next(n for n in plots.NOTEBOOK_FIGURES if n.startswith(key))
    for fig in plots.NOTEBOOK_FIGURES[name]:
        check_image(executed["figures"] / f"{fig}.png")
        assert (executed["figures"] / f"{fig}.svg").stat().st_size > 0
    assert "not drawn" not in text


def test_induction_notebook_draws_its_figures(executed):
    text, errors = outputs(executed["06"])
    assert not errors
    assert "Preset **cpu-induction**" in text and "Half of the training tokens are synthetic" in text
    assert "- **keyshift**: induction needs the previous-token heads less than in the baseline" in text
    assert "| smeared-key | 3 | 2 | 1 | seed 1 (counted as step 3,100) |" in text  # the censored run
    assert "| arm | places in seeds | on i |" in text
    for fig in plots.NOTEBOOK_FIGURES["06_induction"]:
        check_image(executed["figures"] / f"{fig}.png")
    assert "not drawn" not in text and "absent" not in text.lower()


def test_induction_notebook_without_its_tables_says_so_once(executed):
    _, errors = outputs(executed["06-none"])
    assert not errors
    nb = nbformat.read(executed["06-none"], as_version=4)
    # what the notebook displays; stderr is the environment's (tqdm warns there when ipywidgets is absent)
    shown = [out.get("data", {}).get("text/markdown", out.get("text", "")) for cell in nb.cells
             for out in cell.get("outputs", []) if out.get("name") != "stderr"]
    assert len(shown) == 1 and shown[0].startswith("*No induction tables in"), shown
    assert not (executed["06-none"].parent.parent / "figs-none").exists()


def test_statistics_in_notebooks(executed):
    text, _ = outputs(executed["01"])
    assert "**Conclusion:** Heads are freed up" in text and "Primary claims (fixed before the runs)" in text
    assert "| smear − baseline | 0.05 | 3 |" in text and "| lower |" in text
    text, _ = outputs(executed["03"])
    assert "induction score at the baseline's previous-token heads" in text


def test_mechanism_notebook_states_its_numbers(executed):
    text, _ = outputs(executed["05"])
    assert "What the mechanism tables say:** In the smear arm the smear term carries 0.30" in text
    assert "| smear share, gate open − closed (within each run) | smear vs 0 | 3 |" in text


def test_report_runs_every_notebook():
    from analysis.writeup import notebook_runner

    assert set(notebook_runner.NOTEBOOKS) == set(plots.NOTEBOOK_FIGURES) | {"04_inspect"}
    assert set(notebook_runner.NEEDS) <= set(notebook_runner.NOTEBOOKS)
    assert all((NOTEBOOKS / f"{name}.ipynb").exists() for name in notebook_runner.NOTEBOOKS)


def test_inspect_notebook_explains_what_is_missing(executed):
    text, errors = outputs(executed["04"])
    assert not errors
    # analysis.measures.inspect may not exist yet; once it does, the fixture's runs have no checkpoint to load
    assert "Inspect is unavailable here" in text or "Inspect not possible" in text
    assert "Nothing to draw" in text
    assert "No interactive view" in text


def test_running_notebooks_prints_nothing(executed):
    """The report's runner (the demo's) shows no kernel log, e.g. ipykernel's "running over TCP" warning."""
    assert "Kernel is running over TCP" not in executed["04-terminal"]
    assert executed["04-terminal"] == ""


def test_mixed_presets_give_a_message_not_a_traceback(executed):
    text, errors = outputs(executed["01-mixed"])
    assert not errors
    assert "No analysis possible" in text and "mix runs of different presets" in text
    assert "Statistics: absent" in text
    assert not list((executed["01-mixed"].parent.parent / "figs-mixed").glob("*.png"))


def test_one_arm_one_seed_gives_messages(executed):
    text, errors = outputs(executed["03-thin"])
    assert not errors
    assert "the smear arm is missing" in text and "baseline arm has 1 seed" in text
    assert "absent: arm missing (smear: no runs)" in text
    text, errors = outputs(executed["02-thin"])
    assert not errors
    assert "Smear λ over training: not drawn** — no smear table" in text
    assert "No smear table" in text


# -- the figure functions, in-process ----------------------------------------------------------------


def test_draw_all_says_why_a_figure_is_absent(tmp_path):
    thin = stats.Tables(make_tables(arms=("smear",), seeds=(0, 1))["heads"])
    out = plots.draw_all(thin, tmp_path, formats=("png",))
    assert isinstance(out["prev_token_heatmaps"], Path)  # one arm still draws, the other panel says "no runs"
    check_image(out["prev_token_heatmaps"])
    assert out["smear_lambda"].startswith("no smear table")
    assert out["freed_head_profiles"].startswith("no baseline runs")
    assert not list(tmp_path.glob(".*.tmp"))  # temporary files were renamed or removed


def test_freed_heads_fall_back_to_the_best_baseline_heads(tmp_path):
    low = {"baseline": np.array([[0.1, 0.2], [0.3, 0.1], [np.nan, np.nan], [0.25, 0.1]]),
           "smear": np.array([[0.1, 0.1], [0.1, 0.1], [np.nan, np.nan], [0.1, 0.1]])}
    heads = make_tables(prev=low)["heads"]
    fig = plots.freed_head_profiles(heads, 0.4)
    assert "no baseline head reaches 0.4" in fig._suptitle.get_text()
    check_image(plots.save(fig, tmp_path, "fallback", ("png",))[0])
    # the same figure drawn again is the same bytes (SVG ids salted by its name): a redrawn figure is no change in git
    again = [plots.save(plots.freed_head_profiles(heads, 0.4), tmp_path / d, "fallback") for d in "ab"]
    assert [p.read_bytes() for p in again[0]] == [p.read_bytes() for p in again[1]]


def test_smear_lambda_says_where_its_values_come_from():
    t = make_tables()
    assert "(recorded during training)" in plots.smear_lambda(t["smear"], t["record_smear"])._suptitle.get_text()
    assert "(at checkpoints)" in plots.smear_lambda(t["smear"], t["record_smear"].iloc[:0])._suptitle.get_text()


def test_many_seeds_are_drawn_unnamed(tmp_path):
    # 32 seeds once gave legends of 32 entries that buried the axes: past MAX_SEED_LEGEND they go unnamed
    few, many = make_tables(seeds=(0, 1, 2)), make_tables(seeds=tuple(range(plots.style.MAX_SEED_LEGEND + 4)))
    legends = lambda fig: [len(ax.get_legend().get_texts()) for ax in fig.axes if ax.get_legend()]
    assert legends(plots.smear_lambda(few["smear"], few["record_smear"])) == [4, 3]  # a line per seed, checkpoints
    assert legends(plots.smear_lambda(many["smear"], many["record_smear"])) == [3, 2]  # each seed, their mean
    assert legends(plots.coefficient_histogram(few["smear_tokens"])) == [4]
    fig = plots.coefficient_histogram(many["smear_tokens"])
    assert legends(fig) == [2] and "each seed's median (12 seeds" in fig.axes[0].get_legend().get_texts()[1].get_text()
    check_image(plots.save(fig, tmp_path, "many", ("png",))[0])


def test_many_heads_draw_ablation_as_grids(tmp_path):
    prev = np.full((6, 6), 0.1)
    prev[3] = np.nan
    prev[1, 2] = 0.7
    heads = make_tables(prev={"baseline": prev, "smear": prev / 2}, seeds=(0, 1))["heads"]
    fig = plots.ablation_by_head(heads)  # 30 heads > MAX_BAR_HEADS
    assert len(fig.axes) == 2 * 2 + 2  # (mean, zero) × arms, and a colourbar per row
    check_image(plots.save(fig, tmp_path, "grid", ("png",))[0])


def test_figures_show_every_arm_baseline_first(tmp_path):
    heads = make_tables(arms=("baseline", "smear", "dose-0.8"), seeds=(0, 1))["heads"]
    fig = plots.prev_token_heatmaps(heads)
    titles = [ax.get_title().split("\n")[0] for ax in fig.axes[:3]]
    assert titles == ["baseline (no smear)", "smear", "dose-0.8"]
    labels = [t.get_text() for t in plots.prev_heads_vs_threshold(heads).axes[0].get_legend().get_texts()]
    assert [l.split(" —")[0] for l in labels[:3]] == ["baseline (no smear)", "smear", "dose-0.8"]
    fig = plots.freed_head_profiles(heads)
    assert [t.get_text() for t in fig.legends[0].get_texts()][:3] == ["baseline (no smear)", "smear", "dose-0.8"]
    assert len({p.get_facecolor() for p in fig.legends[0].get_patches()[:3]}) == 3  # a colour per arm
    check_image(plots.save(fig, tmp_path, "three", ("png",))[0])
    prev = np.full((6, 6), 0.1)
    prev[1, 2] = 0.7
    grid = plots.ablation_by_head(make_tables(prev={"baseline": prev, "smear": prev / 2}, arms=("baseline", "smear", "canon4"),
                                              seeds=(0,), other_prev=prev / 3)["heads"])
    assert len(grid.axes) == 2 * 3 + 2  # (mean, zero) × three arms, and a colourbar per row


def fake_patterns(n_layers: int, n_heads: int, n_tokens: int, rng) -> list:
    out = []
    for layer in range(n_layers):
        if layer == 2:
            out.append(None)
            continue
        a = np.tril(rng.random((n_heads, n_tokens, n_tokens)) + 4 * (layer == 1) * np.eye(n_tokens, k=-1))
        out.append(a / a.sum(-1, keepdims=True))
    return out


def test_inspect_helpers_draw_from_precomputed_arrays(tmp_path):
    write_tables(tmp_path / "ck" / "analysis")
    runs = plots.pick_runs(tmp_path / "ck")
    assert runs["baseline"].name == "tiny-s0-baseline" and runs["smear"].name == "tiny-s0-smear"
    rng = np.random.default_rng(0)
    tokens = ["<|endoftext|>", "It", " was", " the", " best", " of", " times", ",", "\n", "Mr", "."]

    def inspect_text(model, text):
        assert text == "It was the best of times"
        smear = model == "smear"
        return {"patterns": fake_patterns(4, 2, len(tokens), rng), "tokens": tokens,
                "coefficients": rng.uniform(0, 0.3, len(tokens)) if smear else None}

    def load_model(path):
        return ("smear" if path.name.endswith("smear") else "baseline"), {}

    results = plots.notebook_inspect(tmp_path / "ck", "It was the best of times", inspect_text, load_model=load_model)
    assert set(results) == {"baseline", "smear"} and results["baseline"][2] is None
    figs = tmp_path / "figs"
    for what in ("head", "grid", "coefficients"):
        assert plots.show_inspect(results, figs, what) is not None
    for name in ("inspect_head", "inspect_grid_baseline", "inspect_grid_smear", "inspect_coefficients"):
        check_image(figs / f"{name}.png")
    assert plots._best_head(results["baseline"][0])[0] == 1


def test_inspect_input_errors(tmp_path):
    tokens = ["a", "b", "c"]
    rng = np.random.default_rng(0)
    with pytest.raises(AnalysisError, match="with T = 3 tokens"):
        plots.attention_grid(fake_patterns(4, 2, 5, rng), tokens)
    with pytest.raises(AnalysisError, match="every layer is None"):
        plots.attention_grid([None, None], tokens)
    with pytest.raises(AnalysisError, match="outside the model"):
        plots.attention_head({"smear": fake_patterns(4, 2, 3, rng)}, tokens, 9, 0)
    with pytest.raises(AnalysisError, match="none of these models has a smear"):
        plots.coefficients_over_text(tokens, {"baseline": None})
    with pytest.raises(AnalysisError, match="one value per token"):
        plots.coefficients_over_text(tokens, {"smear": np.ones(4)})
    with pytest.raises(AnalysisError, match="no 'patterns'"):
        plots.inspect_arrays({"tokens": tokens})

    class Result:
        patterns, tokens, coefficients = [None, np.ones((1, 3, 3)) / 3], ["a", "b", "c"], [0.1, 0.2, 0.3]

    p, t, c = plots.inspect_arrays(Result())
    assert p[0] is None and p[1].shape == (1, 3, 3) and t == tokens and c.shape == (3,)
    with pytest.raises(AnalysisError, match="no such checkpoints folder"):
        plots.pick_runs(tmp_path / "nope")
    with pytest.raises(AnalysisError, match="no run folders"):
        plots.pick_runs(tmp_path)
    for preset in ("tiny", "cpu-small"):
        (tmp_path / preset).mkdir()
        (tmp_path / preset / "run.json").write_text(json.dumps(dict(preset=preset, arm="smear", seed=0)))
    with pytest.raises(AnalysisError, match="several presets"):
        plots.pick_runs(tmp_path)
    with pytest.raises(AnalysisError, match="no run of seed 3"):
        plots.pick_runs(tmp_path, preset="tiny", seed=3)
    assert plots.notebook_inspect(tmp_path, "x", lambda m, t: None, preset="tiny", seed=3) is None


def test_display_token():
    assert plots.display_token(" the") == "␣the"
    assert plots.display_token("\n") == "⏎"
    assert plots.display_token("") == "∅"
    assert plots.display_token("\x03") == "\\x03"  # no font has a glyph for a control character
    assert len(plots.display_token("x" * 40)) == 18
