"""Multiple-choice scoring: option log-likelihoods against transformers, exact degenerate cases,
and batching invariances (float32, CPU, random-weight checkpoints)."""
from __future__ import annotations

import json
import math

import pytest
import torch
from checkpoints import write_checkpoint
from op_counts import OpCounts
from transformers import AutoModelForCausalLM, AutoTokenizer

import minirun
from minirun.errors import MinirunError
from minirun.methods import EnsembleOptions, Question
from minirun.methods.choice import asked_ids, option_ids, score_choices
from minirun.methods.choice_rules import option_probabilities, option_scores
from minirun.methods.packing import encode_question

PREFIX = "Q: Water boils at\nA: 100 degrees\n\n"
QUESTION = "What is the capital of France?"
PARAS = [QUESTION, "Which city is France's capital?", "France's capital city is which?"]
CHOICES = ["Paris", "Lyon and Marseille", "Berlin", "the city of Rome"]
ATOL = 1e-4


@pytest.fixture(scope="module", params=["llama3", "qwen2", "qwen3", "llama2_sentencepiece", "sentencepiece_as_file"])
def llm(request, checkpoint_dirs, tmp_path_factory):
    if request.param in ("llama2_sentencepiece", "sentencepiece_as_file"):  # a text's start is treated apart
        path = write_checkpoint("llama_bias", tmp_path_factory.mktemp("sp"), sentencepiece=True)
        if request.param == "sentencepiece_as_file":  # no tokenizer class: tokenizer.json's legacy pipeline as it is
            config = json.loads((path / "tokenizer_config.json").read_text())
            del config["tokenizer_class"]
            (path / "tokenizer_config.json").write_text(json.dumps(config))
        return minirun.load(path)
    return minirun.load(checkpoint_dirs[request.param])


def score(llm, method, paraphrases=PARAS, choices=CHOICES, **kw):
    options = EnsembleOptions(**{"chat": False, "choice_score": "sum", **kw})
    return score_choices(llm, method, [Question(QUESTION, paraphrases, PREFIX, "\nA:")], [choices], options)[0]


def harness_log_likelihoods(path, context: str, choices: list[str]) -> list[float]:
    """lm-evaluation-harness's loglikelihood with transformers' own tokenizer and model: the option's ids
    are those of `context + " " + option` after the context's. A context ending in whitespace takes minirun's
    rule (`choice.plain_context`): that whitespace starts the option in place of the space."""
    tok = AutoTokenizer.from_pretrained(path)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    spaces = len(context) - len(context.rstrip())
    context, lead = (context[:-spaces], context[-spaces:]) if spaces else (context, " ")
    out = []
    for choice in choices:
        prompt, whole = tok(context).input_ids, tok(context + lead + choice).input_ids
        with torch.no_grad():
            logp = reference(torch.tensor([whole])).logits[0].float().log_softmax(-1)
        out.append(sum(logp[j - 1, whole[j]].item() for j in range(len(prompt), len(whole))))
    return out


@pytest.mark.parametrize("suffix", ["\nA:", "\nA: "])  # a prompt ending in a space: the space starts the option
def test_origin_log_likelihoods_equal_the_harness_with_transformers(llm, suffix):
    expected = harness_log_likelihoods(llm.path, PREFIX + QUESTION + suffix, CHOICES)
    got = score_choices(llm, "origin", [Question(QUESTION, PARAS, PREFIX, suffix)], [CHOICES],
                        EnsembleOptions(chat=False, choice_score="sum"))[0]
    assert max(abs(a - b) for a, b in zip(got.scores, expected)) <= ATOL
    assert got.logprobs == got.scores and len({round(s, 3) for s in expected}) == len(CHOICES)  # options differ


def test_an_option_is_split_as_inside_the_text_not_alone(llm):
    enc = encode_question(llm, [QUESTION], PREFIX, "\nA:", chat=False)
    whole = llm.tokenizer.encode(PREFIX + QUESTION + "\nA: Paris")
    assert option_ids(llm, enc, ["Paris"], " ")[0] == whole[len(enc.full(0)):]


@pytest.mark.parametrize("choices, problem", [(["Paris", ""], "answer option 1 .* is empty"),
                                              (["Paris", "  "], "answer option 1 .* is empty"),
                                              (["Paris", 3], "answer option 1 .* is not text")])
