"""The command line through Typer's runner: generate (plain, JSON, methods), mask, errors, option checks."""
from __future__ import annotations

import inspect
import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch
import typer
from typer.testing import CliRunner

import minirun
from minirun.checkpoints.loader import auto_device
from minirun.cli import app, generate, tools
from minirun.cli.eval import eval_command
from minirun.engine.sampling import SamplingParams
from minirun.engine.session import compiled_decode_step
from minirun.errors import MinirunError
from minirun.eval.data import Item, ensemble_prompts, write_jsonl
from minirun.methods import METHODS, EnsembleOptions, Question, run_method
from minirun.methods.choice import score_choices

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(checkpoint_dirs):
    return checkpoint_dirs["qwen2"]


@pytest.fixture
def fresh_process(monkeypatch):
    """The decode step's memory of the shapes it met, empty as in a new `minirun` process: an earlier
    test's compile of the same model and shape would otherwise leave nothing to announce."""
    monkeypatch.setattr(compiled_decode_step(torch.device("cpu")), "shapes", set())


@pytest.mark.parametrize("method", [None, "avg"])
def test_tokens_per_second_leaves_kernel_calibration_out(tiny, monkeypatch, method):
    """A machine's first run measures kernels for its shapes (tens of seconds, once): the rate printed is a
    later run's, as eval's rows have it, not 0.5 tokens/s. The command's clock is faked: no timing in a test."""
    from types import SimpleNamespace

    from minirun.engine.session import Session
    from minirun.layers import calibrate

    now, measured, prefill = [0.0], [0.0], Session.prefill
    monkeypatch.setattr(generate, "time", SimpleNamespace(perf_counter=lambda: now[0]))
    monkeypatch.setattr(calibrate, "seconds_measuring", lambda: measured[0])

    def calibrating_prefill(*args, **kwargs):  # a first prefill that calibrates for 60 s, and nothing else takes time
        now[0], measured[0] = now[0] + 60, measured[0] + 60
        return prefill(*args, **kwargs)

    monkeypatch.setattr(Session, "prefill", calibrating_prefill)
    args = ["generate", "--model", tiny, "Capital?", "--max-new-tokens", "4", "--json"]
    out = json.loads(invoke(*args, *(["--method", method, "-p", "France's capital?"] if method else [])).stdout)
    tokens = len(out["token_ids"])
    assert tokens and out["tokens_per_second"] > tokens  # counting the 60 s measuring, it would be tokens / 60


@pytest.mark.parametrize("args", [["generate", "\udcff\udcfe"], ["generate", "-m", "avg", "Capital?", "-p", "\udcff"],
                                  ["mask", "\udcff", "-p", "x"], ["eval", "--output", "runs/\udcff", "-m", "origin"]])
def test_an_argument_that_is_not_utf8_is_one_line(tiny, args, tmp_path, monkeypatch):
    """Bytes that are not UTF-8 reach Python as surrogates, which the tokenizer and every file written refuse: one
    line naming it, before any model loads, not a traceback."""
    monkeypatch.chdir(tmp_path)
    result = invoke(*args, "--model", tiny)
    assert result.exit_code == 1 and "an argument is not UTF-8 text" in result.output, result.output
    assert "Traceback" not in result.output and not (tmp_path / "runs").exists()


def test_short_method_flag_in_every_command_taking_a_method(tiny):
    """`-m` names the method wherever --method does (eval took it; generate, mask and bench refused it)."""
    runs = [invoke("generate", "--model", tiny, "Capital?", flag, "avg", "-p", "France's capital?", "--max-new-tokens",
                   "3", "--json") for flag in ("-m", "--method")]
    assert runs[0].exit_code == 0, runs[0].output
    short, long = (json.loads(r.stdout) for r in runs)
    assert short["method"] == "avg" and short["token_ids"] == long["token_ids"]
    commands = typer.main.get_command(app).commands
    for name in ("generate", "mask", "bench", "eval"):
        opts = next(p.opts for p in commands[name].params if "--method" in p.opts)
        assert "-m" in opts, name


