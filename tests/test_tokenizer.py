"""Tokenizer parity with transformers on the same files: ids, text and chat template."""
from __future__ import annotations

from pathlib import Path

import pytest
from tokenizers import Tokenizer as FileTokenizer
from transformers import AutoTokenizer

from minirun.checkpoints.tokenizer import SPECIAL_KEYS, Tokenizer

TEXTS = ["The capital of France is Paris.", "  leading and   runs of spaces\n\n\ttabs", "Ünïcödé — 東京 🙂 café",
         "digits 1234567890 and 3.14159", "<|im_start|>user\nhi<|im_end|>", "", "def f(x):\n    return x ** 2"]
CHATS = [[{"role": "user", "content": "What is the capital of France?"}],
         [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote Hamlet?"},
          {"role": "assistant", "content": "Shakespeare."}, {"role": "user", "content": "When?"}]]


@pytest.fixture(scope="module")
def pair(checkpoint_dirs):
    path = checkpoint_dirs["qwen2"]
    return AutoTokenizer.from_pretrained(path), Tokenizer(path)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_match(pair, text):
    ref, ours = pair
    ids = ref.encode(text)
    assert ours.encode(text) == ids
    assert ours.decode(ids) == ref.decode(ids)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


LLAMA_TEXTS = [*TEXTS, " Paris", "a</s> b", "<s>[INST] What is the capital of France? [/INST]", "x  </s>  y"]


@pytest.mark.parametrize("model_type, settings", [
    (None, {}), (None, {"tokenizer_class": "LlamaTokenizer"}), ("llama", {"tokenizer_class": "LlamaTokenizer"}),
    ("llama", {"tokenizer_class": "LlamaTokenizerFast", "legacy": False}),
    ("llama", {"tokenizer_class": "LlamaTokenizer", "legacy": True}),
    ("llama", {"tokenizer_class": "LlamaTokenizerFast", "add_prefix_space": False}),
    ("mistral", {"tokenizer_class": "LlamaTokenizer"}),  # transformers 5 reads a Mistral's file as written
    ("llama", {"tokenizer_class": "CodeLlamaTokenizer"}), ("llama", {"tokenizer_class": "CodeLlamaTokenizerFast",
                                                                      "legacy": True, "add_prefix_space": False}),
    ("qwen2", {"tokenizer_class": "Qwen2Tokenizer", "byte_level": True}),  # rebuilt by transformers 5, alike
    ("llama", {"tokenizer_class": "GPT2Tokenizer", "byte_level": True}),  # SmolLM2's class, rebuilt alike
])
def test_a_tokenizer_class_encodes_as_transformers_5_loads_it(tmp_path, model_type, settings):
    """Llama 2 and TinyLlama name LlamaTokenizer[Fast], whose pipeline transformers 5 builds from
    tokenizer_config.json instead of reading tokenizer.json's legacy normalizer (" Paris" was "▁▁Paris" here and
    "▁Paris" there, and "[INST]" after "<s>" took a "▁" transformers does not give it); a Mistral's, or a byte-level
    file naming that class, it reads as written; Code Llama's class is rebuilt alike. The byte-level classes it
    rebuilds (Qwen's, SmolLM2's) build what their files hold."""
    ref, ours = _class_named(tmp_path, model_type, settings), Tokenizer(tmp_path)
    for text in LLAMA_TEXTS:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.encode(text, add_special_tokens=False) == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == ref.decode(ids) and ours.decode(ids, True) == ref.decode(ids, True), text


