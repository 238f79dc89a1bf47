"""Sampling, stop conditions and the confidence cache."""
from __future__ import annotations

import pytest
import torch

import minirun
from minirun.engine.sampling import SamplingParams, filter_logits, sample
from minirun.methods import EnsembleOptions, Question, confidence, run_method
from minirun.methods.packing import encode_question
from minirun.text import extract_answer


@pytest.fixture(scope="module")
def llm(checkpoint_dirs):
    return minirun.load(checkpoint_dirs["qwen3"])


PROMPT = "The capital of France is"


def test_seeded_sampling_is_reproducible_and_varies_with_seed(llm):
    a = llm.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=1, chat=False)
    b = llm.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=1, chat=False)
    c = llm.generate(PROMPT, max_new_tokens=16, temperature=1.0, seed=2, chat=False)
    assert a.token_ids == b.token_ids and a.token_ids != c.token_ids


def test_top_k_one_is_greedy(llm):
    greedy = llm.generate(PROMPT, max_new_tokens=12, chat=False)
    assert llm.generate(PROMPT, max_new_tokens=12, temperature=0.8, top_k=1, seed=3, chat=False).token_ids == greedy.token_ids


def test_filter_logits_top_k_and_top_p():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0]])
    kept = filter_logits(logits, SamplingParams(1.0, top_k=2)).isfinite()
    assert kept.tolist() == [[True, True, False, False]]
    probs = logits.softmax(-1)[0]  # ~[0.64, 0.24, 0.09, 0.03]
    kept = filter_logits(logits, SamplingParams(1.0, top_p=0.8)).isfinite()
    assert kept.tolist() == [[True, True, False, False]] and probs[0] < 0.8 < probs[:2].sum()