def test_generate_json_matches_api(tiny):
    result = invoke("generate", "--model", tiny, "The capital of France is", "--raw", "--max-new-tokens", "8", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    expected = minirun.load(tiny).generate("The capital of France is", max_new_tokens=8, chat=False)
    assert out["token_ids"] == expected.token_ids and out["text"] == expected.text
    assert out["prompt_tokens"] == expected.prompt_tokens and out["tokens_per_second"] > 0


def test_thinking_asked_of_a_template_without_its_switch_is_said(tiny, checkpoint_dirs, tmp_path):
    """--thinking where the chat template has no reasoning switch (no enable_thinking) changes no prompt: generate took
    it silently, as eval warns of it; Qwen3's template takes it without a word."""
    for args in ([], ["--method", "avg", "--paraphrase", "Hello there"]):
        result = invoke("generate", "--model", tiny, "Hi", "--thinking", "--max-new-tokens", "1", *args)
        assert result.exit_code == 0 and "chat template has no reasoning switch" in result.stderr, result.output
    from checkpoints import with_thinking_switch

    switched = with_thinking_switch(checkpoint_dirs["qwen3"], tmp_path / "q3")
    result = invoke("generate", "--model", switched, "Hi", "--thinking", "--max-new-tokens", "1")
    assert result.exit_code == 0 and "reasoning switch" not in result.stderr, result.output


def test_generate_streams_text(tiny):
    result = invoke("generate", "--model", tiny, "Who wrote Hamlet?", "--max-new-tokens", "6")
    expected = minirun.load(tiny).generate("Who wrote Hamlet?", max_new_tokens=6)
    assert result.exit_code == 0
    assert result.stdout.startswith(expected.text)


def test_generate_compile_reports_each_compile_on_stderr(tiny, fresh_process):
    from minirun.layers import flex

    try:
        result = invoke("generate", "--model", tiny, "Who wrote Hamlet?", "--max-new-tokens", "6", "--compile", "--json")
    finally:
        flex.set_compiled(False)  # the command switched this process to compiled kernels
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["token_ids"] == minirun.load(tiny).generate("Who wrote Hamlet?", max_new_tokens=6).token_ids
    assert "compiling the decode step for batch 1" in result.stderr


def test_compile_notice_never_lands_mid_answer(tiny, fresh_process):
    """The decode step compiles after the first token is on screen: its notice starts a new line."""
    from minirun.layers import flex

    llm = minirun.load(tiny)
    for prompt in ("Hello", "Who wrote Hamlet?"):  # the seeded checkpoint's first token: "8", then a partial byte
        compiled_decode_step(torch.device("cpu")).shapes.clear()  # each prompt's compile announced (fixture's set)
        try:
            result = invoke("generate", "--model", tiny, prompt, "--max-new-tokens", "6", "--compile")
        finally:
            flex.set_compiled(False)
        expected = llm.generate(prompt, max_new_tokens=6)
        assert result.exit_code == 0 and result.stdout.startswith(expected.text), result.output
        assert "compiling the decode step" in result.stderr
        before = result.stderr.split("compiling the decode step")[0]  # earlier notices end in "\n" themselves
        shown = llm.tokenizer.decode(expected.token_ids[:1]).rstrip("\ufffd")
        assert bool(shown) == (prompt == "Hello")  # both branches below are taken
        if shown:  # the first token was on screen
            assert before == "\n" or before.endswith("\n\n"), result.stderr  # a line break first, then the notice
        else:  # its bytes were still arriving: nothing shown, no line to break
            assert before == "" or before.endswith("\n"), result.stderr


@pytest.mark.parametrize("method", ["origin", "per_prompt", "avg", "max", "flex"])
def test_generate_methods_json(tiny, method):
    paras = ["Which city is the capital of France?", "Name France's capital."]
    result = invoke("generate", "--model", tiny, "--method", method, "What is the capital of France?",
                    "-p", paras[0], "-p", paras[1], "--max-new-tokens", "6", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["method"] == method
    question = Question("What is the capital of France?", ["What is the capital of France?", *paras])
    expected = run_method(minirun.load(tiny), method, [question], EnsembleOptions(max_new_tokens=6))[0]
    assert out["token_ids"] == expected.token_ids
    # origin's run beside the others (a loop over methods) is kept, and told that it used no paraphrase
    assert ("origin asks the question alone: the 2 paraphrase(s) are not used" in result.stderr) == (method == "origin")
    if method == "per_prompt":
        assert out["answers"] == expected.answers and len(out["answers"]) == 3


def test_generate_hidden_avg_takes_layer_and_alpha(tiny):
    paras = ["Which city is the capital of France?", "Name France's capital."]
    result = invoke("generate", "--model", tiny, "--method", "hidden_avg", "What is the capital of France?",
                    "-p", paras[0], "-p", paras[1], "--max-new-tokens", "6", "--fusion-layer", "1",
                    "--fusion-alpha", "0.5", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    question = Question("What is the capital of France?", ["What is the capital of France?", *paras])
    options = EnsembleOptions(max_new_tokens=6, fusion_layer=1, fusion_alpha=0.5)
    assert out["token_ids"] == run_method(minirun.load(tiny), "hidden_avg", [question], options)[0].token_ids
    assert out["fusion_layer"] == 1
    too_deep = invoke("generate", "--model", tiny, "--method", "hidden_avg", "Q?", "-p", "P?", "--fusion-layer", "9")
    assert_clean_error(too_deep, "--fusion-layer 9 is outside the model's blocks 1..2")


def test_mask_names_the_hidden_avg_fusion_layer(tiny):
    result = invoke("mask", "--model", tiny, "Capital?", "-p", "France capital?", "--method", "hidden_avg",
                    "--fusion-layer", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.count("# hidden_avg (fused from block 1) row") == 2


def test_paraphrases_file(tiny, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Which city is the capital of France?\n\nName France's capital.\n")
    a = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "--paraphrases-file", f, "--json",
               "--max-new-tokens", "4")
    b = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "-p", "Which city is the capital of France?",
               "-p", "Name France's capital.", "--json", "--max-new-tokens", "4")
    assert json.loads(a.stdout)["prompts"] == json.loads(b.stdout)["prompts"]
    assert json.loads(a.stdout)["token_ids"] == json.loads(b.stdout)["token_ids"]


def test_rewrites_are_the_models_kept_rewordings_fused_like_given_ones(tiny, monkeypatch):
    """`--rewrites N` has the model reword the question N times (sampled with --seed), drops what `minirun paraphrase`
    drops (an empty rewrite, a copy of the question), and runs exactly what the kept ones given by -p would run."""
    from minirun.eval import paraphrase

    asked = []

    def rewrite_batch(llm, items, num, temperature, top_p, max_new_tokens, seed, budget):
        asked.append((items[0].question, num, temperature, seed))
        return [["Which city is the capital of France?", "", "Capital?", "Name France's capital."]]

    monkeypatch.setattr(paraphrase, "rewrite_batch", rewrite_batch)
    written = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "--rewrites", "4", "--seed", "7",
                     "--json", "--max-new-tokens", "4")
    given = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "-p", "Which city is the capital of "
                   "France?", "-p", "Name France's capital.", "--json", "--max-new-tokens", "4")
    assert written.exit_code == 0, written.output
    out = json.loads(written.stdout)
    assert asked == [("Capital?", 4, 1.5, 7)]
    assert out["rewrites"] == ["Which city is the capital of France?", "Name France's capital."]
    assert out["prompts"] == json.loads(given.stdout)["prompts"]
    assert out["token_ids"] == json.loads(given.stdout)["token_ids"]
    shown = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "--rewrites", "4",
                   "--max-new-tokens", "2")
    assert "rewrite: Name France's capital." in shown.stderr and "rewrite: Capital?" not in shown.stderr


def test_a_fill_prompt_under_fill_examples_is_rewritten_into_fill_prompts(tiny, monkeypatch):
    """Under `--few-shot` fill examples the prompt is a fill prompt ("The capital of France is"): its rewrites are
    asked and kept as `minirun paraphrase` rewrites a fill item's (one that is a question, or that completes the
    prompt, dropped); question worked examples, or none, keep the question's rules."""
    from minirun.eval import paraphrase
    from minirun.eval.data import SAMPLE_DIR

    asked = []

    def rewrite_batch(llm, items, num, temperature, top_p, max_new_tokens, seed, budget):
        asked.append(items[0].task)
        assert paraphrase.FILL_INSTRUCTION in paraphrase.rewrite_prompt(items[0]) or items[0].task != "fill"
        return [["France's capital city is", "Which city is the capital of France?", "The capital of France is Paris"]]

    monkeypatch.setattr(paraphrase, "rewrite_batch", rewrite_batch)
    fill = invoke("generate", "--model", tiny, "--method", "avg", "The capital of France is", "--rewrites", "3",
                  "--few-shot", str(SAMPLE_DIR / "fewshot_fill.jsonl"), "--json", "--max-new-tokens", "2")
    assert fill.exit_code == 0, fill.output
    assert json.loads(fill.stdout)["rewrites"] == ["France's capital city is"]
    question = invoke("generate", "--model", tiny, "--method", "avg", "The capital of France is", "--rewrites", "3",
                      "--few-shot", str(SAMPLE_DIR / "fewshot_qa.jsonl"), "--json", "--max-new-tokens", "2")
    assert question.exit_code == 0, question.output
    assert asked == ["fill", "qa"] and "Which city is the capital of France?" in json.loads(question.stdout)["rewrites"]


