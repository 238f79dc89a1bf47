"""Exactness properties of the ensemble methods on random-weight checkpoints (float32, CPU)."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import minirun
from minirun.engine.generate import Row, plain_row, stack_rows
from minirun.engine.session import NO_HOOKS, Session
from minirun.errors import MinirunError
from minirun.layers import flex
from minirun.layers.hidden_fusion import head_mix
from minirun.layers.masks import SHARED, segment_mask
from minirun.methods import EnsembleOptions, Question, run_method
from minirun.methods import runner
from minirun.methods.fusion import ROW_WEIGHTS
from minirun.methods.packing import encode_question, packed_row
from minirun.models import Decoder

ATOL = 1e-4
QUESTION = "The capital of France is"
PARAS = ["The capital of France is", "Who wrote Hamlet? William", "Water boils at 100 degrees", "def add(a, b):"]
STOPS = ("e", "a", "/")  # random weights never write a newline: stop at characters met at different steps
PREFIX = "Q: Water boils at\nA: 100 degrees\n\nQ: Who wrote Hamlet?\nA: Shakespeare\n\n"


@pytest.fixture(scope="module", params=["llama3", "qwen3"])
def llm(request, checkpoint_dirs):
    return minirun.load(checkpoint_dirs[request.param])


def opts(**kw) -> EnsembleOptions:
    return EnsembleOptions(**{"max_new_tokens": 32, "chat": True, **kw})


def run(llm, method, paraphrases, question=QUESTION, prefix=PREFIX, **kw):
    return run_method(llm, method, [Question(question, paraphrases, prefix)], opts(**kw))[0]


def last_logits(llm, row: Row) -> torch.Tensor:
    """Next-token logits after prefilling one row alone."""
    layout = stack_rows([row], llm.pad_id, llm.device)
    return llm.session(1, layout.length + 4).prefill(layout.tokens, layout.positions, layout.segments)


def test_flex_with_one_paraphrase_equals_origin(llm):
    origin = run(llm, "origin", [])
    flex_one = run(llm, "flex", [QUESTION])
    assert flex_one.token_ids == origin.token_ids
    enc = encode_question(llm, [QUESTION], PREFIX, chat=True)
    a, b = last_logits(llm, plain_row(enc.full(0))), last_logits(llm, packed_row(enc))
    assert (a - b).abs().max().item() <= ATOL


@pytest.mark.parametrize("share_prefix", [True, False])
def test_flex_with_identical_paraphrases_and_inverse_n_bias_equals_origin(llm, share_prefix):
    """N identical segments weighted 1/N each recreate one copy's attention exactly; without a shared head
    each segment is head + paraphrase, and the tail follows once."""
    origin = run(llm, "origin", [])
    flex_run = run(llm, "flex", [QUESTION] * 3, flex_bias="inv_n", share_prefix=share_prefix)
    assert flex_run.token_ids == origin.token_ids
    enc = encode_question(llm, [QUESTION] * 3, PREFIX, chat=True)
    row = packed_row(enc, share_head=share_prefix)
    alone = len(enc.head) + len(enc.paraphrases[0])
    assert len(row.tokens) == (1 if share_prefix else 3) * len(enc.head) + 3 * len(enc.paraphrases[0]) + len(enc.tail)
    assert row.tokens[-len(enc.tail):] == enc.tail and row.positions[-1] == alone + len(enc.tail) - 1


def test_a_packed_row_keeps_the_head_tokens_not_prefilled_apart_as_shared_tokens(llm):
    enc = encode_question(llm, PARAS, PREFIX, "\nA:", chat=False)
    whole, rest = packed_row(enc), packed_row(enc, prefilled=len(enc.head) - 2)
    assert rest.tokens == whole.tokens[len(enc.head) - 2:] and rest.positions == whole.positions[len(enc.head) - 2:]
    assert rest.segments[:2] == [SHARED, SHARED] and rest.next_position == whole.next_position
    for bad in (dict(prefilled=len(enc.head) + 1), dict(prefilled=1, share_head=False)):
        with pytest.raises(ValueError, match="prefilled apart"):
            packed_row(enc, **bad)


@pytest.mark.parametrize("scheme", ["right", "restart"])
def test_packed_prefill_segments_equal_encoding_alone(llm, scheme):
    model = llm.model
    enc = encode_question(llm, PARAS, "", "\nA:", chat=False)
    row = packed_row(enc, scheme, share_head=False)
    tokens, positions = torch.tensor([row.tokens]), torch.tensor([row.positions])
    segments = torch.tensor([row.segments], dtype=torch.int32)
    n = len(row.tokens)
    with torch.inference_mode():
        model.setup_cache(1, n)
        packed = model.hidden(tokens, positions, flex.block_mask(segment_mask(segments), 1, n, n, "cpu"), torch.arange(n))
        packed_k = [layer.attn.kv_cache.k.clone() for layer in model.layers]
        for k in range(1, len(PARAS) + 1):
            idx = (segments[0] == k).nonzero()[:, 0]
            alone_tokens, alone_pos = tokens[:, idx], positions[:, idx]
            model.setup_cache(1, len(idx))
            same_pos = model.hidden(alone_tokens, alone_pos, slots=torch.arange(len(idx)))
            assert (packed[:, idx] - same_pos).abs().max().item() <= ATOL
            for layer, kp in zip(model.layers, packed_k):
                assert (kp[:, :, idx] - layer.attn.kv_cache.k).abs().max().item() <= ATOL
            from_zero = model.hidden(alone_tokens, torch.arange(len(idx))[None])
            assert (packed[:, idx] - from_zero).abs().max().item() <= ATOL


def test_avg_prob_follows_the_mean_probability_of_rows_recomputed_whole(llm):
    """avg_prob's greedy tokens are the argmax of the rows' mean probability, each row's prompt and answer so far
    prefilled from scratch at every step: the cache, the shared head and the fused decode change nothing."""
    enc = encode_question(llm, PARAS[:3], PREFIX, chat=True)
    fused = run(llm, "avg_prob", PARAS[:3], max_new_tokens=8, ignore_eos=True).token_ids
    answer: list[int] = []
    for _ in range(8):
        rows = torch.cat([last_logits(llm, plain_row(enc.full(i) + answer)) for i in range(3)])  # [3, V]
        answer.append(int(rows.double().softmax(-1).mean(0).argmax()))
    assert fused == answer


@pytest.mark.parametrize("method", ["avg", "avg_logprob", "avg_prob", "max", "weighted_avg", "weighted_max"])
def test_logit_fusion_of_identical_paraphrases_equals_origin(llm, method):
    origin = run(llm, "origin", [])
    confidences = [[0.2, 0.5, 0.3]]
    assert run(llm, method, [QUESTION] * 3, confidences=confidences).token_ids == origin.token_ids


@pytest.mark.parametrize("method", ["avg", "max", "flex", "per_prompt"])
def test_shared_prefix_equals_repeated_prefix(llm, method):
    shared = run(llm, method, PARAS[:3])
    repeated = run(llm, method, PARAS[:3], share_prefix=False)
    if method == "flex":  # each segment its own head + paraphrase: a different (documented) variant, whose
        # exactness test_flex_with_identical_paraphrases_and_inverse_n_bias_equals_origin checks; here its length
        head = encode_question(llm, PARAS[:3], PREFIX, chat=True).head
        assert repeated.prompt_tokens - shared.prompt_tokens == 2 * len(head) > 0
    else:
        assert shared.token_ids == repeated.token_ids and shared.answers == repeated.answers


@pytest.mark.parametrize("method", ["avg", "hidden_avg", "flex", "per_prompt"])
def test_a_head_copied_from_an_earlier_batch_gives_the_same_answers(llm, method, monkeypatch):
    """A later batch with the same few-shot head copies its keys and values: the same tokens as
    encoding it afresh, with no forward pass over the head; another head is encoded."""
    fresh = minirun.LLM(llm.model, llm.tokenizer, llm.path)  # its own, empty store of heads
    first = run(fresh, method, PARAS[:3])
    encoded = []
    original = Decoder.hidden
    monkeypatch.setattr(Decoder, "hidden", lambda self, tokens, *rest, **options: encoded.append(
        tokens.shape[0]) or original(self, tokens, *rest, **options))
    second = run(fresh, method, PARAS[:3])
    assert (second.token_ids, second.answers) == (first.token_ids, first.answers)
    assert encoded[:1] == [1 if method == "flex" else 3]  # the rows only (flex: one packed row)
    encoded.clear()
    run(fresh, method, PARAS[:3], prefix="Q: Who painted the Mona Lisa?\nA: Leonardo\n\n")
    assert encoded[0] == 1  # the new head, batch 1


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_methods_on_the_same_batch_prefill_it_once(checkpoint_dirs, dtype, monkeypatch):
    """per_prompt, then avg and max on the same questions: the later ones copy the prompts' keys, values
    and last states instead of encoding them, and answer token for token as they do alone (bfloat16 too:
    the copy is bit for bit); hidden_avg fuses into the cache, so it encodes its own."""
    llm = minirun.load(checkpoint_dirs["llama3"], dtype=dtype)
    questions = [Question(QUESTION, PARAS, PREFIX), Question("Who wrote Hamlet?", PARAS[:2], PREFIX)]
    alone = {method: run_method(llm, method, questions, opts()) for method in ("avg", "max", "hidden_avg")}
    encoded = []
    original = Decoder.hidden
    monkeypatch.setattr(Decoder, "hidden", lambda self, tokens, *rest, **options: encoded.append(
        tuple(tokens.shape)) or original(self, tokens, *rest, **options))
    with llm.reusing_prompts() as prompts:
        run_method(llm, "per_prompt", questions, opts())
        encoded.clear()
        for method in ("avg", "max"):
            together = run_method(llm, method, questions, opts())
            assert [(r.token_ids, r.answers) for r in together] == [(r.token_ids, r.answers) for r in alone[method]]
        assert encoded and all(tokens == 1 for _, tokens in encoded)  # decode steps only: no prefill
        assert prompts.reused_seconds > 0
        encoded.clear()
        fused = run_method(llm, "hidden_avg", questions, opts())
        assert [r.token_ids for r in fused] == [r.token_ids for r in alone["hidden_avg"]]
        assert encoded[0][1] > 1  # its prompt encoded: many tokens in one call
    assert llm.prompts is None


def test_per_prompt_rows_equal_origin_on_each_paraphrase(llm):
    per = run_method(llm, "per_prompt", [Question(QUESTION, PARAS, PREFIX)], opts())[0]
    for paraphrase, answer in zip(PARAS, per.answers, strict=True):
        assert answer == run(llm, "origin", [], question=paraphrase).text


@pytest.mark.parametrize("method", ["avg", "max", "flex"])
def test_paraphrase_order_does_not_change_fused_tokens(llm, method):
    a = run(llm, method, PARAS)
    b = run(llm, method, PARAS[::-1])
    assert a.token_ids == b.token_ids


@pytest.mark.parametrize("method", ["origin", "per_prompt", "avg", "flex"])
def test_batch_of_questions_equals_one_at_a_time(llm, method):
    questions = [Question(QUESTION, PARAS[:2], PREFIX), Question(PARAS[2], PARAS[1:4], PREFIX)]
    together = run_method(llm, method, questions, opts(max_new_tokens=12))
    for q, r in zip(questions, together, strict=True):
        alone = run_method(llm, method, [q], opts(max_new_tokens=12))[0]
        assert (r.token_ids, r.answers) == (alone.token_ids, alone.answers)


@pytest.mark.parametrize("method, extra", [("origin", {}), ("avg", {}), ("hidden_avg", {}), ("flex", {}),
                                           ("flex", {"positions": "sequential"}), ("flex", {"share_prefix": False})])
def test_a_question_whose_head_differs_from_its_batch_mates_answers_as_alone(llm, method, extra):
    """After "Q: " a word takes the space into its first token and a number does not, so batch-mates' heads
    differ by a token. Row methods move it into every row, exactly; flex had moved it into every paraphrase's
    segment, so its answer changed with the batch (logits by up to 5 with sequential positions)."""
    prefix = PREFIX + "Q: "
    number = Question("12345 is the number", ["12345 is the number", "12345 Paris"], prefix, "\nA:")
    word = Question("is Paris", ["is Paris", "is Water"], prefix, "\nA:")
    heads = [encode_question(llm, q.paraphrases, prefix, "\nA:", chat=False).head for q in (number, word)]
    assert len(heads[0]) != len(heads[1])
    options = opts(chat=False, max_new_tokens=8, **extra)
    together = run_method(llm, method, [number, word], options)
    for q, r in zip((number, word), together, strict=True):
        alone = run_method(llm, method, [q], options)[0]
        assert r.token_ids == alone.token_ids
        if method == "flex":  # its row holds the head's own token once, as alone (a row method: once a row); with
            assert r.prompt_tokens == alone.prompt_tokens  # right positions the old packing differed only here


@pytest.mark.parametrize("method, extra", [("origin", {}), ("per_prompt", {}), ("avg", {}), ("max", {}),
                                           ("hidden_avg", {}), ("hidden_avg", {"fusion_alpha": 0.5}), ("flex", {}),
                                           ("flex", {"flex_bias": "inv_n"})])
def test_finished_questions_leave_the_batch_without_changing_answers(llm, method, extra, monkeypatch):
    """Eager decoding drops a question's rows once its answer is done: later steps run fewer rows,
    and every answer is token-identical to decoding the whole batch to the end."""
    questions = [Question(QUESTION, PARAS[:2], PREFIX), Question(PARAS[2], PARAS[1:4], PREFIX),
                 Question(PARAS[3], PARAS[::-1], PREFIX)]
    options = opts(max_new_tokens=16, stop=STOPS, **extra)
    batches = []
    decode = Session.decode
    monkeypatch.setattr(Session, "decode", lambda self, *a: batches.append(self.batch) or decode(self, *a))
    shrunk = run_method(llm, method, questions, options)
    rows = len(questions) if method in ("origin", "flex") else sum(len(q.paraphrases) for q in questions)
    assert batches and batches[-1] < rows  # some rows left before the last step
    monkeypatch.setattr(Session, "resizable", property(lambda self: False))
    whole = run_method(llm, method, questions, options)
    assert [(r.token_ids, r.answers) for r in shrunk] == [(r.token_ids, r.answers) for r in whole]


@pytest.mark.parametrize("method", ["origin", "per_prompt", "avg", "hidden_avg", "flex"])
def test_eager_attention_reads_no_cache_slot_the_generation_did_not_write(llm, method):
    """Eager caches are allocated unzeroed and reused as they are: every slot attention reads must
    have been written by this generation. With the allocation poisoned by NaN (which a masked slot
    would still carry into P @ V), questions of different lengths under a shared head give the same
    tokens."""
    questions = [Question(QUESTION, PARAS[:2], PREFIX), Question(PARAS[2], PARAS[1:4], PREFIX),
                 Question(PARAS[3], PARAS[::-1], PREFIX)]
    options = opts(max_new_tokens=12, stop=STOPS)
    clean = run_method(llm, method, questions, options)
    with torch.inference_mode():
        for layer in llm.model.layers:
            for buffer in layer.attn.kv_cache.allocation:
                buffer.fill_(float("nan"))
    poisoned = run_method(llm, method, questions, options)
    assert [(r.token_ids, r.answers) for r in poisoned] == [(r.token_ids, r.answers) for r in clean]
    assert torch.isnan(llm.model.layers[0].attn.kv_cache.allocation[0]).any()  # reused, with unwritten slots left


def test_a_batch_of_equal_questions_is_fused_in_one_call():
    groups = [[0, 1], [2, 3], [4, 5, 6]]
    cpu = torch.device("cpu")
    assert runner.group_layout(groups, tuple(range(7)), cpu).size is None  # a question of 3 rows among 2s
    assert runner.group_layout(groups, (0, 1, 2, 3), cpu).size == 2  # once the 3-row question has left
    assert runner.group_layout(groups[:2], (0, 1, 2, 3), cpu).questions == [0, 1]


@pytest.mark.parametrize("method, extra", [("avg", {}), ("max", {}), ("avg_logprob", {}), ("avg_prob", {}),
                                           ("weighted_avg", {"confidences": [[0.2, 0.5], [0.9, 0.1]]}),
                                           ("weighted_max", {"confidences": [[0.2, 0.5], [0.9, 0.1]]})])
def test_fusing_every_question_at_once_gives_the_same_tokens(llm, method, extra, monkeypatch):
    questions = [Question(QUESTION, PARAS[:2], PREFIX), Question(PARAS[2], PARAS[2:4], PREFIX)]
    options = opts(max_new_tokens=8, ignore_eos=True, **extra)
    layouts = []
    layout = runner.group_layout
    monkeypatch.setattr(runner, "group_layout", lambda *a: layouts.append(layout(*a)) or layouts[-1])
    together = [r.token_ids for r in run_method(llm, method, questions, options)]
    assert layouts and all(where.size == 2 for where in layouts)
    monkeypatch.setattr(runner, "group_layout", lambda *a: replace(layout(*a), size=None))
    assert [r.token_ids for r in run_method(llm, method, questions, options)] == together


def test_empty_paraphrases_rejected(llm):
    with pytest.raises(MinirunError, match="needs at least one paraphrase"):
        run(llm, "avg", [])


def test_unknown_method_rejected(llm):
    with pytest.raises(MinirunError, match="unknown method 'majority'"):
        run(llm, "majority", PARAS)


@pytest.mark.parametrize("method, extra", [("avg", {}), ("hidden_avg", {}), ("hidden_avg", {"fusion_alpha": 0.5}),
                                           ("weighted_avg", {"confidences": [[0.5, 0.2], [0.1, 0.9, 0.4], [0.1, 0.3, 0.1, 0.7]]}),
                                           ("weighted_max", {"confidences": [[0.5, 0.2], [0.1, 0.9, 0.4], [0.1, 0.3, 0.1, 0.7]]})])
def test_a_weighted_sum_of_logits_runs_the_vocabulary_head_once_per_question(llm, method, extra, monkeypatch):
    """avg, weighted_avg, weighted_max (and hidden_avg's avg) fuse logits as a weighted sum, which the
    head (linear) computes from the rows' mixed states: one head row per question still decoding, as
    questions leave the batch, and the same tokens as fusing every row's logits (float32)."""
    questions = [Question(QUESTION, PARAS[:2], PREFIX), Question(PARAS[2], PARAS[1:4], PREFIX),
                 Question(PARAS[3], PARAS[::-1], PREFIX)]
    options = opts(max_new_tokens=16, stop=STOPS, **extra)
    head_rows = []
    hook = llm.model.lm_head.register_forward_hook(lambda module, args, out: head_rows.append(args[0].shape[0]))
    try:
        mixed = run_method(llm, method, questions, options)
        assert max(head_rows) == 3 and head_rows[-1] < 3  # questions left the batch before the last step
        head_rows.clear()
        monkeypatch.setattr(runner, "ROW_WEIGHTS", {})  # every row's logits, then the rule
        per_row = run_method(llm, method, questions, options)
        assert max(head_rows) == 9
    finally:
        hook.remove()
    assert [(r.token_ids, r.answers) for r in mixed] == [(r.token_ids, r.answers) for r in per_row]


def test_bfloat16_logits_of_mixed_states_stay_as_close_to_float32_as_the_rows_mean(llm):
    """float32: the head of the mixed state is the rows' mean logits (1e-4). bfloat16: the question's
    logits carry one rounding, as origin's do, instead of the mean of N rounded rows; against float32
    at most 2x the per-row mean's error (the sample sets measured 1.2x, `bench/README.md`)."""
    encoded = [encode_question(llm, PARAS, PREFIX, chat=True)]

    def first_logits(model, mixed: bool) -> torch.Tensor:
        plan = runner.plan_rows(model, "avg", encoded, opts())
        groups = plan.groups
        mixing = head_mix(groups, [ROW_WEIGHTS["avg"](len(g), None) for g in groups], model.device) if mixed else None
        _, _, logits = runner.open_session(model, plan.rows, plan.head, 4, NO_HOOKS, mixing=mixing)
        return logits if mixed else logits.mean(0, keepdim=True)

    reference = first_logits(llm, mixed=False)
    assert (first_logits(llm, mixed=True) - reference).abs().max().item() <= ATOL
    bf16 = minirun.load(llm.path, dtype="bfloat16")
    mixed_error = (first_logits(bf16, mixed=True) - reference).abs().max().item()
    rows_error = (first_logits(bf16, mixed=False) - reference).abs().max().item()
    assert 0 < mixed_error <= 2 * rows_error


def test_a_templates_reasoning_switch_is_off_for_ensembles_unless_asked(tmp_path, checkpoint_dirs):
    """Qwen3's template renders an empty think block when enable_thinking is false: a short answer then starts
    at once. Ensembles and eval ask for that; plain prompts keep the template's own default."""
    from checkpoints import with_thinking_switch

    llm = minirun.load(with_thinking_switch(checkpoint_dirs["qwen3"], tmp_path / "q3"))
    think = llm.tokenizer.encode("<think>\n\n</think>\n\n", add_special_tokens=False)
    off = encode_question(llm, ["Capital of France?"], "Q: ", "\nA:")
    on = encode_question(llm, ["Capital of France?"], "Q: ", "\nA:", thinking=True)
    assert off.full(0)[-len(think):] == think and on.full(0)[-len(think):] != think
    assert llm.prompt_ids("hi") == llm.prompt_ids("hi", thinking=True) != llm.prompt_ids("hi", thinking=False)
    question = [Question("Capital?", ["Capital?", "France's capital?"])]
    off, on = (run_method(llm, "avg", question, EnsembleOptions(max_new_tokens=2, thinking=t))[0] for t in (False, True))
    assert off.prompt_tokens - on.prompt_tokens == 2 * len(think)  # the block in each of the two rows' tails


LLAMA3_STYLE_TEMPLATE = (  # what Llama 3.1/3.2 templates do first: bos, then a system header with today's date
    "{{- bos_token }}{%- set today = strftime_now('%d %b %Y') %}<|im_start|>system\nToday Date: {{ today }}"
    "<|im_end|>\n{%- for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] | trim }}<|im_end|>\n"
    "{%- endfor %}{%- if add_generation_prompt %}<|im_start|>assistant\n{%- endif %}")


def test_packed_prompts_equal_transformers_whole_prompts_under_a_bos_and_date_template(tmp_path, checkpoint_dirs):
    """The shared head holds the template's bos and dated system block once; head + paraphrase + tail is the ids
    transformers' apply_chat_template gives each prompt alone (trimmed content, a paraphrase with spaces)."""
    import json
    import shutil

    from transformers import AutoTokenizer

    path = tmp_path / "l3"
    shutil.copytree(checkpoint_dirs["llama3"], path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": LLAMA3_STYLE_TEMPLATE}))
    llm, reference = minirun.load(path), AutoTokenizer.from_pretrained(path)
    paraphrases = ["What is the capital of France?", "  Which city is France's capital?  ", "1889: which tower?"]
    for prefix, suffix in (("", ""), ("Answer briefly.\n\nQ: Who wrote Hamlet?\nA: Shakespeare\n\nQ: ", "\nA:")):
        encoded = encode_question(llm, paraphrases, prefix, suffix)
        for i, p in enumerate(paraphrases):
            whole = reference.apply_chat_template([{"role": "user", "content": prefix + p + suffix}],
                                                  add_generation_prompt=True, tokenize=True)
            assert encoded.full(i) == list(getattr(whole, "input_ids", whole))
        assert encoded.head[0] == reference.bos_token_id and "Today Date" in reference.decode(encoded.head)


@pytest.mark.parametrize("template", ["{{ bos_token }}fixed text", "{% for m in messages %}{{ m['content'] }} "
                                      "{{ m['content'] }}{% endfor %}"])
def test_a_template_that_drops_or_repeats_the_message_is_a_clear_error(tmp_path, checkpoint_dirs, template):
    import json
    import shutil

    path = tmp_path / "odd"
    shutil.copytree(checkpoint_dirs["llama3"], path)
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    with pytest.raises(MinirunError, match="renders the user's message [02] times, not once"):
        encode_question(minirun.load(path), ["Capital?", "France's capital?"], "Q: ", "\nA:")


@pytest.mark.parametrize("confidences, message", [
    ([[1, 0]], "one list per question \\(1\\) with one number per prompt \\(\\[3\\]\\)"),
    ([], "one list per question"),
    ([[0.5, -1.0, 0.6]], "finite numbers >= 0, got -1.0"),
    ([[0.5, float("nan"), 0.6]], "finite numbers >= 0, got nan"),
])
def test_given_confidences_are_checked(checkpoint_dirs, confidences, message):
    """A wrong count, a negative weight (it extrapolates) or an empty list (it was taken as none) is an error."""
    from minirun.methods import score_choices

    tiny_llm = minirun.load(checkpoint_dirs["llama3"])
    question = [Question("Capital?", ["Capital?", "France's capital?", "Capital city?"], suffix="\nA:")]
    options = EnsembleOptions(max_new_tokens=2, confidences=confidences)
    with pytest.raises(MinirunError, match=message):
        run_method(tiny_llm, "weighted_avg", question, options)
    with pytest.raises(MinirunError, match=message):
        score_choices(tiny_llm, "weighted_max", question, [["Paris", "Lyon"]], options)


def test_confidence_samples_past_the_context_are_named_as_such(checkpoint_dirs):
    """A prompt that fits with its answer but not with the 16 tokens a confidence sample takes was refused in
    --max-new-tokens' words ("prompt (506) + max_new_tokens (16)"), a setting the user had not given."""
    tiny_llm = minirun.load(checkpoint_dirs["llama3"])
    limit = tiny_llm.config.max_position_embeddings
    words = 1
    while len(encode_question(tiny_llm, [f"{'water ' * words}?"], chat=False).full(0)) < limit - 12:
        words += 1
    question = [Question("Capital?", [f"{'water ' * words}?"])]
    options = EnsembleOptions(max_new_tokens=3, chat=False)
    assert run_method(tiny_llm, "avg", question, options)  # the answer fits
    with pytest.raises(MinirunError, match=f"samples 16 tokens after each prompt .* context of {limit}: shorten"):
        run_method(tiny_llm, "weighted_avg", question, options)


def test_whole_number_confidences_weigh_as_their_floats(checkpoint_dirs):
    """[[1, 0, 0]] crashed scoring (an integer tensor has no finfo); it is the first prompt's weight alone."""
    from minirun.methods import score_choices

    tiny_llm = minirun.load(checkpoint_dirs["llama3"])
    question = [Question("Capital?", ["Capital?", "France's capital?", "Capital city?"], suffix="\nA:")]
    whole, real = (score_choices(tiny_llm, "weighted_avg", question, [["Paris", "Lyon"]],
                                 EnsembleOptions(confidences=c))[0] for c in ([[1, 0, 0]], [[1.0, 0.0, 0.0]]))
    assert whole.scores == real.scores


@pytest.mark.parametrize("confidence", [0.5, 1e-40, 2e38, 1e39])
def test_equal_confidences_of_any_size_answer_as_avg(llm, confidence):
    """float32 made 1e-40 subnormal and 1e39 infinite: the weights then summed to no 1 (prompt 0's answer) or NaN
    (the pad token), while the confidences were legal (finite, >= 0)."""
    paraphrases = [QUESTION, "Hamlet's author is who?", "The capital of France is?"]
    avg = run(llm, "avg", paraphrases, max_new_tokens=8)
    weighted = run(llm, "weighted_avg", paraphrases, max_new_tokens=8, confidences=[[confidence] * 3])
    assert weighted.token_ids == avg.token_ids and weighted.confidences == [confidence] * 3


def test_weighted_max_takes_the_most_confident_even_below_float32s_resolution(llm):
    paraphrases = [QUESTION, "Hamlet's author is who?", "The capital of France is?"]
    rows = run(llm, "per_prompt", paraphrases, max_new_tokens=8).answer_token_ids
    assert rows[0] != rows[1]  # else the test could not tell the two apart
    picked = run(llm, "weighted_max", paraphrases, max_new_tokens=8, confidences=[[0.3, 0.30000001, 0.1]])
    assert picked.token_ids == rows[1]


@pytest.mark.parametrize("field, value, message", [
    ("fusion_alpha", "0.5", "fusion_alpha must be a number"), ("temperature", None, "temperature must be a number"),
    ("confidence_temperature", "x", "confidence_temperature must be a number"),
    ("stop", 5, "stop must be a string or a list of strings"),
    ("confidences", [0.5, 0.5], "confidences must be one list per question"),
])
def test_options_of_the_wrong_type_are_named_not_a_traceback(field, value, message):
    with pytest.raises(MinirunError, match=message):
        EnsembleOptions(**{field: value})


def test_flex_refuses_prompts_that_end_in_no_shared_token(llm):
    """Nothing after the paraphrases would see them all: refused, generating, scoring and drawing alike, with the
    case of a suffix given that the tokenizer joined to each paraphrase (the message said to give one)."""
    from minirun.cli.mask_view import view_from_encoded
    from minirun.methods.choice import score_choices
    from minirun.methods.packing import Encoded

    bare = Question("Capital of France?", ["Capital of France?", "France's capital?"])
    needle = r"flex needs tokens shared after the paraphrases .* a suffix the tokenizer joins .* start it with a space"
    for call in (lambda: run_method(llm, "flex", [bare], EnsembleOptions(chat=False, max_new_tokens=2)),
                 lambda: score_choices(llm, "flex", [bare], [["Paris", "Rome"]], EnsembleOptions(chat=False)),
                 lambda: view_from_encoded(Encoded([1], [[5], [6]], []), "flex", str, llm.pad_id)):
        with pytest.raises(MinirunError, match=needle):
            call()


OWN = ["Q: Who painted the Mona Lisa?\nA: Leonardo da Vinci\n\n",
       "Q: What is the largest planet?\nA: Jupiter, a gas giant\n\n"]


def own_head_questions() -> list[Question]:
    """Few-shot examples drawn per question after a common instruction: the first two questions have a head of
    their own beyond the batch's, the third (the instruction alone) none."""
    return [Question(QUESTION, PARAS[:2], PREFIX + OWN[0]), Question(PARAS[2], PARAS[1:4], PREFIX + OWN[1]),
            Question(PARAS[3], PARAS[::-1], PREFIX)]


def prefill_rows(monkeypatch) -> list[tuple[int, int]]:
    """The [rows, tokens] of every call of the decoder with more than one token (prefill chunks), as they come
    (a shared head is one row, and is not encoded where an earlier batch of the model encoded it)."""
    calls = []
    original = Decoder.hidden
    monkeypatch.setattr(Decoder, "hidden", lambda self, tokens, *rest, **options: (
        tokens.shape[1] > 1 and calls.append(tuple(tokens.shape))) or original(self, tokens, *rest, **options))
    return calls


@pytest.mark.parametrize("method, extra", [("per_prompt", {}), ("vote", {}), ("avg", {}), ("max", {}),
                                           ("avg_logprob", {}), ("hidden_avg", {}),
                                           ("hidden_avg", {"fusion_alpha": 0.5}),
                                           ("weighted_avg", {"confidences": [[0.2, 0.5], [0.9, 0.1, 0.3],
                                                                             [0.1, 0.2, 0.3, 0.4]]})])
def test_questions_own_heads_are_encoded_once_and_answer_as_alone(llm, method, extra, monkeypatch):
    """Each question's own head is prefilled once, one row per question, and copied into its prompts' rows:
    every answer token-identical to the question asked alone (where its head is the batch's) and to the head
    encoded in every row; the prompt tokens count it once."""
    questions = own_head_questions()
    options = opts(max_new_tokens=10, stop=STOPS, **extra)
    prompts = runner.method_prompts(method, questions)
    plan = runner.plan_rows(llm, method, runner.encode_batch(llm, method, questions, prompts, options), options)
    assert [len(own) > 0 for own in plan.own] == [True, True, False]
    calls = prefill_rows(monkeypatch)
    apart = run_method(llm, method, questions, options)
    rows = sum(len(q.paraphrases) for q in questions)
    assert [c[0] for c in calls if c[0] > 1][:2] == [3, rows]  # after the shared head: the own heads, the prompts
    assert calls[-2][1] >= runner.OWN_HEAD_MIN
    monkeypatch.setattr(runner, "OWN_HEAD_MIN", 10 ** 6)  # every own head kept in its prompts' rows
    calls.clear()
    in_rows = run_method(llm, method, questions, options)
    assert [c[0] for c in calls if c[0] > 1][:1] == [rows]
    assert [(r.token_ids, r.answers) for r in apart] == [(r.token_ids, r.answers) for r in in_rows]
    for q, (question, r) in enumerate(zip(questions, apart, strict=True)):
        confidences = {"confidences": [extra["confidences"][q]]} if "confidences" in extra else {}
        alone = run_method(llm, method, [question], opts(max_new_tokens=10, stop=STOPS, **{**extra, **confidences}))[0]
        assert (r.token_ids, r.answers) == (alone.token_ids, alone.answers)
    saved = [(len(p) - 1) * len(own) for p, own in zip(prompts, plan.own)]  # encoded once, not once a prompt
    assert [b.prompt_tokens - a.prompt_tokens for a, b in zip(apart, in_rows)] == saved


def test_origin_keeps_each_questions_own_head_in_its_one_row(llm):
    """One prompt a question: encoding its head apart would save nothing and cost a prefill call."""
    questions = own_head_questions()
    options = opts()
    encoded = runner.encode_batch(llm, "origin", questions, runner.method_prompts("origin", questions), options)
    assert runner.plan_rows(llm, "origin", encoded, options).own is None
    encoded = runner.encode_batch(llm, "avg", questions, runner.method_prompts("avg", questions), options)
    assert runner.plan_rows(llm, "avg", encoded, options).own is not None


@pytest.mark.parametrize("method", ["per_prompt", "avg", "hidden_avg"])
def test_own_heads_read_no_cache_slot_the_generation_did_not_write(llm, method):
    """The own heads' slots of every row are copied from the rows that encoded them, padding included: with the
    cache's allocation poisoned by NaN, the same tokens."""
    options = opts(max_new_tokens=10, stop=STOPS)
    clean = run_method(llm, method, own_head_questions(), options)
    with torch.inference_mode():
        for layer in llm.model.layers:
            for buffer in layer.attn.kv_cache.allocation:
                buffer.fill_(float("nan"))
    poisoned = run_method(llm, method, own_head_questions(), options)
    assert [(r.token_ids, r.answers) for r in poisoned] == [(r.token_ids, r.answers) for r in clean]


def test_methods_on_a_batch_with_own_heads_prefill_it_once(llm, monkeypatch):
    """per_prompt then avg on questions with heads of their own: avg copies the own heads and the prompts
    (no prefill call), answering as alone; other own heads are encoded again."""
    questions = own_head_questions()
    alone = run_method(llm, "avg", questions, opts())
    calls = prefill_rows(monkeypatch)
    with llm.reusing_prompts() as prompts:
        run_method(llm, "per_prompt", questions, opts())
        calls.clear()
        together = run_method(llm, "avg", questions, opts())
        assert not calls and prompts.reused_seconds > 0
        assert [r.token_ids for r in together] == [r.token_ids for r in alone]
        swapped = [replace(questions[0], prefix=questions[1].prefix), replace(questions[1], prefix=questions[0].prefix),
                   questions[2]]
        run_method(llm, "avg", swapped, opts())
        assert [c[0] for c in calls[:2]] == [3, 9]  # the head copied from the store of heads, the rest encoded


def test_a_long_own_head_of_a_one_prompt_question_is_left_in_its_row(llm):
    """Only a question of several prompts gains from its own head apart: a batch whose one long own head is a
    single prompt's keeps every head in the rows."""
    options = opts()
    lone = [Question(QUESTION, [QUESTION], PREFIX + OWN[0]), Question(PARAS[2], PARAS[1:4], PREFIX)]
    encoded = runner.encode_batch(llm, "avg", lone, runner.method_prompts("avg", lone), options)
    assert runner.plan_rows(llm, "avg", encoded, options).own is None
    several = [replace(lone[0], paraphrases=PARAS[:2]), lone[1]]
    encoded = runner.encode_batch(llm, "avg", several, runner.method_prompts("avg", several), options)
    assert runner.plan_rows(llm, "avg", encoded, options).own is not None