def _class_named(path: Path, model_type: str | None, settings: dict):
    """A tokenizer written to `path` whose tokenizer_config.json gets `settings` (`byte_level`: Qwen's byte-level BPE,
    else Llama 2's files) and config.json `model_type`, as transformers loads it."""
    import json

    from checkpoints import write_sentencepiece_tokenizer, write_tokenizer

    settings = dict(settings)
    (write_tokenizer if settings.pop("byte_level", False) else write_sentencepiece_tokenizer)(path)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, **settings}))
    if model_type is not None:
        (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    return AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("model_type, named, rebuilt", [
    ("qwen2", "Qwen2Tokenizer", True), ("llama", "Qwen2TokenizerFast", True),
    ("qwen2", "LlamaTokenizerFast", True),  # DeepSeek-R1's Qwen distills: transformers holds a qwen2 file's name wrong
    ("qwen2", "PreTrainedTokenizerFast", True), ("qwen3", None, True),  # a Qwen model naming no class
    ("qwen3", "PreTrainedTokenizerFast", False), ("llama", None, False),  # read as written
])
def test_a_qwen2tokenizer_encodes_with_qwens_pipeline_whatever_the_file_holds(tmp_path, model_type, named, rebuilt):
    """transformers 5's Qwen2Tokenizer takes a file's vocabulary and merges and builds Qwen's own pipeline around them
    (NFC, Qwen's split, byte level) — for a file naming it, for any qwen2 model's and for a Qwen model's naming no
    class: a file with GPT-2's split and no NFC was read as written. Qwen's own files hold that pipeline already:
    their ids, and their runs' keys (`rebuilt`), stay."""
    import json

    qwens = tmp_path / "qwen"
    _class_named(qwens, model_type, {"byte_level": True, "tokenizer_class": named})
    assert not Tokenizer(qwens).rebuilt
    other = tmp_path / "other"
    _class_named(other, model_type, {"byte_level": True, "tokenizer_class": named})
    written = json.loads((other / "tokenizer.json").read_text())
    written |= {"normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False,
                                                      "trim_offsets": True, "use_regex": True}}
    (other / "tokenizer.json").write_text(json.dumps(written))
    ref, ours, as_written = (AutoTokenizer.from_pretrained(other), Tokenizer(other),
                             FileTokenizer.from_file(str(other / "tokenizer.json")))
    texts = [*LLAMA_TEXTS, "a\n\nb", "  two  spaces  \n\n\n", "x 12345", "e\u0301t\u00e9"]
    assert ours.rebuilt == rebuilt == any(ours.encode(t) != as_written.encode(t).ids for t in texts)
    for text in texts:
        ids = ref.encode(text)
        assert ours.encode(text) == ids and ours.decode(ids) == ref.decode(ids), text


def test_a_byte_level_file_naming_llamatokenizerfast_is_read_as_written(tmp_path):
    """Llama 3 fine-tunes often name LlamaTokenizerFast over a byte-level tokenizer.json: rebuilt as Llama 2's
    Metaspace pipeline its ids would be nonsense. transformers 5.17 did rebuild it; later 5.x read it as written,
    as minirun does (checked against them where the transformers installed has that rule)."""
    from transformers.tokenization_utils_tokenizers import TokenizersBackend

    ref = _class_named(tmp_path, "llama", {"tokenizer_class": "LlamaTokenizerFast", "byte_level": True})
    ours, written = Tokenizer(tmp_path), FileTokenizer.from_file(str(tmp_path / "tokenizer.json"))
    reads_as_written = hasattr(TokenizersBackend, "_tokenizer_json_has_byte_level")
    for text in LLAMA_TEXTS:
        ids = written.encode(text).ids
        assert ours.encode(text) == ids and ours.decode(ids) == written.decode(ids, skip_special_tokens=False), text
        assert not reads_as_written or ref.encode(text) == ids, text


