"""The dataset run loop: resume after an interruption, torchrun sharding, and the eval/report CLI.

Tiny random checkpoints with short prompts keep the loop tests fast; one test runs every
method end to end on the real default model.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pandas as pd
import pytest
import typer
from smollm2_fixture import smollm2_dir, smollm2_gguf  # noqa: F401  (session fixtures)
from typer.testing import CliRunner

import minirun
from minirun.cli.eval import register
from minirun.errors import MinirunError
from minirun.eval.data import load_dataset
from minirun.eval.loop import evaluate, shard
from minirun.eval.results import ResultStore

METHODS = ["origin", "avg"]
SETTINGS = dict(dataset="sample-qa", num_paraphrases=2, few_shot_k=1, max_new_tokens=4, batch_size=2, progress=False)
CLI_SETTINGS = ["--data", "sample-qa", "--num-paraphrases", "2", "--few-shot-k", "1", "--max-new-tokens", "4",
                "--batch-size", "2", "--max-samples", "6", "--no-progress"]
APP_SCRIPT = """
import typer
from minirun.cli.eval import register
app = typer.Typer(pretty_exceptions_enable=False)
@app.callback()
def main() -> None: pass
register(app)
app()
"""


def _app() -> typer.Typer:
    app = typer.Typer(pretty_exceptions_enable=False)

    @app.callback()
    def main() -> None:  # a callback keeps `eval`/`report` as subcommands
        pass

    register(app)
    return app


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    """Everything but wall time, in a fixed order."""
    return df.drop(columns=["seconds"]).sort_values(["method", "id"]).reset_index(drop=True)


@pytest.fixture(scope="module")
def tiny(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen2"])


@pytest.fixture(scope="module")
def items():
    return load_dataset("sample-qa")[:6]


@pytest.fixture(scope="module")
def reference(tiny, items, tmp_path_factory) -> pd.DataFrame:
    """One uninterrupted single-process run that the other runs must reproduce."""
    return evaluate(tiny, items, METHODS, tmp_path_factory.mktemp("reference"), **SETTINGS)


def test_reference_rows(reference, items):
    assert len(reference) == len(items) * len(METHODS)
    assert not reference.duplicated(["method", "id"]).any()
    row = reference.iloc[0]
    assert row["prompts"] == items[0].prompts[:2] and row["task"] == "qa"
    assert reference["tokens"].between(1, 4).all() and (reference["seconds"] > 0).all()


def test_resume_after_interruption(tiny, items, reference, tmp_path):
    seen = []

    def stop_after_3(row: dict) -> None:
        seen.append(row)
        if len(seen) == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        evaluate(tiny, items, METHODS, tmp_path, on_row=stop_after_3, **SETTINGS)
    redone = []
    final = evaluate(tiny, items, METHODS, tmp_path, on_row=redone.append, **SETTINGS)
    assert len(redone) == len(reference) - 3  # nothing finished is redone
    pd.testing.assert_frame_equal(_canon(final), _canon(reference))
    assert not final.duplicated(["method", "id"]).any()


def test_changed_settings_are_refused(tiny, items, tmp_path):
    evaluate(tiny, items[:1], ["origin"], tmp_path, **SETTINGS)
    with pytest.raises(MinirunError, match="max_new_tokens"):
        evaluate(tiny, items[:1], ["origin"], tmp_path, **{**SETTINGS, "max_new_tokens": 5})


def test_unknown_method(tiny, items, tmp_path):
    with pytest.raises(MinirunError, match="unknown"):
        evaluate(tiny, items, ["vote"], tmp_path, **SETTINGS)


def test_shard_is_a_partition(items):
    parts = [shard(items, r, 4) for r in range(4)]
    assert sorted(i.id for p in parts for i in p) == sorted(i.id for i in items)


def test_torchrun_shards_match_one_process(checkpoint_dirs, reference, tmp_path):
    """2 gloo ranks through the CLI under torchrun write the table one process writes."""
    script = tmp_path / "app.py"
    script.write_text(APP_SCRIPT)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "eval", *CLI_SETTINGS, "--model", str(checkpoint_dirs["qwen2"]), "--output", str(out)]
    for m in METHODS:
        cmd += ["--method", m]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in out.glob("results.rank*.jsonl")) == ["results.rank0.jsonl", "results.rank1.jsonl"]
    merged = pd.read_parquet(out / "results.parquet")
    pd.testing.assert_frame_equal(_canon(merged), _canon(reference), check_dtype=False)
    assert "origin" in proc.stdout  # rank 0 printed the summary

    report = CliRunner().invoke(_app(), ["report", str(out), "--json"])
    assert report.exit_code == 0, report.output
    scores = json.loads(report.stdout)
    assert set(scores) == set(METHODS) and scores["avg"]["n"] == 6


def test_report_tables_and_errors(reference, tmp_path):
    store = ResultStore(tmp_path, {"k": 1})
    for row in reference.to_dict("records"):
        store.add(row)
    store.finalize()
    result = CliRunner().invoke(_app(), ["report", str(tmp_path), "--csv", str(tmp_path / "s.csv")])
    assert result.exit_code == 0, result.output
    assert "answer agreement" in result.stdout and (tmp_path / "s.csv").is_file()
    missing = CliRunner().invoke(_app(), ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "no results" in " ".join(missing.output.split())


def test_real_model_all_methods(smollm2_dir, tmp_path, monkeypatch):  # noqa: F811
    """Every method end to end on SmolLM2 through the CLI, then `report --json`."""
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path / "cache"))
    methods = ["origin", "per_prompt", "avg", "max", "flex", "weighted_avg", "weighted_max"]
    args = ["eval", "--data", "sample-qa", "--model", str(smollm2_dir), "--max-samples", "3", "--num-samples", "4",
            "--max-new-tokens", "12", "--output", str(tmp_path / "run"), "--no-progress",
            "--num-paraphrases", "3", "--few-shot-k", "2"]  # fewer, shorter prompts: a lean test
    for m in methods:
        args += ["--method", m]
    result = CliRunner().invoke(_app(), args)
    assert result.exit_code == 0, result.output
    table = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert len(table) == 3 * len(methods)
    origin = table[table["method"] == "origin"]
    assert origin["correct"].sum() >= 2  # "Paris", "Tokyo", ... are within a 135M model's reach
    per_prompt = table[table["method"] == "per_prompt"]
    assert per_prompt["per_prompt_accuracy"].between(0, 1).all() and per_prompt["answers"].map(len).eq(3).all()
    weighted = table[table["method"].str.startswith("weighted")]
    assert weighted["confidences"].map(lambda c: len(c) == 3 and all(0 <= x <= 1 for x in c)).all()

    report = CliRunner().invoke(_app(), ["report", str(tmp_path / "run"), "--json"])
    assert report.exit_code == 0, report.output
    scores = json.loads(report.stdout)
    assert set(scores) == set(methods) and all(s["n"] == 3 for s in scores.values())