def test_a_word_problem_under_maths_examples_is_solved_past_its_lines(tiny, monkeypatch, tmp_path):
    """Under `--few-shot` maths examples the answer is a worked solution: it stops at a next question, not at its
    first line's end, and a vote counts the prompts' final numbers ("#### 18" and "$18.00" agree); a benchmark's
    rows (GSM8K's train split saved as parquet) serve as examples as they do for `eval --few-shot`."""
    import pandas as pd

    import minirun.methods
    from minirun.eval.data import SAMPLE_DIR

    seen = []
    real = minirun.methods.run_method
    monkeypatch.setattr(minirun.methods, "run_method",
                        lambda llm, method, qs, options: seen.append(options) or real(llm, method, qs, options))
    result = invoke("generate", "--model", tiny, "--method", "vote", "Janet has 9 eggs and sells them at $2. How "
                    "much does she make?", "-p", "What does Janet earn selling 9 eggs at $2?", "--few-shot",
                    str(SAMPLE_DIR / "fewshot_math.jsonl"), "--few-shot-k", "1", "--json", "--max-new-tokens", "2")
    assert result.exit_code == 0, result.output
    assert [(o.stop, o.worked) for o in seen] == [(("\nQ:",), True)]
    pd.DataFrame({"question": ["A box holds 6 cans. How many cans are in 9 boxes?"],
                  "answer": ["9 boxes hold 9 * 6 = <<9*6=54>>54 cans.\n#### 54"]}).to_parquet(tmp_path / "train.parquet")
    rows = invoke("generate", "--model", tiny, "--method", "origin", "How many cans are in 4 boxes of 6?", "--few-shot",
                  str(tmp_path / "train.parquet"), "--few-shot-k", "1", "--max-new-tokens", "2")
    assert rows.exit_code == 0, rows.output
    assert [(o.stop, o.worked) for o in seen[1:]] == [(("\nQ:",), True)]
    solved = invoke("generate", "--model", tiny, "--method", "origin", "How many cans are in 4 boxes of 6?",
                    "--few-shot", str(SAMPLE_DIR / "fewshot_math.jsonl"), "--few-shot-k", "0", "--json")
    assert solved.exit_code == 0, solved.output  # the instruction alone: room for 256 tokens in the tiny context
    assert seen[-1].max_new_tokens == 256  # a worked solution's budget, not 64
    one_line_error(invoke("generate", "--model", tiny, "--method", "weighted_avg", "How many cans?", "-p", "Cans?",
                          "--few-shot", str(SAMPLE_DIR / "fewshot_math.jsonl")),
                   "weighted_avg weighs each prompt by how its 16-token samples agree", "use vote")
    from minirun.methods import MethodResult

    texts = ["9 * 2 = 18, so\n#### 18", "It is 18 in all."]  # a first line is no final number
    monkeypatch.setattr(minirun.methods, "run_method", lambda llm, method, qs, options: [MethodResult(
        method, texts[0], [1], "stop", 4, qs[0].paraphrases, answers=texts, answer_token_ids=[[1], [1]], chosen=0)])
    voted = invoke("generate", "--model", tiny, "--method", "vote", "How much?", "-p", "What is it?", "--few-shot",
                   str(SAMPLE_DIR / "fewshot_math.jsonl"), "--few-shot-k", "0")
    assert voted.exit_code == 0 and [line.split("] ")[1] for line in voted.stderr.splitlines()[:2]] == ["18", "18"]


def test_rewrites_none_kept_or_with_origin_is_a_one_line_error(tiny, monkeypatch):
    from minirun.eval import paraphrase

    monkeypatch.setattr(paraphrase, "rewrite_batch", lambda llm, items, num, *rest: [["", "Capital?"]])
    one_line_error(invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "--rewrites", "2"),
                   "none of the model's 2 rewordings of the question was kept", "--paraphrase")
    kept_given = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "--rewrites", "2", "-p",
                        "Name France's capital.", "--json", "--max-new-tokens", "2")
    assert json.loads(kept_given.stdout)["rewrites"] == []  # the given paraphrase carries the ensemble, said so
    assert "none of the model's 2 rewordings of the question was kept" in kept_given.stderr
    assert "runs over the given paraphrases alone" in kept_given.stderr
    one_line_error(invoke("generate", "--model", tiny, "Capital?", "--rewrites", "2"), "--rewrites only applies")
    one_line_error(invoke("generate", "--model", tiny, "--method", "origin", "Capital?", "--rewrites", "2"),
                   "--rewrites only applies")


def test_paraphrases_that_repeat_the_question_are_named_and_few_shot_k_needs_few_shot(tiny, tmp_path):
    """An ensemble whose paraphrases all repeat the question (up to case and spacing) answers as origin: said, not
    silent; --few-shot-k without --few-shot would be ignored: refused before the model loads."""
    same = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "-p", "capital? ", "--max-new-tokens", "2")
    assert same.exit_code == 0 and "so avg runs over one prompt and answers as origin does" in same.stderr
    reworded = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "-p", "France's capital?",
                      "--max-new-tokens", "2")
    assert reworded.exit_code == 0 and "answers as origin" not in reworded.stderr
    for command, k in (("generate", "3"), ("mask", "3"), ("generate", "5"), ("mask", "5")):  # mask drew no example
        # and said nothing; the default's count given was ignored silently
        one_line_error(invoke(command, "--model", "no/such-model-loaded", "Capital?", "--few-shot-k", k),
                       "--few-shot-k counts the examples drawn from --few-shot", "add --few-shot FILE")
    prefix = tmp_path / "prefix.txt"
    prefix.write_text("Q: 2+2?\nA: 4\n\n")
    one_line_error(invoke("generate", "--model", "no/such-model-loaded", "Capital?", "--few-shot", str(prefix),
                          "--few-shot-k", "3"), "prefix.txt is read as the prompt's text itself: drop --few-shot-k")


def test_fusion_without_paraphrases_is_one_line_error(tiny):
    result = invoke("generate", "--model", tiny, "--method", "avg", "Capital?")
    assert result.exit_code == 1
    assert "none were given" in result.stderr and "Traceback" not in result.output


def test_missing_model_dir_is_one_line_error(tmp_path):
    result = invoke("generate", "--model", tmp_path / "nope", "hi")
    assert result.exit_code == 1 and "no model directory" in result.stderr


def test_prompt_longer_than_context_is_an_error_or_truncated(tiny):
    long_prompt = "word " * 600  # the tiny model's context is 512
    result = invoke("generate", "--model", tiny, "--raw", long_prompt, "--max-new-tokens", "4")
    assert result.exit_code == 1 and "exceeds the model's context" in result.stderr
    result = invoke("generate", "--model", tiny, "--raw", long_prompt, "--max-new-tokens", "4", "--truncate", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)["prompt_tokens"] == 512 - 4
    result = invoke("generate", "--model", tiny, "--raw", long_prompt, "--max-new-tokens", "512", "--truncate")
    assert_clean_error(result, "max_new_tokens (512) leaves no room for a prompt")  # not "pass --truncate"


def test_mask_terminal_rendering(tiny):
    result = invoke("mask", "--model", tiny, "Capital?", "-p", "France capital?", "--raw", "--suffix", "\nA:")
    assert result.exit_code == 0, result.output
    assert "# flex row 0" in result.stdout and "<gen>" in result.stdout