@pytest.mark.parametrize("messages", CHATS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_renders_identically(pair, messages, add_generation_prompt):
    ref, ours = pair
    expected = ref.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert ours.apply_chat_template(messages, add_generation_prompt=add_generation_prompt) == expected


def test_special_tokens(pair):
    ref, ours = pair
    assert ours.eos_token_id == ref.eos_token_id
    assert ours.pad_token_id == ref.pad_token_id


PARAPHRASES = ["What is the capital of France?", "  Which city is France's capital?  ", "\"Quoted\" capital of France?",
               "1889: which tower?", "東京 is the capital of which country 🙂?"]


@pytest.mark.parametrize("chat", [True, False])
def test_every_packed_prompt_is_the_tokenizers_own_encoding(smollm2_dir, chat):
    """The shared head, each paraphrase and the shared tail put together are exactly the ids transformers'
    tokenizer gives the whole prompt (eval's prefix ends in "Q: ", whose space merges into the next word)."""
    import minirun
    from minirun.methods.packing import encode_question

    llm, ref = minirun.load(smollm2_dir), AutoTokenizer.from_pretrained(smollm2_dir)
    prefix, suffix = "Answer briefly.\n\nQ: Who wrote Hamlet?\nA: Shakespeare\n\nQ: ", "\nA:"
    enc = encode_question(llm, PARAPHRASES, prefix, suffix, chat=chat)
    for i, p in enumerate(PARAPHRASES):
        if chat:
            text = ref.apply_chat_template([{"role": "user", "content": prefix + p + suffix}], tokenize=False,
                                           add_generation_prompt=True)
            expected = ref.encode(text, add_special_tokens=False)
        else:
            expected = ref.encode(prefix + p + suffix)
        assert enc.full(i) == expected, (chat, p)
    assert ref.convert_ids_to_tokens(enc.paraphrases[0][:1]) == ["ĠWhat"]  # not a lone "Ġ" closing the head
    assert len(enc.head) > 10 and len(enc.tail) >= 2


MISTRAL_TEMPLATE = ("{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
                    "{{ '[INST] ' + message['content'] + '[/INST]' }}{% else %}{{ message['content'] + eos_token }}"
                    "{% endif %}{% endfor %}")
LLAMA2_TEMPLATE = ("{% for message in messages %}{{ bos_token + '[INST] ' + message['content'].strip() + ' [/INST]' }}"
                   "{% endfor %}")


@pytest.mark.parametrize("arch, template", [("llama_bias", LLAMA2_TEMPLATE), ("mistral", MISTRAL_TEMPLATE)],
                         ids=["llama2", "mistral"])
def test_a_sentencepiece_models_packed_prompts_are_transformers_own_encodings(tmp_path, arch, template):
    """Llama 2's files (the pipeline transformers 5 rebuilds) and Mistral's (read as written), with their chat
    templates' literal `<s>[INST]`: the shared head, each paraphrase and the tail are the ids transformers gives
    each whole prompt, in chat and plain prompts."""
    import json

    from checkpoints import write_checkpoint

    import minirun
    from minirun.methods.packing import encode_question

    path = write_checkpoint(arch, tmp_path / arch, sentencepiece=True)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "tokenizer_config.json").write_text(json.dumps({**config, "chat_template": template}))
    llm, ref = minirun.load(path), AutoTokenizer.from_pretrained(path)
    prefix, suffix = "Answer briefly.\n\nQ: Who wrote Hamlet?\nA: Shakespeare\n\nQ: ", "\nA:"
    for chat in (True, False):
        enc = encode_question(llm, PARAPHRASES, prefix, suffix, chat=chat)
        for i, p in enumerate(PARAPHRASES):
            whole = ref.apply_chat_template([{"role": "user", "content": prefix + p + suffix}], tokenize=False) \
                if chat else prefix + p + suffix
            assert enc.full(i) == ref.encode(whole, add_special_tokens=not chat), (chat, p)


def _variant(tmp_path, checkpoint_dirs, change: dict, drop: tuple[str, ...] = ()) -> Path:
    """The qwen2 checkpoint's tokenizer files with tokenizer_config.json changed (None deletes a key)."""
    import json
    import shutil

    out = tmp_path / "tok"
    shutil.copytree(checkpoint_dirs["qwen2"], out, ignore=shutil.ignore_patterns("*.safetensors"))
    config = json.loads((out / "tokenizer_config.json").read_text())
    config = {k: v for k, v in {**config, **change}.items() if v is not None and k not in drop}
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    (out / "chat_template.jinja").unlink(missing_ok=True)
    return out


def test_templates_transformers_accepts_render_alike(tmp_path, checkpoint_dirs):
    template = ("{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}"
                "{% endgeneration %}{% else %}{{ m['role'] + ': ' + m['content'] }}{% endif %}\n{% endfor %}")
    path = _variant(tmp_path, checkpoint_dirs, {"chat_template": template})
    messages = CHATS[1]
    expected = AutoTokenizer.from_pretrained(path).apply_chat_template(messages, tokenize=False)
    assert Tokenizer(path).apply_chat_template(messages, add_generation_prompt=False) == expected


@pytest.mark.parametrize("template, message", [("{% if %}", "TemplateSyntaxError"),
                                               ("{{ raise_exception('system messages are not supported') }}",
                                                "system messages are not supported")])
def test_a_failing_template_is_one_line_and_only_when_used(tmp_path, checkpoint_dirs, template, message):
    import minirun

    ours = Tokenizer(_variant(tmp_path, checkpoint_dirs, {"chat_template": template}))  # loads: --raw needs no template
    assert ours.encode("hi") == AutoTokenizer.from_pretrained(checkpoint_dirs["qwen2"]).encode("hi")
    with pytest.raises(minirun.MinirunError, match=f"the chat template of .* failed: .*{message}.*pass --raw") as e:
        ours.apply_chat_template(CHATS[0])
    assert "\n" not in str(e.value)


