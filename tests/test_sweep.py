"""`minirun sweep`: the TOML checked before any model loads, a kill -9 resumed without redoing
finished rows, torchrun sharding, and `minirun report` on a sweep directory.

Two tiny random checkpoints × two bundled datasets × two methods, 2 items each, 4 new tokens.
"""
from __future__ import annotations

import gc
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import weakref
from pathlib import Path

import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

import minirun
from minirun.cli import app
from minirun.engine.session import cache_size
from minirun.errors import MinirunError
from minirun.eval.data import Item, load_dataset, write_jsonl
from minirun.eval.sweep import run_sweep, survey
from minirun.eval.sweep_results import sweep_table
from minirun.eval.sweep_spec import load_sweep_file, parse_sweep

GENERATION = "[generation]\nmax_new_tokens = 4\nbatch_size = 2\n"
METHODS = """
[[methods]]
name = "origin"

[[methods]]
name = "flex"
label = "flex-restart"
positions = "restart"
"""


def _sweep_text(checkpoint_dirs, models: dict[str, str], datasets: list[str]) -> str:
    """A sweep of the tiny checkpoints (arch -> label) on bundled datasets, 2 items each."""
    text = GENERATION
    for arch, label in models.items():
        text += f'\n[[models]]\npath = "{checkpoint_dirs[arch]}"\n' + (f'label = "{label}"\n' if label != arch else "")
    for name in datasets:
        text += f'\n[[datasets]]\nname = "{name}"\nfew_shot_k = 1\nnum_prompts = 2\nmax_samples = 2\n'
    return text + METHODS


ROWS = 2 * 2 * 2 * 2  # models × datasets × methods × items
KILL_SCRIPT = """
import os, signal, sys
import minirun
from minirun.eval.sweep import run_sweep
from minirun.eval.sweep_spec import load_sweep_file
seen = []
def kill(row):
    seen.append(row)
    if len(seen) == int(sys.argv[3]):
        os.kill(os.getpid(), signal.SIGKILL)
run_sweep(load_sweep_file(sys.argv[1]), sys.argv[2], lambda m: minirun.load(m.path), progress=False, on_row=kill)
"""


def _file(tmp_path, text: str, name: str = "sweep.toml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    """Everything but wall time and its machine, missing values as None whatever the column's dtype."""
    df = df.drop(columns=["seconds", "machine"]).reset_index(drop=True).astype(object)
    return df.where(df.notna(), None)


@pytest.fixture(scope="module")
def sweep_file(checkpoint_dirs, tmp_path_factory):
    text = _sweep_text(checkpoint_dirs, {"qwen2": "qwen2", "llama3": "llama"}, ["sample-qa", "sample-fill"])
    return _file(tmp_path_factory.mktemp("sweep"), text)


@pytest.fixture(scope="module")
def reference(sweep_file, tmp_path_factory):
    """One uninterrupted sweep through the CLI: (its output directory, its combined table)."""
    out = tmp_path_factory.mktemp("reference")
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    return out, pd.read_parquet(out / "results.parquet")


def test_file_parses_with_defaults_and_labels(sweep_file, checkpoint_dirs):
    sweep = load_sweep_file(sweep_file)
    assert [m.label for m in sweep.models] == ["qwen2", "llama"]
    assert [d.label for d in sweep.datasets] == ["sample-qa", "sample-fill"]
    assert [(m.name, m.label, m.options) for m in sweep.methods] == [
        ("origin", "origin", {}), ("flex", "flex-restart", {"positions": "restart"})]
    assert sweep.models[0].device == "auto" and sweep.datasets[0].match == "lemma"
    assert sweep.generation.max_new_tokens == 4 and sweep.generation.share_prefix


def test_example_file_parses():
    """docs/sweep.toml, the README's example, stays a valid sweep."""
    sweep = load_sweep_file(Path(__file__).resolve().parent.parent / "docs" / "sweep.toml")
    assert [m.label for m in sweep.models] == ["smollm2", "qwen2.5-0.5b"]
    assert [d.label for d in sweep.datasets] == ["myriadlama", "myriadlama-para", "sample-choice"]
    assert not sweep.datasets[1].original and sweep.datasets[2].choice_format == "letters"
    assert "flex-restart" in [m.label for m in sweep.methods]


BASE = {"models": [{"path": "owner/model"}], "datasets": [{"name": "sample-qa"}], "methods": [{"name": "origin"}]}


@pytest.mark.parametrize("change, message", [
    ({"model": [{"path": "x/y"}]}, "unknown key 'model' at the top level"),
    ({"models": [{"path": "owner/model", "dtyp": "float32"}]}, "models #1: unknown key 'dtyp'; use path, label"),
    ({"models": [{"dtype": "float32"}]}, "models #1: missing key 'path'"),
    ({"models": [{"path": "no/such/dir"}]}, "path: no checkpoint directory there"),
    ({"models": [{"path": "owner/model", "dtype": "float8"}]}, "dtype: unsupported 'float8'"),
    ({"models": [{"path": "owner/model", "device": "mps"}]}, "device: device 'mps' is not supported: minirun runs on cpu or cuda"),
    ({"models": {"path": "owner/model"}}, "models must be an array of tables, one per entry"),
    ({"models": [{"path": "owner/model", "label": "results.csv"}]}, "label: 'results.csv' is a file the sweep writes"),
    ({"datasets": [{"name": "trivia"}]}, "datasets #1 (trivia) name: unknown dataset"),
    ({"datasets": [{"name": "sample-qa", "num_prompts": "5"}]}, "num_prompts: expected int, got '5'"),
    ({"datasets": [{"name": "sample-qa", "match": "fuzzy"}]}, "match: unknown rule 'fuzzy'"),
    ({"datasets": [{"name": "sample-choice", "choice_format": "abc"}]}, "choice_format: unknown format 'abc'"),
    ({"datasets": [{"name": "truthfulqa_mc1", "choice_format": "letters"}]},
     "datasets #1 (truthfulqa_mc1) choice_format: truthfulqa_mc1 is asked cloze only, the harness's own form"),
    ({"datasets": [{"name": "sciq", "choice_format": "letters"}]},
     "datasets #1 (sciq) choice_format: sciq is asked cloze only, the harness's own form: its rows put a right option "
     "last in every question, so lettered, D would be right every time"),
    ({"datasets": [{"name": "boolq", "choice_format": "letters"}]},
     "datasets #1 (boolq) choice_format: boolq is asked cloze only, the harness's own form: its options are the "
     "answers no and yes themselves, which letters would only rename"),
    ({"datasets": [{"name": "sample-qa", "subset": "astronomy"}]}, "subset: only mmlu and local MMLU files have subsets"),
    ({"datasets": [{"name": "sample-qa", "few_shot_k": -1}]}, "few_shot_k: -1 is below 0"),
    ({"datasets": [{"name": "sample-qa", "skip_bad": True}]}, "skip_bad: only a plain item file's bad records"),
    ({"datasets": [{"name": "sample-qa", "sample_seed": 0}]},
     "datasets #1 (sample-qa) sample_seed picks which max_samples items run, and there is no max_samples"),
    ({"datasets": [{"name": "sample-qa", "max_samples": 3, "sample_seed": -1}]}, "sample_seed: -1 is below 0"),
    ({"datasets": [{"name": "sample-qa", "benchmark": "mmlu"}]}, "benchmark: 'mmlu' cannot be asked of it; drop the key"),
    ({"methods": [{"name": "origin"}, {"name": "majority"}]}, "methods #2 name: unknown method 'majority'"),
    ({"methods": [{"name": "flex", "positon": "restart"}]}, "(flex) positon: unknown key; use name, label, positions"),
    ({"methods": [{"name": "flex", "positions": "left"}]}, "(flex): unknown position scheme 'left'"),
    ({"methods": [{"name": "flex", "max_new_tokens": 8}]}, "max_new_tokens: set it in the generation table"),
    ({"methods": [{"name": "avg", "positions": "restart"}]}, "(avg): --positions only applies to flex, not to avg"),
    ({"methods": [{"name": "origin", "num_samples": 8}]}, "(origin): --num-samples only applies to weighted_avg"),
    ({"methods": [{"name": "flex"}, {"name": "flex", "positions": "restart"}]}, "label 'flex' is also that of #1"),
    ({"methods": [{"name": "flex"}, {"name": "flex", "label": "f2", "positions": "right"}]},
     "methods #2 (f2): the settings of #1 under another label"),
    ({"methods": [{"name": "avg", "label": "origin"}]}, "#1 (avg) label: 'origin' is how the "),
    ({"methods": [{"name": "origin", "label": "baseline"}]}, "no origin entry is labelled 'origin' (baseline)"),
    ({"methods": [{"name": "per_prompt", "label": "pp"}]}, "no per_prompt entry is labelled 'per_prompt' (pp)"),
    ({"datasets": [{"name": "sample-qa"}, {"name": "sample-qa", "label": "qa"}]},
     "datasets #2 (qa): the settings of #1 under another label"),
    ({"models": [{"path": "owner/model"}, {"path": "owner/model", "label": "again"}]},
     "models #2 (again): the settings of #1 under another label"),
    ({"models": [{"path": "owner/model"}, {"path": "owner/model", "label": "again", "batch_size": 4}]},
     "models #2 (again): the settings of #1 under another label"),
    ({"models": [{"path": "owner/model", "batch_size": 0}]}, "models #1 (owner/model) batch_size: 0 is below 1"),
    ({"datasets": [{"name": "sample-qa", "choice_format": "letters"}]},
     "datasets #1 (sample-qa) choice_format: sample-qa's items are not multiple choice, which a format lays out"),
    ({"datasets": [{"name": "sample-qa", "num_prompts": [2, 3], "label": 7}]},
     "datasets #1 label: expected str, got 7"),
    ({"generation": {"max_new_tokens": 4.5}}, "generation max_new_tokens: expected int, got 4.5"),
    ({"generation": {"batch_size": 0}}, "generation batch_size: 0 is below 1"),
    ({"generation": {"temperature": 0.5}}, "generation: unknown key 'temperature'"),
    ({"generation": {"template_date": "26 Jul 2024"}},
     "generation template_date: template date '26 Jul 2024' is not a day as YYYY-MM-DD"),
])
def test_bad_sweep_is_one_line_naming_the_key(change, message):
    with pytest.raises(MinirunError) as e:
        parse_sweep({**BASE, **change})
    assert message in str(e.value) and "\n" not in str(e.value)


def test_one_checkpoint_spelt_two_ways_is_the_same_work(checkpoint_dirs, tmp_path, monkeypatch):
    """A folder given with and without its trailing slash, or relative and absolute, and a hub id beside the folder it
    is pulled into, under two labels ran the same work twice."""
    folder = checkpoint_dirs["llama3"]
    monkeypatch.chdir(folder.parent)
    pulled = shutil.copytree(folder, tmp_path / "models" / "owner" / "model")
    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path / "models"))
    for first, other in ((str(folder), f"{folder}/"), (str(folder), folder.name), ("owner/model", str(pulled))):
        with pytest.raises(MinirunError, match="models #2 .b.: the settings of #1 under another label"):
            parse_sweep({**BASE, "models": [{"path": first, "label": "a"}, {"path": other, "label": "b"}]})


def test_a_model_pinned_to_a_revision_is_labelled_by_it(tmp_path, checkpoint_dirs):
    """`path = "owner/model@rev"` pulls that revision (into `owner/model@rev`, a slash in it as `--`); its default
    label names it, as two revisions of one model may sit side by side in a sweep."""
    pinned = [{"path": "owner/model@v1.0"}, {"path": "owner/model@refs/pr/3"}, {"path": "owner/model"}]
    assert [m.label for m in parse_sweep({**BASE, "models": pinned}).models] == [
        "model-v1.0", "model-refs--pr--3", "model"]
    pulled = shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "models" / "owner" / "model@v1.0")  # given as a path
    assert parse_sweep({**BASE, "models": [{"path": str(pulled)}]}).models[0].label == "model-v1.0"
    with pytest.raises(MinirunError, match=r"models #1 \(owner/model@\) path: no checkpoint directory there; give a "
                                           r"directory or a hub id \(owner/name, or owner/name@revision\)"):
        parse_sweep({**BASE, "models": [{"path": "owner/model@"}]})


def test_a_local_mmlu_file_takes_a_subset(tmp_path):
    """`subset` picks a subject of a local MMLU copy as eval's --subset does; other files refuse it when read."""
    mmlu, plain = tmp_path / "mmlu.jsonl", tmp_path / "plain.jsonl"
    mmlu.write_text('{"question": "2+2?", "subject": "math", "choices": ["3", "4"], "answer": 1}\n'
                    '{"question": "Capital of Peru?", "subject": "geo", "choices": ["Lima", "Quito"], "answer": 0}\n')
    write_jsonl(load_dataset("sample-qa")[:1], plain)
    sweep = parse_sweep({**BASE, "datasets": [{"name": str(mmlu), "subset": "geo"}, {"name": str(plain), "subset": "x"}]})
    assert [item.relation for item in load_dataset(sweep.datasets[0].name, subset=sweep.datasets[0].subset)] == ["geo"]
    with pytest.raises(MinirunError, match="reads as plain data, which has no subsets"):
        load_dataset(sweep.datasets[1].name, subset=sweep.datasets[1].subset)


def test_batch_size_defaults_to_evals_own():
    assert parse_sweep(BASE).generation.batch_size is None
    assert parse_sweep({**BASE, "generation": {"batch_size": 16}}).generation.batch_size == 16


def test_method_options_are_the_eval_loops_ensemble_options(monkeypatch):
    """Any EnsembleOptions field the eval loop takes passes through, typed by the dataclass."""
    def loop(llm, items, methods, output_dir, *, positions="right", fusion_alpha=1.0, max_new_tokens=24):
        pass

    monkeypatch.setattr("minirun.eval.sweep_spec.prepare", loop)
    sweep = parse_sweep({**BASE, "methods": [{"name": "hidden_avg", "label": "h", "fusion_alpha": 1}]})
    alpha = sweep.methods[0].options["fusion_alpha"]
    assert sweep.methods[0].options == {"fusion_alpha": 1.0} and isinstance(alpha, float)
    with pytest.raises(MinirunError, match="fusion_alpha: expected float, got 'high'"):
        parse_sweep({**BASE, "methods": [{"name": "hidden_avg", "fusion_alpha": "high"}]})
    refused = r"\(flex\) flex_bias: the eval loop does not take it; use name, label, positions, fusion_alpha$"
    with pytest.raises(MinirunError, match=refused):
        parse_sweep({**BASE, "methods": [{"name": "flex", "flex_bias": 0.5}]})


