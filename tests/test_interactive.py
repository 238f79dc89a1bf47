"""The interactive flow turns scripted answers into the exact one-line command."""
from __future__ import annotations

import inspect
import shlex
from pathlib import Path

import pytest

from minirun.cli.interactive import format_command, local_models, run_interactive


def scripted(answers: list[str], prompts: list[tuple[str, str]]):
    """An `ask` that pops answers in order ("" means: take the default) and logs the questions."""
    pending = list(answers)

    def ask(prompt: str, default: str) -> str:
        prompts.append((prompt, default))
        answer = pending.pop(0)
        return answer if answer else default

    return ask, pending


def drive(answers: list[str], models_dir: Path) -> tuple[list[str], list[str], list[tuple[str, str]]]:
    prompts: list[tuple[str, str]] = []
    echoed: list[str] = []
    ask, pending = scripted(answers, prompts)
    argv = run_interactive(ask, echoed.append, models_dir)
    assert pending == [], "every scripted answer is consumed"
    return argv, echoed, prompts


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    for name in ("tiny-llama", "smollm2-135m-instruct"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "config.json").write_text("{}")
        (tmp_path / name / "model.safetensors").write_bytes(b"")
    (tmp_path / "not-a-model").mkdir()
    return tmp_path


def test_generate_flow(models_dir):
    answers = ["", "flux", "flex", "Who wrote Hamlet?", "Hamlet's author?", "Who penned Hamlet?", "",
               "", "restart", "no", "", "16"]
    argv, echoed, prompts = drive(answers, models_dir)
    assert argv == ["generate", "--method", "flex", "--positions", "restart", "--no-share-prefix",
                    "--max-new-tokens", "16",
                    "--paraphrase", "Hamlet's author?", "--paraphrase", "Who penned Hamlet?", "--", "Who wrote Hamlet?"]
    assert echoed[0].startswith("'flux': unknown method flux: choose from origin")
    assert [p for p, _ in prompts].count(prompts[1][0]) == 2  # the method was asked again
    assert echoed[1] == f"models in {models_dir}: smollm2-135m-instruct, tiny-llama"
    assert ("model (listed name, checkpoint dir or HF repo id)", str(models_dir / "smollm2-135m-instruct")) in prompts
    assert format_command(argv) == ("minirun generate --method flex --positions restart --no-share-prefix "
                                    "--max-new-tokens 16 --paraphrase 'Hamlet'\"'\"'s author?' "
                                    "--paraphrase 'Who penned Hamlet?' -- 'Who wrote Hamlet?'")
    assert shlex.split(format_command(argv)) == ["minirun", *argv]


def test_generate_weighted_with_model_and_few_shot(models_dir, tmp_path):
    shots = tmp_path / "shots.jsonl"
    shots.write_text("{}\n")
    answers = ["generate", "avg,max", "weighted_max", "Capital of France?", "",  # a paraphrase is required
               "France's capital?", "", "tiny-llama", "0", "8", str(tmp_path / "missing.jsonl"), str(shots), "0", ""]
    argv, echoed, prompts = drive(answers, models_dir)
    assert argv == ["generate", "--method", "weighted_max", "--model", str(models_dir / "tiny-llama"),
                    "--num-samples", "8", "--few-shot", str(shots), "--few-shot-k", "0",  # as the command allows
                    "--paraphrase", "France's capital?", "--", "Capital of France?"]
    # no --max-new-tokens: the command's own default, 256 for worked maths examples (a fixed 64 cut them short)
    assert ("max new tokens (empty: 64, 256 with worked maths examples)", "") in prompts
    assert echoed == ["'avg,max': this task runs one method: give a single name",
                      "this method answers over paraphrases: give at least one",
                      f"models in {models_dir}: smollm2-135m-instruct, tiny-llama",
                      "'0': give a whole number above 0",
                      f"{str(tmp_path / 'missing.jsonl')!r}: no such file (leave empty for none)"]


def test_a_prefix_text_is_not_asked_for_a_count(models_dir, tmp_path):
    """A few-shot prefix text is the prompt's text itself: the flow asked for --few-shot-k and printed a command
    generate refuses beside it; "²" (a digit to str.isdigit, no number to int) stopped it with a traceback."""
    from minirun.cli.common import few_shot_count

    prefix = tmp_path / "prefix.txt"
    prefix.write_text("Q: What is 1+1?\nA: 2\n\n")
    argv, echoed, _ = drive(["generate", "", "What is 2+2?", "", str(prefix), "²", "8"], models_dir)
    assert argv == ["generate", "--few-shot", str(prefix), "--max-new-tokens", "8", "--", "What is 2+2?"]
    assert echoed[-1] == "'²': give a whole number above 0" and few_shot_count(prefix, None) == 5


