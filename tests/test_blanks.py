"""Gap items (Winogrande's partial scoring): each option written into the gap, the words after it scored."""
from __future__ import annotations

import json

import pytest
import torch
from checkpoints import write_checkpoint
from transformers import AutoModelForCausalLM, AutoTokenizer

import minirun
from minirun.errors import MinirunError
from minirun.methods import EnsembleOptions, Question
from minirun.methods.choice import gap_filled, score_blanks

PREFIX = "The cat sat on the mat because it was warm.\n\n"
SENTENCE = "The trophy does not fit into the brown suitcase because _ is too big."
PARAS = [SENTENCE, "Since the trophy will not go into the brown suitcase, _ is too big.",
         "The brown suitcase cannot hold the trophy because _ is too big."]
OPTIONS = ["the trophy", "the suitcase"]
ATOL = 1e-4


@pytest.fixture(scope="module", params=["llama3", "qwen2", "llama2_sentencepiece"])
def llm(request, checkpoint_dirs, tmp_path_factory):
    if request.param == "llama2_sentencepiece":  # a text's start is treated apart
        return minirun.load(write_checkpoint("llama_bias", tmp_path_factory.mktemp("sp"), sentencepiece=True))
    return minirun.load(checkpoint_dirs[request.param])


def scored(llm, method, paraphrases=PARAS, question=SENTENCE, prefix=PREFIX, **kw):
    options = EnsembleOptions(**{"chat": False, "choice_score": "sum", **kw})
    return score_blanks(llm, method, [Question(question, paraphrases, prefix)], [OPTIONS], "_", options)[0]


def partial_log_likelihoods(path, prefix: str, sentence: str, options: list[str] = OPTIONS) -> list[float]:
    """lm-evaluation-harness's Winogrande with transformers' own tokenizer and model: per option, the context is the
    sentence up to the gap with the option in it, and the target the words after the gap, stripped, after a space
    (the context's trailing whitespace moved before that space, as its `_encode_pair` does); the target's ids are
    those of the whole after the context's."""
    tok = AutoTokenizer.from_pretrained(path)
    reference = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    gap = sentence.index("_")
    target = sentence[gap + 1:].strip()
    out = []
    for option in options:
        context = prefix + sentence[:gap] + option
        spaces = context[len(context.rstrip()):]
        context = context.rstrip()
        prompt, whole = tok(context).input_ids, tok(f"{context}{spaces} {target}").input_ids
        with torch.no_grad():
            logp = reference(torch.tensor([whole])).logits[0].float().log_softmax(-1)
        out.append(sum(logp[j - 1, whole[j]].item() for j in range(len(prompt), len(whole))))
    return out


@pytest.mark.parametrize("sentence", [SENTENCE, "_ is too big for the brown suitcase, said the trophy."])
def test_origin_equals_the_harness_partial_scoring_with_transformers(llm, sentence):
    expected = partial_log_likelihoods(llm.path, PREFIX, sentence)
    got = scored(llm, "origin", [sentence], sentence)
    assert max(abs(a - b) for a, b in zip(got.logprobs, expected)) <= ATOL
    assert got.scores == got.logprobs and got.choice == max(range(2), key=expected.__getitem__)
    assert got.prompts == [sentence] and len(set(got.option_chars)) == 1  # one scored text, by either option


@pytest.mark.parametrize("method, extra", [("avg", {}), ("avg_logprob", {}), ("avg_prob", {}), ("max", {}),
                                           ("hidden_avg", {}),
                                           ("hidden_avg", {"fusion_layer": 1}), ("flex", {"flex_bias": "inv_n"})])
def test_identical_paraphrases_score_as_origin(llm, method, extra):
    origin = scored(llm, "origin").logprobs
    fused = scored(llm, method, [SENTENCE] * 3, **extra).logprobs
    assert max(abs(a - b) for a, b in zip(fused, origin)) <= ATOL


def test_per_prompt_and_vote_score_each_prompt_as_origin_would(llm):
    alone = [scored(llm, "origin", [p], p).logprobs for p in PARAS]
    per_prompt = scored(llm, "per_prompt")
    vote = scored(llm, "vote")
    for got, expected in zip(per_prompt.per_prompt_logprobs, alone):
        assert max(abs(a - b) for a, b in zip(got, expected)) <= ATOL
    assert per_prompt.per_prompt_choices == vote.per_prompt_choices == [max(range(2), key=lp.__getitem__)
                                                                         for lp in per_prompt.per_prompt_logprobs]
    assert per_prompt.choice == per_prompt.per_prompt_choices[0] and per_prompt.prompts == PARAS
    assert sum(vote.scores) == pytest.approx(1.0)