def test_bad_file_fails_before_any_model_loads(sweep_file, tmp_path, monkeypatch):
    loads = []
    monkeypatch.setattr("minirun.cli.sweep.load_llm", lambda *a: loads.append(a))
    bad = _file(tmp_path, sweep_file.read_text() + '\n[[methods]]\nname = "flex"\nbias = 2\n')
    result = CliRunner().invoke(app, ["sweep", str(bad), "--output", str(tmp_path / "out")])
    assert result.exit_code == 1 and loads == [] and not (tmp_path / "out").exists()
    line = " ".join(result.stderr.split())
    assert "methods #3 (flex) bias: unknown key" in line and str(bad) in line
    syntax = CliRunner().invoke(app, ["sweep", str(_file(tmp_path, "[[models]\n", "broken.toml"))])
    assert syntax.exit_code == 1 and "invalid TOML" in syntax.stderr and loads == []


def test_a_fusion_layer_past_a_models_depth_fails_while_parsing(checkpoint_dirs):
    model = {"path": str(checkpoint_dirs["llama3"]), "label": "tiny"}
    depth = minirun.load(checkpoint_dirs["llama3"]).config.num_layers
    ok = {**BASE, "models": [model], "methods": [{"name": "hidden_avg", "fusion_layer": depth}]}
    assert parse_sweep(ok).methods[0].options == {"fusion_layer": depth}
    with pytest.raises(MinirunError, match=f"methods #1 \\(hidden_avg\\) fusion_layer, model tiny: --fusion-layer "
                                           f"{depth + 1} is outside the model's blocks 1..{depth}"):
        parse_sweep({**ok, "methods": [{"name": "hidden_avg", "fusion_layer": depth + 1}]})


def test_a_fusion_layer_is_checked_against_a_pulled_model_and_below_one_against_any(checkpoint_dirs, tmp_path,
                                                                                     monkeypatch):
    """A hub id (or the default model's name) already pulled is read from its folder as a path is; block 0 is no
    block of any model, pulled or not."""
    from minirun.checkpoints.hub import pull_target

    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path / "models"))
    shutil.copytree(checkpoint_dirs["llama3"], pull_target("owner/tiny"))
    depth = minirun.load(checkpoint_dirs["llama3"]).config.num_layers
    pulled = {**BASE, "models": [{"path": "owner/tiny"}], "methods": [{"name": "hidden_avg", "fusion_layer": depth + 1}]}
    with pytest.raises(MinirunError, match="methods #1 \\(hidden_avg\\) fusion_layer, model tiny: .* outside"):
        parse_sweep(pulled)
    with pytest.raises(MinirunError, match="methods #1 \\(hidden_avg\\) fusion_layer: 0 is no block"):
        parse_sweep({**BASE, "methods": [{"name": "hidden_avg", "fusion_layer": 0}]})  # owner/model: not pulled


def test_sweep_and_eval_never_share_a_directory(sweep_file, tmp_path, monkeypatch):
    """Each writes a results.parquet at its top: one would silently replace the other's."""
    from minirun.eval.results import ResultStore

    loads = []
    monkeypatch.setattr("minirun.cli.sweep.load_llm", lambda *a: loads.append(a))
    run = tmp_path / "eval-run"
    ResultStore(run, {"model": "m"}).finalize()
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(run)])
    assert result.exit_code == 1 and loads == [] and "holds an `eval` run" in result.stderr
    swept = tmp_path / "swept"
    swept.mkdir()
    (swept / "sweep.json").write_text('{"cells": []}')
    with pytest.raises(MinirunError, match="holds a `minirun sweep`: give this run another output directory"):
        ResultStore(swept, {"model": "m"})


def test_reference_table(reference):
    out, table = reference
    assert len(table) == ROWS and list(table.columns[:3]) == ["model", "dataset", "label"]
    assert list(dict.fromkeys(zip(table["model"], table["dataset"], table["label"]))) == [
        (m, d, x) for m in ("qwen2", "llama") for d in ("sample-qa", "sample-fill") for x in ("origin", "flex-restart")]
    assert set(table.loc[table["label"] == "flex-restart", "method"]) == {"flex"}
    assert (out / "llama" / "sample-fill" / "flex-restart" / "results.parquet").is_file()
    csv = pd.read_csv(out / "results.csv")
    assert list(csv["id"]) == list(table["id"])


def test_resume_after_kill_redoes_nothing(sweep_file, reference, tmp_path, caplog):
    """kill -9 in the second model's first run; the restart loads only that model, runs only
    the rows not journalled, and writes the uninterrupted table."""
    script = _file(tmp_path, KILL_SCRIPT, "kill.py")
    out = tmp_path / "run"
    killed_at = ROWS // 2 + 1
    proc = subprocess.run([sys.executable, str(script), str(sweep_file), str(out), str(killed_at)],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert not (out / "results.parquet").exists()

    sweep, loads, redone = load_sweep_file(sweep_file), [], []

    def load(model):
        loads.append(model.label)
        return minirun.load(model.path)

    table = run_sweep(sweep, out, load, progress=False, on_row=redone.append)
    kept = killed_at + 1  # the killed row's batch of 2 items was journalled whole, before its first row's callback
    assert loads == ["llama"] and len(redone) == ROWS - kept
    pd.testing.assert_frame_equal(_canon(table), _canon(reference[1]))
    pd.testing.assert_frame_equal(_canon(pd.read_parquet(out / "results.parquet")), _canon(table))

    written = (out / "sweep.json").stat().st_mtime_ns
    with caplog.at_level("INFO"):
        again = run_sweep(sweep, out, load, progress=False, on_row=redone.append)
    assert loads == ["llama"] and len(redone) == ROWS - kept  # all done: no model loaded, and said so
    assert (out / "sweep.json").stat().st_mtime_ns == written  # an index that already says so is not written again
    assert f"every one of the 8 runs is finished: nothing ran (its tables below, as `minirun report {out}`" in \
        caplog.text
    pd.testing.assert_frame_equal(again, table)


def test_a_deleted_row_is_redone_and_a_torn_marker_is_no_marker(sweep_file, reference, tmp_path):
    """A corrupt-line error says to delete the line and rerun: done.json must not keep that row from being redone,
    and the report says the run is short until then. A torn done.json resumes its run from the journals."""
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    journal = out / "llama" / "sample-qa" / "origin" / "results.rank0.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[1:]))
    (out / "qwen2" / "sample-fill" / "flex-restart" / "done.json").write_text("{")
    shown = CliRunner().invoke(app, ["report", str(out)])
    assert shown.exit_code == 0, shown.output
    assert "1 of the sweep's runs have not finished (llama/sample-qa/origin)" in " ".join(shown.output.split())
    as_json = CliRunner().invoke(app, ["report", str(out), "--json"])
    assert json.loads(as_json.stdout) and "1 of the sweep's runs have not finished" in " ".join(as_json.stderr.split())
    redone = []
    table = run_sweep(load_sweep_file(sweep_file), out, lambda m: minirun.load(m.path), progress=False,
                      on_row=redone.append)
    assert [(row["method"], row["id"]) for row in redone] == [("origin", reference[1]["id"].iloc[0])]
    pd.testing.assert_frame_equal(_canon(table), _canon(reference[1]))
    assert json.loads((out / "qwen2" / "sample-fill" / "flex-restart" / "done.json").read_text())["key"]
    assert "have not finished" not in CliRunner().invoke(app, ["report", str(out)]).output


def test_changed_option_is_refused_not_mixed(sweep_file, reference, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(reference[0], out)
    changed = _file(tmp_path, sweep_file.read_text().replace('positions = "restart"', 'positions = "sequential"'))
    result = CliRunner().invoke(app, ["sweep", str(changed), "--output", str(out), "--no-progress"])
    assert result.exit_code == 1
    assert "positions: 'restart' -> 'sequential'" in " ".join(result.stderr.split())


def test_torchrun_shards_match_one_process(checkpoint_dirs, reference, tmp_path):
    """2 gloo ranks through the CLI: one process group for several runs, the same rows as one process."""
    one = _file(tmp_path, _sweep_text(checkpoint_dirs, {"qwen2": "qwen2"}, ["sample-qa"]))
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "minirun.cli",
           "sweep", str(one), "--output", str(out), "--no-progress"]
    proc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stderr.count("sweep qwen2 · sample-qa: origin, flex-restart (2 of 2 runs)") == 1  # rank 0's alone
    assert {p.name for p in (out / "qwen2" / "sample-qa" / "origin").glob("results.rank*.jsonl")} == {
        "results.rank0.jsonl", "results.rank1.jsonl"}
    table = pd.read_parquet(out / "results.parquet")
    ref = reference[1]
    expected = ref[(ref["model"] == "qwen2") & (ref["dataset"] == "sample-qa")]
    pd.testing.assert_frame_equal(_canon(table), _canon(expected))


def test_a_model_folder_that_holds_no_checkpoint_is_refused_with_the_file(checkpoint_dirs, tmp_path):
    """A folder without weights (a pull cut short, a tokenizer copied alone) passed every check: the sweep ran the
    other models' runs first and stopped at it hours later."""
    partial = tmp_path / "partial"
    partial.mkdir()
    (partial / "config.json").write_text((Path(checkpoint_dirs["qwen2"]) / "config.json").read_text())
    for folder in (partial, tmp_path / "empty"):
        folder.mkdir(exist_ok=True)
        text = f"""
            [[models]]
            path = "{checkpoint_dirs["llama3"]}"
            [[models]]
            path = "{folder}"
            [[datasets]]
            name = "sample-qa"
            [[methods]]
            name = "origin"
        """
        with pytest.raises(MinirunError, match=rf"models #2 \({folder}\) path: the folder holds no checkpoint \(a "
                                               "config.json and \\*.safetensors weights\\); point it at a checkpoint"):
            load_sweep_file(_file(tmp_path, text))


def test_a_prompt_past_a_models_context_names_the_sweep_run(checkpoint_dirs, tmp_path):
    """Found only as that model runs (a model of a shorter context than the others): named by model and dataset,
    not as an eval item alone."""
    text = f"""
        [[models]]
        path = "{checkpoint_dirs["llama3"]}"
        label = "short"
        [[datasets]]
        name = "sample-qa"
        max_samples = 1
        [[methods]]
        name = "origin"
        [generation]
        max_new_tokens = 600
    """
    with pytest.raises(MinirunError, match=r"^sweep short · sample-qa: item 'qa-001' .* beyond the model's context of "
                                           "512"):
        run_sweep(load_sweep_file(_file(tmp_path, text)), tmp_path / "out", lambda m: minirun.load(m.path),
                  progress=False)


def test_a_dataset_with_too_few_examples_for_its_few_shot_k_is_named_by_the_dry_run(checkpoint_dirs, tmp_path):
    """The dry run said "lower k (--few-shot-k)", naming neither the entry nor the file's key (the sweep names the run
    as it prepares it)."""
    text = f"""
        [[models]]
        path = "{checkpoint_dirs["llama3"]}"
        [[datasets]]
        name = "sample-qa"
        label = "qa-many-shots"
        few_shot_k = 1000
        [[methods]]
        name = "origin"
    """
    sweep = load_sweep_file(_file(tmp_path, text))
    message = r"^dataset qa-many-shots: asked for k=1000 few-shot examples but \d+ are available: .* few_shot_k\)$"
    with pytest.raises(MinirunError, match=message):
        survey(sweep, tmp_path / "out")  # the dry run


def test_run_folders_of_entries_removed_or_relabelled_are_named_not_dropped_silently(sweep_file, reference, tmp_path):
    """A relabelled entry runs afresh and a removed one's runs leave the tables: the dry run and report say which
    folders that leaves out, and a `--models` part names none of the other models' runs."""
    out = shutil.copytree(reference[0], tmp_path / "run")
    relabelled = _file(tmp_path, sweep_file.read_text().replace('"flex-restart"', '"flex-r"'))
    shown = CliRunner().invoke(app, ["sweep", str(relabelled), "--output", str(out), "--dry-run"]).output
    assert "4 run folders under" in " ".join(shown.split()) and "llama/sample-fill/flex-restart" in shown
    part = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(out), "--dry-run", "--models", "llama"])
    assert "belong" not in part.output and part.exit_code == 0  # qwen2's runs are the file's, only not asked now
    index = json.loads((out / "sweep.json").read_text())  # as a sweep of the file without flex-restart leaves it
    index["cells"] = [cell for cell in index["cells"] if cell["label"] != "flex-restart"]
    (out / "sweep.json").write_text(json.dumps(index))
    report = CliRunner().invoke(app, ["report", str(out)])
    assert report.exit_code == 0 and "4 run folders under" in " ".join(report.output.split())
    assert "flex-restart" not in report.output.split("run folders")[0]  # no table row of them


def _files(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): f.stat().st_mtime_ns for f in folder.rglob("*")} if folder.exists() else {}