def test_an_empty_or_non_text_option_is_refused_with_or_without_a_template(llm, choices, problem):
    for chat in (False, None):
        with pytest.raises(MinirunError, match=problem):
            score_choices(llm, "origin", [Question(QUESTION, PARAS, PREFIX, "\nA:")], [choices],
                          EnsembleOptions(chat=chat))


@pytest.mark.parametrize("method, extra", [("avg", {}), ("avg_logprob", {}), ("avg_prob", {}), ("max", {}),
                                           ("hidden_avg", {}),
                                           ("hidden_avg", {"fusion_layer": 1}), ("flex", {"flex_bias": "inv_n"})])
def test_identical_paraphrases_score_as_origin(llm, method, extra):
    origin = score(llm, "origin").scores
    fused = score(llm, method, [QUESTION] * 3, **extra).scores
    assert max(abs(a - b) for a, b in zip(fused, origin)) <= ATOL


@pytest.mark.parametrize("method", ["origin", "avg", "max", "hidden_avg", "flex"])
def test_batched_options_equal_options_scored_one_by_one(llm, method):
    together = score(llm, method).scores
    alone = [score(llm, method, choices=[c]).scores[0] for c in CHOICES]
    assert max(abs(a - b) for a, b in zip(together, alone)) <= ATOL


def test_questions_batched_equal_questions_alone(llm):
    """The third question starts with a number, which does not take the space of the prefix's "Q: " into its
    first token as words do: its head differs from its batch-mates' by that token."""
    questions = [Question(QUESTION, PARAS, PREFIX, "\nA:"), Question("Who wrote Hamlet?", ["Who wrote Hamlet?",
                 "Hamlet's author?"], PREFIX, "\nA:"),
                 Question("1600 was the year of", ["1600 was the year of", "1600 saw"], PREFIX + "Q: ", "\nA:")]
    choices = [CHOICES, ["Shakespeare", "Marlowe"], ["Hamlet", "Macbeth"]]
    options = EnsembleOptions(chat=False, fusion_layer=1)
    for method in ("avg", "hidden_avg", "per_prompt", "flex"):
        batched = score_choices(llm, method, questions, choices, options)
        alone = [score_choices(llm, method, [q], [c], options)[0] for q, c in zip(questions, choices)]
        for b, a in zip(batched, alone, strict=True):
            assert b.choice == a.choice and max(abs(x - y) for x, y in zip(b.scores, a.scores, strict=True)) <= ATOL


def test_questions_with_few_shot_examples_of_their_own_score_as_alone(llm, monkeypatch):
    """Examples drawn per question (as lm-evaluation-harness draws them): each question's own head is encoded once
    for its prompts' rows, and every method scores as the question alone, where its head is the batch's."""
    from minirun.models import Decoder

    shots = ["Q: Who painted the Mona Lisa?\nA: Leonardo da Vinci\n\n",
             "Q: What is the largest planet?\nA: Jupiter\n\n"]
    questions = [Question(QUESTION, PARAS, PREFIX + shots[0], "\nA:"),
                 Question("Who wrote Hamlet?", ["Who wrote Hamlet?", "Hamlet's author?"], PREFIX + shots[1], "\nA:")]
    choices = [CHOICES, ["Shakespeare", "Marlowe"]]
    options = EnsembleOptions(chat=False, fusion_layer=1)
    rows = []
    original = Decoder.hidden
    monkeypatch.setattr(Decoder, "hidden", lambda self, tokens, *rest, **kw: rows.append(tokens.shape[0]) or original(
        self, tokens, *rest, **kw))
    for method in ("origin", "per_prompt", "avg", "max", "hidden_avg"):
        rows.clear()
        batched = score_choices(llm, method, questions, choices, options)
        encoded = [r for r in rows if r > 1][:2]  # after the shared head: the own heads, then the prompts' rows
        assert encoded == ([2, 2] if method == "origin" else [2, 5])  # origin's one row a question holds its own
        alone = [score_choices(llm, method, [q], [c], options)[0] for q, c in zip(questions, choices)]
        for b, a in zip(batched, alone, strict=True):
            assert b.choice == a.choice and max(abs(x - y) for x, y in zip(b.scores, a.scores, strict=True)) <= ATOL