def test_special_tokens_named_only_in_special_tokens_map(tmp_path, checkpoint_dirs):
    import json

    path = _variant(tmp_path, checkpoint_dirs, {}, drop=("eos_token", "pad_token", "added_tokens_decoder"))
    (path / "special_tokens_map.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    ref, ours = AutoTokenizer.from_pretrained(path), Tokenizer(path)
    assert (ours.eos_token_id, ours.pad_token_id) == (ref.eos_token_id, ref.pad_token_id) != (None, None)


@pytest.mark.parametrize("arch, sentencepiece, tokenizer_class", [("llama_bias", True, "LlamaTokenizer"),
                                                                   ("qwen2", False, "Qwen2Tokenizer")])
def test_special_tokens_a_tokenizer_class_gives_where_the_files_name_none(tmp_path, arch, sentencepiece,
                                                                         tokenizer_class):
    """transformers 5's tokenizer classes take their own special tokens where the files name none (Llama's <s>, </s>,
    <unk>; Qwen2's <|endoftext|>): a template's `bos_token` was undefined and the eos id None."""
    import json

    from checkpoints import write_checkpoint

    path = write_checkpoint(arch, tmp_path / arch, sentencepiece=sentencepiece)
    config = json.loads((path / "tokenizer_config.json").read_text())
    (path / "chat_template.jinja").unlink(missing_ok=True)
    (path / "special_tokens_map.json").unlink(missing_ok=True)
    (path / "tokenizer_config.json").write_text(json.dumps(
        {**{k: v for k, v in config.items() if not k.endswith("_token")}, "tokenizer_class": tokenizer_class,
         "chat_template": "{{ bos_token }}[INST] {{ messages[0]['content'] }} [/INST]{{ eos_token }}"}))
    ref, ours = AutoTokenizer.from_pretrained(path), Tokenizer(path)
    assert {k: ours.special_tokens.get(k) for k in SPECIAL_KEYS} == {k: getattr(ref, k) for k in SPECIAL_KEYS}
    assert ours.eos_token_id == ref.eos_token_id is not None
    assert ours.apply_chat_template(CHATS[0]) == ref.apply_chat_template(CHATS[0], tokenize=False,
                                                                         add_generation_prompt=True)


def test_named_chat_templates_without_a_default_are_refused_when_used(tmp_path, checkpoint_dirs):
    """transformers refuses to pick among named templates none of which is "default"; minirun took the model for
    one without a template and asked every question raw, silently."""
    import minirun

    named = [{"name": "tool_use", "template": "{{ 'tools' }}"}, {"name": "rag", "template": "{{ 'rag' }}"}]
    ours = Tokenizer(_variant(tmp_path, checkpoint_dirs, {"chat_template": named}))
    assert ours.encode("hi") == AutoTokenizer.from_pretrained(checkpoint_dirs["qwen2"]).encode("hi")  # --raw runs
    with pytest.raises(minirun.MinirunError, match=r"names chat templates \(tool_use, rag\) and none \"default\".* "
                                                   "write the one to use to chat_template.jinja, or ask without a "
                                                   "template .generate --raw, eval --no-chat, a sweep's chat = "
                                                   "false.; pass --raw"):
        ours.apply_chat_template(CHATS[0])
    with_default = Tokenizer(_variant(tmp_path / "d", checkpoint_dirs,
                                      {"chat_template": [*named, {"name": "default", "template": "{{ 'chat' }}"}]}))
    assert with_default.apply_chat_template(CHATS[0]) == "chat"


def test_spaces_before_punctuation_survive_a_bpe_decode(tmp_path, checkpoint_dirs):
    path = _variant(tmp_path, checkpoint_dirs, {"clean_up_tokenization_spaces": True})  # as Llama 3 ships
    ref, ours = AutoTokenizer.from_pretrained(path), Tokenizer(path)
    ids = ref.encode("Hello , world . It 's fine")
    assert ours.decode(ids) == ref.decode(ids) == "Hello , world . It 's fine"


def test_a_batchs_questions_share_one_head_however_their_first_tokens_merge(smollm2_dir):
    """After "Q: " a word takes the space into its first token and a digit does not: the questions' own heads
    differ by that token, which stays in the rows (too short to encode apart), after the head the batch
    shares, each prompt's ids unchanged."""
    import minirun
    from minirun.methods.options import EnsembleOptions
    from minirun.methods.packing import encode_question
    from minirun.methods.runner import plan_rows

    llm = minirun.load(smollm2_dir)
    word, digit = (encode_question(llm, [q], "Answer.\n\nQ: ", "\nA:") for q in ("Which tower?", "1889: which tower?"))
    assert len(word.head) != len(digit.head)
    plan = plan_rows(llm, "origin", [word, digit], EnsembleOptions())
    assert plan.own is None and plan.head == word.head[:len(plan.head)] == digit.head[:len(plan.head)]
    assert [plan.head + r.tokens for r in plan.rows] == [word.full(0), digit.full(0)]


def test_a_pinned_clock_renders_the_template_at_that_moment(checkpoint_dirs, tmp_path):
    """`pinned_clock` sets what strftime_now reads inside the block, nests, and puts the clock back after it."""
    import datetime
    import shutil

    ckpt = shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "ckpt")
    (ckpt / "chat_template.jinja").write_text("{{ strftime_now('%Y-%m-%d') }}|{{ messages[0]['content'] }}")
    tok = Tokenizer(ckpt)
    say = lambda: tok.apply_chat_template([{"role": "user", "content": "q"}])  # noqa: E731
    today = datetime.date.today().isoformat()
    assert tok.reads_clock and say() in (f"{today}|q", f"{datetime.date.today().isoformat()}|q")
    with tok.pinned_clock(datetime.datetime(2024, 7, 26)):
        assert say() == "2024-07-26|q"
        with tok.pinned_clock(None):
            assert say() == "2024-07-26|q"
        with tok.pinned_clock(datetime.datetime(2025, 1, 2)):
            assert say() == "2025-01-02|q"
        assert say() == "2024-07-26|q"
    assert tok.clock is None