def test_a_dry_run_names_each_models_weights_and_whether_they_fit_here(checkpoint_dirs, tmp_path, monkeypatch):
    """Before a sweep of hours: what each model's weights take, in the dtype and on the device it would load them,
    and where that device is on this machine, whether they fit there now (a GPU node's plan made on a login node
    has no GPU to ask)."""
    from minirun.checkpoints import loader

    path = checkpoint_dirs["qwen2"]
    needed = loader.weights_size(path, "float32", "cpu")[0]
    file = _file(tmp_path, f'[[models]]\npath = "{path}"\ndtype = "float32"\ndevice = "cpu"\n[[models]]\n'
                           f'path = "{path}"\nlabel = "gpu"\ndevice = "cuda"\ndtype = "bfloat16"\n'
                           '[[datasets]]\nname = "sample-qa"\n[[methods]]\nname = "origin"\n')

    def plan(free: int) -> list[str]:
        monkeypatch.setattr(loader, "available_memory", lambda device: (free, 10**12))
        result = CliRunner().invoke(app, ["sweep", str(file), "--output", str(tmp_path / "out"), "--dry-run"],
                                    env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        return [line for line in result.stdout.splitlines() if line.startswith("model ")]

    gb = f"{needed / 1e9:.2f} GB"
    config = loader.load_config(path)
    per_token = 2 * config.num_layers * config.num_kv_heads * config.head_dim * 4  # keys and values, float32
    kv = f"keys and values: {per_token / 1e3:,.0f} KB a token in a row"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a plan made on a login node: said, not approved
    rows = "rows of 512 slots (a row of up to 384 tokens: few-shot head, prompt and answer; eval's batches run up to " \
        "256 rows, a model's batch_size fewer)"
    assert plan(needed) == [f"model qwen2: loads {path}, its weights: {gb} in float32 on cpu ({gb} free here); {kv}, "
                            f"so the 0.00 GB left hold about 0 {rows}: no batch runs, give it a smaller dtype or a "
                            "device with more memory",
                            f"model gpu: loads {path}, its weights: {needed / 2e9:.2f} GB in bfloat16 on cuda; "
                            f"keys and values: {per_token / 2e3:,.0f} KB a token in a row; cuda is not on this "
                            'machine: run the sweep where it is, or device = "cpu"']
    assert plan(needed - 1)[0].endswith(f"float32 on cpu ({(needed - 1) / 1e9:.2f} GB free here: it does not fit); "
                                        f"{kv}")
    room = plan(needed + 3 * 512 * per_token + 1)[0]  # the memory left beside the weights, in rows the engine makes
    assert room.endswith(f"{kv}, so the {3 * 512 * per_token / 1e9:.2f} GB left hold about 3 {rows}")
    assert cache_size(384) == 512  # the engine's slots for a row of 384 tokens: chunk padding, whole mask blocks


def test_show_prompts_prints_each_models_datasets_prompts_as_eval_does_and_writes_nothing(checkpoint_dirs, tmp_path):
    """`sweep --show-prompts N`: per model and dataset, the blocks `eval --show-prompts` prints for the same settings
    (the dataset's methods together); models load, nothing runs or is written."""
    file = _file(tmp_path, _sweep_text(checkpoint_dirs, {"qwen2": "qwen2", "llama3": "llama"},
                                       ["sample-qa", "sample-choice"]))
    out = tmp_path / "out"
    shown = CliRunner().invoke(app, ["sweep", str(file), "--output", str(out), "--show-prompts", "1"])
    assert shown.exit_code == 0, shown.output
    sections = shown.stdout.split("##### ")[1:]
    assert [s.split("\n")[0] for s in sections] == ["qwen2 · sample-qa", "qwen2 · sample-choice",
                                                    "llama · sample-qa", "llama · sample-choice"]
    assert not out.exists() and "nothing was run or written" in shown.stderr
    alone = CliRunner().invoke(app, ["eval", "--model", str(checkpoint_dirs["llama3"]), "--data", "sample-choice",
                                     "--few-shot-k", "1", "--num-prompts", "2", "-m", "origin", "-m", "flex",
                                     "--show-prompts", "1", "--output", str(out)])
    assert alone.exit_code == 0, alone.output
    assert sections[3].split("\n", 2)[2].strip() == alone.stdout.strip()  # the very blocks eval shows
    both = CliRunner().invoke(app, ["sweep", str(file), "--output", str(out), "--show-prompts", "1", "--dry-run"])
    assert both.exit_code == 1 and "give one of them" in both.output


def test_a_dry_run_says_what_a_sweep_would_run_and_writes_nothing(sweep_file, checkpoint_dirs, reference, tmp_path,
                                                                  monkeypatch):
    """`sweep --dry-run`: each run's items answered and to do, the models it would load (or pull first), and
    nothing written, before a sweep of hours is started."""
    def plan(file: Path, out: Path) -> str:
        before = _files(out)
        result = CliRunner().invoke(app, ["sweep", str(file), "--output", str(out), "--dry-run"],
                                    env={"COLUMNS": "250"})
        assert result.exit_code == 0, result.output
        assert _files(out) == before  # nothing written, not even sweep.json
        return result.stdout

    fresh = plan(sweep_file, tmp_path / "fresh")
    assert fresh.count("run 2 items") == 8 and f"model qwen2: loads {checkpoint_dirs['qwen2']}" in fresh
    assert "8 of 8 runs have work; nothing was written" in fresh
    out = shutil.copytree(reference[0], tmp_path / "run")
    done = plan(sweep_file, out)
    assert done.count("nothing (finished)") == 8 and ": loads" not in done and "the sweep is finished" in done
    journal = out / "llama" / "sample-fill" / "origin" / "results.rank0.jsonl"
    journal.write_text(journal.read_text().splitlines(keepends=True)[0])  # a row deleted to redo it
    changed = _file(tmp_path, sweep_file.read_text().replace('positions = "restart"', 'positions = "sequential"'))
    shown = plan(changed, out)
    rows = {tuple(line.split("│")[1:4]): line.split("│")[4:7] for line in shown.splitlines() if line.count("│") == 7}
    cells = {tuple(part.strip() for part in key): [part.strip() for part in value] for key, value in rows.items()}
    assert cells["llama", "sample-fill", "origin"] == ["2", "1", "run 1 item (resumed)"]
    # flex-restart's 4 runs: their rows were made with positions "restart", which the sweep would refuse to mix
    assert shown.count("refused: its rows were made otherwise (flex's positions: 'restart' -> 'sequential')") == 4
    assert "4 runs would stop the sweep before any runs: do as each says (restore the file's settings" in shown
    longer = plan(_file(tmp_path, sweep_file.read_text().replace("max_new_tokens = 4", "max_new_tokens = 5"),
                        "longer.toml"), out)
    assert longer.count("refused: its rows were made otherwise (max_new_tokens: 4 -> 5)") == 8
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "longer.toml"), "--output", str(out), "--no-progress"])
    assert result.exit_code == 1 and "holds rows made otherwise (max_new_tokens: 4 -> 5)" in result.output
    index = (out / "sweep.json").read_bytes()  # a refused sweep leaves it: report still finds flex-restart's runs
    relabelled = _file(tmp_path, (tmp_path / "longer.toml").read_text().replace('"flex-restart"', '"flex-r"'), "r.toml")
    result = CliRunner().invoke(app, ["sweep", str(relabelled), "--output", str(out), "--no-progress"])
    assert result.exit_code == 1 and (out / "sweep.json").read_bytes() == index
    shrunk = "it is a run of 2 items and this run asks 1 of them"
    for was, now, said in [("few_shot_k = 1", "few_shot_k = 3", "few_shot_k: 1 -> 3"),
                           ("max_samples = 2", "max_samples = 1", shrunk)]:
        edited = _file(tmp_path, sweep_file.read_text().replace(was, now), "edited.toml")
        assert plan(edited, out).count(f"refused: its rows were made otherwise ({said}") == 8  # no "run again"
        result = CliRunner().invoke(app, ["sweep", str(edited), "--output", str(out), "--no-progress"])
        assert result.exit_code == 1 and f"holds rows made otherwise ({said}" in result.output  # as the plan says
    # a pilot grown (max_samples 2 -> 3): every run resumes over the items added, its rows kept
    grown = _file(tmp_path, sweep_file.read_text().replace("max_samples = 2", "max_samples = 3"), "grown.toml")
    assert plan(grown, out).count("run 1 item (resumed: it finished over fewer items, all among these)") == 7
    both = _file(tmp_path, grown.read_text().replace('positions = "restart"', 'positions = "sequential"'), "both.toml")
    result = CliRunner().invoke(app, ["sweep", str(both), "--output", str(out), "--no-progress"])
    assert result.exit_code == 1 and "flex's positions" in result.output  # refused before any run: and the runs it
    assert all(len(json.loads(p.read_text())["item_ids"]) == 2 for p in out.rglob("run.json"))  # checked kept theirs
    kept = {path: path.read_text() for path in out.rglob("results.rank0.jsonl")}
    result = CliRunner().invoke(app, ["sweep", str(grown), "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    for path, before in kept.items():
        lines = path.read_text().splitlines(keepends=True)
        assert "".join(lines).startswith(before) and len(lines) == 3
    assert plan(grown, out).count("nothing (finished)") == 8
    # a run grown further and stopped before its last row: run.json lists the larger run, done.json holds the smaller
    # one's key, its rows answer the smaller one's items: it resumes (not "run again"), and is not finished at 3
    cell = out / "qwen2" / "sample-qa" / "origin"
    marker = (cell / "done.json").read_text()
    four = _file(tmp_path, sweep_file.read_text().replace("max_samples = 2", "max_samples = 4"), "four.toml")
    result = CliRunner().invoke(app, ["sweep", str(four), "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    (cell / "done.json").write_text(marker)
    journal = cell / "results.rank0.jsonl"
    journal.write_text("".join(journal.read_text().splitlines(keepends=True)[:3]))
    resumed = plan(four, out)
    assert resumed.count("nothing (finished)") == 7 and resumed.count("run 1 item (resumed)") == 1
    stopped = plan(grown, out)
    assert "nothing (finished)" not in stopped and stopped.count(
        "refused: its rows were made otherwise (it is a run of 4 items and this run asks 3 of them") == 8
    assert "model qwen2: loads" in shown and "model llama: loads" in shown and "5 of 8 runs have work" in shown
    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path / "models"))
    hub_file = _file(tmp_path, "[[models]]\npath = \"owner/model@v1\"\n[[datasets]]\nname = \"sample-qa\"\n"
                               "[[methods]]\nname = \"origin\"\n", "hub.toml")
    pulled = plan(hub_file, tmp_path / "hub")
    assert f"model model-v1: pulls owner/model@v1 into {tmp_path / 'models' / 'owner' / 'model@v1'}, then loads" \
        in pulled and not (tmp_path / "models").exists()
    (tmp_path / "afile").write_text("")  # an output no sweep could write: refused by the plan as by the run
    refused = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(tmp_path / "afile"), "--dry-run"])
    assert refused.exit_code == 1 and "afile is a file, not a directory: give --output a directory" in refused.output


@pytest.mark.parametrize("edit, said", [
    (('label = "llama"\n', 'label = "llama"\ndtype = "bfloat16"\n'), "dtype: 'float32' -> 'bfloat16'"),
    (('positions = "restart"\n', 'positions = "restart"\nflex_bias = "inv_n"\n'),
     "flex's flex_bias: the default -> 'inv_n'"),
    (("batch_size = 2\n", "batch_size = 2\nchat = false\n"), "chat: None -> False")])
def test_a_dry_run_refuses_what_the_sweep_refuses(sweep_file, reference, tmp_path, edit, said):
    """What the model decides of a run's key (its dtype, the chat its template makes of the file's), and flex's bias,
    changed under finished runs: the dry run names the refusal the sweep stops on, not "run again"."""
    out = shutil.copytree(reference[0], tmp_path / "run")
    changed = _file(tmp_path, sweep_file.read_text().replace(*edit), "changed.toml")
    plan = CliRunner().invoke(app, ["sweep", str(changed), "--output", str(out), "--dry-run"], env={"COLUMNS": "250"})
    assert plan.exit_code == 0 and f"refused: its rows were made otherwise ({said})" in plan.stdout, plan.output
    assert "run again" not in plan.stdout
    result = CliRunner().invoke(app, ["sweep", str(changed), "--output", str(out), "--no-progress"])
    assert result.exit_code == 1 and f"holds rows made otherwise ({said})" in result.output


@pytest.mark.parametrize("dataset, edit, said", [
    ("sample-choice", ('name = "avg"\n', 'name = "avg"\nchoice_score = "sum"\n'), "choice_score: 'mean' -> 'sum'"),
    ("sample-qa", ("max_samples = 4\n", "max_samples = 4\nsample_seed = 1\n"), "the dataset's items differ")])
def test_a_dry_run_refuses_a_changed_choice_score_and_other_items(checkpoint_dirs, tmp_path, dataset, edit, said):
    """A method's choice_score, and items drawn otherwise (none of them among the rows'), changed under finished runs:
    the plan said "run again" or "(resumed)" where the sweep stops, refusing to mix the rows."""
    text = (f'[generation]\nmax_new_tokens = 2\n[[models]]\npath = "{checkpoint_dirs["llama3"]}"\nlabel = "tiny"\n'
            f'[[datasets]]\nname = "{dataset}"\nmax_samples = 4\nfew_shot_k = 1\n[[methods]]\nname = "avg"\n')
    out = tmp_path / "out"
    first = CliRunner().invoke(app, ["sweep", str(_file(tmp_path, text)), "--output", str(out), "--no-progress"])
    assert first.exit_code == 0, first.output
    changed = _file(tmp_path, text.replace(*edit), "changed.toml")
    plan = CliRunner().invoke(app, ["sweep", str(changed), "--output", str(out), "--dry-run"], env={"COLUMNS": "250"})
    assert plan.exit_code == 0 and f"refused: its rows were made otherwise ({said}" in plan.stdout, plan.output
    result = CliRunner().invoke(app, ["sweep", str(changed), "--output", str(out), "--no-progress"])
    assert result.exit_code == 1 and f"holds rows made otherwise ({said}" in result.output


def test_a_batch_size_keys_no_finished_run_nor_did_one_of_an_earlier_minirun(sweep_file, reference, tmp_path):
    """[generation]'s batch size changes no row: a finished sweep given another stays finished (its model not
    loaded), and done.json markers an earlier minirun wrote, whose keys held it, still mark their runs finished."""
    from minirun.eval import sweep as sweep_module

    out = shutil.copytree(reference[0], tmp_path / "run")
    wider = _file(tmp_path, sweep_file.read_text().replace("batch_size = 2", "batch_size = 3"), "wider.toml")
    plan = CliRunner().invoke(app, ["sweep", str(wider), "--output", str(out), "--dry-run"])
    assert plan.exit_code == 0 and "0 of 8 runs have work: the sweep is finished" in plan.stdout, plan.output
    (out / "llama" / "sample-qa" / "origin" / "done.json").unlink()  # killed before its dataset's runs ended
    plan = CliRunner().invoke(app, ["sweep", str(wider), "--output", str(out), "--dry-run"], env={"COLUMNS": "250"})
    assert "mark it finished: every item is answered" in plan.stdout and "1 of 8 runs have work" in plan.stdout
    sweep, markers = load_sweep_file(sweep_file), {}
    for cell in sweep_module.cells(sweep, out):
        data = sweep_module.Data(load_dataset(cell.dataset.name)[:2], None, None)
        markers[cell.dir] = {"key": sweep_module.cell_key(cell, sweep, data, with_batch_size=True)}
        assert markers[cell.dir]["key"] != sweep_module.cell_key(cell, sweep, data)
        (cell.dir / "done.json").write_text(json.dumps(markers[cell.dir]) + "\n")
    result = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert {d: json.loads((d / "done.json").read_text()) for d in markers} == markers  # no run ran to re-mark it