def test_per_prompt_scores_each_prompt_as_origin_would(llm):
    result = score(llm, "per_prompt")
    assert len(result.per_prompt_logprobs) == len(PARAS) and result.scores == result.per_prompt_logprobs[0]
    for paraphrase, scores, pick in zip(PARAS, result.per_prompt_logprobs, result.per_prompt_choices):
        alone = score_choices(llm, "origin", [Question(paraphrase, [], PREFIX, "\nA:")], [CHOICES],
                              EnsembleOptions(chat=False, choice_score="sum"))[0]
        assert max(abs(a - b) for a, b in zip(scores, alone.scores)) <= ATOL and pick == alone.choice


@pytest.mark.parametrize("method", ["origin", "per_prompt", "avg", "flex"])
def test_mean_and_chars_are_the_sum_over_tokens_and_characters(llm, method):
    """mean: per token; chars: per character of the option (the harness's acc_norm); every result carries the
    sums and token counts that any of them is recomputed from."""
    enc = encode_question(llm, [QUESTION], PREFIX, "\nA:", chat=False)
    lengths = [len(ids) for ids in option_ids(llm, enc, CHOICES, " ")]
    summed = score(llm, method)
    for mode, sizes in (("mean", lengths), ("chars", [len(c) for c in CHOICES])):
        result = score(llm, method, choice_score=mode)
        assert all(math.isclose(m, s / n, abs_tol=1e-6) for m, s, n in zip(result.scores, summed.scores, sizes)), mode
        assert result.logprobs == summed.logprobs == summed.scores and result.option_tokens == lengths
        assert result.choice == max(range(len(CHOICES)), key=result.scores.__getitem__)
        if method == "per_prompt":
            per_prompt = [option_scores(lp, result.option_tokens, result.option_chars, mode)
                          for lp in result.per_prompt_logprobs]
            assert [max(range(len(CHOICES)), key=s.__getitem__) for s in per_prompt] == result.per_prompt_choices
    assert len(set(lengths)) > 1 and len({len(c) / n for c, n in zip(CHOICES, lengths)}) > 1


def test_fusion_moves_the_scores(llm):
    """The premise of the identity tests: distinct paraphrases change fused scores."""
    origin = score(llm, "origin").scores
    for method in ("avg", "hidden_avg", "flex"):
        fused = score(llm, method, fusion_layer=1).scores
        assert max(abs(a - b) for a, b in zip(fused, origin)) > 1e-3, method


def test_hidden_avg_records_layer_and_bad_score_mode_fails(llm):
    assert score(llm, "hidden_avg", fusion_layer=1).fusion_layer == 1
    with pytest.raises(minirun.MinirunError, match="unknown --choice-score 'median'"):
        score(llm, "avg", choice_score="median")


def test_a_prompt_near_the_end_of_the_context_is_scored(llm):
    # the options' last position is the limit's: room for them but not for another 64 tokens of padding,
    # which are cache slots without positions and must not count against the context
    limit, longest = llm.config.max_position_embeddings, max(len(o) for o in CHOICES)
    words = " ".join(["capital"] * 2000)

    def ends_at(question: str) -> int:
        enc = encode_question(llm, [question], PREFIX, "\nA:", chat=False)
        return len(enc.full(0)) + max(map(len, option_ids(llm, enc, CHOICES, " ")))

    low, high = 0, len(words)  # the longest question whose options still fit
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if ends_at(words[:mid]) <= limit else (low, mid - 1)
    question = words[:low]
    assert limit - 64 < ends_at(question) <= limit and longest
    options = EnsembleOptions(chat=False)
    for method in ("origin", "avg"):
        result = score_choices(llm, method, [Question(question, [question] * 2, PREFIX, "\nA:")], [CHOICES], options)
        assert len(result[0].scores) == len(CHOICES) and all(math.isfinite(s) for s in result[0].scores)
    longer = words[:low + 40]
    with pytest.raises(MinirunError, match="prompt \\+ the longest answer option reaches position .* give shorter options"):
        score_choices(llm, "origin", [Question(longer, [longer], PREFIX, "\nA:")], [CHOICES], options)
    with pytest.raises(minirun.MinirunError, match="beyond the model's context"):
        score_choices(llm, "origin", [Question(words[:low + 40], [], PREFIX, "\nA:")], [CHOICES], options)


def test_weighted_methods_record_their_confidences(llm):
    result = score(llm, "weighted_avg", confidences=[[0.2, 0.5, 0.3]])
    assert result.confidences == [0.2, 0.5, 0.3] and score(llm, "avg").confidences is None