def test_a_template_that_leaves_thinking_open_is_told_apart(checkpoint_dirs, tmp_path):
    """DeepSeek-R1's distillations end the generation prompt inside <think>; Qwen3's switch either closes an empty
    block (thinking off) or leaves the model to open one; a template without thinking never opens one."""
    import shutil

    ckpt = shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "ckpt")
    template = ckpt / "chat_template.jinja"
    plain = template.read_text()
    assert not Tokenizer(ckpt).opens_reasoning() and not Tokenizer(ckpt).opens_reasoning(True)
    template.write_text(plain.replace("assistant\\n", "assistant\\n<think>\\n"))
    assert Tokenizer(ckpt).opens_reasoning() and Tokenizer(ckpt).opens_reasoning(False)
    tok, renders = Tokenizer(ckpt), []
    render = tok.apply_chat_template
    tok.apply_chat_template = lambda *a, **k: renders.append(1) or render(*a, **k)
    assert all(tok.opens_reasoning(False) for _ in range(3)) and len(renders) == 1  # asked per batch: rendered once
    # Qwen3's switch after the generation prompt: thinking off closes an empty block
    template.write_text(plain + "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n"
                        "{% endif %}")
    asked = [{"role": "user", "content": "q"}]
    assert "</think>" in Tokenizer(ckpt).apply_chat_template(asked, enable_thinking=False)
    assert "</think>" not in Tokenizer(ckpt).apply_chat_template(asked, enable_thinking=True)
    assert not any(Tokenizer(ckpt).opens_reasoning(thinking) for thinking in (None, True, False))
    switched = Tokenizer(ckpt)
    template.write_text(plain)
    assert switched.thinking_switch and not Tokenizer(ckpt).thinking_switch  # the switch read, or no switch


def test_truncation_and_padding_a_file_was_saved_with_are_off(tmp_path, checkpoint_dirs):
    """A tokenizer.json saved after a call with truncation or padding keeps them; transformers turns both off for
    every encode, and minirun cut prompts to the saved length (past the context check) or padded them silently."""
    path = _variant(tmp_path, checkpoint_dirs, {})
    saved = FileTokenizer.from_file(str(path / "tokenizer.json"))
    saved.enable_truncation(4)
    saved.enable_padding(length=64, pad_token="<|endoftext|>", pad_id=saved.token_to_id("<|endoftext|>"))
    saved.save(str(path / "tokenizer.json"))
    text = TEXTS[0] + " " + TEXTS[3]
    ids = AutoTokenizer.from_pretrained(path).encode(text)
    assert Tokenizer(path).encode(text) == ids and 4 < len(ids) < 64


@pytest.mark.parametrize("arch, token, in_file, in_config", [
    ("llama3", "<|im_end|>", {}, {"rstrip": True}), ("llama3", "<|im_end|>", {}, {"lstrip": True}),
    ("llama3", "<tool>", {"rstrip": True}, {}), ("qwen2", "<tool>", {}, {"rstrip": True}),
    ("qwen2", "<tool>", {"lstrip": True}, {}), ("qwen2", "<|im_end|>", {}, {"rstrip": True}),
    ("qwen2", "<|im_end|>", {"rstrip": True}, {})])