def test_an_eval_into_a_sweep_run_is_refused_and_one_made_before_is_named(sweep_file, reference, checkpoint_dirs,
                                                                          tmp_path):
    """A sweep's run is one method's: `eval` adding another there is refused before the model loads, and rows of two
    methods found in a run (written so before) stop `report` and the sweep's table in one line naming the folder."""
    out = shutil.copytree(reference[0], tmp_path / "run")
    run = out / "qwen2" / "sample-qa" / "origin"
    result = CliRunner().invoke(app, ["eval", "--data", "sample-qa", "-m", "origin", "-m", "avg", "--model",
                                      str(checkpoint_dirs["qwen2"]), "--output", str(run), "--no-progress"])
    said = f"{run} is a run of the sweep in {out}, which `minirun sweep` writes (one method's rows): run the " \
        "sweep, add another method to its file"
    assert result.exit_code == 1 and said in " ".join(result.output.split()), result.output
    journal = run / "results.rank0.jsonl"
    row = json.loads(journal.read_text().splitlines()[0])
    journal.write_text(journal.read_text() + json.dumps({**row, "method": "avg"}) + "\n")
    shown = CliRunner().invoke(app, ["report", str(out)])
    assert shown.exit_code == 1 and f"{run} holds rows of the methods avg, origin, and a sweep's run holds one " \
        "method's" in " ".join(shown.output.split()), shown.output
    other = out / "llama" / "sample-qa" / "origin" / "results.rank0.jsonl"  # another method's rows alone
    other.write_text("".join(json.dumps({**json.loads(line), "method": "avg"}) + "\n"
                             for line in other.read_text().splitlines()))
    plan = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(out), "--dry-run"],
                              env={"COLUMNS": "250"}).stdout
    cells = {tuple(part.strip() for part in line.split("│")[1:4]): [part.strip() for part in line.split("│")[4:7]]
             for line in plan.splitlines() if line.count("│") == 7}
    for model, answered in (("qwen2", "2"), ("llama", "0")):  # its own method's rows: none are the sweep's there
        assert cells[model, "sample-qa", "origin"] == ["2", answered, "refused: its rows were made otherwise (rows "
                                                       "of avg as well, which an `eval` wrote there: move them out)"]
    stopped = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(out), "--no-progress"])
    assert stopped.exit_code == 1 and "holds rows of the methods avg, origin" in " ".join(stopped.output.split())


def test_a_model_takes_its_own_batch_size(sweep_file, reference, checkpoint_dirs, tmp_path, monkeypatch):
    """A 32B model's cache needs smaller batches than a 1B model's on one GPU: `batch_size` in a model's entry
    overrides [generation]'s for its runs only, and, as eval's batch size, keys no run: a finished sweep given one
    stays finished."""
    out = shutil.copytree(reference[0], tmp_path / "run")
    text = sweep_file.read_text().replace('label = "llama"\n', 'label = "llama"\nbatch_size = 1\n')
    changed = _file(tmp_path, text)
    assert [m.batch_size for m in load_sweep_file(changed).models] == [None, 1]
    plan = CliRunner().invoke(app, ["sweep", str(changed), "--output", str(out), "--dry-run"]).stdout
    assert "the sweep is finished" in plan
    asked = []
    real = minirun.eval.sweep.prepare
    monkeypatch.setattr(minirun.eval.sweep, "prepare", lambda llm, *a, **k: asked.append(
        (llm.path.name, k["batch_size"])) or real(llm, *a, **k))
    result = CliRunner().invoke(app, ["sweep", str(changed), "--output", str(tmp_path / "fresh"), "--no-progress"])
    assert result.exit_code == 0, result.output
    batch_sizes = {}
    for name, size in asked:
        batch_sizes.setdefault(name, set()).add(size)
    assert batch_sizes == {checkpoint_dirs["qwen2"].name: {2}, checkpoint_dirs["llama3"].name: {1}}
    table = pd.read_parquet(tmp_path / "fresh" / "results.parquet")
    pd.testing.assert_frame_equal(_canon(table), _canon(reference[1]))  # float32: the same rows at any batch size


def test_machines_sharing_an_output_each_take_their_models(sweep_file, reference, tmp_path):
    """`--models` (and `--datasets`) run a part of the file: one machine a model, into one output directory on a
    shared file system; the index names every cell, so the report says what is still to run, and once every part
    has run the table is the whole sweep's."""
    out = tmp_path / "run"

    def part(*args: str):
        return CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(out), "--no-progress", *args],
                                  env={"COLUMNS": "250"})

    plan = part("--datasets", "sample-qa", "--models", "llama,qwen2", "--dry-run").stdout
    assert plan.count("run 2 items") == 4 and "sample-fill" not in plan
    assert part("--models", "qwen2").exit_code == 0
    assert {p.parent.parent.parent.name for p in out.glob("*/*/*/done.json")} == {"qwen2"}
    shown = CliRunner().invoke(app, ["report", str(out)]).output
    assert "4 of the sweep's runs have not finished (llama/sample-qa/origin" in " ".join(shown.split())
    assert part("--models", "llama").exit_code == 0
    pd.testing.assert_frame_equal(_canon(pd.read_parquet(out / "results.parquet")), _canon(reference[1]))
    wrong = part("--models", "mistral")
    assert wrong.exit_code == 1 and "--models 'mistral' is no label of the file's models: use qwen2, llama" in \
        " ".join(wrong.output.split())


def test_a_sweep_report_names_runs_whose_thinking_took_every_token(checkpoint_dirs, tmp_path):
    """A model whose template opens thinking (DeepSeek-R1's distills) at a sweep's 4 new tokens answers nothing:
    the report says so per run, as a score of 0 would read as the method's."""
    ckpt = shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "r1")
    template = ckpt / "chat_template.jinja"
    template.write_text(template.read_text().replace("assistant\\n", "assistant\\n<think>\\n"))
    sweep = _file(tmp_path, GENERATION + f'\n[[models]]\npath = "{ckpt}"\n'
                  '\n[[datasets]]\nname = "sample-qa"\nfew_shot_k = 1\nnum_prompts = 2\nmax_samples = 2\n'
                  '\n[[methods]]\nname = "origin"\n')
    result = CliRunner().invoke(app, ["sweep", str(sweep), "--output", str(tmp_path / "out"), "--no-progress"])
    assert result.exit_code == 0, result.output
    shown = " ".join(CliRunner().invoke(app, ["report", str(tmp_path / "out")]).output.split())
    assert "r1/sample-qa/origin · origin: 2 of 2 answers are none, as their thinking did not end within " \
        "max_new_tokens 4" in shown