def test_a_batch_is_scored_where_each_of_its_questions_fits_alone(llm):
    """A long prompt with short options beside a short prompt with a long option: the batch was refused, its
    furthest prompt end and its longest option (of another question) added together past the context."""
    limit = llm.config.max_position_embeddings
    words = 1
    while len(encode_question(llm, ["capital " * words], "Q: ", "\nA:", chat=False).full(0)) < limit - 12:
        words += 1
    long_q = Question("capital " * words, ["capital " * words], "Q: ", "\nA:")
    short_q = Question("Who wrote Hamlet?", ["Who wrote Hamlet?", "Hamlet's author?"], "Q: ", "\nA:")
    choices = [["Paris", "Rome"], ["Marlowe", " ".join(["Shakespeare wrote Hamlet"] * 12)]]
    options = EnsembleOptions(chat=False)
    for method in ("origin", "avg", "flex"):
        together = score_choices(llm, method, [long_q, short_q], choices, options)
        for q, c, b in zip((long_q, short_q), choices, together, strict=True):
            a = score_choices(llm, method, [q], [c], options)[0]
            assert b.choice == a.choice and max(abs(x - y) for x, y in zip(b.scores, a.scores, strict=True)) <= ATOL


@pytest.mark.parametrize("method", ["origin", "per_prompt", "avg", "hidden_avg", "flex"])
def test_options_scores_are_read_to_the_host_at_once_not_one_by_one(llm, method):
    """Each option's log-likelihood was read with `.item()`, a wait for the device per option (MMLU's 4 x 14k on a
    GPU); now a question's options are read together."""
    score(llm, method)  # the few-shot head encoded and kept: each call below reads alike before the options
    reads = []
    for choices in (CHOICES[:2], CHOICES):
        with OpCounts() as ops:
            score(llm, method, choices=choices)
        reads.append(ops.scalar_reads())
    assert reads[0] == reads[1] > 0  # a prefill's padding check reads one; the options add none


@pytest.mark.parametrize("method", ["origin", "avg", "hidden_avg", "flex"])
def test_single_token_options_are_scored_in_bfloat16(smollm2_dir, smollm2_f32_dir, method):
    """Letters (" A" to " D", one token each in SmolLM2's vocabulary) are scored from the prompt's last logits
    alone, with no options pass; that path handed the head float32 states, which a bfloat16 model refused.
    The log-likelihoods are float32's within bfloat16's rounding: its logits near 20 are 0.125 apart, so 0.3 nats."""
    question = Question(QUESTION, PARAS, PREFIX, "\nA. Paris\nB. Lyon\nC. Berlin\nD. Rome\nAnswer:")
    options = EnsembleOptions(chat=False, choice_score="sum")
    letters = [["A", "B", "C", "D"]]
    got = score_choices(minirun.load(smollm2_dir, dtype="bfloat16"), method, [question], letters, options)[0]
    want = score_choices(minirun.load(smollm2_f32_dir), method, [question], letters, options)[0]
    assert got.option_tokens == [1, 1, 1, 1]
    assert max(abs(a - b) for a, b in zip(got.logprobs, want.logprobs)) <= 0.3, (got.logprobs, want.logprobs)
    assert got.choice == want.choice


def test_option_probabilities_are_the_softmax_of_the_scores_picked_by_and_votes_their_shares():
    probabilities = option_probabilities("avg", [math.log(0.2) - 3, math.log(0.3) - 3, math.log(0.5) - 3])
    assert probabilities == pytest.approx([0.2, 0.3, 0.5])  # normalised over the options: a shift changes nothing
    assert option_probabilities("origin", [-1.0, -1.0]) == [0.5, 0.5]
    assert option_probabilities("vote", [0.6, 0.4, 0.0]) == [0.6, 0.4, 0.0]  # shares of the picks already
    far = [-4000.0, -4001.5, -3999.25]  # summed log-likelihoods of long options: exp of each alone is 0
    assert option_probabilities("max", far) == pytest.approx(torch.tensor(far, dtype=torch.float64).softmax(0).tolist(),
                                                             rel=1e-12)