@pytest.mark.parametrize("shots", ["fewshot_qa.jsonl", "prefix.txt"])
def test_mask_draws_the_few_shot_prompt_generate_runs(tiny, tmp_path, monkeypatch, shots):
    """`mask --prefix-file` took a JSONL's raw lines as the prefix and no "Q: ... A:" blocks: not what generate ran."""
    import minirun.cli.mask_view
    import minirun.eval.loop  # noqa: F401  imported before the patch below, so it keeps the real run_method
    import minirun.methods
    from minirun.eval.data import SAMPLE_DIR

    path = SAMPLE_DIR / shots if shots.endswith(".jsonl") else tmp_path / shots
    if not path.exists():
        path.write_text("Answer briefly.\n\n")
    seen = {}

    def record(command: str, prefix: str, suffix: str) -> None:  # what the command would run or draw; then stop
        seen[command] = prefix, suffix
        raise SystemExit(0)

    monkeypatch.setattr(minirun.methods, "run_method",
                        lambda llm, method, asked, options: record("generate", asked[0].prefix, asked[0].suffix))
    monkeypatch.setattr(minirun.cli.mask_view, "build_view",
                        lambda llm, question, paraphrases, **kw: record("mask", kw["prefix"], kw["suffix"]))
    asked = ["Capital?", "-p", "France capital?", "--method", "avg", "--model", tiny, "--few-shot", path,
             *(["--few-shot-k", "2"] if shots.endswith(".jsonl") else [])]  # a prefix file's text draws nothing
    invoke("generate", *asked)
    invoke("mask", *asked)
    assert seen["mask"] == seen["generate"]
    prefix, suffix = seen["mask"]
    assert prefix.endswith("Q: ") and suffix == "\nA:" and "{" not in prefix  # blocks, not the file's JSON lines
    one_line_error(invoke("mask", *asked, "--prefix-file", path), "--prefix-file and --few-shot both give the prefix")


def test_mask_png(tiny, tmp_path):
    out = tmp_path / "mask.png"
    result = invoke("mask", "--model", tiny, "Capital?", "-p", "France capital?", "--out", out)
    assert result.exit_code == 0, result.output
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_interactive_piped_answers_print_and_run_the_equivalent_command(tiny):
    answers = ["generate", "flux", "flex", "Capital?", "France capital?", "", str(tiny), "right", "yes", "", "6"]
    result = runner.invoke(app, ["interactive"], input="\n".join(answers) + "\n")
    assert result.exit_code == 0, result.output
    assert "'flux'" in result.stdout  # the invalid method was refused with its reason, then re-asked
    command = f"minirun generate --method flex --model {tiny} --positions right --max-new-tokens 6 " \
              "--paraphrase 'France capital?' -- 'Capital?'"
    assert "\n" + command in result.stdout  # on a line of its own, after the last (not echoed) answer
    direct = invoke("generate", "--method", "flex", "--model", tiny, "--positions", "right", "--max-new-tokens", "6",
                    "Capital?", "--paraphrase", "France capital?")
    assert direct.exit_code == 0
    assert result.stdout.endswith(direct.stdout)
    refused = runner.invoke(app, ["interactive"], input="\n".join(answers[:-1] + ["100000000"]) + "\n")
    assert refused.exit_code == 1 and "beyond the model's context" in refused.stderr  # the command's own status
    ended = runner.invoke(app, ["interactive"], input="generate\n")  # was "error: aborted"
    one_line_error(ended, "the answers stopped before the last question (input ended or Ctrl-C): nothing was run")


def assert_clean_error(result, *needles: str) -> None:
    """A non-zero exit with a message naming the problem, never an exception's traceback."""
    assert result.exit_code in (1, 2), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    text = " ".join(result.output.replace("│", " ").split())  # Typer boxes and wraps its messages
    assert "Traceback" not in text and all(n in text for n in needles), text


def one_line_error(result, *needles: str) -> None:
    """`assert_clean_error`, and the message is one line on stderr, however long (no wrapping at 80 columns)."""
    assert_clean_error(result, *needles)
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_usage_errors_are_one_line(tiny):
    for args, needle in [(["generate", "--model", tiny, "--max-new-tokens", "-1", "hi"], "--max-new-tokens"),
                         (["generate"], "Missing argument 'prompt'"),
                         (["generat", "hi"], "No such command 'generat'"),
                         (["eval", "--bogus"], "No such option: --bogus")]:
        result = invoke(*args)
        assert result.exit_code == 2
        one_line_error(result, needle, "--help")
    long = invoke("generate", "--model", tiny, "--method", "avg", "Capital?")
    assert len(long.stderr.strip()) > 80
    one_line_error(long, "none were given: add --paraphrase, lines to --paraphrases-file, or --rewrites N")
    listing = invoke()
    assert listing.exit_code == 0 and "generate" in listing.stdout and "eval" in listing.stdout


def test_generate_few_shot_file_builds_eval_s_head(tiny, tmp_path):
    """generate --few-shot FILE.jsonl: only the examples of the first item's task, never the question asked,
    and k more than the file holds is an error, as in eval."""
    shots = tmp_path / "shots.jsonl"
    write_jsonl([Item("a", "Capital of Spain?", [], ["Madrid"]), Item("b", "Italy's capital is", [], ["Rome"], "fill"),
                 Item("c", "Who wrote Hamlet?", [], ["Shakespeare"])], shots)
    ok = invoke("generate", "--model", tiny, "Who wrote Faust?", "--few-shot", shots, "--few-shot-k", "2",
                "--max-new-tokens", "2")
    assert ok.exit_code == 0, ok.output
    one_line_error(invoke("generate", "--model", tiny, "Who wrote Faust?", "--few-shot", shots, "--few-shot-k", "3"),
                   "asked for k=3 few-shot examples but 2 are available")  # the fill example is not one
    one_line_error(invoke("generate", "--model", tiny, "Who wrote Hamlet?", "--few-shot", shots, "--few-shot-k", "2"),
                   "1 of the 2 few-shot qa examples are questions under test")


def test_a_rewrite_is_never_a_few_shot_example(tiny, tmp_path, monkeypatch):
    """The few-shot examples are drawn again once the model's rewordings are known: one that a rewrite repeats would
    hand the model its answer, as a given paraphrase's would."""
    from minirun.eval import paraphrase

    monkeypatch.setattr(paraphrase, "rewrite_batch", lambda llm, items, num, *rest: [["Who wrote Hamlet?"]])
    shots = tmp_path / "shots.jsonl"
    write_jsonl([Item("a", "Capital of Spain?", [], ["Madrid"]), Item("c", "Who wrote Hamlet?", [], ["Shakespeare"])],
                shots)
    one_line_error(invoke("generate", "--model", tiny, "--method", "avg", "Who is the author of Hamlet?", "--rewrites",
                          "1", "--few-shot", shots, "--few-shot-k", "2"),
                   "1 of the 2 few-shot qa examples are questions under test")


