"""The command line through Typer's runner: generate (plain, JSON, methods), mask, errors."""
from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

import minirun
from minirun.cli import app
from minirun.methods import EnsembleOptions, Question, run_method

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def tiny(checkpoint_dirs):
    return checkpoint_dirs["qwen2"]


def test_generate_json_matches_api(tiny):
    result = invoke("generate", "--model", tiny, "The capital of France is", "--raw", "--max-new-tokens", "8", "--json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    expected = minirun.load(tiny).generate("The capital of France is", max_new_tokens=8, chat=False)
    assert out["token_ids"] == expected.token_ids and out["text"] == expected.text
    assert out["prompt_tokens"] == expected.prompt_tokens and out["tokens_per_second"] > 0


def test_generate_streams_text(tiny):
    result = invoke("generate", "--model", tiny, "Who wrote Hamlet?", "--max-new-tokens", "6")
    expected = minirun.load(tiny).generate("Who wrote Hamlet?", max_new_tokens=6)
    assert result.exit_code == 0
    assert result.stdout.startswith(expected.text)


def test_generate_compile_reports_each_compile_on_stderr(tiny):
    from minirun.layers import flex

    try:
        result = invoke("generate", "--model", tiny, "Who wrote Hamlet?", "--max-new-tokens", "6", "--compile", "--json")
    finally:
        flex.set_compiled(False)  # the command switched this process to compiled kernels
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["token_ids"] == minirun.load(tiny).generate("Who wrote Hamlet?", max_new_tokens=6).token_ids
    assert "compiling the decode step for batch 1" in result.stderr


def test_compile_notice_never_lands_mid_answer(tiny):
    """The decode step compiles after the first token is on screen: its notice starts a new line."""
    from minirun.layers import flex

    try:
        result = invoke("generate", "--model", tiny, "Who wrote Hamlet?", "--max-new-tokens", "6", "--compile")
    finally:
        flex.set_compiled(False)
    expected = minirun.load(tiny).generate("Who wrote Hamlet?", max_new_tokens=6).text
    assert result.exit_code == 0 and result.stdout.startswith(expected), result.output
    before = result.stderr.split("compiling the decode step")[0]  # earlier notices end in "\n" themselves
    assert before == "\n" or before.endswith("\n\n"), result.stderr  # a line break first, then the notice


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
    if method == "per_prompt":
        assert out["answers"] == expected.answers and len(out["answers"]) == 3


def test_paraphrases_file(tiny, tmp_path):
    f = tmp_path / "p.txt"
    f.write_text("Which city is the capital of France?\n\nName France's capital.\n")
    a = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "--paraphrases-file", f, "--json",
               "--max-new-tokens", "4")
    b = invoke("generate", "--model", tiny, "--method", "avg", "Capital?", "-p", "Which city is the capital of France?",
               "-p", "Name France's capital.", "--json", "--max-new-tokens", "4")
    assert json.loads(a.stdout)["prompts"] == json.loads(b.stdout)["prompts"]
    assert json.loads(a.stdout)["token_ids"] == json.loads(b.stdout)["token_ids"]


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


def test_mask_terminal_rendering(tiny):
    result = invoke("mask", "--model", tiny, "Capital?", "-p", "France capital?", "--raw", "--suffix", "\nA:")
    assert result.exit_code == 0, result.output
    assert "# flex row 0" in result.stdout and "<gen>" in result.stdout


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
    command = f"minirun generate --method flex --model {tiny} --positions right --max-new-tokens 6 'Capital?' " \
              "--paraphrase 'France capital?'"
    assert command in result.stdout
    direct = invoke("generate", "--method", "flex", "--model", tiny, "--positions", "right", "--max-new-tokens", "6",
                    "Capital?", "--paraphrase", "France capital?")
    assert direct.exit_code == 0
    assert result.stdout.endswith(direct.stdout)