def test_the_prompts_shown_are_the_tokenizers_own_of_each_whole_prompt(llm):
    """`eval --show-prompts` shows what the methods encode: each prompt as the tokenizer encodes it whole, origin's
    the question's, and each option's ids after the prompt's (the harness's rule), with and without a template."""
    tok, question = llm.tokenizer, Question(QUESTION, PARAS, PREFIX, "\nA:")
    ids, options = asked_ids(llm, "avg", question, EnsembleOptions(chat=False), CHOICES)
    assert ids == [tok.encode(PREFIX + p + "\nA:") for p in PARAS]
    context = PREFIX + PARAS[-1] + "\nA:"
    start = len(tok.encode(context, add_special_tokens=False))
    assert options == [tok.encode(f"{context} {c}", add_special_tokens=False)[start:] for c in CHOICES]
    assert asked_ids(llm, "origin", question, EnsembleOptions(chat=False)) == (
        [tok.encode(PREFIX + QUESTION + "\nA:")], None)
    if tok.chat_template is not None:
        shown, _ = asked_ids(llm, "flex", question, EnsembleOptions(chat=True))
        assert shown == [tok.encode(tok.apply_chat_template([{"role": "user", "content": PREFIX + p + "\nA:"}],
                                                            add_generation_prompt=True), add_special_tokens=False)
                         for p in PARAS]


def harness_encode_pair_log_likelihoods(path, context: str, choices: list[str]) -> list[float]:
    """lm-evaluation-harness's loglikelihood of each `" " + choice` (its target delimiter and the choice as given)
    after `context`, its `_encode_pair` moving the context's trailing whitespace to the continuation's start."""
    tok = AutoTokenizer.from_pretrained(path)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for choice in choices:
        spaces = len(context) - len(context.rstrip())
        head = context[:len(context) - spaces]
        continuation = context[len(head):] + " " + choice
        prompt, whole = tok(head).input_ids, tok(head + continuation).input_ids
        with torch.no_grad():
            logp = reference(torch.tensor([whole])).logits[0].float().log_softmax(-1)
        out.append(sum(logp[j - 1, whole[j]].item() for j in range(len(prompt), len(whole))))
    return out


@pytest.mark.parametrize("suffix", ["\nA:", "\nA: "])
def test_the_harness_spacing_scores_options_as_given_after_its_space(llm, suffix):
    """`harness_spacing` (a harness format's): each option as given (HellaSwag's cleaned "[step] Water" ending starts
    with a space, and the harness scores both), after the harness's space, the prompt's trailing whitespace before it;
    the options' lengths in characters (acc_norm's) count that space; a chat template keeps minirun's rule."""
    choices = [" Paris", "Lyon ", "Berlin"]
    expected = harness_encode_pair_log_likelihoods(llm.path, PREFIX + QUESTION + suffix, choices)
    got = score_choices(llm, "origin", [Question(QUESTION, PARAS, PREFIX, suffix)], [choices],
                        EnsembleOptions(chat=False, choice_score="sum", harness_spacing=True))[0]
    assert max(abs(a - b) for a, b in zip(got.logprobs, expected)) <= ATOL and got.option_chars == [6, 5, 6]
    stripped = score_choices(llm, "origin", [Question(QUESTION, PARAS, PREFIX, suffix)], [choices],
                             EnsembleOptions(chat=False, choice_score="sum"))[0]
    same = abs(stripped.logprobs[2] - got.logprobs[2]) <= ATOL  # "Berlin": spaced alike unless the prompt ends in one
    assert same == (suffix == "\nA:")
    assert stripped.logprobs[0] != pytest.approx(got.logprobs[0], abs=1e-3) and stripped.option_chars == [5, 4, 6]


def test_cue_less_prompts_share_only_the_whitespace_they_all_end_with(llm):
    """Without a cue after the question (OpenBookQA's stems, HellaSwag's contexts), whitespace ending the question
    alone is not lent to the paraphrases: origin is spaced as the harness spaces its one prompt, and per_prompt scores
    a paraphrase without that whitespace as the harness would score it alone."""
    stem, other = "The sun is responsible for ", "What is the sun responsible for"
    choices = ["puppies learning new tricks", "plants sprouting"]
    options = EnsembleOptions(chat=False, choice_score="sum", harness_spacing=True)
    origin = score_choices(llm, "origin", [Question(stem, [stem, other], PREFIX)], [choices], options)[0]
    each = score_choices(llm, "per_prompt", [Question(stem, [other], PREFIX)], [choices], options)[0]
    assert origin.logprobs == pytest.approx(harness_encode_pair_log_likelihoods(llm.path, PREFIX + stem, choices),
                                            abs=ATOL)
    assert each.per_prompt_logprobs[0] == pytest.approx(
        harness_encode_pair_log_likelihoods(llm.path, PREFIX + other, choices), abs=ATOL)