def test_generate_hidden_avg_asks_layer_and_alpha(models_dir):
    answers = ["generate", "hidden_avg", "Capital of France?", "France's capital?", "", "", "0", "12", "1.5", "0.5",
               "", "8"]
    argv, echoed, _ = drive(answers, models_dir)
    assert argv == ["generate", "--method", "hidden_avg", "--fusion-layer", "12", "--fusion-alpha", "0.5",
                    "--max-new-tokens", "8", "--paraphrase", "France's capital?", "--", "Capital of France?"]
    assert echoed[1:] == ["'0': give a whole number above 0", "'1.5': give a number from 0 to 1"]
    default_layer, _, _ = drive(["generate", "hidden_avg", "Q?", "P?", "", "", "", "", "", ""], models_dir)
    assert "--fusion-layer" not in default_layer and default_layer[3:5] == ["--fusion-alpha", "1.0"]


def test_eval_flow(models_dir, tmp_path):
    answers = ["eval", "origin, avg ,flex", "nope.jsonl", "mmlu@", "sample-fill", "Qwen/Qwen2.5-0.5B-Instruct@v1.0",
               "restart", "", "3", "abc", "10", "2", str(tmp_path / "out.jsonl"), "16"]
    argv, echoed, prompts = drive(answers, models_dir)
    assert argv == ["eval", "--method", "origin", "--method", "avg", "--method", "flex", "--data", "sample-fill",
                    "--model", "Qwen/Qwen2.5-0.5B-Instruct@v1.0", "--positions", "restart", "--num-prompts", "3",
                    "--max-samples", "10", "--few-shot-k", "2", "--output", str(tmp_path / "out.jsonl"),
                    "--max-new-tokens", "16"]  # the method's own settings are asked as for generate
    assert ("prompts per question (the question and its paraphrases)", "5") in prompts
    assert ("output directory (empty: runs/<dataset>-<model>)", "") in prompts
    assert echoed[0] == ("'nope.jsonl': use one of sample-qa, sample-fill, sample-choice, sample-math, webqa, "
                         "myriadlama, triviaqa, nq_open, popqa, gsm8k, mmlu, "
                         "commonsense_qa, arc_challenge, arc_easy, openbookqa, hellaswag, piqa, sciq, boolq, "
                         "truthfulqa_mc1, "
                         "truthfulqa_mc2, winogrande (a Hub "
                         "one pinned: NAME@REV) or the path of an existing file "
                         "(e.g. items.jsonl)")
    assert echoed[1] == "'mmlu@': 'mmlu@' names no revision after '@': give a branch, tag or commit, or drop the '@'"
    pinned, _, _ = drive(["eval", "origin", "mmlu@v1", *[""] * 6], models_dir)
    assert pinned[pinned.index("--data") + 1] == "mmlu@v1"
    assert echoed[3] == "'abc': give a whole number above 0"


def _default(command, name: str) -> object:
    return inspect.signature(command).parameters[name].default.default  # the typer.Option's default