def test_filtered_logits_are_transformers_warpers_to_the_bit():
    """Temperature, then top-k, then top-p, as transformers' logits processors apply them: the same kept
    set (ties at the boundary included) and the same scaled values."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    g = torch.Generator().manual_seed(0)
    cases = [torch.randn(4, 50, generator=g) * 3, torch.randn(4, 50, generator=g).round(decimals=0),  # many ties
             torch.tensor([[0.5, 0.25, 0.125, 0.125]]).log()]  # mass above a token equal to top_p exactly
    for logits in cases:
        for temperature, top_k, top_p in [(0.7, None, 0.9), (1.0, 5, None), (1.3, 10, 0.5), (1.0, None, 0.5),
                                          (0.5, 3, 0.99)]:
            expected = TemperatureLogitsWarper(temperature)(None, logits.clone())
            if top_k is not None:
                expected = TopKLogitsWarper(top_k)(None, expected)
            if top_p is not None:
                expected = TopPLogitsWarper(top_p)(None, expected)
            got = filter_logits(logits, SamplingParams(temperature, top_k=top_k, top_p=top_p))
            assert torch.equal(got, expected), (temperature, top_k, top_p)
    kept = filter_logits(cases[2], SamplingParams(1.0, top_p=0.5)).isfinite()
    assert kept.tolist() == [[True, False, False, False]]  # the smallest set holding half the mass


def test_temperatures_that_would_overflow_are_refused():
    for bad in (1e-40, float("inf")):
        with pytest.raises(minirun.MinirunError, match="temperature must be 0 \\(greedy\\) or a finite number"):
            SamplingParams(bad)
    logits = torch.tensor([[-5.0, 20.0, 10.0]])
    tiny = SamplingParams(1e-30, seed=0)
    assert sample(logits, tiny, tiny.generator(logits.device)) == 1  # the largest logit, not NaN's first index


def test_stop_string_cuts_text(llm):
    full = llm.generate(PROMPT, max_new_tokens=24, chat=False)
    stop = full.text[5:8]
    cut = llm.generate(PROMPT, max_new_tokens=24, chat=False, stop=[stop])
    assert cut.finish_reason == "stop" and cut.text == full.text[: full.text.find(stop)]


def test_eos_ends_generation(llm):
    eos = llm.tokenizer.eos_token_id
    llm.config.eos_token_ids.append(llm.generate(PROMPT, max_new_tokens=3, chat=False).token_ids[2])
    try:
        out = llm.generate(PROMPT, max_new_tokens=24, chat=False)
        assert out.finish_reason == "eos" and len(out.token_ids) == 3
    finally:
        llm.config.eos_token_ids.pop()
    assert llm.tokenizer.eos_token_id == eos


def test_confidences_cached_and_reused(llm, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    calls = []
    real = confidence.paraphrase_confidence
    monkeypatch.setattr(confidence, "paraphrase_confidence", lambda *a: calls.append(1) or real(*a))
    question = Question(PROMPT, [PROMPT, "Paris is the capital of"])
    options = EnsembleOptions(max_new_tokens=6, num_samples=8, chat=False, confidence_tokens=6)
    first = run_method(llm, "weighted_avg", [question], options)[0]
    assert len(calls) == 2 and all(0.0 <= c <= 1.0 for c in first.confidences)
    second = run_method(llm, "weighted_avg", [question], options)[0]
    assert len(calls) == 2 and second.confidences == first.confidences and second.token_ids == first.token_ids


def test_a_damaged_or_unwritable_confidence_cache_is_sampled_again(llm, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    question = Question(PROMPT, [PROMPT, "Paris is the capital of"])
    options = EnsembleOptions(max_new_tokens=4, num_samples=4, chat=False, confidence_tokens=4)
    first = run_method(llm, "weighted_avg", [question], options)[0]
    files = sorted((tmp_path / "confidence").iterdir())
    files[0].write_text('{"confid')  # cut short by a crash
    files[1].write_text('{"confidence": 7}')  # not a fraction
    with caplog.at_level("WARNING", logger="minirun"):
        again = run_method(llm, "weighted_avg", [question], options)[0]
    assert again.confidences == first.confidences and "unreadable" in caplog.text and "not a fraction" in caplog.text
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path / "file" / "cache"))  # cannot be made a folder
    caplog.clear()
    with caplog.at_level("WARNING", logger="minirun"):
        assert run_method(llm, "weighted_avg", [question], options)[0].confidences == first.confidences
    assert "cannot cache a confidence" in caplog.text


def test_confidences_cached_per_dtype(checkpoint_dirs, tmp_path, monkeypatch):
    """A bfloat16 run's samples differ from float32's: its cached confidences must not stand in for them."""
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    calls = []
    real = confidence.paraphrase_confidence
    monkeypatch.setattr(confidence, "paraphrase_confidence", lambda *a: calls.append(1) or real(*a))
    question = Question(PROMPT, [PROMPT])
    options = EnsembleOptions(max_new_tokens=2, num_samples=2, chat=False, confidence_tokens=2)
    for dtype in ("float32", "bfloat16", "float32"):
        run_method(minirun.load(checkpoint_dirs["qwen3"], dtype=dtype), "weighted_avg", [question], options)
    assert len(calls) == 2  # one per dtype; the second float32 run reads its own


def test_confidences_of_other_weights_saved_at_the_same_path_are_not_reused(tmp_path, monkeypatch):
    """A notebook re-saves a fine-tune into its folder: the cache keyed by the path alone answered the old weights'
    confidences; the same weights written again (a re-pull) keep theirs."""
    from checkpoints import write_checkpoint

    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path / "cache"))
    calls = []
    real = confidence.paraphrase_confidence
    monkeypatch.setattr(confidence, "paraphrase_confidence", lambda *a: calls.append(1) or real(*a))
    question = Question(PROMPT, [PROMPT])
    options = EnsembleOptions(max_new_tokens=2, num_samples=2, chat=False, confidence_tokens=2)
    for seed in (0, 7, 7):
        write_checkpoint("qwen2", tmp_path / "model", seed=seed)
        run_method(minirun.load(tmp_path / "model"), "weighted_avg", [question], options)
    assert len(calls) == 2  # seed 7's weights sampled afresh, then read back when written again


def test_confidence_samples_share_one_prefill(llm, monkeypatch):
    """The S samples prefill the prompt once (batch 1), then decode S rows."""
    from minirun.engine.session import Session

    shapes = []
    real = Session.prefill
    monkeypatch.setattr(Session, "prefill", lambda self, tokens, *a: shapes.append(tuple(tokens.shape)) or real(self, tokens, *a))
    enc = encode_question(llm, [PROMPT], chat=False)
    options = EnsembleOptions(num_samples=16, confidence_tokens=4)
    confidence.paraphrase_confidence(llm, enc.full(0), options, confidence.normalised_equal)
    assert shapes[-1][0] == 1  # the sampling session prefilled one row for its 16 samples


class _Scripted:
    """A session whose decode steps return nothing useful: `choose` plays a fixed token script."""
    batch, records_steps, resizable = 1, False, False
    device = torch.device("cpu")

    class hooks:  # noqa: N801  (the attribute a session has)
        before_decode = None

    def decode(self, token, positions):
        return torch.zeros(1, 4)


def _stream(tokenizer, ids: list[int], stop: tuple[str, ...] = (), reasoning: bool = False):
    from minirun.engine.generate import Stopper, decode_loop

    script, pieces = iter(ids), []
    out = decode_loop(_Scripted(), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long),
                      lambda logits, rows: torch.tensor([next(script)]), len(ids),
                      Stopper(tokenizer, {2}, stop, reasoning=reasoning), on_text=pieces.append)
    return out[0], pieces


def test_streamed_text_waits_for_whole_characters_and_possible_stop_strings(smollm2_dir):
    from minirun.checkpoints.tokenizer import Tokenizer

    tokenizer = Tokenizer(smollm2_dir)
    ids = tokenizer.encode("Tokyo 東京 is 🙂 nice 👍🏽!", add_special_tokens=False)
    assert any("\ufffd" in tokenizer.decode(ids[:n]) for n in range(len(ids)))  # some characters span tokens
    done, pieces = _stream(tokenizer, ids)
    assert "".join(pieces) == done.text == "Tokyo 東京 is 🙂 nice 👍🏽!" and not any("\ufffd" in p for p in pieces)
    ids = tokenizer.encode("The answer is Paris.\nQuestion: next", add_special_tokens=False)
    done, pieces = _stream(tokenizer, ids, ("\nQuestion:",))
    assert done.finish_reason == "stop" and "".join(pieces) == done.text == "The answer is Paris."
    assert not any("\nQ" in p for p in pieces)  # the start of the stop string is never shown, then taken back


def test_a_stop_string_before_an_eos_in_one_check_ends_at_the_stop(smollm2_dir):
    from minirun.checkpoints.tokenizer import Tokenizer
    from minirun.engine.generate import Stopper

    tokenizer = Tokenizer(smollm2_dir)
    head = tokenizer.encode("Paris.\nQuestion:", add_special_tokens=False)
    ids = head + tokenizer.encode(" x y", add_special_tokens=False) + [2]  # eight steps checked at once on a GPU
    stopper = Stopper(tokenizer, {2}, ("\nQuestion:",))
    assert stopper.finish(ids) == (head, "Paris.", "stop")  # the ids end with the token completing the stop
    assert stopper.finish(head[:2] + [2] + head[2:]) == (head[:2] + [2], tokenizer.decode(head[:2]), "eos")


def test_a_stop_string_that_is_a_special_token_stops_at_its_id(smollm2_dir):
    """Decoded text skips special tokens, so `<|endoftext|>` (not among SmolLM2's eos ids) is matched by id, as
    transformers' stop_strings matches it; the text ends before it and the reason is "stop"."""
    import minirun

    llm = minirun.load(smollm2_dir)
    endoftext = llm.tokenizer.special_id("<|endoftext|>")
    assert endoftext is not None and endoftext not in llm.eos_ids and llm.tokenizer.special_id("Paris") is None
    stopper = llm.stopper(["<|endoftext|>"])
    answer = llm.tokenizer.encode("Paris", add_special_tokens=False)
    assert stopper.finish([*answer, endoftext, *answer]) == ([*answer, endoftext], "Paris", "stop")
    assert stopper.finish(answer) is None


def test_unseeded_sampling_leaves_the_global_generator_alone():
    """torch.manual_seed(0) before an unseeded sampled run must still fix what the caller draws next."""
    from minirun.engine.sampling import SamplingParams

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    SamplingParams(1.0).generator(torch.device("cpu"))
    assert torch.equal(torch.rand(3), expected)


def test_overlapping_stop_strings_cut_alike_however_often_the_host_checks(smollm2_dir):
    from minirun.checkpoints.tokenizer import Tokenizer
    from minirun.engine.generate import Stopper

    tokenizer = Tokenizer(smollm2_dir)
    ids = tokenizer.encode("ok\nUser: hi there", add_special_tokens=False)
    stopper = Stopper(tokenizer, {2}, ("\nUser:", "User"))
    every_step = next(stopper.finish(ids[:n]) for n in range(1, len(ids) + 1) if stopper.finish(ids[:n]))
    assert stopper.finish(ids) == every_step and every_step[1] == "ok\n"  # "User" completes before "\nUser:"


def test_a_tokenizer_that_cleans_up_spaces_streams_without_taking_text_back(tmp_path):
    import json

    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, pre_tokenizers

    from minirun.checkpoints.tokenizer import Tokenizer

    vocab = {w: i for i, w in enumerate(["[UNK]", "[SEP]", "[EOS]", "i", "do", "n", "'", "t", "know", "."])}
    wordpiece = HFTokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    wordpiece.pre_tokenizer, wordpiece.decoder = pre_tokenizers.BertPreTokenizer(), decoders.WordPiece()
    wordpiece.save(str(tmp_path / "tokenizer.json"))
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"clean_up_tokenization_spaces": True}))
    tokenizer = Tokenizer(tmp_path)
    ids = [vocab[w] for w in ["i", "do", "n", "'", "t", "know", "."]]
    done, pieces = _stream(tokenizer, ids)  # "i do n ' t" reads "i don't" once cleaned up: the stream waits
    assert done.text == "i don't know." and "".join(pieces) == done.text