def test_report_on_a_sweep_directory(reference, tmp_path):
    out, table = reference
    shown = CliRunner().invoke(app, ["report", str(out), "--plot", str(tmp_path / "s.png"), "--csv",
                                     str(tmp_path / "s.csv")], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    assert shown.stdout.count(f" · {out}") == 2  # one table per dataset
    assert "qwen2" in shown.stdout and "llama" in shown.stdout and "flex-restart" in shown.stdout
    assert "Δ origin (p)" in shown.stdout and "Wilson" in shown.stdout and "(rescored:" not in shown.stdout
    assert (tmp_path / "s.png").stat().st_size > 0
    rescored = CliRunner().invoke(app, ["report", str(out), "--match", "bidirectional"], env={"COLUMNS": "200"})
    assert rescored.stdout.count(f" · {out} (rescored: --match bidirectional)") == 2  # each table says so
    latex = CliRunner().invoke(app, ["report", str(out), "--latex", str(tmp_path / "s.tex")])
    assert latex.exit_code == 0, latex.output
    tex = (tmp_path / "s.tex").read_text()  # a table per dataset, a row per (model, method)
    assert tex.count("\\begin{table}") == 2 and "Model & Method & Accuracy" in tex and "qwen2 & flex-restart &" in tex
    assert tex.count("& Macro acc. \\\\") == 1  # sample-fill's relations averaged; sample-qa has none
    comments = tex.splitlines()  # before each table, per model: what made its rows (the cells' run.json)
    assert comments.count("% made by minirun report from model qwen2's runs with") == 2
    assert '% method flex-restart: {"flex_bias": null, "positions": "restart"}' in comments
    assert '% dataset: "sample-fill"' in comments and any(line.startswith("% timed on: ") for line in comments)
    csv = pd.read_csv(tmp_path / "s.csv")  # one header row, a row per (dataset, method, model)
    assert list(csv.columns[:4]) == ["dataset", "method", "model", "accuracy"] and len(csv) == 2 * 2 * 2
    assert csv["n"].dtype.kind == "i" and csv.loc[csv["method"] == "origin", "diff_vs_origin"].isna().all()
    scores = json.loads(CliRunner().invoke(app, ["report", str(out), "--json"]).stdout)
    mixed = CliRunner().invoke(app, ["report", str(out / "qwen2" / "sample-qa" / "origin"), str(out)])
    assert mixed.exit_code == 1 and f"{out} is a sweep: report it alone" in " ".join(mixed.output.split())
    flex = scores["sample-qa"]["qwen2"]["flex-restart"]  # the fields and shapes of an eval run's --json
    assert len(flex["ci95"]) == 2 and len(flex["diff_vs_origin_ci95"]) == 2 and flex["n_vs_origin"] == 2
    assert 0 <= flex["p_vs_origin"] <= flex["p_vs_origin_holm"] <= 1
    versus = flex["versus"]["origin"]  # every two methods of a model, as one run's --json has them
    assert versus["diff"] == pytest.approx(flex["diff_vs_origin"]) and versus["p"] == flex["p_vs_origin"]
    assert scores["sample-qa"]["qwen2"]["origin"]["versus"]["flex-restart"]["diff"] == pytest.approx(-versus["diff"])
    fill = scores["sample-fill"]["llama"]["origin"]  # relations: each method's scores per relation, as one run's
    assert sum(r["n"] for r in fill["by_relation"].values()) == fill["n"] and "by_relation" not in flex
    assert list(scores) == ["sample-qa", "sample-fill"] and list(scores["sample-qa"]) == ["qwen2", "llama"]
    llama_fill = table[(table["model"] == "llama") & (table["dataset"] == "sample-fill") & (table["label"] == "origin")]
    assert scores["sample-fill"]["llama"]["origin"]["accuracy"] == pytest.approx(llama_fill["correct"].mean())
    assert scores["sample-fill"]["llama"]["origin"]["n"] == 2


def test_report_on_a_damaged_sweep_index(tmp_path):
    for text in ("{", "{}", '{"cells": [{"dir": "m/d/x"}]}'):
        (tmp_path / "sweep.json").write_text(text)
        shown = CliRunner().invoke(app, ["report", str(tmp_path)])
        assert shown.exit_code == 1 and shown.output.count("\n") == 1, shown.output
        assert "is not the index `minirun sweep` writes" in shown.output


def test_sweep_table_layout():
    rows = [("m2", "d1", "b", 1, True), ("m2", "d1", "b", 2, False), ("m2", "d1", "a", 1, True),
            ("m1", "d1", "a", 1, False), ("m1", "d2", "a", 1, True)]
    df = pd.DataFrame([{"model": m, "dataset": d, "label": x, "method": "origin", "id": str(i), "answer": "",
                        "correct": c, "exact": c, "tokens": 2, "seconds": 1.0} for m, d, x, i, c in rows])
    table = sweep_table(df)
    assert list(table.index) == [("d1", "b"), ("d1", "a"), ("d2", "a")]  # file order, not sorted
    assert list(dict.fromkeys(table.columns.get_level_values("model"))) == ["m2", "m1"]
    assert table.loc[("d1", "b"), ("m2", "accuracy")] == 0.5 and table.loc[("d1", "b"), ("m2", "n")] == 2
    assert table.loc[("d1", "a"), ("m1", "accuracy")] == 0.0
    assert table.loc[("d2", "a"), ("m1", "tokens_per_second")] == 2
    assert math.isnan(table.loc[("d1", "b"), ("m1", "n")]) and math.isnan(table.loc[("d2", "a"), ("m2", "accuracy")])


def test_a_datasets_cells_prefill_each_batch_once_for_methods_that_prefill_alike(checkpoint_dirs, tmp_path,
                                                                                 monkeypatch):
    """per_prompt, avg and max as three cells of one dataset: each keeps its own run directory and rows
    (the same as in a sweep of that cell alone), with a third of the prompt prefills."""
    from minirun.models import Decoder

    prefills = []
    original = Decoder.hidden
    monkeypatch.setattr(Decoder, "hidden", lambda self, tokens, *rest, **options: prefills.append(
        tokens.shape[0] > 1 and tokens.shape[1] > 1) or original(self, tokens, *rest, **options))
    head = _sweep_text(checkpoint_dirs, {"qwen2": "qwen2"}, ["sample-qa"]).replace(METHODS, "").replace(
        "max_samples = 2", "max_samples = 4")
    cells = {m: f'\n[[methods]]\nname = "{m}"\n' + (f'label = "{m}-cell"\n' if m != "per_prompt" else "")
             for m in ("per_prompt", "avg", "max")}  # per_prompt keeps its label: the report finds it by it
    llm = minirun.load(checkpoint_dirs["qwen2"])
    alone = []
    for m, cell in cells.items():
        sweep = load_sweep_file(_file(tmp_path, head + cell, f"{m}.toml"))
        alone.append(run_sweep(sweep, tmp_path / m, lambda _: llm, progress=False))
    alone_prefills, prefills[:] = sum(prefills), []
    sweep = load_sweep_file(_file(tmp_path, head + "".join(cells.values())))
    together = run_sweep(sweep, tmp_path / "all", lambda _: llm, progress=False)
    assert sum(prefills) * 3 == alone_prefills > 0 and llm.prompts is None
    pd.testing.assert_frame_equal(_canon(together), _canon(pd.concat(alone, ignore_index=True)))
    assert sorted(p.name for p in (tmp_path / "all" / "qwen2" / "sample-qa").iterdir()) == \
        ["avg-cell", "max-cell", "per_prompt"]


def test_an_edited_dataset_file_reruns_its_cells_and_is_refused(checkpoint_dirs, tmp_path):
    """done.json must not vouch for rows of a file edited since: the cell reruns, and the eval loop
    refuses to pair the edited item's new rows with its stale ones."""
    from minirun.eval.data import load_dataset, write_jsonl

    data = tmp_path / "qa.jsonl"
    items = load_dataset("sample-qa")[:2]
    write_jsonl(items, data)
    text = GENERATION + f'\n[[models]]\npath = "{checkpoint_dirs["qwen2"]}"\n' \
        f'\n[[datasets]]\nname = "{data}"\nlabel = "qa"\nfew_shot_k = 0\nnum_prompts = 2\n' \
        '\n[[methods]]\nname = "origin"\n'
    sweep = load_sweep_file(_file(tmp_path, text))
    llm = minirun.load(checkpoint_dirs["qwen2"])
    run_sweep(sweep, tmp_path / "out", lambda _: llm, progress=False)
    assert run_sweep(sweep, tmp_path / "out", lambda _: pytest.fail("nothing to redo"), progress=False) is not None
    items[1].answers[:] = ["Rome"]
    write_jsonl(items, data)
    with pytest.raises(MinirunError, match="the items' content changed"):
        run_sweep(sweep, tmp_path / "out", lambda _: llm, progress=False)


def test_a_cell_that_would_mix_rows_is_refused_before_any_cell_runs(checkpoint_dirs, tmp_path):
    head = _sweep_text(checkpoint_dirs, {"qwen2": "qwen2"}, ["sample-qa", "sample-fill"]).replace(METHODS, "")
    first = head + '\n[[methods]]\nname = "origin"\n'
    llm = minirun.load(checkpoint_dirs["qwen2"])
    run_sweep(load_sweep_file(_file(tmp_path, first)), tmp_path / "out", lambda _: llm, progress=False)
    # a new method, whose cells come first, and sample-fill's prompts changed under its finished origin rows
    edited = first.replace("num_prompts = 2\nmax_samples = 2\n\n[[methods]]", "num_prompts = 3\nmax_samples = 2\n\n"
                           "[[methods]]") + '\n[[methods]]\nname = "avg"\n'
    assert edited.count("num_prompts = 3") == 1
    with pytest.raises(MinirunError, match=r"sweep run qwen2/sample-fill/origin holds rows made otherwise "
                                           r"\(num_prompts: 2 -> 3\): restore the file's settings"):
        run_sweep(load_sweep_file(_file(tmp_path, edited, "edited.toml")), tmp_path / "out", lambda _: llm,
                  progress=False)
    journals = (tmp_path / "out" / "qwen2" / "sample-qa" / "avg").glob("results.rank*.jsonl")
    assert all(journal.stat().st_size == 0 for journal in journals)  # checked, but nothing ran


def test_a_sweeps_scores_carry_the_single_prompt_comparisons():
    rows = []
    for i, (origin, avg, single) in enumerate([(True, True, 1.0), (False, True, 0.5), (False, False, 0.0)]):
        base = {"model": "m", "dataset": "d", "id": str(i), "answer": "", "exact": False, "tokens": 2, "seconds": 1.0}
        rows += [{**base, "label": "origin", "method": "origin", "correct": origin},
                 {**base, "label": "avg", "method": "avg", "correct": avg},
                 {**base, "label": "per_prompt", "method": "per_prompt", "correct": origin,
                  "per_prompt_accuracy": single, "answers": ["a", "a"]}]
    table = sweep_table(pd.DataFrame(rows))
    assert table.loc[("d", "per_prompt"), ("m", "mean_single_accuracy")] == pytest.approx(0.5)
    assert table.loc[("d", "per_prompt"), ("m", "oracle_accuracy")] == pytest.approx(2 / 3)
    assert table.loc[("d", "avg"), ("m", "diff_vs_mean_single")] == pytest.approx(2 / 3 - 0.5)


def test_a_sweeps_figures_follow_each_entrys_method_not_its_label():
    """Two vote entries need two labels: a vote under another one keeps vote's figures (its scores are the shares of
    the prompts' picks, it has no MC2, its rows hold each prompt's answer), and a max entry labelled "vote" is max."""
    from minirun.cli.sweep import scores_json

    shares, logprobs = [[0.5, 0.5, 0.0], [0.0, 1.0, 0.0]], [[-1.0, -2.0, -3.0], [-2.0, -1.0, -3.0]]
    rows = []
    for i, single in enumerate([0.5, 1.0]):
        base = {"model": "m", "dataset": "d", "id": str(i), "answer": "", "exact": False, "tokens": 0, "seconds": 1.0,
                "task": "choice", "choices": ["A", "B", "C"], "gold_choice": 1, "true_options": [1],
                "choice_logprobs": logprobs[i], "correct": i == 1}
        rows += [{**base, "label": "origin", "method": "origin", "choice": i, "choice_scores": logprobs[i]},
                 {**base, "label": "majority", "method": "vote", "choice": i, "choice_scores": shares[i],
                  "per_prompt_accuracy": single, "answers": ["A", "B"] if i == 0 else ["B", "B"],
                  "per_prompt_logprobs": [logprobs[i], logprobs[i]]},
                 {**base, "label": "vote", "method": "max", "choice": i, "choice_scores": logprobs[i]}]
    scores = scores_json(sweep_table(pd.DataFrame(rows)))["d"]["m"]
    majority, labelled = scores["majority"], scores["vote"]
    assert majority["confidence"] == pytest.approx(0.75) and majority["mc2"] is None  # the picks' shares: 0.5, 1
    assert majority["mean_single_accuracy"] == pytest.approx(0.75) and majority["consistency"] == pytest.approx(0.5)
    assert labelled["confidence"] == pytest.approx(scores["origin"]["confidence"])  # a softmax of its likelihoods
    assert labelled["mc2"] == pytest.approx(scores["origin"]["mc2"])
    assert labelled["diff_vs_mean_single"] == pytest.approx(-0.25)
    from rich.console import Console

    from minirun.cli.sweep import score_tables

    console = Console(width=250, record=True)
    for table in score_tables(sweep_table(pd.DataFrame(rows)), str):
        console.print(table)
    assert "m: majority's mean single-prompt accuracy 0.750" in console.export_text()  # the terminal's caption too


def test_every_model_is_compared_with_the_files_first_on_the_same_items():
    rows = [{"model": model, "dataset": "d", "label": "avg", "method": "avg", "id": str(i), "answer": "",
             "correct": right, "exact": False, "tokens": 2, "seconds": 1.0}
            for model, verdicts in (("big", [True, True, True, False]), ("small", [True, False, False, False]))
            for i, right in enumerate(verdicts)]
    table = sweep_table(pd.DataFrame(rows))
    assert math.isnan(table.loc[("d", "avg"), ("big", "diff_vs_first_model")])  # the reference itself
    small = table.loc[("d", "avg"), "small"]
    assert small["diff_vs_first_model"] == pytest.approx(-0.5) and small["n_vs_first_model"] == 4
    assert small["p_vs_first_model"] == pytest.approx(0.5)  # exact McNemar: 0 against 2 discordant items


def _two_models_one_short() -> pd.DataFrame:
    """big ran origin and avg on 4 items; small ran origin on 4 and avg on 3 (origin's n 4, avg's 3)."""
    rows = []
    for model, methods in (("big", {"origin": 4, "avg": 4}), ("small", {"origin": 4, "avg": 3, "per_prompt": 4})):
        for method, n in methods.items():
            rows += [{"model": model, "dataset": "d", "label": method, "method": method, "id": str(i), "answer": "",
                      "correct": i % 2 == 0, "exact": False, "tokens": 2, "seconds": 1.0} for i in range(n)]
    return pd.DataFrame(rows)


def test_a_sweep_plot_draws_no_bar_for_a_cell_never_run(tmp_path):
    """big has no per_prompt run: a bar at 0 with its whisker would read as a measured accuracy of 0. A plot of rows
    `report` rescored is titled so."""
    from matplotlib.container import BarContainer
    from matplotlib.figure import Figure

    from minirun.eval.sweep_results import plot_sweep

    saved = []
    original = Figure.savefig
    Figure.savefig = lambda fig, path, **kw: saved.append(fig) or original(fig, path, **kw)
    try:
        plot_sweep(_two_models_one_short(), tmp_path / "s.png")
        plot_sweep(_two_models_one_short(), tmp_path / "r.png", title="rescored: --choice-score sum")
    finally:
        Figure.savefig = original
    assert saved[0]._suptitle is None and saved[1]._suptitle.get_text() == "rescored: --choice-score sum"
    (ax,) = saved[0].axes
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    assert [len(b) for b in bars] == [2, 3]  # big: origin, avg; small: origin, avg, per_prompt
    assert [t.get_text() for t in ax.get_xticklabels()] == ["origin", "avg", "per_prompt (first prompt)"]


def test_a_sweeps_json_counts_are_integers_and_its_table_names_fewer_shared_items():
    from rich.console import Console

    from minirun.cli.sweep import score_tables, scores_json

    def avg_line(scores: pd.DataFrame) -> str:
        console = Console(width=250, record=True)
        for table in score_tables(scores, str):
            console.print(table)
        return next(line for line in console.export_text().splitlines() if line.startswith("│ avg"))

    scores = sweep_table(_two_models_one_short())
    small = scores_json(scores)["d"]["small"]["avg"]
    assert small["n"] == 3 and small["n_vs_origin"] == 3 and small["n_vs_first_model"] == 3
    assert all(type(small[k]) is int for k in ("n", "n_vs_origin", "n_vs_first_model", "tokens"))
    assert small["tokens"] == 6 and small["seconds"] == 3.0  # as one run's --json has them
    assert ", n=" not in avg_line(scores)  # every avg shares all its items with its origin
    unfinished = _two_models_one_short().query("not (model == 'small' and method == 'origin' and id == '2')")
    assert avg_line(sweep_table(unfinished)).count(", n=2)") == 1  # small's avg: 3 items, 2 shared with origin


def test_a_sweeps_table_compares_each_model_with_the_first_beside_origin():
    """The terminal shows what --json's diff_vs_first_model holds: small against big under each method label, on the
    items both answered (big, the reference, has no such column)."""
    from rich.console import Console

    from minirun.cli.sweep import score_tables

    rows = pd.DataFrame([{"model": model, "dataset": "d", "label": method, "method": method, "id": str(i),
                          "answer": "", "correct": right(i), "exact": False, "tokens": 2, "seconds": 1.0}
                         for model, right in (("big", lambda i: i < 3), ("small", lambda i: i < 1))
                         for method in ("origin", "avg") for i in range(4 if model == "big" or method == "avg" else 2)])
    console = Console(width=250, record=True)
    for table in score_tables(sweep_table(rows), str):
        console.print(table)
    text = console.export_text()
    assert re.search(r"Δ origin \(p\) ┃ +Δ big \(p\) ┃ tokens/s ┃ items/s ┃$", text, re.M)
    assert text.count("Δ big (p)") == 1  # big is the reference
    assert re.search(r"^│ avg .*│ \+0\.000 \(1, n=2\) │ -0\.500 \(0\.5\) │ +2\.0 │", text, re.M)  # 1 of 4: 3
    assert re.search(r"^│ origin .*│ +– │ +-0\.500 \(1\) │ +2\.0 │", text, re.M)  # big: both right
    assert "Δ big: the same method label of big on the items both answered" in text
    from minirun.cli.sweep import scores_long
    from minirun.eval.report import latex

    tex = latex(scores_long(sweep_table(rows)).set_index(["model", "method"]), "d")  # as a paper's table has them
    lines = {tuple(line.split(" & ")[:2]): line.split(" & ")[7:] for line in tex.splitlines() if " & " in line}
    assert lines[("Model", "Method")] == [r"$\Delta$ big", r"$p$ \\"] and lines[("big", "avg")] == ["--", r"-- \\"]
    assert lines[("small", "avg")] == ["$-0.500$", r"0.500 \\"]  # Holm's p to 3 significant digits, zeros kept
    assert "$\\Delta$ big: accuracy minus big's" in tex


def test_a_sweeps_table_names_per_prompt_as_its_first_prompt_with_its_single_prompt_figures():
    """As one run's table does: per_prompt's accuracy is its first prompt's, not an ensemble's."""
    from rich.console import Console

    from minirun.cli.sweep import score_tables

    rows = _two_models_one_short()
    prompts = rows["method"] == "per_prompt"
    rows["per_prompt_accuracy"] = [0.5 if p else None for p in prompts]
    rows["answers"] = [["x", "y"] if p else None for p in prompts]
    console = Console(width=250, record=True)
    for table in score_tables(sweep_table(rows), str):
        console.print(table)
    text = console.export_text()
    assert "│ per_prompt (first prompt)" in text and not re.search(r"│ per_prompt +│", text)
    assert "small: per_prompt's mean single-prompt accuracy 0.500, oracle 1.000, consistency 0.000" in text
    assert "big: per_prompt's" not in text  # big never ran it


def test_a_later_models_missing_gpu_is_refused_before_any_model_runs(checkpoint_dirs, tmp_path, monkeypatch):
    """A sweep file is written for the GPU box and parses anywhere; run where the GPU is not, it stops at once."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a machine without one, on a GPU machine too
    text = _sweep_text(checkpoint_dirs, {"llama3": "llama", "qwen2": "qwen"}, ["sample-qa"])
    text = text.replace('label = "qwen"\n', 'label = "qwen"\ndevice = "cuda"\n')
    sweep, loads = load_sweep_file(_file(tmp_path, text)), []
    with pytest.raises(MinirunError, match="model qwen: device 'cuda' requested but no CUDA GPU is available"):
        run_sweep(sweep, tmp_path / "run", lambda m: loads.append(m) or minirun.load(m.path), progress=False)
    assert loads == []


def test_a_later_models_missing_hub_repo_is_refused_before_any_model_runs(checkpoint_dirs, tmp_path, monkeypatch):
    """Every model with work is fetched before the first runs: a typo in the third model's id fails in seconds."""
    from minirun.eval import sweep as sweep_module

    def resolve(path):
        if not Path(path).is_dir():
            raise MinirunError(f"cannot fetch {path} from the Hugging Face Hub: no such repository")
        return Path(path)

    monkeypatch.setattr(sweep_module, "resolve_model", resolve)
    text = _sweep_text(checkpoint_dirs, {"llama3": "llama"}, ["sample-qa"])
    text = text.replace("[[datasets]]", '[[models]]\npath = "nobody/no-such-model"\n\n[[datasets]]', 1)
    sweep, loads = load_sweep_file(_file(tmp_path, text)), []
    with pytest.raises(MinirunError, match="model no-such-model: cannot fetch nobody/no-such-model"):
        run_sweep(sweep, tmp_path / "run", lambda m: loads.append(m) or minirun.load(m.path), progress=False)
    assert loads == []


def test_a_method_setting_that_does_not_fit_a_dataset_names_the_run(checkpoint_dirs, tmp_path):
    """Checked with the first model's runs, before any of them: the message says which run, not eval's flags alone.
    A method's own choice_score fits every dataset: where no item has options it is left out, as eval's default."""
    text = _sweep_text(checkpoint_dirs, {"llama3": "llama"}, ["sample-qa"])
    text += '\n[[methods]]\nname = "avg"\nlabel = "avg-sum"\nchoice_score = "sum"\n'
    table = run_sweep(load_sweep_file(_file(tmp_path, text)), tmp_path / "run", lambda m: minirun.load(m.path),
                      progress=False)
    assert len(table[table["label"] == "avg-sum"]) == 2
    text = _sweep_text(checkpoint_dirs, {"llama3": "llama"}, []).replace("[generation]", "[generation]\nchat = false")
    write_jsonl(load_dataset("sample-choice")[:2], tmp_path / "choice.jsonl")  # asked as OpenBookQA: its stems
    text += f'\n[[datasets]]\nname = "{tmp_path / "choice.jsonl"}"\nbenchmark = "openbookqa"\nnum_prompts = 2\n' \
        "few_shot_k = 0\n"
    sweep, rows = load_sweep_file(_file(tmp_path, text, "obqa.toml")), []
    with pytest.raises(MinirunError, match="sweep run llama/choice/flex-restart: flex fuses the paraphrases"):
        run_sweep(sweep, tmp_path / "obqa", lambda m: minirun.load(m.path), progress=False, on_row=rows.append)
    assert rows == []


def test_a_sweeps_table_keeps_its_runs_shared_match_rule(tmp_path):
    """pandas drops attrs where concatenated parts differ (their item counts do): the sweep's table says the rule
    its runs share, so --match with that rule keeps the single-prompt figures; an all-choice table keeps them too."""
    from minirun.eval.report import select_match
    from minirun.eval.results import ResultStore
    from minirun.eval.sweep_results import load_sweep

    index = {"cells": []}
    for dataset, n in (("qa", 3), ("fill", 4)):
        folder = f"m/{dataset}/per_prompt"
        index["cells"].append({"model": "m", "dataset": dataset, "label": "per_prompt", "dir": folder})
        ids = [f"{dataset}{i}" for i in range(n)]
        with ResultStore(tmp_path / folder, {"model": "m", "bidirectional": False}, item_ids=ids) as store:
            for i in ids:
                store.add({"id": i, "method": "per_prompt", "prompts": ["p"], "generated": "a", "answer": "a",
                           "exact": True, "correct": True, "correct_lemma": True, "correct_bidirectional": True,
                           "tokens": 1, "seconds": 1.0, "per_prompt_accuracy": 0.5, "task": "qa"})
    (tmp_path / "sweep.json").write_text(json.dumps(index))
    table = load_sweep(tmp_path)
    assert table.attrs == {"match": "lemma"}
    assert "per_prompt_accuracy" in select_match(table, "lemma").columns
    assert "per_prompt_accuracy" not in select_match(table, "bidirectional").columns
    assert "per_prompt_accuracy" in select_match(table.assign(task="choice"), "bidirectional").columns


def test_a_method_picking_by_another_choice_score_than_origin_is_said_to_mix_them(tmp_path):
    """A sweep method with its own choice_score is compared with an origin that picked by another: the report says
    the difference mixes the scoring with the method, unless `report --choice-score` re-picks them all alike."""
    from minirun.eval.results import ResultStore
    from minirun.eval.sweep_results import mixed_scoring

    index = {"cells": []}
    for label, score in (("origin", "mean"), ("avg", "mean"), ("avg-sum", "sum")):
        folder = f"m/choice/{label}"
        index["cells"].append({"model": "m", "dataset": "choice", "label": label, "dir": folder})
        with ResultStore(tmp_path / folder, {"model": "m", "bidirectional": False, "choice_score": score},
                         item_ids=["c0"]) as store:
            store.add({"id": "c0", "method": label.removesuffix("-sum"), "prompts": ["p"], "generated": "B",
                       "answer": "B", "exact": True, "correct": True, "correct_lemma": True,
                       "correct_bidirectional": True, "tokens": 0, "seconds": 1.0, "task": "choice",
                       "choices": ["A", "B"], "gold_choice": 1, "choice": 1, "choice_scores": [-1.0, -0.5],
                       "choice_logprobs": [-1.0, -1.5], "choice_tokens": [1, 3], "choice_chars": [1, 1]})
            store.finalize()
    (tmp_path / "sweep.json").write_text(json.dumps(index))
    said = "choice · m: avg-sum (sum) pick by another choice score than origin (mean): their differences from " \
           "origin mix the scoring with the method"
    assert [line[:len(said)] for line in mixed_scoring(tmp_path)] == [said]
    shown = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert shown.exit_code == 0 and said in " ".join(shown.output.split()), shown.output
    alike = CliRunner().invoke(app, ["report", str(tmp_path), "--choice-score", "sum"])
    assert alike.exit_code == 0 and "another choice score" not in alike.output, alike.output
    tex = CliRunner().invoke(app, ["report", str(tmp_path), "--latex", str(tmp_path / "t.tex")])
    assert tex.exit_code == 0, tex.output  # the LaTeX header says which method picked by which score
    assert '% choice_score: "mean"' in (tmp_path / "t.tex").read_text()
    assert '% method avg-sum: {"choice_score": "sum"}' in (tmp_path / "t.tex").read_text()


def test_a_cell_of_scored_choices_is_not_keyed_by_max_new_tokens():
    """Multiple-choice cells generate nothing: raising max_new_tokens for a file's QA datasets leaves them finished,
    while a QA cell is another run."""
    from minirun.eval import sweep as sweep_module

    keys = []
    for tokens in (4, 40):
        spec = parse_sweep({**BASE, "generation": {"max_new_tokens": tokens},
                            "datasets": [{"name": "sample-choice"}, {"name": "sample-qa"}]})
        choice, qa = sweep_module.cells(spec, "out")
        keys.append([sweep_module.cell_key(cell, spec, sweep_module.Data(load_dataset(name)[:2], None, None))
                     for cell, name in ((choice, "sample-choice"), (qa, "sample-qa"))])
    assert keys[0][0] == keys[1][0] and keys[0][1] != keys[1][1]


def test_a_cell_is_keyed_by_the_new_tokens_it_runs_with():
    """`[generation]` without max_new_tokens gives short answers 24 tokens and word problems 256: a QA cell keeps the
    key it had when the file said 24 (finished before the default became per task, it stays finished), and a maths
    cell is the cell the file would make saying 256."""
    from minirun.eval import sweep as sweep_module

    def keys(generation: dict) -> list[str]:
        spec = parse_sweep({**BASE, "generation": generation, "datasets": [{"name": "sample-qa"},
                                                                           {"name": "sample-math"}]})
        return [sweep_module.cell_key(cell, spec, sweep_module.Data(load_dataset(name)[:2], None, None))
                for cell, name in zip(sweep_module.cells(spec, "out"), ("sample-qa", "sample-math"))]

    (qa, maths), said = keys({}), {tokens: keys({"max_new_tokens": tokens}) for tokens in (24, 256)}
    assert qa == said[24][0] != said[256][0] and maths == said[256][1] != said[24][1]


def test_an_mmlu_run_finished_under_one_head_for_all_subjects_is_not_finished(monkeypatch):
    """MMLU's per-subject heads change its rows: its cells' keys say so (a done.json of before is no longer theirs),
    while other datasets' keys stay as they were."""
    from minirun.eval import sweep as sweep_module

    spec = parse_sweep({**BASE, "datasets": [{"name": "mmlu"}, {"name": "sample-qa"}]})
    mmlu, qa = sweep_module.cells(spec, "out")
    items = load_dataset("sample-choice")[:2]
    keys = [sweep_module.cell_key(c, spec, sweep_module.Data(items, None, None)) for c in (mmlu, qa)]
    monkeypatch.setattr(sweep_module, "subject_heads", lambda dataset, few_shot: False)  # as before the heads
    assert sweep_module.cell_key(mmlu, spec, sweep_module.Data(items, None, None)) != keys[0]
    assert sweep_module.cell_key(qa, spec, sweep_module.Data(items, None, None)) == keys[1]


def test_cells_asked_in_the_harness_s_words_are_not_those_finished_in_minirun_s(monkeypatch, tmp_path):
    """MMLU's and CommonsenseQA's prompts are the harness's, and a file asked as MMLU's (`benchmark`) too: their
    cells' keys say so, so a done.json of before is no longer theirs; other datasets' keys stay as they were,
    the new `benchmark` key unset included."""
    import dataclasses

    from minirun.eval import prompts
    from minirun.eval import sweep as sweep_module

    data = tmp_path / "para.jsonl"
    write_jsonl(load_dataset("sample-choice")[:2], data)
    spec = parse_sweep({**BASE, "datasets": [{"name": "commonsense_qa"}, {"name": "sample-qa"},
                                             {"name": str(data), "benchmark": "mmlu", "choice_format": "letters"}]})
    csqa, qa, para = sweep_module.cells(spec, "out")
    items = load_dataset("sample-choice")[:2]
    keys = [sweep_module.cell_key(c, spec, sweep_module.Data(items, None, None)) for c in (csqa, qa, para)]
    monkeypatch.setattr(sweep_module, "prompt_format", lambda dataset, choice_format: prompts.MINIRUN)  # as before
    assert sweep_module.cell_key(csqa, spec, sweep_module.Data(items, None, None)) != keys[0]
    assert sweep_module.cell_key(para, spec, sweep_module.Data(items, None, None)) != keys[2]
    real = dataclasses.asdict  # a dataset table written before `benchmark` existed
    monkeypatch.setattr(dataclasses, "asdict", lambda obj: {k: v for k, v in real(obj).items() if k != "benchmark"})
    assert sweep_module.cell_key(qa, spec, sweep_module.Data(items, None, None)) == keys[1]


def test_a_truthfulqa_copy_asked_as_mc2_gives_the_mc2_options(checkpoint_dirs, tmp_path):
    """A sweep's dataset entry reads a local TruthfulQA copy as the set its `benchmark` names (eval's --benchmark)."""
    row = {"question": "Can pigs fly?", "mc1_targets": {"choices": ["No.", "Yes."], "labels": [1, 0]},
           "mc2_targets": {"choices": ["No.", "Never.", "Yes."], "labels": [1, 1, 0]}}
    (tmp_path / "tqa.jsonl").write_text(json.dumps(row) + "\n")
    text = GENERATION + f'\n[[models]]\npath = "{checkpoint_dirs["qwen2"]}"\n' + "".join(
        f'\n[[datasets]]\nname = "{tmp_path / "tqa.jsonl"}"\nlabel = "{name}"\nbenchmark = "{name}"\n'
        'few_shot_k = 0\nnum_prompts = 1\n' for name in ("truthfulqa_mc2", "truthfulqa_mc1")) \
        + '\n[[methods]]\nname = "origin"\n'
    table = run_sweep(load_sweep_file(_file(tmp_path, text)), tmp_path / "out", lambda m: minirun.load(m.path),
                      progress=False)
    mc2, mc1 = (table[table["dataset"] == name].iloc[0] for name in ("truthfulqa_mc2", "truthfulqa_mc1"))
    assert (list(mc2["choices"]), list(mc2["true_options"])) == (["No.", "Never.", "Yes."], [0, 1])
    assert list(mc1["choices"]) == ["No.", "Yes."] and mc1["true_options"] is None


def test_a_sweep_skips_a_plain_files_bad_records_when_asked(checkpoint_dirs, tmp_path):
    """`skip_bad = true` is eval's --skip-bad for a sweep; without it the bad record stops the sweep before any
    model loads, and the key of a cell does not depend on the switch (only on the items it leaves)."""
    from minirun.eval import sweep as sweep_module

    data = tmp_path / "qa.jsonl"
    write_jsonl(load_dataset("sample-qa")[:2], data)
    data.write_text(data.read_text() + '{"id": "bad", "question": 3}\n')
    text = GENERATION + f'\n[[models]]\npath = "{checkpoint_dirs["qwen2"]}"\n' \
        f'\n[[datasets]]\nname = "{data}"\nlabel = "qa"\nfew_shot_k = 0\nnum_prompts = 2\n{{}}' \
        '\n[[methods]]\nname = "origin"\n'
    with pytest.raises(MinirunError, match=r"qa\.jsonl:3: missing field") as e:
        run_sweep(load_sweep_file(_file(tmp_path, text.format(""))), tmp_path / "out",
                  lambda _: pytest.fail("no model loads"), progress=False)
    assert "skip_bad = true" in str(e.value)
    sweep = load_sweep_file(_file(tmp_path, text.format("skip_bad = true\n")))
    table = run_sweep(sweep, tmp_path / "out", lambda m: minirun.load(m.path), progress=False)
    assert sorted(table["id"]) == [item.id for item in load_dataset("sample-qa")[:2]]
    plain = load_sweep_file(_file(tmp_path, text.format(""), "plain.toml"))
    items = load_dataset(str(data), skip_bad=True)
    [cell], [same] = sweep_module.cells(sweep, "out"), sweep_module.cells(plain, "out")
    data = sweep_module.Data(items, None, None)
    assert sweep_module.cell_key(cell, sweep, data) == sweep_module.cell_key(same, plain, data)


def _bfloat16_model(checkpoint_dirs, out: Path) -> Path:
    """A copy of the llama3 checkpoint whose config names bfloat16: its default dtype depends on the CPU."""
    model = shutil.copytree(checkpoint_dirs["llama3"], out)
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "torch_dtype": "bfloat16", "dtype": "bfloat16"}))
    return model