def test_eval_defaults_and_bench(models_dir):
    """Accepting every default runs what the bare command runs."""
    from minirun.cli.eval import eval_command
    from minirun.cli.common import NEW_TOKENS
    from minirun.cli.generate import generate
    from minirun.cli.tools import bench

    argv, _, _ = drive(["eval"] + [""] * 10, models_dir)
    methods = [m for flag, m in zip(argv, argv[1:]) if flag == "--method"]
    assert methods == _default(eval_command, "method")  # eval's own five
    assert argv[2 * len(methods) + 1:] == ["--data", "sample-qa", "--positions", "right", "--num-prompts", "5",
                                           "--few-shot-k", "5"]
    assert [_default(eval_command, n) for n in ("positions", "num_prompts", "few_shot_k", "max_new_tokens")] == \
        ["right", 5, 5, None] and _default(eval_command, "max_samples") is None
    argv, _, prompts = drive(["generate", "origin", "Q?", "", "", ""], models_dir)  # origin asks no paraphrase
    assert argv == ["generate", "--method", "origin", "--", "Q?"] and _default(generate, "max_new_tokens") is None
    assert not any(p.startswith("paraphrase") for p, _ in prompts) and NEW_TOKENS == 64
    argv, _, prompts = drive(["generate", "", "Q?", "", "", ""], models_dir)  # no method: the prompt alone
    assert argv == ["generate", "--", "Q?"] and _default(generate, "method") is None
    assert not any(p.startswith("paraphrase") for p, _ in prompts)
    argv, echoed, _ = drive(["bench", "origin,flex", "flex", str(models_dir / "not-a-model"),
                             str(models_dir / "tiny-llama"), "4", "1", "8"], models_dir)
    assert argv == ["bench", "--method", "flex", "--model", str(models_dir / "tiny-llama"),
                    "--num-paraphrases", "4", "--new-tokens", "8"]  # bench times one method, and names its own flags
    assert echoed[0] == "'origin,flex': this task runs one method: give a single name"
    assert "not a checkpoint directory" in echoed[2]
    assert echoed[3] == "'1': give a whole number above 1 (a decode step is timed)"
    argv, _, prompts = drive(["bench", "", "", ""], models_dir)
    assert argv == ["bench", "--method", "origin", "--new-tokens", "64"]  # origin asks no paraphrase: none offered
    assert not any(p.startswith("paraphrases") for p, _ in prompts)
    assert _default(bench, "method") == "origin"
    assert (_default(bench, "num_paraphrases"), _default(bench, "new_tokens")) == (None, 64)  # None: 5 to an ensemble


def test_interrupt_propagates(models_dir):
    def ask(prompt: str, default: str) -> str:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_interactive(ask, print, models_dir)


def test_local_models_are_finished_checkpoints(models_dir):
    """Converted (name/) and pulled (org/name/) checkpoints; not a folder a pull or conversion is still writing
    (or was killed in), nor one without weights."""
    for folder in (".tiny.partial-x1y2", "Org/pulled", "Org/.pulled.partial-z", "weightless"):
        (models_dir / folder).mkdir(parents=True)
        (models_dir / folder / "config.json").write_text("{}")
        if folder != "weightless":
            (models_dir / folder / "model.safetensors").write_bytes(b"")
    assert local_models(models_dir) == ["Org/pulled", "smollm2-135m-instruct", "tiny-llama"]
    assert local_models(models_dir / "absent") == []
    argv, _, _ = drive(["generate", "origin", "Q?", "Org/pulled", "", ""], models_dir)
    assert argv[argv.index("--model") + 1] == str(models_dir / "Org" / "pulled")


def test_the_default_model_offered_is_the_one_the_command_runs(models_dir, monkeypatch):
    monkeypatch.setenv("MINIRUN_MODEL", str(models_dir / "tiny-llama"))
    argv, _, prompts = drive(["generate", "origin", "Q?", "", "", ""], models_dir)
    assert ("model (listed name, checkpoint dir or HF repo id)", str(models_dir / "tiny-llama")) in prompts
    assert "--model" not in argv  # the command runs $MINIRUN_MODEL without it
    argv, _, _ = drive(["generate", "origin", "Q?", "smollm2-135m-instruct", "", ""], models_dir)
    assert argv[argv.index("--model") + 1] == "smollm2-135m-instruct"  # not $MINIRUN_MODEL


def test_eval_of_a_file_asks_which_benchmark_it_is_asked_as(models_dir, tmp_path):
    """A dataset file may need a benchmark's words (MMLU paraphrased; gap items, which only Winogrande's words ask):
    the flow asks for one, checks it names a dataset, and leaves it out when empty."""
    data = tmp_path / "gaps.jsonl"
    data.write_text("{}\n")
    rest = ["", "", "", "", "", ""]  # model, prompts, samples, few-shot, output, new tokens: the defaults
    argv, echoed, prompts = drive(["eval", "origin", str(data), "nope", "winogrande", *rest], models_dir)
    assert argv[argv.index("--data"):argv.index("--data") + 4] == ["--data", str(data), "--benchmark", "winogrande"]
    assert echoed[0].startswith("'nope': use one of sample-qa") and echoed[0].endswith("or leave it empty")
    argv, _, _ = drive(["eval", "origin", str(data), "", *rest], models_dir)
    assert "--benchmark" not in argv
    argv, _, prompts = drive(["eval", "origin", "sample-qa", *rest], models_dir)  # a named dataset is asked as itself
    assert "--benchmark" not in argv and not any(p.startswith("asked as benchmark") for p, _ in prompts)