def test_confidences_counted_under_another_comparator_are_not_reused(llm, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path))
    calls = []
    real = confidence.paraphrase_confidence
    monkeypatch.setattr(confidence, "paraphrase_confidence", lambda *a: calls.append(1) or real(*a))
    enc = [encode_question(llm, [PROMPT], chat=False)]
    options = EnsembleOptions(num_samples=2, confidence_tokens=2, chat=False)
    for version in ("v1", "v2", "v2"):
        def same(a, b):
            return a == b
        same.cache_name = f"matcher {version}"
        confidence.confidences_for(llm, enc, options, same)
    assert len(calls) == 2  # v1 and v2 each counted once


def test_ids_past_the_context_are_refused_before_any_work(llm):
    """generate_ids takes ids as they are (generate fits its prompts first): a row past the context is named."""
    from minirun.engine.sampling import SamplingParams

    limit = llm.config.max_position_embeddings
    with pytest.raises(minirun.MinirunError, match=f"prompt \\({limit} tokens\\) \\+ max_new_tokens \\(4\\) exceeds"):
        llm.generate_ids([[5, 6], [7] * limit], 4, SamplingParams())


@pytest.mark.parametrize("rows, message", [([[5, 6, 7], []], "prompt 1 is empty"), ([[], [5, 6]], "prompt 0 is empty"),
                                           ([[5, 10**6]], "prompt 0 is not token ids"), ([[5, -1]], "not token ids")])