def test_bad_files_and_paths_are_one_line_errors(tiny, tmp_path):
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00not text")
    one_line_error(invoke("generate", "--model", tiny, "--method", "avg", "hi", "--paraphrases-file", binary),
                   f"{binary} is not UTF-8 text")
    one_line_error(invoke("generate", "--model", tiny, "--method", "avg", "hi", "--paraphrases-file", tmp_path),
                   "is a directory")
    one_line_error(invoke("generate", "--model", tiny, "hi", "--few-shot", binary), f"{binary} is not UTF-8 text")
    data = tmp_path / "data.jsonl"
    data.write_bytes(b"\xff\xfe{}\n")
    one_line_error(invoke("eval", "--model", tiny, "--data", data), f"{data} is not UTF-8 text")
    taken = tmp_path / "taken"
    taken.write_text("a file, not a run directory")
    one_line_error(invoke("eval", "--model", tiny, "--max-samples", "1", "--output", taken, "--no-progress"),
                   str(taken), "give --output a directory")
    for out, needle in [(tmp_path, "is a directory"), (tmp_path / "m.txt", "give a file name ending in one of"),
                        (tmp_path / "m", "give a file name ending in one of"),
                        (tmp_path / "no" / "m.png", "does not exist")]:
        one_line_error(invoke("mask", "--model", tiny, "Capital?", "-p", "x", "--out", out), needle)
    assert not (tmp_path / "m.png").exists() and not (tmp_path / "m").exists()


def test_options_no_method_reads_are_refused(tiny, tmp_path):
    """A setting the user believes is in effect is never silently ignored (nor written into a run's key)."""
    from minirun.eval.data import SAMPLE_DIR

    ask = ["generate", "--model", tiny, "--method", "avg", "hi", "-p", "x"]
    run = ["eval", "--model", tiny, "--max-samples", "1", "--no-progress", "--output", tmp_path / "run"]
    for args, needle in [
        (["generate", "--model", tiny, "hi", "-p", "x"], "paraphrases were given without --method"),
        (["generate", "--model", tiny, "-m", "", "hi", "-p", "x"], "unknown method ''"),  # not origin's answer
        (["generate", "--model", tiny, "hi", "--seed", "5"], "--seed seeds the sampling draws, and greedy decoding"),
        ([*ask, "--seed", "5"], "--seed seeds sampling, and avg draws nothing here"),
        ([*ask, "--positions", "restart"], "--positions only applies to flex, not to avg"),
        ([*ask, "--flex-bias", "2"], "--flex-bias only applies to flex"),
        ([*ask, "--fusion-layer", "1"], "--fusion-layer only applies to hidden_avg"),
        ([*ask, "--fusion-alpha", "0.5"], "--fusion-alpha only applies to hidden_avg"),
        ([*ask, "--num-samples", "3"], "--num-samples only applies to weighted_avg, weighted_max"),
        (["mask", "--model", tiny, "--method", "avg", "Capital?", "-p", "x", "--positions", "restart"], "--positions"),
        ([*run, "-m", "origin", "-m", "avg", "--positions", "restart"], "not to origin, avg"),
        ([*run, "--choice-format", "letters"], "apply to multiple-choice items; sample-qa has none"),
        ([*run, "--choice-score", "sum"], "apply to multiple-choice items"),
        ([*run, "--data", "sample-choice", "--match", "bidirectional"], "compares generated answers"),
        ([*run, "--data", "sample-choice", "--few-shot", SAMPLE_DIR / "fewshot_qa.jsonl"],
         "the few-shot examples are qa items but the questions are choice"),
    ]:
        one_line_error(invoke(*args), needle)
    assert not (tmp_path / "run").exists()


def test_empty_texts_are_refused(tiny):
    one_line_error(invoke("generate", "--model", tiny, ""), "the prompt is empty")
    one_line_error(invoke("generate", "--model", tiny, "--raw", "   "), "the prompt is empty")
    one_line_error(invoke("generate", "--model", tiny, "--method", "avg", "hi", "-p", "x", "-p", " "),
                   "--paraphrase 2 is empty")
    one_line_error(invoke("generate", "--model", tiny, "hi", "--stop", ""), "stop strings must be non-empty text")
    one_line_error(invoke("mask", "--model", tiny, "", "-p", "x"), "the prompt is empty")


def test_python_callers_get_one_line_errors_for_wrong_shapes(tiny):
    llm = minirun.load(tiny)
    question = Question("Capital?", ["Capital?", "France's capital?"])
    assert EnsembleOptions(stop="ab").stop == ("ab",)  # one stop string, not two characters
    assert llm.generate("hi", max_new_tokens=4, stop="ab").token_ids == llm.generate("hi", 4, stop=["ab"]).token_ids
    for call, message in [
        (lambda: llm.generate(["", "What is 2+2?"], max_new_tokens=2), "prompt 0 is empty"),
        (lambda: llm.generate(["hi", 5], max_new_tokens=2), "prompt 1 is not text"),
        (lambda: run_method(llm, "avg", question), "questions must be a non-empty list of Question"),
        (lambda: run_method(llm, "avg", []), "questions must be a non-empty list of Question"),
        (lambda: run_method(llm, "avg", ["Capital?"]), "questions must be a non-empty list of Question"),
        (lambda: run_method(llm, "avg", [question], {"max_new_tokens": 2}), "options must be an EnsembleOptions"),
        (lambda: score_choices(llm, "avg", [question], ["Paris"]), "choices must be one list of option strings"),
    ]:
        with pytest.raises(MinirunError, match=message):
            call()


def test_unknown_device_and_no_tokens_are_clean_errors(tiny):
    assert_clean_error(invoke("generate", "--model", tiny, "--device", "gpu0", "hi"), "unknown device 'gpu0'")
    for device in ("mps", "meta", "xpu"):  # torch knows them; minirun would fail deep inside a run
        assert_clean_error(invoke("generate", "--model", tiny, "--device", device, "hi"),
                           f"device '{device}' is not supported: minirun runs on cpu or cuda")
    if not torch.cuda.is_available():
        assert_clean_error(invoke("generate", "--model", tiny, "--device", "cuda:1", "hi"),
                           "device 'cuda:1' requested but no CUDA GPU is available: run on cpu")
    with pytest.raises(minirun.MinirunError, match="max_new_tokens must be at least 1"):
        minirun.load(tiny).generate("hi", max_new_tokens=0)


def test_device_auto_is_the_gpu_where_one_is_visible(tiny, monkeypatch):
    """The commands' default: a run on a GPU machine uses the GPU unasked, and every named device is kept."""
    assert [auto_device(d) for d in ("cpu", "cuda", "cuda:1")] == ["cpu", "cuda", "cuda:1"]
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert auto_device("auto") == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert auto_device("auto") == "cpu" and minirun.load(tiny, device="auto").device.type == "cpu"
    for command in (generate.generate, eval_command, tools.bench, tools.paraphrase):
        assert inspect.signature(command).parameters["device"].default.default == "auto"  # the typer.Option's
    result = invoke("generate", "--model", tiny, "--max-new-tokens", "2", "--json", "hi")
    assert result.exit_code == 0, result.output


def test_unknown_method_lists_the_methods(tiny):
    result = invoke("generate", "--model", tiny, "--method", "foo", "hi")
    assert_clean_error(result, "unknown method 'foo'", ", ".join(METHODS))
    assert "none were given" not in result.output