@pytest.mark.parametrize("method", ["avg", "max", "hidden_avg", "flex"])
def test_fusion_over_other_wordings_moves_the_scores(llm, method):
    """Without a chat template or a suffix, flex fuses the paraphrases in the option each prompt ends with."""
    origin, fused = scored(llm, "origin").logprobs, scored(llm, method).logprobs
    assert max(abs(a - b) for a, b in zip(fused, origin)) > 1e-3


def test_questions_batched_equal_questions_alone(llm):
    other = ["Anna thanked Maria for the help because _ had been kind.",
             "Anna was grateful to Maria because _ had been kind."]
    options = EnsembleOptions(chat=False, choice_score="sum")
    questions = [Question(SENTENCE, PARAS, PREFIX), Question(other[0], other, PREFIX)]
    for method in ("origin", "avg", "flex"):
        together = score_blanks(llm, method, questions, [OPTIONS, ["Anna", "Maria"]], "_", options)
        alone = [score_blanks(llm, method, [q], [c], "_", options)[0]
                 for q, c in zip(questions, [OPTIONS, ["Anna", "Maria"]])]
        for a, b in zip(together, alone):
            assert max(abs(x - y) for x, y in zip(a.logprobs, b.logprobs)) <= ATOL


@pytest.mark.parametrize("paraphrases, problem", [
    ([SENTENCE, "The trophy is too big for the suitcase."], "must hold the blank '_' once, got 0"),
    ([SENTENCE, "Since _ is big, _ is too big."], "must hold the blank '_' once, got 2"),
    ([SENTENCE, "The suitcase is small because _ is far too big."], "goes on after the gap '_' otherwise"),
])
def test_a_prompt_without_the_gap_or_other_words_after_it_is_refused(llm, paraphrases, problem):
    with pytest.raises(MinirunError, match=problem):
        scored(llm, "avg", paraphrases)


def test_a_suffix_or_a_lone_option_is_refused(llm):
    with pytest.raises(MinirunError, match="takes no suffix"):
        score_blanks(llm, "origin", [Question(SENTENCE, PARAS, PREFIX, "\nA:")], [OPTIONS], "_")
    with pytest.raises(MinirunError, match="at least 2 options"):
        score_blanks(llm, "origin", [Question(SENTENCE, PARAS, PREFIX)], [["the trophy"]], "_")


def test_the_chat_template_scores_the_words_after_the_gap_as_the_answer(checkpoint_dirs):
    """With the template, each filled prompt is the user's message and the words after the gap the answer."""
    llm = minirun.load(checkpoint_dirs["qwen2"])
    for method in ("origin", "avg", "flex"):
        got = score_blanks(llm, method, [Question(SENTENCE, [SENTENCE] * 2)], [OPTIONS], "_",
                           EnsembleOptions(chat=True, choice_score="sum"))[0]
        assert all(lp < 0 for lp in got.logprobs) and got.option_tokens[0] == got.option_tokens[1]
    assert json.dumps(got.logprobs)  # plain floats


NAMES = ["Rachel", "Megan"]
LENT = ["Megan lent her umbrella to Rachel because _ was going out into the rain.",
        "Rachel borrowed the umbrella of Megan because _ was going out into the rain.",
        "Megan gave Rachel her umbrella since _ was going out into the rain."]


def test_flex_fuses_single_names_in_the_word_each_prompt_ends_with(smollm2_f32_dir):
    """SmolLM2's byte-level tokenizer splits "Rachel" alone otherwise than " Rachel" inside a sentence: the space before
    the gap goes with the option into the shared suffix, so flex, without a chat template, fuses in the whole word."""
    from minirun.methods.packing import encode_question

    llm = minirun.load(smollm2_f32_dir)
    (filled, _), tail = gap_filled(Question(LENT[0], LENT), NAMES, "_")
    enc = encode_question(llm, filled.paraphrases, filled.prefix, filled.suffix, chat=False)
    assert llm.tokenizer.decode(enc.tail) == " Rachel"
    options = EnsembleOptions(chat=False, choice_score="sum")
    flex = score_blanks(llm, "flex", [Question(LENT[0], LENT)], [NAMES], "_", options)[0]
    origin = score_blanks(llm, "origin", [Question(LENT[0], LENT)], [NAMES], "_", options)[0]
    assert max(abs(a - b) for a, b in zip(flex.logprobs, origin.logprobs)) > 1e-3  # the other wordings count
    same = score_blanks(llm, "flex", [Question(LENT[0], [LENT[0]] * 2)], [NAMES], "_",
                        EnsembleOptions(chat=False, choice_score="sum", flex_bias="inv_n"))[0]
    assert max(abs(a - b) for a, b in zip(same.logprobs, origin.logprobs)) <= ATOL