def test_ids_that_are_no_prompt_are_refused(llm, rows, message):
    """An empty row crashed (or took another row's state), an id past the vocabulary was a raw IndexError."""
    from minirun.engine.sampling import SamplingParams

    with pytest.raises(minirun.MinirunError, match=f"{message}: give each row at least one id from 0 to "
                                                   f"{llm.config.vocab_size - 1}"):
        llm.generate_ids(rows, 4, SamplingParams())


def test_ids_as_numpy_or_tensor_rows_generate_as_lists_do(llm):
    import numpy as np

    from minirun.engine.sampling import SamplingParams

    lists = llm.generate_ids([[5, 6, 7], [8, 9]], 3, SamplingParams())
    for rows in ([np.array([5, 6, 7]), np.array([8, 9])], [torch.tensor([5, 6, 7]), torch.tensor([8, 9])]):
        assert [c.token_ids for c in llm.generate_ids(rows, 3, SamplingParams())] == [c.token_ids for c in lists]
    with pytest.raises(minirun.MinirunError, match="prompt 0 is empty"):
        llm.generate_ids([np.array([], dtype=int)], 3, SamplingParams())
    with pytest.raises(minirun.MinirunError, match="prompt 0 is not token ids"):
        llm.generate_ids([[5.5]], 3, SamplingParams())


def test_stop_strings_count_in_the_answer_after_a_reasoning_models_thinking(smollm2_dir):
    """Qwen3's thinking opens with <think>, a DeepSeek-R1 distillation's prompt leaves it open: either way the
    thinking's new lines are no stop, the answer's first one is, and the text keeps the thinking (as transformers'
    generate returns it). Rows of other models stop as before."""
    from minirun.checkpoints.tokenizer import Tokenizer
    from minirun.engine.generate import Stopper

    tokenizer = Tokenizer(smollm2_dir)
    say = lambda text: tokenizer.encode(text, add_special_tokens=False)  # noqa: E731
    thought = "<think>\nThe user asks for France's capital.\nIt is Paris.\n</think>\n\n"
    for text, reasoning in ((thought, False), (thought.removeprefix("<think>\n"), True)):
        stopper = Stopper(tokenizer, {2}, ("\n", " Q:"), reasoning=reasoning)
        assert stopper.finish(say(text)) is None  # the blank lines after </think> are no answer yet
        done = stopper.finish(say(text + "Paris\nQ: next"))
        assert done[1:] == (text + "Paris", "stop") and extract_answer(done[1]) == "Paris"
        done, pieces = _stream(tokenizer, say(text + "Paris\nQ: next"), ("\n",), reasoning)
        assert "".join(pieces) == done.text == text + "Paris"
    unfinished = Stopper(tokenizer, {2}, ("\n",)).finish(say("<think>\nStill thinking.\nMore") + [2])
    assert unfinished[2] == "eos" and extract_answer(unfinished[1]) == ""  # thinking cut off: no answer
    assert Stopper(tokenizer, {2}, ("\n",)).finish(say("Paris\n</think>"))[1] == "Paris"