CLI_CHECKS = [  # (arguments after the command, what the message must say); "M" is the tiny model
    (["generate", "--model", "M", "--max-new-tokens", "-3", "hi"], "--max-new-tokens"),
    (["generate", "--model", "M", "--max-new-tokens", "0", "hi"], "--max-new-tokens"),
    (["generate", "--model", "M", "--method", "avg", "--max-new-tokens", "0", "hi", "-p", "x"], "--max-new-tokens"),
    (["generate", "--model", "M", "--temperature", "-1", "hi"], "--temperature"),
    (["generate", "--model", "M", "--temperature", "1", "--top-k", "0", "hi"], "--top-k"),
    (["generate", "--model", "M", "--temperature", "1", "--top-p", "1.5", "hi"], "--top-p"),
    (["generate", "--model", "M", "--temperature", "1", "--top-p", "0", "hi"], "'--top-p': 0.0 is not above 0"),
    (["generate", "--model", "M", "--method", "avg", "--top-k", "5", "hi", "-p", "x"], "only apply to plain generation"),
    (["generate", "--model", "M", "--top-p", "0.5", "hi"], "temperature 0 decodes greedily: set a temperature"),
    (["generate", "--model", "M", "--method", "avg", "--truncate", "hi", "-p", "x"], "--truncate only applies to plain"),
    (["generate", "--model", "M", "--raw", "--no-thinking", "hi"], "--raw uses none: drop one of them"),
    (["eval", "--model", "M", "--data", "sample-qa", "--no-chat", "--thinking"], "--no-chat uses none: drop one of them"),
    (["generate", "--model", "M", "--few-shot-k", "-1", "hi"], "--few-shot-k"),
    (["generate", "--model", "M", "--method", "weighted_avg", "--num-samples", "0", "hi", "-p", "x"], "--num-samples"),
    (["generate", "--model", "M", "--method", "flex", "--flex-bias", "nan", "hi", "-p", "x"], "flex_bias must be"),
    (["generate", "--model", "M", "--method", "flex", "--flex-bias", "0", "hi", "-p", "x"], "flex_bias must be"),
    (["generate", "--model", "M", "--method", "flex", "--positions", "left", "hi", "-p", "x"], "unknown position scheme"),
    (["eval", "--model", "M", "--num-prompts", "0"], "--num-prompts"),
    (["eval", "--model", "M", "--num-paraphrases", "0"], "--num-paraphrases"),
    (["eval", "--model", "M", "--batch-size", "0"], "--batch-size"),
    (["eval", "--model", "M", "--few-shot-k", "-1"], "--few-shot-k"),
    (["eval", "--model", "M", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["eval", "--model", "M", "--max-samples", "0"], "--max-samples"),
    (["eval", "--model", "M", "--num-samples", "0"], "--num-samples"),
    (["eval", "--model", "M", "-m", "origin,vot"], "unknown method 'vot' in --method"),
    (["eval", "--model", "M", "-m", "origin,,avg"], "unknown method '' in --method"),
    (["bench", "--model", "M", "--batch", "0"], "--batch"),
    (["bench", "--model", "M", "--num-paraphrases", "0"], "--num-paraphrases"),
    (["bench", "--model", "M", "--repeats", "0"], "--repeats"),
    (["bench", "--model", "M", "--new-tokens", "1"], "--new-tokens"),
    (["bench", "--model", "M", "--num-paraphrases", "3"], "--num-paraphrases only applies to the ensemble methods"),
    (["bench", "--model", "M", "--device", "cpu", "--compare", "transformers,captured"], "a CPU records none"),
    (["bench", "--model", "M", "--warmup", "-1"], "--warmup"),
    (["mask", "--model", "M", "--decode-steps", "-1", "Capital?", "-p", "x"], "--decode-steps"),
    (["paraphrase", "--model", "M", "--num", "0", "sample-qa", "out.jsonl"], "--num"),
    (["paraphrase", "--model", "M", "--temperature", "-1", "sample-qa", "out.jsonl"], "--temperature"),
    (["paraphrase", "--model", "M", "--top-p", "2", "sample-qa", "out.jsonl"], "--top-p"),
    (["paraphrase", "--model", "M", "--max-new-tokens", "0", "sample-qa", "out.jsonl"], "--max-new-tokens"),
    (["paraphrase", "--model", "M", "--batch-size", "0", "sample-qa", "out.jsonl"], "--batch-size"),
    (["paraphrase", "--model", "M", "--max-samples", "0", "sample-qa", "out.jsonl"], "--max-samples"),
]


def test_eval_takes_methods_comma_separated_as_well_as_repeated(tiny, tmp_path):
    run = tmp_path / "run"
    result = invoke("eval", "--model", tiny, "--max-samples", "1", "--no-progress", "--output", run,
                    "-m", "origin, avg", "-m", "origin")
    assert result.exit_code == 0, result.output
    assert json.loads((run / "run.json").read_text())["methods"] == {"origin": {}, "avg": {}}
    assert sorted(pd.read_parquet(run / "results.parquet")["method"]) == ["avg", "origin"]


@pytest.mark.parametrize("args,message", CLI_CHECKS, ids=[" ".join(a[:1] + a[3:]) for a, _ in CLI_CHECKS])
def test_bad_numbers_are_one_line_errors(tiny, tmp_path, args, message):
    result = invoke(*[tiny if a == "M" else tmp_path / a if a == "out.jsonl" else a for a in args])
    assert_clean_error(result, message)
    assert not (tmp_path / "out.jsonl").exists()


@pytest.mark.parametrize("args,message,code", [
    (["generate", "--temperature", "1", "--top-p", "0", "hi"], "'--top-p': 0.0 is not above 0", 2),
    (["generate", "--temperature", "1", "--top-p", "-0.5", "hi"], "'--top-p': -0.5 is not above 0", 2),
    (["generate", "--top-k", "3", "hi"], "temperature 0 decodes greedily", 1),
    (["paraphrase", "--top-p", "0", "sample-qa", "out.jsonl"], "'--top-p': 0.0 is not above 0", 2),
])
def test_sampling_settings_fail_before_the_model_loads(tmp_path, args, message, code):
    """Typer cannot bound top-p from below; the check runs as a usage error (exit 2, as Typer's ranges) before a
    (here missing) model is looked for."""
    result = invoke(*args[:1], "--model", str(tmp_path / "missing"), *[str(tmp_path / a) if a == "out.jsonl" else a
                                                                      for a in args[1:]])
    assert_clean_error(result, message)
    assert result.exit_code == code


def test_an_output_no_run_could_write_fails_before_the_model_loads(tmp_path):
    taken = tmp_path / "taken"
    taken.write_text("notes")
    result = invoke("eval", "--model", str(tmp_path / "missing"), "--output", str(taken))
    assert_clean_error(result, f"{taken} is a file, not a directory")


def test_an_unwritable_output_is_refused(tmp_path, monkeypatch):
    from minirun.cli import common

    common.check_output_dir(tmp_path / "new" / "run")  # a folder to be made under a writable one
    monkeypatch.setattr(common.os, "access", lambda path, mode: False)  # as a non-root user in a read-only folder
    with pytest.raises(MinirunError, match=f"{tmp_path} is not writable by this user"):
        common.check_output_dir(tmp_path / "new" / "run")


@pytest.mark.parametrize("make,message", [
    (lambda: SamplingParams(-0.5), "temperature must be 0"),
    (lambda: SamplingParams(float("nan")), "temperature must be 0"),
    (lambda: SamplingParams(1e-35), "temperature must be 0 \\(greedy\\) or a finite number from 1e-30"),
    (lambda: SamplingParams(1.0, top_k=0), "top_k must be at least 1"),
    (lambda: SamplingParams(1.0, top_p=0.0), r"top_p must be in \(0, 1\]"),
    (lambda: SamplingParams(1.0, top_p=1.01), r"top_p must be in \(0, 1\]"),
    (lambda: SamplingParams("0.7"), "temperature must be a number, got '0.7'"),
    (lambda: SamplingParams(1.0, top_k=1.5), r"top_k must be a whole number, got 1.5"),
    (lambda: SamplingParams(1.0, seed="1"), r"seed must be a whole number"),
    (lambda: SamplingParams(1.0, seed=2**70), r"seed must be in \[-2\*\*63, 2\*\*64\)"),
    (lambda: EnsembleOptions(max_new_tokens=0), "max_new_tokens must be at least 1"),
    (lambda: EnsembleOptions(num_samples=0), "num_samples must be at least 1"),
    (lambda: EnsembleOptions(confidence_tokens=0), "confidence_tokens must be at least 1"),
    (lambda: EnsembleOptions(temperature=-1.0), "temperature must be 0"),
    (lambda: EnsembleOptions(confidence_temperature=0.0), "confidence_temperature must be above 0"),
    (lambda: EnsembleOptions(flex_bias=float("inf")), "flex_bias must be a positive finite weight"),
    (lambda: EnsembleOptions(flex_bias="half"), "flex_bias must be a positive finite weight"),
    (lambda: EnsembleOptions(choice_score="median"), "unknown --choice-score 'median'"),  # any dataset, not only choice
    (lambda: EnsembleOptions(stop=[""]), "stop strings must be non-empty text"),
    (lambda: EnsembleOptions(fusion_layer=1.5), "fusion_layer must be a whole number, got 1.5"),
    (lambda: EnsembleOptions(max_new_tokens=2.5), "max_new_tokens must be a whole number"),
    (lambda: Question("Capital?", "France's capital?"), "paraphrases must be a list of strings"),  # not 17 characters
    (lambda: Question("Q?", ["Q?", " "]), "paraphrase 1 of 'Q\\?' is empty"),
    (lambda: Question(""), "the question must be non-empty text"),
    (lambda: Question("Q?", None), "paraphrases must be a list of strings, got None"),
    (lambda: Question("Q?", [], prefix=None), r"the question's prefix must be text \('' for none\), got None"),
    (lambda: Question("Q?", [], suffix=3), "the question's suffix must be text"),
    (lambda: EnsembleOptions(seed=1.5), "seed must be a whole number, got 1.5"),
    (lambda: EnsembleOptions(max_new_tokens=True), "max_new_tokens must be a whole number, got True"),
    (lambda: ensemble_prompts("Capital?", "France's capital?"), "paraphrases must be a list of texts, got the text"),
])
def test_python_callers_get_the_same_checks(make, message):
    with pytest.raises(MinirunError, match=message):
        make()


def test_python_callers_may_count_with_numpy_and_torch_integers(checkpoint_dirs):
    """A notebook's counts come from arrays: np.int64(3) is a whole number (it was refused as "not a number (whole)"
    for top_k and seed, and EnsembleOptions took a seed it refused later); each lands as a Python int."""
    import numpy as np

    params = SamplingParams(1.0, top_k=np.int64(3), seed=torch.tensor(4))
    options = EnsembleOptions(max_new_tokens=np.int32(4), num_samples=np.int64(2), seed=np.uint8(7),
                              fusion_layer=np.int16(1))
    assert (params.top_k, params.seed) == (3, 4) and all(type(v) is int for v in (params.top_k, params.seed))
    assert (options.max_new_tokens, options.num_samples, options.seed, options.fusion_layer) == (4, 2, 7, 1)
    assert type(options.seed) is int and EnsembleOptions(seed=None).seed is None  # unseeded draws
    assert Question("Q?", np.array(["Q?", "A rewording?"])).paraphrases == ["Q?", "A rewording?"]  # a column
    with pytest.raises(MinirunError, match=r"top_k must be a whole number, got tensor\(True\)"):
        SamplingParams(1.0, top_k=torch.tensor(True))
    assert SamplingParams(np.float32(0.5), top_p=np.float64(0.9)).temperature == 0.5
    llm = minirun.load(checkpoint_dirs["qwen2"])
    assert llm.generate("Hi", np.int64(3), chat=False).token_ids == llm.generate("Hi", 3, chat=False).token_ids
    for bad, message in ((4.0, "max_new_tokens must be a whole number, got 4.0"),
                         ("4", "max_new_tokens must be a whole number, got '4'"),
                         (True, "max_new_tokens must be a whole number, got True")):
        with pytest.raises(MinirunError, match=message):
            llm.generate("Hi", bad)
    for prompts, kind in ((None, "NoneType"), (Path("p.txt"), "PosixPath")):
        with pytest.raises(MinirunError, match=f"prompts must be a text or a list of texts, got {kind}"):
            llm.generate(prompts)
    with pytest.raises(MinirunError, match="chat must be True, False or None, got 'no'"):
        llm.generate("Hi", chat="no")
    with pytest.raises(MinirunError, match="thinking is a chat template's switch, and chat=False uses none"):
        llm.generate("Hi", chat=False, thinking=True)


@pytest.mark.parametrize("resumable", [False, True])
def test_ctrl_c_says_what_a_resumable_command_kept(capsys, resumable):
    """Ctrl-C in eval, sweep or paraphrase keeps every finished batch, and a rerun goes on from there: said, as
    "interrupted" alone reads as lost work; other commands say "interrupted"."""
    import typer

    from minirun.cli.common import friendly

    def stopped() -> None:
        raise KeyboardInterrupt

    with pytest.raises(typer.Exit) as stop:
        friendly(stopped, resumable=resumable)()
    said = capsys.readouterr().err.strip()
    assert stop.value.exit_code == 130 and said == ("interrupted: every finished batch is kept; run the same command "
                                                    "again to go on from there" if resumable else "interrupted")


def test_sigterm_stops_a_command_as_ctrl_c_does_and_says_so(capsys):
    """A scheduler's time limit (or torchrun stopping the other ranks) sends SIGTERM, which ended the process
    without a word: it now stops as Ctrl-C does, says what was kept, exits 143, and the handler before is restored."""
    import os
    import signal
    import time

    import typer

    from minirun.cli.common import friendly

    def killed() -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # the handler runs between Python steps: here, not after the call returns

    def before(signum: int, frame: object) -> None:  # what the process had: noted, so a failure ends no test run
        caught.append(signum)

    caught: list[int] = []
    default = signal.signal(signal.SIGTERM, before)
    try:
        with pytest.raises(typer.Exit) as stop:
            friendly(killed, resumable=True)()
        assert signal.getsignal(signal.SIGTERM) is before and not caught
    finally:
        signal.signal(signal.SIGTERM, default)
    said = capsys.readouterr().err.strip()
    assert stop.value.exit_code == 143 and said == ("terminated: every finished batch is kept; run the same command "
                                                    "again to go on from there")


def test_ctrl_c_while_the_commands_import_is_one_line(monkeypatch, capsys):
    """The console script imports torch through the commands (seconds): a Ctrl-C then is `interrupted`, 130."""
    import sys

    import minirun.cli as cli

    class Interrupting:
        def find_spec(self, name, path=None, target=None):
            if name == "minirun.cli.commands":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "minirun.cli.commands")
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    with pytest.raises(SystemExit) as stop:
        cli.main()
    assert stop.value.code == 130 and capsys.readouterr().err.strip() == "interrupted"