def _one_model_sweep(path: Path | str) -> str:
    return (GENERATION + f'\n[[models]]\npath = "{path}"\nlabel = "m"\n\n[[datasets]]\nname = "sample-qa"\n'
            'few_shot_k = 1\nnum_prompts = 2\nmax_samples = 2\n\n[[methods]]\nname = "origin"\n')


def test_finished_cells_of_another_model_than_the_path_now_holds_are_refused_before_any_model_loads(
        checkpoint_dirs, tmp_path, monkeypatch):
    """A cell key holds the file's settings, not the weights at a model's path nor the dtype a machine picks by
    default: cells finished before the checkpoint there was replaced were taken as finished, and a method added ran
    on the new weights, one table comparing two models. Refused before any model loads, naming the fix (as eval
    refuses resuming such rows), and the dry run says so; a new label runs the new weights beside them."""
    from safetensors.torch import load_file, save_file

    from minirun.layers import calibrate

    model = _bfloat16_model(checkpoint_dirs, tmp_path / "model")
    text = _one_model_sweep(model)
    file, added = _file(tmp_path, text), _file(tmp_path, text + '\n[[methods]]\nname = "avg"\n', "added.toml")
    loads: list[str] = []

    def load(spec):
        loads.append(spec.label)
        return minirun.load(spec.path)

    def refused(sweep_file: Path, change: str) -> None:
        for run in (file, sweep_file):  # the finished cell alone, and beside a method added
            with pytest.raises(MinirunError, match=r"sweep run m/sample-qa/origin holds rows made otherwise "
                                                   rf"\({change}[^)]*\), by another model than m's entry gives now: "
                                                   "give the model a new label"):
                run_sweep(load_sweep_file(run), tmp_path / "out", load, progress=False)
        assert loads == []
        dry = CliRunner().invoke(app, ["sweep", str(sweep_file), "--output", str(tmp_path / "out"), "--dry-run"],
                                 env={"COLUMNS": "250"})
        assert dry.exit_code == 0 and re.search(rf"refused: its rows were made otherwise \({change}[^)]*\)", dry.stdout)
        assert "(the model, where its weights or dtype changed) a new label" in " ".join(dry.stdout.split())

    monkeypatch.setattr(calibrate, "native_bfloat16", lambda: True)
    run_sweep(load_sweep_file(file), tmp_path / "out", load, progress=False)
    assert loads == ["m"]
    loads.clear()
    monkeypatch.setattr(calibrate, "native_bfloat16", lambda: False)  # the same file on a CPU without bfloat16
    refused(added, "dtype: 'bfloat16' -> 'float32'")
    monkeypatch.setattr(calibrate, "native_bfloat16", lambda: True)
    tensors = load_file(model / "model.safetensors")
    name = sorted(tensors)[0]
    save_file({**tensors, name: tensors[name] + 1.0}, model / "model.safetensors", metadata={"format": "pt"})
    refused(added, "the checkpoint at that path holds other weights")
    relabelled = _file(tmp_path, added.read_text().replace('label = "m"', 'label = "m2"'), "relabelled.toml")
    table = run_sweep(load_sweep_file(relabelled), tmp_path / "out", load, progress=False)
    assert loads == ["m2"] and len(table[table["model"] == "m2"]) == 4
    run_json = tmp_path / "out" / "m2" / "sample-qa" / "avg" / "run.json"
    record = json.loads(run_json.read_text())
    unhashed = {k: v for k, v in record["run_key"].items() if k != "weights_sha256"}  # a run before digests: any
    run_json.write_text(json.dumps({**record, "run_key": unhashed}))
    report = CliRunner().invoke(app, ["report", str(tmp_path / "out")], env={"COLUMNS": "250"})
    assert report.exit_code == 0 and "different weights" not in report.output
    # as a minirun before the refusal left it
    run_json.write_text(json.dumps({**record, "run_key": {**record["run_key"], "weights_sha256": "0123abcd"}}))
    report = CliRunner().invoke(app, ["report", str(tmp_path / "out")], env={"COLUMNS": "250"})
    assert report.exit_code == 0 and re.search(r"model m2's runs were made with different weights or dtypes \(.*"
                                               r"weights 0123abcd, bfloat16: m2/sample-qa/avg\): its figures compare "
                                               "different models", " ".join(report.output.split())), report.output