def test_flex_fuses_options_with_their_own_spacing_and_wordings_spaced_otherwise(smollm2_f32_dir):
    """The spacing every wording ends with before the gap goes with the option; an option's trailing space is taken off
    as it is scored (minirun's rule for a prompt ending in whitespace): the up-front check encodes the prompts as
    scoring does, so what it passes is scored, never refused halfway through a run."""
    llm = minirun.load(smollm2_f32_dir)
    wordings = [LENT[0].replace("because _", "because  _"), LENT[2]]
    options = EnsembleOptions(chat=False, choice_score="sum")
    flex = score_blanks(llm, "flex", [Question(wordings[0], wordings)], [["Megan ", "Rachel "]], "_", options)[0]
    assert len(flex.logprobs) == 2 and all(lp < 0 for lp in flex.logprobs)


def test_a_gap_opening_the_sentence_is_origin_for_flex_alone_and_refused_among_wordings(llm):
    """A gap opening every prompt leaves flex no shared tokens before the scored words: of one wording, flex is
    origin's score; of several, one of them opening with the gap, it is refused before anything is scored, naming the
    chat template as the fix."""
    opening = "_ was too big for the brown suitcase, said the trophy."
    options = EnsembleOptions(chat=False, choice_score="sum")
    origin = score_blanks(llm, "origin", [Question(opening, [opening])], [OPTIONS], "_", options)[0]
    flex = score_blanks(llm, "flex", [Question(opening, [opening, opening])], [OPTIONS], "_", options)[0]
    assert flex.method == "flex" and flex.logprobs == pytest.approx(origin.logprobs, abs=ATOL)
    with pytest.raises(MinirunError, match="flex fuses a gap question's wordings .* with 'the trophy' in the gap end "
                                           "in none .* ask it in a chat template"):
        score_blanks(llm, "flex", [Question(opening, [opening, f"Everyone knew that {opening}"])], [OPTIONS], "_",
                     options)


def test_an_option_takes_the_spacing_every_wording_ends_with_before_the_gap():
    """Options are written into the gap as given (the harness's `sentence[:gap] + option`); the spacing every prompt
    ends with before the gap goes with the option into the shared suffix, the rest stays in each prompt's text."""
    (first, _), tail = gap_filled(Question(SENTENCE, [SENTENCE, SENTENCE.replace("because _", "because  _")]),
                                  OPTIONS, "_")
    stem = "The trophy does not fit into the brown suitcase because"
    assert [first.question, *first.paraphrases] == [stem, stem, f"{stem} "] and first.suffix == " the trophy"
    assert tail == "is too big."
    (spaced, _), _ = gap_filled(Question(SENTENCE, [SENTENCE]), [" the trophy", "the suitcase"], "_")
    assert spaced.question + spaced.suffix == f"{stem}  the trophy"


def test_options_ending_in_whitespace_are_scored_as_the_harness_spaces_them(llm):
    """With the harness's spacing (the winogrande format's), an option's trailing whitespace goes before the space
    the scored words follow, as the harness moves a context's; minirun's own rule puts it in place of that space."""
    options = ["the trophy ", "the suitcase"]
    expected = partial_log_likelihoods(llm.path, PREFIX, SENTENCE, options)
    got = score_blanks(llm, "origin", [Question(SENTENCE, [SENTENCE], PREFIX)], [options], "_",
                       EnsembleOptions(chat=False, choice_score="sum", harness_spacing=True))[0]
    assert max(abs(a - b) for a, b in zip(got.logprobs, expected)) <= ATOL
    own = score_blanks(llm, "origin", [Question(SENTENCE, [SENTENCE], PREFIX)], [options], "_",
                       EnsembleOptions(chat=False, choice_score="sum"))[0]
    assert own.logprobs[0] != pytest.approx(got.logprobs[0], abs=1e-3)
    assert own.logprobs[1] == pytest.approx(got.logprobs[1], abs=ATOL)


def test_the_spacing_shared_is_the_whitespace_every_text_ends_with():
    from minirun.methods.choice import shared_spacing

    assert shared_spacing(["for ", "for  ", "as\t "]) == " " and shared_spacing(["for ", "for"]) == ""
    assert shared_spacing(["a \n", "b\n"]) == "\n" and shared_spacing(["x"]) == ""