def test_importing_minirun_leaves_torch_for_first_use():
    import subprocess
    import sys

    probe = "import sys, minirun; assert 'torch' not in sys.modules; minirun.load; assert 'torch' in sys.modules"
    assert subprocess.run([sys.executable, "-c", probe]).returncode == 0


def test_the_command_lines_help_and_refusals_never_import_torch():
    """torch takes ~1.5 s to import on a 2-core CPU: `minirun --help`, a command's help and a refused option read
    the methods' names (`methods.names`), not their code, so they answer in a fraction of a second."""
    import subprocess
    import sys

    probe = ("import sys\nfrom minirun.cli import main\nfrom minirun.methods import METHODS\n"
             "for argv in (['--help'], ['generate', '--help'], ['eval', '--help'], ['mask', '--help'], "
             "['generate', '--bogus']):\n"
             "    sys.argv = ['minirun', *argv]\n"
             "    try:\n        main()\n    except SystemExit:\n        pass\n"
             "assert 'torch' not in sys.modules, 'torch imported'\n"
             "from minirun.methods import EnsembleOptions\nassert 'torch' in sys.modules")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "COLUMNS": "300"})
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"One of {', '.join(METHODS)}." in \
        done.stdout  # generate's --method help


@pytest.mark.parametrize("data, extra", [("sample-qa", []), ("sample-choice", ["--choice-score", "sum"])])
def test_a_report_never_imports_torch(tiny, tmp_path, data, extra):
    """`report` reads results, not models: the sweep's reading half (`eval.sweep_results`), the report and the
    multiple-choice rules it re-picks and calibrates by (`methods.choice_rules`) import no model code, so a run's
    tables come in ~1.7 s instead of ~3.4."""
    import subprocess
    import sys

    out = tmp_path / "run"
    ran = invoke("eval", "--model", tiny, "--data", data, "-m", "origin", "-m", "vote", "-m", "avg", "--max-samples",
                 "2", "--num-prompts", "2", "--few-shot-k", "1", "--max-new-tokens", "2", "--output", str(out),
                 "--no-progress")
    assert ran.exit_code == 0, ran.output
    probe = ("import sys\nfrom minirun.cli import main\nsys.argv = ['minirun', 'report', *sys.argv[1:], '--json']\n"
             "try:\n    main()\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
             "assert 'torch' not in sys.modules, 'torch imported'")
    done = subprocess.run([sys.executable, "-c", probe, str(out), *extra], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout)
    assert set(report) >= {"origin", "vote", "avg"}
    assert (report["avg"]["ece"] is not None) == (data == "sample-choice")  # calibration, of choice rows only