def test_added_token_strip_flags_are_transformers(tmp_path, checkpoint_dirs, arch, token, in_file, in_config):
    """An added token's strip flags where tokenizer.json and tokenizer_config.json's `added_tokens_decoder` disagree
    (Phi-3's rstrip style): transformers 5 takes the config's, except that its Qwen2Tokenizer re-adds the special
    tokens it names (bos, eos, pad...) with none, whatever either file says; the ids must be its own."""
    import json
    import shutil

    path = tmp_path / arch
    shutil.copytree(checkpoint_dirs[arch], path, ignore=shutil.ignore_patterns("*.safetensors"))
    files = json.loads((path / "tokenizer.json").read_text())
    if token == "<tool>":  # a token the tokenizer class does not name
        files["added_tokens"].append({"id": FileTokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size(),
                                      "content": token, "single_word": False, "lstrip": False, "rstrip": False,
                                      "normalized": False, "special": False})
    entries = {str(t["id"]): {k: v for k, v in t.items() if k != "id"} for t in files["added_tokens"]}
    key = next(k for k, v in entries.items() if v["content"] == token)
    files["added_tokens"] = [{**t, **in_file} if t["content"] == token else t for t in files["added_tokens"]]
    (path / "tokenizer.json").write_text(json.dumps(files))
    config = json.loads((path / "tokenizer_config.json").read_text())
    config["added_tokens_decoder"] = {**entries, key: {**entries[key], **in_config}}
    (path / "tokenizer_config.json").write_text(json.dumps(config))
    ref, ours = AutoTokenizer.from_pretrained(path), Tokenizer(path)
    text = f"hi  {token}\n there"
    assert ours.encode(text) == ref.encode(text)
    ids = ref.encode(text)
    assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)


@pytest.mark.parametrize("change, message", [
    ({"chat_template": [{"template": "{{ 1 }}"}]}, "chat_template list needs a \"name\" and a \"template\" text"),
    ({"chat_template": 5}, "chat_template is int, not a template's text"),
    ({}, "chat_template.jinja is not UTF-8 text: save it as UTF-8")])
def test_a_malformed_template_is_refused_when_used(tmp_path, checkpoint_dirs, change, message):
    """A template entry without its name, a template that is no text, a chat_template.jinja in another encoding:
    one line naming the fix when a chat prompt renders (KeyError, TypeError, UnicodeDecodeError before), while a run
    without the template goes on."""
    import minirun

    path = _variant(tmp_path, checkpoint_dirs, change)
    if not change:
        (path / "chat_template.jinja").write_bytes("{{ 'café' }}".encode("latin-1"))
    ours = Tokenizer(path)
    assert ours.encode("hi") == AutoTokenizer.from_pretrained(checkpoint_dirs["qwen2"]).encode("hi")
    with pytest.raises(minirun.MinirunError, match=message + ".*or ask without a template") as e:
        ours.apply_chat_template(CHATS[0])
    assert "\n" not in str(e.value)


def test_a_token_past_the_models_vocabulary_is_named(tmp_path, checkpoint_dirs):
    """A tokenizer holding an id past the model's embedding rows (another model's files): the prompt that holds it is
    refused naming the token and the fix, where the model failed with an index error or a row of wrong ids."""
    import json
    import shutil

    import minirun

    path = tmp_path / "other"
    shutil.copytree(checkpoint_dirs["qwen2"], path)
    vocab = json.loads((path / "config.json").read_text())["vocab_size"]
    files = json.loads((path / "tokenizer.json").read_text())
    held = FileTokenizer.from_file(str(path / "tokenizer.json")).get_vocab_size()
    files["added_tokens"] += [{"id": i, "content": "<extra>" if i == vocab else f"<unused{i}>", "single_word": False,
                               "lstrip": False, "rstrip": False, "normalized": False, "special": False}
                              for i in range(held, vocab + 1)]  # ids are dealt in turn: fill up to the rows' end
    (path / "tokenizer.json").write_text(json.dumps(files))
    llm = minirun.load(path)
    assert llm.generate("say hi", max_new_tokens=1).token_ids  # the rest of the vocabulary runs
    with pytest.raises(minirun.MinirunError, match=f"gives '<extra>' the id {vocab}, past the model's {vocab} "
                                                   "embedding rows .config.json's vocab_size.: its tokenizer files "
                                                   "are another model's"):
        llm.generate("say <extra> now", max_new_tokens=1)
