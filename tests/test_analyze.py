"""`smearlens analyze` on a small trained pair, and the recorder that runs during training."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from analysis.measures import probes as P
from analysis.mechanism import induction_circuit as IC
from analysis.analyze import COLUMNS, analyze, data_batches
from analysis.writeup.report_arms import canon_markdown_section
from analysis.tables import load_tables
from commands.cli import build_parser
from analysis.loading import load_checkpoint_model
from analysis.measures.recorder import HEADS_FILE, SMEAR_FILE, Recorder, make_recorder, probe_batch
from trainer import checkpoint
from trainer.checkpoint import complete_checkpoints
from trainer.config import get_preset
from trainer.errors import AnalysisError, CheckpointError, ConfigError
from trainer.train import load_run, make_run, train

STEPS, EVERY, TOKENS = 4, 2, 512
PATHS = dict(path_positions=16, path_draws=2)  # path attribution kept small: 32 rows a checkpoint


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models: a second thread costs more in synchronisation than it saves; restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_arm(root: Path, data: Path, arm: str, callbacks=(), folder="runs") -> Path:
    run = make_run("tiny", get_preset("tiny"), arm, 0, data, train_overrides=dict(steps=STEPS, val_every=0))
    train(root / folder / run.name, run, device="cpu", progress=False, callbacks=callbacks)
    return root / folder / run.name


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_data):
    """Both arms of seed 0 on the shared small dataset (conftest.py), a few steps each, recorded every
    EVERY steps; checkpoints at steps 1, 2 and 4."""
    root = tmp_path_factory.mktemp("pair")
    runs = {arm: train_arm(root, tiny_data, arm, (make_recorder(EVERY),)) for arm in ("smear", "baseline")}
    return root, runs


@pytest.fixture(scope="module")
def tables(pair):
    root, runs = pair
    out = root / "analysis"
    added = analyze([root / "runs"], out=out, tokens=TOKENS, csv=True, progress=False, **PATHS)
    return out, added


def read(out, name):
    return pd.read_parquet(out / f"{name}.parquet")


# ---- analyze --------------------------------------------------------------------------------------------


def test_analyze_writes_the_four_tables(pair, tables):
    root, runs = pair
    out, added = tables
    heads, smear, vocab, per_token = (read(out, n) for n in ("heads", "smear", "smear_vocab", "smear_tokens"))
    for name, frame in zip(COLUMNS, (heads, smear, vocab, per_token)):
        assert list(frame.columns) == COLUMNS[name] and added[name] == len(frame) > 0
        assert (out / f"{name}.csv").exists()
    # 2 runs × 3 checkpoints × 3 attention layers (layer 2 has none) × 2 heads × 8 metrics
    assert len(heads) == 2 * 3 * 3 * 2 * len(P.HEAD_METRICS)
    assert set(heads["metric"]) == set(P.HEAD_METRICS) and set(heads["layer"]) == {0, 1, 3}
    assert set(heads["step"]) == {1, 2, 4} and set(heads["arm"]) == {"smear", "baseline"}
    assert heads.groupby(["run", "step", "metric"]).size().eq(6).all()
    assert set(heads["tokens"]) == {s * 8 * 64 for s in (1, 2, 4)}  # training tokens seen
    probs = heads[heads["metric"].isin(["prev_token", "bos", "induction", "duplicate_token"])]["value"]
    assert probs.between(0, 1).all()
    # smear tables: the smear arm only; vocabulary and per-token rows for its last checkpoint
    assert set(smear["arm"]) == {"smear"} and sorted(smear["step"]) == [1, 2, 4]
    assert smear.loc[smear["step"] == 1, "lambda"].item() == 0.0  # λ starts at zero
    assert set(vocab["step"]) == {4} and len(vocab) == 512 and vocab["coefficient"].is_monotonic_decreasing
    lam = smear.loc[smear["step"] == 4, "lambda"].item()
    torch.testing.assert_close(torch.tensor(vocab["coefficient"].values), lam * torch.tensor(vocab["gate"].values))
    assert set(per_token["step"]) == {4} and (per_token["position"] >= 1).all()
    torch.testing.assert_close(torch.tensor(per_token["coefficient"].values), lam * torch.tensor(per_token["gate"].values))
    gate_of = dict(zip(vocab["token_id"], vocab["gate"]))  # the gate is a function of the current token
    assert all(abs(gate_of[t] - g) < 1e-6 for t, g in zip(per_token["token_id"][:50], per_token["gate"][:50]))
    assert per_token["coefficient"].mean() == pytest.approx(smear.loc[smear["step"] == 4, "coef_mean"].item(), rel=1e-6)


def test_mechanism_tables_for_final_checkpoints(pair, tables):
    out, added = tables
    for name in ("readout", "knockouts", "composition", "key_shares", "induction_knockouts", "head_roles"):
        frame = read(out, name)
        assert list(frame.columns) == COLUMNS[name] and added[name] == len(frame) > 0
        assert set(frame["step"]) == {4} and set(frame["arm"]) == {"smear", "baseline"}  # final checkpoints only
    readout = read(out, "readout")
    # 4 residual inputs + the final residual, 3 targets, 3 metrics, 2 runs
    assert len(readout) == 2 * 5 * 3 * 3 and set(readout["layer"]) == {0, 1, 2, 3, 4}
    wide = readout.pivot_table(index=["run", "layer", "target"], columns="metric", values="value")
    assert (wide["accuracy"] - wide["baseline"] - wide["above_baseline"]).abs().max() < 1e-12
    curr = wide.xs("curr", level="target")
    assert (curr["baseline"] == 1).all()  # token i predicts itself
    # the data decide the baseline, not the model: both arms share it
    base = wide["baseline"].unstack("run")
    assert (base.iloc[:, 0] == base.iloc[:, 1]).all()
    knock = read(out, "knockouts")
    base_knock = knock[knock["arm"] == "baseline"]
    # no smear gate: its knock-outs change nothing and cannot interact with the heads
    assert (base_knock.loc[base_knock["metric"].isin(["smear", "interaction"]), "value"] == 0).all()
    assert set(knock["k"]) == {1, 2} and knock.groupby(["run", "k", "head_ablation", "smear_ablation"]).size().eq(8).all()
    comp = read(out, "composition")
    assert (comp.loc[comp["metric"] == "n_induction_heads", "layer"] == -1).all()
    # the induction circuit: every run's knock-out conditions, the roles of every attention head (tiny: layer 2 has none)
    knock = read(out, "induction_knockouts")
    assert knock.groupby("run")["condition"].unique().map(set).eq(set(IC.CONDITIONS)).all()
    assert (knock.loc[(knock["arm"] == "baseline") & (knock["metric"] == "has_mixing"), "value"] == 0).all()
    roles = read(out, "head_roles")
    assert set(zip(roles["layer"], roles["head"])) == {(l, h) for l in (0, 1, 3) for h in (0, 1)}
    assert (read(out, "key_shares").query("metric == 'n_induction_heads'")["layer"] == -1).all()


def test_canon_table_only_for_canon_arms(pair, tables, tiny_data, tmp_path):
    # the baseline and smear runs have no canon layer: no rows for them, and nothing left to do
    out, added = tables
    assert added["canon"] == 0
    assert not (out / "canon.parquet").exists() or read(out, "canon").empty
    run = train_arm(tmp_path, tiny_data, "canon4")
    got = analyze([run], out=tmp_path / "t", metrics=["prev_token", "canon"], tokens=TOKENS, progress=False)
    canon = read(tmp_path / "t", "canon")
    assert got["canon"] == len(canon) == 4 * 3 and set(canon["step"]) == {STEPS}  # 4 offsets × 3 metrics
    assert list(canon.columns) == COLUMNS["canon"]
    ratio = canon[canon["metric"] == "input_ratio"].set_index("offset")["value"]
    assert (ratio > 0).all()  # trained from zero, every offset has learned something
    assert analyze([run], out=tmp_path / "t", metrics=["prev_token", "canon"], tokens=TOKENS,
                   progress=False)["canon"] == 0  # done: a rerun adds nothing
    section = "\n".join(canon_markdown_section(load_tables(tmp_path / "t")))
    assert "what each offset mixes in" in section and "| canon4 | i−3 | 1 |" in section


def test_heads_table_matches_the_probes(pair, tables):
    root, runs = pair
    out, _ = tables
    model, meta = load_checkpoint_model(complete_checkpoints(runs["smear"])[-1])
    batches = data_batches(meta, TOKENS, None, None)
    expected = P.data_pattern_metrics(model, [x for x, _ in batches], ["prev_token"])["prev_token"]
    heads = read(out, "heads")
    got = heads[(heads["arm"] == "smear") & (heads["step"] == 4) & (heads["metric"] == "prev_token")]
    for row in got.itertuples():
        assert row.value == pytest.approx(float(expected[row.layer, row.head]), abs=1e-6)


def test_second_run_is_a_no_op(pair, tables):
    root, _ = pair
    out, _ = tables
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    again = analyze([root / "runs"], out=out, tokens=TOKENS, csv=True, progress=False, **PATHS)
    assert again == {name: 0 for name in COLUMNS}
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_rerun_fills_in_only_what_is_missing(pair, tables, tmp_path):
    root, runs = pair
    out, _ = tables
    shutil.copytree(out, tmp_path / "a")
    heads = read(tmp_path / "a", "heads")
    heads[~((heads["arm"] == "baseline") & (heads["step"] == 2))].to_parquet(tmp_path / "a" / "heads.parquet")
    added = analyze([runs["baseline"], runs["smear"] / "step_000004"], out=tmp_path / "a", tokens=TOKENS, progress=False,
                    **PATHS)
    assert added == {**{name: 0 for name in COLUMNS}, "heads": 3 * 2 * len(P.HEAD_METRICS)}
    pd.testing.assert_frame_equal(read(tmp_path / "a", "heads").sort_values(["run", "step", "metric", "layer", "head"])
                                  .reset_index(drop=True),
                                  read(out, "heads").sort_values(["run", "step", "metric", "layer", "head"])
                                  .reset_index(drop=True))


def test_parts_merge_into_the_tables_one_folder_makes(pair, tables, tmp_path):
    """A cluster study's way (no lock across machines): each run analysed into a folder of its own, the parts
    merged into the tables afterwards, in any order: the same tables, byte for byte, as one `analyze` of both."""
    from analysis.analyze import merge_tables

    root, runs = pair
    out, _ = tables
    for arm, run in runs.items():
        analyze([run], out=tmp_path / "parts" / arm, tokens=TOKENS, progress=False, **PATHS)
    merged = tmp_path / "merged"
    assert sum(merge_tables(tmp_path / "parts" / "smear", merged, csv=True).values())
    merge_tables(tmp_path / "parts" / "baseline", merged, csv=True)
    assert merge_tables(tmp_path / "parts" / "baseline", merged, csv=True) == {name: 0 for name in COLUMNS}
    for name in COLUMNS:
        assert (merged / f"{name}.parquet").read_bytes() == (out / f"{name}.parquet").read_bytes(), name
    other = tmp_path / "other"
    analyze([runs["smear"]], out=other, tokens=TOKENS // 2, metrics=["prev_token"], progress=False, **PATHS)
    with pytest.raises(AnalysisError, match="made with --tokens 512, not 256"):
        merge_tables(other, merged)


def test_tables_have_one_row_order_whatever_wrote_them(tables, tmp_path):
    """Groups of rows in another order (runs analysed in another interleaving, an older version's writer)
    come back as `analyze` writes them; smear_tokens with every run's row for one token together."""
    from analysis.analyze import GROUP_KEYS, ROW_ORDER, Tables

    out, _ = tables
    shuffled = tmp_path / "shuffled"
    shutil.copytree(out, shuffled)
    for name in COLUMNS:
        groups = [g for _, g in read(out, name).groupby(GROUP_KEYS[name], sort=False)]
        if len(groups) > 1:
            pd.concat(groups[::-1]).to_parquet(shuffled / f"{name}.parquet", index=False)
    Tables(shuffled, csv=False).rewrite()
    for name in COLUMNS:
        pd.testing.assert_frame_equal(read(shuffled, name), read(out, name), obj=name)
    # tables in order are left as they are, bytes and all (no churn where a carried study is copied again)
    before = {name: (out / f"{name}.parquet").read_bytes() for name in COLUMNS}
    Tables(out, csv=False).rewrite()
    assert {name: (out / f"{name}.parquet").read_bytes() for name in COLUMNS} == before
    tokens = read(out, "smear_tokens")
    assert len(tokens) and tokens.equals(tokens.sort_values(ROW_ORDER["smear_tokens"], ignore_index=True))


def test_path_tables_for_the_last_checkpoints(pair, tables):
    out, _ = tables
    paths, offsets = read(out, "paths"), read(out, "offsets")
    assert list(paths.columns) == COLUMNS["paths"] and list(offsets.columns) == COLUMNS["offsets"]
    assert set(paths["step"]) == set(offsets["step"]) == {4} and set(paths["arm"]) == {"smear", "baseline"}
    n = paths[(paths["metric"] == "n") & (paths["gate"] == "all")]
    assert set(n["value"]) == {32}  # 16 positions × 2 draws, the same for both arms
    share = paths[(paths["metric"] == "share") & (paths["gate"] == "all") & (paths["offset"] == 1)]
    base = share[share["arm"] == "baseline"].set_index("path")["value"]
    assert base["smear"] == 0 and base["rest"] == pytest.approx(1, abs=1e-6)
    smear = share[share["arm"] == "smear"].set_index("path")["value"]
    # shares of smear, rest and leftover add up (by the leftover's definition, within rounding)
    assert smear[["smear", "rest", "leftover"]].sum() == pytest.approx(1, abs=1e-6)
    assert set(paths.loc[paths["arm"] == "smear", "gate"]) <= {"all", "open", "closed"}
    assert set(offsets["key"]) == {"i", "i-1", "i-2", "bos"} and set(offsets["layer"]) == {0, 1, 3}
    mass = offsets[(offsets["metric"] == "mass") & (offsets["gate"] == "all")]
    assert mass["value"].between(0, 1).all()
    assert mass.groupby(["run", "layer", "head"])["value"].sum().le(1 + 1e-6).all()
    settings = json.loads((out / "analysis.json").read_text())
    assert settings["--path-positions"] == 16 and settings["--path-draws"] == 2


def test_cli_subcommand_with_chosen_metrics(pair, tmp_path, capsys):
    root, runs = pair
    args = build_parser().parse_args(["analyze", str(runs["smear"]), "--out", str(tmp_path / "b"), "--tokens", str(TOKENS),
                              "--metrics", "prev_token,bos", "--no-progress"])
    args.func(args)
    report = json.loads(capsys.readouterr().out)
    assert report["rows_added"]["heads"] == 3 * 3 * 2 * 2
    assert set(read(tmp_path / "b", "heads")["metric"]) == {"prev_token", "bos"}
    assert read(tmp_path / "b", "smear").empty and not (tmp_path / "b" / "heads.csv").exists()


def test_final_only_metrics_are_measured_at_the_last_checkpoint_only(pair, tmp_path, capsys):
    # a study ablates only the final checkpoint, in the same process as every checkpoint's probes
    root, runs = pair
    args = build_parser().parse_args(["analyze", str(runs["baseline"]), "--out", str(tmp_path / "f"), "--tokens",
                                      str(TOKENS), "--metrics", "prev_token,ablation_zero", "--final-only",
                                      "ablation_zero", "--no-progress"])
    args.func(args)
    heads = read(tmp_path / "f", "heads")
    steps = heads.groupby("metric")["step"].unique()
    assert sorted(steps["prev_token"]) == [1, 2, 4] and list(steps["ablation_zero"]) == [STEPS]
    with pytest.raises(AnalysisError, match="unknown head metric 'paths'"):
        analyze([runs["baseline"]], out=tmp_path / "g", metrics=["paths"], final_only=["paths"], progress=False)


def test_bad_input(pair, tables, tmp_path):
    root, runs = pair
    out, _ = tables
    with pytest.raises(AnalysisError, match="unknown metric 'attention_sink'"):
        analyze([runs["smear"]], out=tmp_path / "c", metrics=["prev_token", "attention_sink"], progress=False)
    empty = tmp_path / "empty-run"
    empty.mkdir()
    shutil.copy(runs["smear"] / "run.json", empty / "run.json")
    with pytest.raises(AnalysisError, match="empty-run: run folder has no complete checkpoint"):
        analyze([empty], out=tmp_path / "c", progress=False)
    with pytest.raises(AnalysisError, match="nowhere: no such run folder or checkpoint"):
        analyze([tmp_path / "nowhere"], out=tmp_path / "c", progress=False)
    with pytest.raises(AnalysisError, match="made with --tokens 512, not 1024"):
        analyze([runs["smear"]], out=out, tokens=1024, progress=False)
    with pytest.raises(AnalysisError, match="data folder .*moved.* not found; pass --data"):
        analyze([runs["smear"]], out=tmp_path / "d", tokens=TOKENS, data=str(tmp_path / "moved"), progress=False)


@pytest.mark.parametrize("damage, message", [
    ("drop", r"model.safetensors: tensors do not match the model: missing \['blocks.0.attn.qkvo_w'\]"),
    ("reshape", r"tensor blocks.0.attn.qkvo_w has shape \(4, 64, 32\), the model expects \(4, 64, 64\)"),
    ("unsealed", r"model.safetensors: damaged: its sha256 differs from the one meta.json records; refused"),
])
def test_damaged_checkpoint_is_named(pair, tmp_path, damage, message):
    """A weights file changed behind the checkpoint's back is refused by its hash; one rewritten with its hash
    recorded again (a tool that edits checkpoints) is still checked against the model, tensor by tensor."""
    root, runs = pair
    ckpt = tmp_path / "run" / "step_000004"
    shutil.copytree(complete_checkpoints(runs["smear"])[-1], ckpt)
    tensors = load_file(str(ckpt / "model.safetensors"))
    if damage == "drop":
        del tensors["blocks.0.attn.qkvo_w"]
    else:
        tensors["blocks.0.attn.qkvo_w"] = tensors["blocks.0.attn.qkvo_w"][..., :32].contiguous()
    save_file(tensors, str(ckpt / "model.safetensors"))
    if damage != "unsealed":
        meta = json.loads((ckpt / checkpoint.META_FILE).read_text())
        meta[checkpoint.HASHES]["model.safetensors"] = checkpoint.file_sha256(ckpt / "model.safetensors")
        (ckpt / checkpoint.META_FILE).write_text(checkpoint.sealed_meta(meta))
    with pytest.raises(CheckpointError, match=message):
        load_checkpoint_model(ckpt)
    with pytest.raises(CheckpointError, match=message):
        analyze([ckpt], out=tmp_path / "out", tokens=TOKENS, progress=False)


# ---- recorder -----------------------------------------------------------------------------------------


def test_recorder_tables(pair):
    root, runs = pair
    heads = pd.read_parquet(runs["smear"] / HEADS_FILE)
    assert list(heads.columns) == COLUMNS["heads"]
    assert sorted(set(heads["step"])) == [2, 4] and set(heads["metric"]) == {"prev_token"} and len(heads) == 2 * 3 * 2
    smear = pd.read_parquet(runs["smear"] / SMEAR_FILE)
    assert list(smear.columns) == COLUMNS["smear"] and list(smear["step"]) == [2, 4]
    assert (runs["baseline"] / HEADS_FILE).exists() and not (runs["baseline"] / SMEAR_FILE).exists()
    # the last record is the streaming probe of the last checkpoint (saved right after it) on the probe batch
    model, meta = load_checkpoint_model(runs["smear"])
    run = load_run(runs["smear"])
    batch = probe_batch(run.data, run.model.bos_id, run.model.vocab_size, run.train.seq_len)
    expected = P.previous_token_scores(model, batch)
    for row in heads[heads["step"] == 4].itertuples():
        assert row.value == pytest.approx(float(expected[row.layer, row.head]), abs=1e-6)
    assert smear["lambda"].iloc[-1] == pytest.approx(float(model.smear_lambda.detach()), abs=0)


def test_recorder_does_not_change_training(pair):
    root, runs = pair
    plain = train_arm(root, Path(load_run(runs["smear"]).data), "smear", folder="unrecorded")
    for a, b in zip(complete_checkpoints(plain), complete_checkpoints(runs["smear"]), strict=True):
        wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert pd.read_csv(plain / "loss.csv")["train_loss"].tolist() == pd.read_csv(runs["smear"] / "loss.csv")["train_loss"].tolist()


def test_recorder_resume_drops_steps_trained_again(pair, tmp_path):
    root, runs = pair
    run_dir = tmp_path / "resumed"
    shutil.copytree(runs["smear"], run_dir)
    model, _ = load_checkpoint_model(run_dir / "step_000002")
    model.train()
    recorder = Recorder(every=1)
    recorder(model=model, step=3, run=load_run(run_dir), run_dir=run_dir)  # resumed from step 2: step 4 will come again
    assert sorted(set(pd.read_parquet(run_dir / HEADS_FILE)["step"])) == [2, 3]
    assert list(pd.read_parquet(run_dir / SMEAR_FILE)["step"]) == [2, 3]
    assert model.training and all(not h._forward_hooks for h in model.hook_points())


def test_recorder_survives_a_kill_mid_write(pair, tmp_path, monkeypatch):
    root, runs = pair
    run_dir = tmp_path / "killed"
    shutil.copytree(runs["smear"], run_dir)
    before = (run_dir / HEADS_FILE).read_bytes()

    def dies_half_way(self, path, **kwargs):
        Path(path).write_bytes(b"PAR1 half a table")
        raise KeyboardInterrupt

    monkeypatch.setattr(pd.DataFrame, "to_parquet", dies_half_way)
    model, _ = load_checkpoint_model(run_dir)
    with pytest.raises(KeyboardInterrupt):
        Recorder(every=1)(model=model, step=5, run=load_run(run_dir), run_dir=run_dir)
    assert (run_dir / HEADS_FILE).read_bytes() == before
    assert not list(run_dir.glob(".*.tmp"))


def test_recorder_settings():
    assert make_recorder(0) is None and make_recorder(None) is None
    assert make_recorder(7).every == 7
    with pytest.raises(ConfigError, match="every=0"):
        Recorder(every=0)


def test_probes_compute_exactly_the_schema_metrics():
    from analysis import schema

    assert P.HEAD_METRICS == schema.HEAD_METRICS


def test_key_arms_have_no_path_tables_and_the_rest_is_analysed(tiny_data, tmp_path):
    """Path attribution cannot patch positions mixed inside the keys: a key arm's run is analysed without it."""
    run = train_arm(tmp_path, tiny_data, "smeared-key-init-0.5")
    got = analyze([run], out=tmp_path / "t", metrics=["prev_token", "paths"], tokens=TOKENS, progress=False, **PATHS)
    assert got["heads"] > 0 and got["paths"] == got["offsets"] == 0