def test_a_command_that_compiles_nothing_never_imports_torchs_compiler(tiny):
    """Dynamo and Inductor take ~2.5 s to import on a 2-core CPU, 40% of `minirun generate`'s wall time on the default
    model: making the compiled functions at import (torch.compile) and building the decoder on the meta device
    (nn.Embedding's random initialisation, RoPE's frequencies there) each imported them in every eager command."""
    import subprocess
    import sys

    probe = ("import sys; from minirun.cli import main; sys.argv = ['minirun', 'generate', '--model', sys.argv[1], "
             "'--max-new-tokens', '2', 'Hi']\ntry:\n    main()\n"
             "except SystemExit as e:\n    assert not e.code, e.code\n"
             "assert 'torch' in sys.modules and 'torch._dynamo' not in sys.modules, 'torch._dynamo imported'")
    done = subprocess.run([sys.executable, "-c", probe, str(tiny)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


def test_a_question_starting_with_a_dash_follows_a_double_dash(tiny):
    """How `interactive` writes the command: "-5 plus 7 is?" is the question, not an option."""
    result = invoke("generate", "--model", tiny, "--max-new-tokens", "2", "--json", "--", "-5 plus 7 is?")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("option", [["--suffix", " Paris."], ["--positions", "restart"], ["--fusion-layer", "1"],
                                    ["--num-samples", "7"]])
def test_ensemble_options_on_a_plain_prompt_are_refused_not_ignored(tiny, option):
    assert_clean_error(invoke("generate", "--model", tiny, *option, "hi"),
                       f"{option[0]} only applies with --method, --paraphrase or --few-shot")


def test_bench_refuses_an_unwritable_json_path_before_timing(tmp_path, monkeypatch):
    from minirun.bench import run

    monkeypatch.setattr(run, "run_bench", lambda *a: pytest.fail("timed before the path was checked"))
    assert_clean_error(invoke("bench", "--json", tmp_path), "give a file name in an existing folder")
    assert_clean_error(invoke("bench", "--json", tmp_path / "no" / "b.json"), "give a file name in an existing folder")


def test_bench_takes_evals_name_for_its_new_tokens(monkeypatch):
    """`bench --max-new-tokens`, as eval and generate name it, is `--new-tokens`."""
    from minirun.bench import run

    seen = []

    def timed(*args):
        seen.append(args)
        raise MinirunError("not timed: the arguments are what this test reads")

    monkeypatch.setattr(run, "run_bench", timed)
    assert_clean_error(invoke("bench", "--max-new-tokens", "7"), "not timed")
    assert seen[0][4] == 7  # new_tokens, as `--new-tokens 7` gives it


@pytest.mark.parametrize("command", ["eval", "paraphrase"])
def test_the_data_help_names_every_dataset(command):
    """`--data` (eval) and the DATA argument (paraphrase) list every named dataset the loaders take."""
    from minirun.eval.data import NAMES

    params = {p.name: p for p in typer.main.get_command(app).commands[command].params}
    listed = " ".join(params["data"].help.split())
    assert [name for name in NAMES if name not in listed] == []


def test_every_option_of_every_command_says_what_it_does():
    """`mask --share-prefix` showed in `--help` with no word of what it shares."""
    import click

    bare = [f"{name} {param.opts[0]}" for name, command in typer.main.get_command(app).commands.items()
            for param in command.params if isinstance(param, click.Option) and param.name != "help" and not param.help]
    assert bare == []