def test_runs_finished_where_the_model_was_are_checked_once_another_machine_pulls_it(checkpoint_dirs, tmp_path,
                                                                                      monkeypatch):
    """Finished runs carried to a machine where the sweep pulls the model first (and picks float32 by default, having
    no bfloat16 arithmetic): checked once the pull ends, before any model loads, not taken as finished while a method
    added ran in the other dtype."""
    from minirun.checkpoints.hub import model_folder
    from minirun.eval import sweep as sweep_module
    from minirun.layers import calibrate

    source = _bfloat16_model(checkpoint_dirs, tmp_path / "source")
    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path / "here"))
    shutil.copytree(source, model_folder("owner/model"))
    text = _one_model_sweep("owner/model")
    file, added = _file(tmp_path, text), _file(tmp_path, text + '\n[[methods]]\nname = "avg"\n', "added.toml")
    loads: list[str] = []

    def load(spec):
        loads.append(spec.label)
        return minirun.load(model_folder(spec.path))

    monkeypatch.setattr(calibrate, "native_bfloat16", lambda: True)
    run_sweep(load_sweep_file(file), tmp_path / "out", load, progress=False)
    assert loads == ["m"]
    loads.clear()
    monkeypatch.setenv("MINIRUN_MODELS_DIR", str(tmp_path / "there"))  # not pulled there yet
    monkeypatch.setattr(calibrate, "native_bfloat16", lambda: False)
    monkeypatch.setattr(sweep_module, "resolve_model", lambda path: shutil.copytree(source, model_folder(path)))
    with pytest.raises(MinirunError, match=r"sweep run m/sample-qa/origin holds rows made otherwise \(dtype: "
                                           r"'bfloat16' -> 'float32'\), by another model than m's entry gives now"):
        run_sweep(load_sweep_file(added), tmp_path / "out", load, progress=False)
    assert loads == [] and model_folder("owner/model").is_relative_to(tmp_path / "there")


def test_runs_without_a_weights_digest_or_of_another_device_are_not_called_another_models(tmp_path):
    """A run recorded before weights digests, whose hub model was pulled into another models folder since, is the
    same model for all the path can say; rows made on another device are the cell key's and the eval loop's to name
    (its device with its dtype), not a change of model."""
    from minirun.eval import results
    from minirun.eval import sweep as sweep_module

    sweep = parse_sweep(BASE)
    [cell] = sweep_module.cells(sweep, tmp_path)
    cell.dir.mkdir(parents=True)

    def changes(recorded: dict, now: dict) -> list[str]:
        (cell.dir / "run.json").write_text(json.dumps({"run_key": recorded, "item_ids": ["q1"]}))
        return sweep_module.model_changes(cell, now)

    old = {"model": "/home/a/models/owner/model", "dtype": "bfloat16", "device": "cpu"}
    here = {"model": "/home/b/models/owner/model", "weights_sha256": "abc", "dtype": "bfloat16", "device": "cpu"}
    assert changes(old, here) == []
    assert changes(old, {**here, "dtype": "float32"}) == ["dtype: 'bfloat16' -> 'float32'"]
    assert changes({**old, "device": "cuda"}, {**here, "dtype": "float32"}) == []
    assert changes({**old, "weights_sha256": "abd"}, here) == [results.OPAQUE["weights_sha256"]]


def test_a_cell_is_keyed_by_the_device_auto_resolves_to(tmp_path, monkeypatch):
    """A file without a device (auto) keeps the key a cpu cell had, so runs finished before auto stay finished;
    on a GPU machine it is the cuda cell's key."""
    from minirun.eval import sweep as sweep_module

    items = load_dataset("sample-qa")[:2]

    def key(device: str | None) -> str:
        model = {"path": "owner/model"} if device is None else {"path": "owner/model", "device": device}
        sweep = parse_sweep({**BASE, "models": [model]})
        [cell] = sweep_module.cells(sweep, tmp_path)
        return sweep_module.cell_key(cell, sweep, sweep_module.Data(items, None, None))

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert key(None) == key("cpu") != key("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert key(None) == key("cuda") != key("cpu")


def test_data_without_paraphrases_is_refused_before_any_model_is_fetched(tmp_path):
    data = tmp_path / "bare.jsonl"
    data.write_text('{"id": "1", "question": "Capital of Peru?", "paraphrases": [], "answers": ["Lima"]}\n')
    sweep = parse_sweep({**BASE, "datasets": [{"name": str(data), "label": "bare"}],
                         "methods": [{"name": "origin"}, {"name": "avg"}]})
    with pytest.raises(MinirunError, match=r"dataset bare: .*bare.jsonl's 1 items asked have no paraphrases, so avg "
                                           r"would repeat origin"):
        run_sweep(sweep, tmp_path / "out", lambda _: pytest.fail("no model loads"), progress=False)
    one = parse_sweep({**BASE, "datasets": [{"name": "sample-qa", "num_prompts": 1}],
                       "methods": [{"name": "origin"}, {"name": "vote"}]})
    with pytest.raises(MinirunError, match=r"dataset sample-qa: num_prompts 1 leaves each item its question alone"):
        run_sweep(one, tmp_path / "one", lambda _: pytest.fail("no model loads"), progress=False)
    weighted = parse_sweep({**BASE, "datasets": [{"name": "sample-math"}],
                            "methods": [{"name": "origin"}, {"name": "weighted_avg"}]})
    for attempt in (lambda: run_sweep(weighted, tmp_path / "w", lambda _: pytest.fail("no model"), progress=False),
                    lambda: survey(weighted, tmp_path / "w")):  # the dry run says it before the sweep would run
        with pytest.raises(MinirunError, match=r"dataset sample-math: weighted_avg weigh each prompt by how its "
                                               r"16-token samples agree"):
            attempt()


def test_a_model_is_freed_before_the_next_one_loads(checkpoint_dirs, tmp_path, monkeypatch):
    """A compiled model is held by reference cycles (Dynamo's tracing state keeps its modules) that only
    the cyclic collector frees, and nothing runs one before the next model loads: a GPU held both of a
    sweep's 16 GB models at once. The sweep collects before loading the next model, and hands what glibc's
    heap kept of it back to the system, which the next load's check of the memory available counts."""
    from minirun.eval import sweep as sweep_module

    text = _sweep_text(checkpoint_dirs, {"qwen2": "qwen2", "llama3": "llama"}, ["sample-qa"])
    weights, alive, returned = [], [], []
    monkeypatch.setattr(sweep_module, "return_freed_memory", lambda: returned.append(len(weights)))

    def load(model):
        alive.append([w() is not None for w in weights])
        llm = minirun.load(model.path)
        llm.cycle = llm  # the cycles a compile leaves, without compiling
        weights.append(weakref.ref(next(llm.model.parameters())))
        return llm

    gc.disable()
    try:
        run_sweep(load_sweep_file(_file(tmp_path, text)), tmp_path / "out", load, progress=False)
    finally:
        gc.enable()
    assert alive == [[], [False]] and returned == [1, 2]


def test_a_sweep_of_multiple_choice_reports_calibration_per_model():
    """As one run's report does: confidence, ECE and Brier in --json, and a calibration table per dataset."""
    from rich.console import Console

    from minirun.cli.sweep import score_tables, scores_json

    rows = _two_models_one_short()
    choice = rows.assign(task="choice", choices=[["A", "B"]] * len(rows), gold_choice=0,
                         choice=[0 if c else 1 for c in rows["correct"]], choice_scores=[[0.0, 0.0]] * len(rows))
    scores = scores_json(sweep_table(choice))["d"]
    assert scores["small"]["avg"]["confidence"] == 0.5 and scores["big"]["origin"]["brier"] == pytest.approx(0.5)
    assert scores["small"]["avg"]["ece"] == pytest.approx(abs(2 / 3 - 0.5))  # items 0 and 2 right of 3, all at 0.5
    console = Console(width=250, record=True)
    for table in score_tables(sweep_table(choice), str):
        console.print(table)
    text = console.export_text()
    assert "d · calibration (multiple choice)" in text and "15 equal-width bins" in text
    assert re.search(r"│ per_prompt \(first prompt\) +│ +– +│ +– +│ +– +│ +0\.500 +│", text)  # big never ran it
    assert re.search(r"^│ origin .*│ +– +│ +1\.00 +│$", text, re.M)  # scored: no tokens/s, but 1 item a second
    assert scores_json(sweep_table(rows))["d"]["small"]["avg"]["ece"] is None
    plain = Console(width=250, record=True)
    for table in score_tables(sweep_table(rows), str):
        plain.print(table)
    assert "calibration" not in plain.export_text()


def test_a_sweep_resumed_another_day_asks_a_new_cell_in_the_words_of_the_first_day(checkpoint_dirs, tmp_path,
                                                                                    monkeypatch):
    """With a chat template that writes the date, a method added to a sweep (a new cell) the next day renders its
    prompts at the day its dataset's first cells recorded, so the methods its table compares asked the same words."""
    from checkpoints import Clock, with_dated_template

    Clock.install(monkeypatch, 6)
    ckpt = with_dated_template(checkpoint_dirs["qwen2"], tmp_path / "ckpt")
    head = GENERATION + f'\n[[models]]\npath = "{ckpt}"\nlabel = "dated"\n' + \
        '\n[[datasets]]\nname = "sample-qa"\nfew_shot_k = 1\nnum_prompts = 2\nmax_samples = 2\n'
    origin, avg = '\n[[methods]]\nname = "origin"\n', '\n[[methods]]\nname = "avg"\n'
    run_sweep(load_sweep_file(_file(tmp_path, head + origin, "a.toml")), tmp_path / "s", lambda m: minirun.load(m.path),
              progress=False)
    monkeypatch.setattr(Clock, "day", 7)
    llm = minirun.load(ckpt)
    rendered = []
    render = llm.tokenizer.apply_chat_template
    monkeypatch.setattr(llm.tokenizer, "apply_chat_template",
                        lambda *a, **k: rendered.append(render(*a, **k)) or rendered[-1])
    run_sweep(load_sweep_file(_file(tmp_path, head + origin + avg, "b.toml")), tmp_path / "s", lambda _: llm,
              progress=False)
    asked = [text for text in rendered if "\nQ: " in text]  # the questions, not the template probed
    assert asked and all("Today Date: 06 Dec 2026" in text for text in asked)
    cells = tmp_path / "s" / "dated" / "sample-qa"
    assert {json.loads((cells / m / "run.json").read_text())["run_key"]["template_date"] for m in ("origin", "avg")} \
        == {"2026-12-06"}


def test_a_sweeps_template_date_is_a_toml_date_or_its_text():
    import datetime

    for given in (datetime.date(2024, 7, 26), "2024-07-26", "2024-7-26"):
        assert parse_sweep({**BASE, "generation": {"template_date": given}}).generation.template_date == "2024-07-26"


def test_a_sweep_timed_on_two_machines_says_so(reference, tmp_path):
    """A sweep whose cells ran on two machines (one resumed elsewhere): its report names both beside the throughput."""
    out = shutil.copytree(reference[0], tmp_path / "copy")
    assert "machines (" not in CliRunner().invoke(app, ["report", str(out)]).output
    journal = out / "llama" / "sample-qa" / "origin" / "results.rank0.jsonl"
    rows = [json.loads(line) for line in journal.read_text().splitlines()]
    journal.write_text("".join(json.dumps({**row, "machine": "NVIDIA H200 torch 2.11.0+cu130"}) + "\n" for row in rows))
    shown = " ".join(CliRunner().invoke(app, ["report", str(out)]).output.split())
    assert "tokens/s and items/s mix rows timed on 2 machines" in shown and "NVIDIA H200 torch 2.11.0+cu130" in shown


def test_an_ensemble_size_curve_runs_a_dataset_per_size_and_reports_them_side_by_side(checkpoint_dirs, tmp_path,
                                                                                       monkeypatch):
    """`num_prompts = [2, 3]` makes a dataset entry per size (`<label>-k<size>`); an entry written apart that differs
    in num_prompts alone joins their series, one with another setting does not; `report` shows the series as a
    table of accuracy by prompts per item (per_prompt's row giving way to the mean single prompt and the oracle),
    and its CSV and JSON carry each dataset's num_prompts."""
    from minirun.cli.sweep import size_table
    from minirun.eval.sweep_results import load_sweep, prompt_series, size_curve

    text = f'''{GENERATION}
[[models]]\npath = "{checkpoint_dirs["qwen2"]}"
[[datasets]]\nname = "sample-qa"\nlabel = "qa"\nfew_shot_k = 1\nmax_samples = 2\nnum_prompts = [3, 2]
[[datasets]]\nname = "sample-qa"\nlabel = "qa-four"\nfew_shot_k = 1\nmax_samples = 2\nnum_prompts = 4
[[datasets]]\nname = "sample-qa"\nlabel = "qa-0shot"\nfew_shot_k = 0\nmax_samples = 2\nnum_prompts = 2
[[methods]]\nname = "origin"\n[[methods]]\nname = "per_prompt"\n[[methods]]\nname = "avg"\n'''
    sweep = load_sweep_file(_file(tmp_path, text))
    assert [(d.label, d.num_prompts) for d in sweep.datasets] == [("qa-k3", 3), ("qa-k2", 2), ("qa-four", 4),
                                                                   ("qa-0shot", 2)]
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["sweep", str(tmp_path / "sweep.toml"), "--output", str(out), "--no-progress"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "accuracy by prompts per item" in " ".join(result.stdout.split())  # the sweep ends on report's tables
    assert prompt_series(out) == [{"qa-k2": 2, "qa-k3": 3, "qa-four": 4}, {"qa-0shot": 2}]
    scores = sweep_table(load_sweep(out))
    curve = size_curve(scores, prompt_series(out)[0])
    assert list(curve.index) == ["origin", "per_prompt", "avg"] and list(curve.columns) == [
        ("qwen2", 2), ("qwen2", 3), ("qwen2", 4)]
    assert curve.loc["avg", ("qwen2", 4)] == scores.loc[("qa-four", "avg"), ("qwen2", "accuracy")]
    shown = CliRunner().invoke(app, ["report", str(out)], env={"COLUMNS": "200"})
    assert shown.exit_code == 0, shown.output
    words = " ".join(shown.stdout.split())  # a narrow table wraps its title
    assert words.count("accuracy by prompts per item") == 1 and "qa-k2, qa-k3, qa-four · accuracy" in words
    assert "no item has more than" not in words  # every size reached
    table = size_table(scores, prompt_series(out)[0])
    assert [c.header for c in table.columns] == ["method", "qwen2\nk=2", "\nk=3", "\nk=4"]
    single = scores.loc[("qa-k3", "per_prompt"), ("qwen2", "mean_single_accuracy")]
    assert list(table.columns[0].cells) == ["origin", "avg", "mean single prompt", "oracle (any prompt)"]
    assert list(table.columns[2].cells)[2] == f"{single:.3f}"
    report = json.loads(CliRunner().invoke(app, ["report", str(out), "--json"]).stdout)
    assert {d: report[d]["qwen2"]["avg"]["num_prompts"] for d in report} == {"qa-k3": 3, "qa-k2": 2, "qa-four": 4,
                                                                              "qa-0shot": 2}
    from matplotlib.figure import Figure

    saved = []  # the figure `--plot` draws: a bar panel per dataset, then the series' curve
    monkeypatch.setattr(Figure, "savefig", lambda fig, path, **options: saved.append(fig) or open(path, "wb").close())
    shown = CliRunner().invoke(app, ["report", str(out), "--csv", str(tmp_path / "s.csv"), "--plot",
                                     str(tmp_path / "s.png")])
    assert shown.exit_code == 0, shown.output
    curve_axes = saved[0].axes[-1]
    assert [ax.get_title() for ax in saved[0].axes] == ["qa-k3", "qa-k2", "qa-four", "qa-0shot",
                                                        "qa-k2, qa-k3, qa-four"]
    assert [line.get_label() for line in curve_axes.get_lines()] == ["origin", "avg", "mean single prompt"]
    assert list(curve_axes.get_lines()[1].get_ydata()) == list(curve.loc["avg", "qwen2"])
    assert curve_axes.get_ylim() == (-0.03, 1.03)  # a curve at 1.0 (or 0) keeps its markers whole
    CliRunner().invoke(app, ["report", str(out), "--latex", str(tmp_path / "s.tex"), "--match", "lemma"])
    tex = (tmp_path / "s.tex").read_text()  # a table per dataset, then the series'; lemma is the runs' own rule
    assert tex.count("\\begin{table}") == 5 and "Method & $k=2$ & $k=3$ & $k=4$ \\\\" in tex
    assert "rescored" not in tex
    assert f"mean single prompt & {list(table.columns[1].cells)[2]} & {single:.3f} & " in tex
    csv = pd.read_csv(tmp_path / "s.csv")
    assert dict(zip(csv["dataset"], csv["num_prompts"])) == {"qa-k3": 3, "qa-k2": 2, "qa-four": 4, "qa-0shot": 2}
    machine = load_sweep(out)["machine"].iloc[0]  # where each method's seconds were timed, as one run's has it
    assert set(csv["machine"]) == {machine} and report["qa-k2"]["qwen2"]["avg"]["machine"] == machine


def test_a_curve_size_no_item_reaches_is_said_to_repeat_a_smaller_one():
    """num_prompts = [5, 6] on items of 5 prompts: the k=6 point repeats k=5's answers, which report says (the run
    warned once, long before the plot is read); origin's one prompt is no measure of it."""
    from minirun.eval.sweep_results import repeated_sizes

    five = ["q", "p1", "p2", "p3", "p4"]
    table = pd.DataFrame({"dataset": ["qa-k5", "qa-k6", "qa-k6"], "method": ["avg", "avg", "origin"],
                          "prompts": [five, five, ["q"]]})
    assert repeated_sizes(table, [{"qa-k5": 5, "qa-k6": 6}]) == [
        "qa-k6 asks 6 prompts per item but no item has more than 5: its figures repeat those of 5 prompts (a curve's "
        "point that is not one)"]
    assert repeated_sizes(table[table["method"] == "origin"], [{"qa-k6": 6}]) == []


def test_a_sweep_indexed_before_series_reports_without_them(reference, tmp_path):
    """An index written before sweeps recorded prompts per item: no series, no num_prompts column, the tables as
    before (a rerun of the sweep rewrites the index with them)."""
    from minirun.eval.sweep_results import prompt_series

    out = shutil.copytree(reference[0], tmp_path / "old")
    index = json.loads((out / "sweep.json").read_text())
    for cell in index["cells"]:
        del cell["num_prompts"], cell["series"]
    (out / "sweep.json").write_text(json.dumps(index))
    assert prompt_series(out) == []
    shown = CliRunner().invoke(app, ["report", str(out), "--csv", str(tmp_path / "s.csv")])
    assert shown.exit_code == 0 and "accuracy by prompts" not in shown.stdout, shown.output
    assert "num_prompts" not in pd.read_csv(tmp_path / "s.csv").columns


@pytest.mark.parametrize("sizes", [[], [2, 2], [2, "3"]])
def test_a_bad_ensemble_size_list_is_one_line(sizes):
    with pytest.raises(MinirunError, match="num_prompts") as e:
        parse_sweep({**BASE, "datasets": [{"name": "sample-qa", "num_prompts": sizes}]})
    assert "\n" not in str(e.value)


def test_a_sample_seed_keys_only_the_datasets_that_have_one():
    """`sample_seed` asks other items, so it keys a dataset's cells and its ensemble-size series; a dataset without
    one keeps the keys it had before the setting existed (pinned: these are a sweep's of 2026-12-07; a cell's key
    holds the answer matcher's version too, 5 since that evening)."""
    from minirun.eval import sweep as sweep_module
    from minirun.eval.sweep_spec import DatasetSpec

    assert sweep_module.series_key(DatasetSpec("sample-qa")) == "5709b691afa94cca"
    assert sweep_module.series_key(DatasetSpec("sample-qa", max_samples=3)) == "07289a4b584361b1"
    assert sweep_module.series_key(DatasetSpec("sample-qa", max_samples=3, sample_seed=0)) != "07289a4b584361b1"
    spec = parse_sweep({**BASE, "datasets": [{"name": "sample-qa", "max_samples": 3},
                                             {"name": "sample-qa", "label": "seeded", "max_samples": 3,
                                              "sample_seed": 0}]})
    plain, seeded = (sweep_module.cell_key(cell, spec, sweep_module.Data(load_dataset("sample-qa")[:3], None, None))
                     for cell in sweep_module.cells(spec, "out"))
    assert plain == "f5e52716f0a81cdb0b3d3a9ddeb382aab65bdfa2fe9c7684e1b0503af24dab96" and seeded != plain


def test_a_sweep_plot_title_says_how_each_dataset_was_rescored():
    """One figure holds every dataset's panel: its title names the rescoring once where all share it, else each
    dataset's that has one (--choice-score re-picks the multiple-choice datasets only)."""
    from minirun.cli.sweep import rescored_title

    assert rescored_title({"qa": "", "mc": ""}) == ""
    assert rescored_title({"qa": " (rescored: --match harness)", "mc": " (rescored: --match harness)"}) == \
        "rescored: --match harness"
    assert rescored_title({"qa": "", "mc": " (rescored: --choice-score sum)"}) == "rescored: mc --choice-score sum"
    assert rescored_title({"qa": " (rescored: --match bidirectional)", "mc": " (rescored: --match bidirectional, "
                           "--choice-score sum)"}) == "rescored: qa --match bidirectional; mc --match bidirectional, " \
        "--choice-score sum"


def test_a_sweep_asks_a_gap_file_as_winogrande_and_refuses_it_otherwise(checkpoint_dirs, tmp_path):
    """A dataset of gap items (Winogrande's) with `benchmark = "winogrande"` runs every method of the sweep, flex too
    without a chat template (the option ends every prompt); the same file without it is refused naming the fix, before
    any run."""
    gaps = [Item(f"g{i}", f"{who} thanked Maria because _ had helped.",
                 [f"Maria got thanks from {who} as _ had helped."], ["Maria"], "choice", None, [who, "Maria"], 1,
                 blank="_") for i, who in enumerate(["Anna", "Lena"])]
    write_jsonl(gaps, tmp_path / "gaps.jsonl")
    text = _sweep_text(checkpoint_dirs, {"llama3": "llama"}, []).replace("[generation]", "[generation]\nchat = false")
    entry = f'\n[[datasets]]\nname = "{tmp_path / "gaps.jsonl"}"\nlabel = "gaps"\nnum_prompts = 2\nfew_shot_k = 0\n'
    rows: list[dict] = []
    plain = load_sweep_file(_file(tmp_path, text + entry, "plain.toml"))
    with pytest.raises(MinirunError, match="pass --benchmark winogrande .a sweep dataset's benchmark"):
        run_sweep(plain, tmp_path / "plain", lambda m: minirun.load(m.path), progress=False, on_row=rows.append)
    assert rows == []
    with pytest.raises(MinirunError, match="dataset gaps: .* pass --benchmark winogrande"):  # the dry run's survey too
        survey(plain, tmp_path / "plain")
    table = run_sweep(load_sweep_file(_file(tmp_path, text + entry + 'benchmark = "winogrande"\n', "wino.toml")),
                      tmp_path / "wino", lambda m: minirun.load(m.path), progress=False)
    assert sorted(table["label"].unique()) == ["flex-restart", "origin"] and len(table) == 4
    assert set(table["choices"].map(tuple)) == {("Anna", "Maria"), ("Lena", "Maria")}


def test_a_cell_whose_options_the_harness_spaces_otherwise_is_not_one_finished_before(monkeypatch):
    """HellaSwag's cleaned endings that open with a space are scored as the harness spaces them: the cell's key says
    so (a done.json of before, options stripped, is no longer its), while cells whose options have no edge
    whitespace, or that are asked in minirun's words, keep the key they had."""
    import dataclasses

    from minirun.eval import sweep as sweep_module

    spec = parse_sweep({**BASE, "datasets": [{"name": "hellaswag"}, {"name": "sample-choice"}]})
    hellaswag, choice = sweep_module.cells(spec, "out")
    plain = load_dataset("sample-choice")[:2]
    spaced = [dataclasses.replace(plain[0], choices=[f" {c}" for c in plain[0].choices]), plain[1]]

    def keys() -> list[str]:
        return [sweep_module.cell_key(cell, spec, sweep_module.Data(items, None, None))
                for cell in (hellaswag, choice) for items in (spaced, plain)]

    now = keys()
    monkeypatch.setattr(sweep_module, "harness_spaced", lambda *a: False)  # as before the harness's spacing
    before = keys()
    assert now[0] != before[0] and now[1:] == before[1:]
    chat = parse_sweep({**BASE, "generation": {"chat": True}, "datasets": [{"name": "hellaswag"}]})
    cell = sweep_module.cells(chat, "out")[0]
    patched = sweep_module.cell_key(cell, chat, sweep_module.Data(spaced, None, None))
    monkeypatch.undo()  # under a chat template the options are spaced as before: the key stays
    assert sweep_module.cell_key(cell, chat, sweep_module.Data(spaced, None, None)) == patched
