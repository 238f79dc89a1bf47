"""GGUF -> HF conversion: SmolLM2 parity with transformers' own GGUF loading, round trips, errors."""
from __future__ import annotations

import copy
import json
import re

import gguf
import pytest
import torch
from safetensors import safe_open
from smollm2_fixture import tiny_model, write_tiny_gguf
from transformers import AutoModelForCausalLM, AutoTokenizer

import minirun
from minirun.checkpoints.convert import convert_gguf
from minirun.errors import MinirunError

CORPUS = [
    "Hello, world! The capital of France is Paris.",
    "  leading spaces,   runs of spaces\n\n\ttabs\r\nand CRLF   ",
    "Café naïve façade — “curly quotes” ‘x’ Ünïcödé",
    "emoji 😀👍🏽 family 👨‍👩‍👧 flags 🇫🇷",
    "中文测试，日本語のテキスト、한국어 문장",
    "digits 1234567890 3.14159 -42 1e10 007 2024-11-23",
    "def f(x):\n    return x ** 2  # comment\n\nclass A:\n\tpass\n",
    "<|im_start|>user\nhi there<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>minirun<file_sep>main.py<|im_end|>",
    "I'm sure you're right, they'll say it's WE'VE",
    "https://example.com/path?q=1&b=2#frag", "    ", "\n", "", "a" * 40,
]
CHATS = [
    [{"role": "user", "content": "What is 2+2?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who wrote Hamlet?"},
     {"role": "assistant", "content": "Shakespeare."}, {"role": "user", "content": "When? 🙂"}],
]
IDS = torch.tensor([[1, 504, 3458, 282, 4649, 314, 7, 198, 42, 1234, 9876, 2, 15, 300, 27, 4]])


@pytest.fixture(scope="module")
def smollm2_reference(smollm2_gguf):
    """transformers' own GGUF loading (dequantizes to float32) of the same file."""
    kwargs = dict(gguf_file=smollm2_gguf.name)
    model = AutoModelForCausalLM.from_pretrained(smollm2_gguf.parent, dtype=torch.float32, **kwargs).eval()
    return model, AutoTokenizer.from_pretrained(smollm2_gguf.parent, **kwargs)


def test_smollm2_logits_match_transformers_gguf(smollm2_f32_dir, smollm2_reference):
    ours = AutoModelForCausalLM.from_pretrained(smollm2_f32_dir).eval()
    assert ours.dtype == torch.float32 and ours.config.tie_word_embeddings
    with torch.no_grad():
        expected, got = smollm2_reference[0](IDS).logits, ours(IDS).logits
    # Same dequantized float32 weights, same graph: identical in practice (max-abs diff 0 measured).
    assert (got - expected).abs().max().item() <= 1e-5


def test_smollm2_tokenizer_matches_transformers_gguf(smollm2_f32_dir, smollm2_reference):
    ref, ours = smollm2_reference[1], AutoTokenizer.from_pretrained(smollm2_f32_dir)
    for text in CORPUS:
        ids = ref.encode(text)
        assert ours.encode(text) == ids, text
        assert ours.decode(ids) == ref.decode(ids) == text
        assert ours.decode(ids, skip_special_tokens=True) == ref.decode(ids, skip_special_tokens=True)
    for chat in CHATS:
        for prompt in (False, True):
            assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt) == \
                ref.apply_chat_template(chat, tokenize=False, add_generation_prompt=prompt)
    assert (ours.bos_token, ours.eos_token, ours.pad_token, ours.unk_token) == \
        ("<|im_start|>", "<|im_end|>", "<|im_end|>", "<|endoftext|>")


def test_smollm2_isolates_every_numeral_like_llama_cpp(smollm2_f32_dir):
    # llama.cpp's "smollm" pre-tokenizer (and SmolLM2's own tokenizer.json) split each \p{N} character
    # apart; transformers' GGUF loader skips that step, which shows only on non-ASCII numerals like these.
    split = AutoTokenizer.from_pretrained(smollm2_f32_dir).backend_tokenizer.pre_tokenizer.pre_tokenize_str
    text = "x 12 ١٢ ²"
    assert [text[a:b] for _, (a, b) in split(text)] == ["x", " ", "1", "2", " ", "١", "٢", " ", "²"]


def test_smollm2_files(smollm2_f32_dir, smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["model_type"] == "llama" and config["torch_dtype"] == "bfloat16"
    assert (config["num_hidden_layers"], config["num_key_value_heads"], config["rope_theta"]) == (30, 3, 100000.0)
    tokenizer_config = json.loads((smollm2_dir / "tokenizer_config.json").read_text())
    assert tokenizer_config["chat_template"].startswith("{% for message in messages %}")
    assert json.loads((smollm2_dir / "generation_config.json").read_text())["eos_token_id"] == 2
    with safe_open(smollm2_dir / "model.safetensors", "pt") as bf16, \
            safe_open(smollm2_f32_dir / "model.safetensors", "pt") as f32:
        assert "lm_head.weight" not in bf16.keys() and set(bf16.keys()) == set(f32.keys())
        name = "model.layers.0.self_attn.q_proj.weight"
        assert bf16.get_tensor(name).dtype == torch.bfloat16
        assert torch.equal(bf16.get_tensor(name), f32.get_tensor(name).to(torch.bfloat16))


def _q8_0_rounded(model):
    """A copy of `model` whose matrices went through Q8_0 and back: what a lossless conversion must reproduce."""
    rounded, q8 = copy.deepcopy(model), gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for p in rounded.parameters():
            if p.dim() == 2:
                p.copy_(torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(p.numpy(), q8), q8)))
    return rounded


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3"])
@pytest.mark.parametrize("qtype", ["F32", "Q8_0"])
def test_round_trip(tmp_path, arch, qtype):
    model = tiny_model(arch)
    out = convert_gguf(write_tiny_gguf(tmp_path / "m.gguf", model, qtype), tmp_path / "hf", dtype="float32")
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    reference = model if qtype == "F32" else _q8_0_rounded(model)
    ids = torch.randint(0, model.config.vocab_size, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        original, expected, got = model(ids).logits, reference(ids).logits, back(ids).logits
    assert (got - expected).abs().max().item() <= 1e-5  # measured 0: the conversion itself loses nothing
    # Q8_0 itself costs ~3% relative logit error on these random models (measured 0.026-0.037).
    assert ((got - original).norm() / original.norm()).item() <= (1e-6 if qtype == "F32" else 0.06)
    if qtype == "F32":
        assert all(torch.equal(back.state_dict()[k], v) for k, v in model.state_dict().items())
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert tokenizer.decode(tokenizer.encode("<|im_start|>the cat in the hat<|im_end|>", add_special_tokens=False)) == \
        "<|im_start|>the cat in the hat<|im_end|>"
    assert tokenizer.encode(" the", add_special_tokens=False) == [tokenizer.convert_tokens_to_ids("Ġthe")]


def test_bos_and_stop_ids_follow_llama_cpp(tmp_path):
    """A llama-bpe GGUF without add_bos_token gets a bos, as llama.cpp gives it (and Llama 3 was trained with);
    end-of-turn and end-of-message ids stop generation beside eos."""
    path = write_tiny_gguf(tmp_path / "m.gguf", tiny_model("llama"))
    out = convert_gguf(path, tmp_path / "hf", dtype="float32")
    assert AutoTokenizer.from_pretrained(out).encode(" the")[0] == 1  # the tiny vocab's bos
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == 2
    turns = _rewritten(path, tmp_path / "turns.gguf", lambda w: (w.add_eot_token_id(0), w.add_add_bos_token(False)))
    out = convert_gguf(turns, tmp_path / "hf2", dtype="float32")
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == [2, 0]
    assert minirun.load(out).eos_ids == {2, 0}
    assert AutoTokenizer.from_pretrained(out).encode(" the")[0] != 1  # the file's own add_bos_token: False


def _rewritten(path, out, add=lambda writer: None, drop: tuple[str, ...] = ()):
    """A copy of the GGUF at `path` without the metadata keys `drop`, with what `add(writer)` writes."""
    reader = gguf.GGUFReader(path)
    writer = gguf.GGUFWriter(str(out), str(reader.fields["general.architecture"].contents()))
    for field in reader.fields.values():
        if not field.name.startswith("GGUF.") and field.name not in ("general.architecture", *drop):
            writer.add_key_value(field.name, field.contents(), field.types[0],
                                 field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None)
    add(writer)
    for t in reader.tensors:
        writer.add_tensor(t.name, t.data, raw_dtype=t.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def test_a_tokenizer_the_file_cannot_give_is_refused_not_converted(tmp_path):
    """Without merges a byte-level vocabulary split every text into bytes (converted without a word); merges its
    vocabulary lacks, or not two tokens, were a traceback; an end-of-text id past the vocabulary stopped nothing."""
    path = write_tiny_gguf(tmp_path / "m.gguf", tiny_model("qwen2"))
    merges = "tokenizer.ggml.merges"
    for name, add, drop, message in [
            ("none", lambda w: None, (merges,), "GGUF has no tokenizer.ggml.merges, which a byte-level BPE vocabulary "
                                                "needs: the file is incomplete"),
            ("unknown", lambda w: w.add_token_merges(["Ġzz zz"]), (merges,),
             "GGUF tokenizer merges do not fit its vocabulary .*Ġzz.*: the file is corrupt"),
            ("one", lambda w: w.add_token_merges(["nospace"]), (merges,),
             "GGUF tokenizer merge 'nospace' is not two tokens apart by a space: the file is corrupt"),
            ("eos", lambda w: w.add_eos_token_id(99999), ("tokenizer.ggml.eos_token_id",),
             r"GGUF tokenizer.ggml.eos_token_id 99999 is outside its \d+-token vocabulary: the file is corrupt")]:
        bad = _rewritten(path, tmp_path / f"{name}.gguf", add, drop)
        with pytest.raises(MinirunError, match=message):
            convert_gguf(bad, tmp_path / name)
        assert not (tmp_path / name).exists()


def test_weights_that_are_not_finite_or_past_the_dtype_are_refused(tmp_path):
    """A corrupt scale dequantizes to NaN, and a large weight narrowed to float16 became inf: both were written."""
    model = tiny_model("llama")
    with torch.no_grad():
        model.model.norm.weight[0] = 1e5
    large = write_tiny_gguf(tmp_path / "large.gguf", model)
    with pytest.raises(MinirunError, match="GGUF tensor output_norm.weight holds values past float16's range: convert "
                                           "with --dtype bfloat16 or float32"):
        convert_gguf(large, tmp_path / "half", dtype="float16")
    assert convert_gguf(large, tmp_path / "bf16", dtype="bfloat16").is_dir()
    with torch.no_grad():
        model.model.norm.weight[0] = float("nan")
    with pytest.raises(MinirunError, match="GGUF tensor output_norm.weight holds non-finite values: the file is "
                                           "corrupt"):
        convert_gguf(write_tiny_gguf(tmp_path / "nan.gguf", model), tmp_path / "nan", dtype="float32")
    assert not (tmp_path / "half").exists() and not (tmp_path / "nan").exists()


def test_converted_dir_is_not_reused_silently(tmp_path):
    gguf_path = write_tiny_gguf(tmp_path / "m.gguf", tiny_model("qwen2"))
    convert_gguf(gguf_path, tmp_path / "hf")
    with pytest.raises(MinirunError, match="already exists and is not empty"):
        convert_gguf(gguf_path, tmp_path / "hf")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_unsupported_architecture(tmp_path):
    path = write_tiny_gguf(tmp_path / "mamba.gguf", tiny_model("llama"), arch="mamba")
    with pytest.raises(MinirunError, match=r"architecture 'mamba' is not supported: minirun converts llama, qwen2"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_rope_scaling_names_the_ones_converted(tmp_path):
    plain = tiny_model("llama", rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    path = write_tiny_gguf(tmp_path / "l.gguf", plain, metadata={"llama.rope.scaling.type": "longrope"})
    with pytest.raises(MinirunError, match="rope scaling 'longrope' is not supported: minirun converts none, linear, "
                                           "yarn and llama3 .*pull the original HF checkpoint"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("keys, expected", [
    ({"llama.rope.scaling.factor": 2.0}, {"rope_type": "linear", "factor": 2.0}),  # no type: llama.cpp's linear
    ({"llama.rope.scale_linear": 2.0}, {"rope_type": "linear", "factor": 2.0}),  # the key before November 2023
    ({"llama.rope.scaling.factor": 1.0}, None), ({}, None)])
def test_linear_rope_scaling_is_read_as_llama_cpp_reads_it(tmp_path, keys, expected):
    """A file with a scaling factor and no type, or the older rope.scale_linear key, scales positions linearly in
    llama.cpp: converted without scaling, its positions were wrong, silently."""
    plain = tiny_model("llama", rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
    out = convert_gguf(write_tiny_gguf(tmp_path / "l.gguf", plain, metadata=keys), tmp_path / "out")
    assert json.loads((out / "config.json").read_text()).get("rope_scaling") == expected


def test_yarn_gguf_converts_to_transformers_yarn(tmp_path):
    """llama.cpp writes a yarn config.json as its type, factor and original context: converted back, the
    logits are transformers' own on the original model; yarn tuning keys llama.cpp defines in its own terms
    are refused rather than guessed."""
    rope = {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 64}
    model = tiny_model("qwen3", rope_parameters=rope)
    out = convert_gguf(write_tiny_gguf(tmp_path / "y.gguf", model), tmp_path / "out", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
    tokens = torch.randint(3, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (minirun.load(out).model(tokens) - model(tokens).logits).abs().max().item() <= 1e-4
    tuned = write_tiny_gguf(tmp_path / "t.gguf", model, metadata={"qwen3.rope.scaling.yarn_beta_fast": 16.0})
    with pytest.raises(MinirunError, match="GGUF yarn rope scaling sets yarn_beta_fast, which minirun does not map"):
        convert_gguf(tuned, tmp_path / "out2")


@pytest.mark.parametrize("arch, metadata, message", [
    ("qwen2", {"qwen2.rope.dimension_count": 8}, "GGUF qwen2.rope.dimension_count 8 rotates part of each 16-wide head"),
    ("llama", {"llama.attention.scale": 0.5}, "GGUF llama.attention.scale 0.5 changes the attention's scale"),
    ("qwen3", {"qwen3.rope.scaling.attn_factor": 2.0}, "GGUF qwen3.rope.scaling.attn_factor 2 changes the attention's"),
])
def test_gguf_metadata_llama_cpp_computes_with_but_a_config_cannot_say_is_refused(tmp_path, arch, metadata, message):
    """These converted silently, and the checkpoint computed otherwise than llama.cpp runs the file; the values
    llama.cpp writes for a plain model (the head's width, 1/sqrt of it) convert."""
    with pytest.raises(MinirunError, match=re.escape(message)):
        convert_gguf(write_tiny_gguf(tmp_path / "m.gguf", tiny_model(arch), metadata=metadata), tmp_path / "out")
    model = tiny_model(arch)
    width = getattr(model.config, "head_dim", None) or model.config.hidden_size // model.config.num_attention_heads
    plain = {f"{arch}.rope.dimension_count": width, f"{arch}.attention.scale": width ** -0.5,
             f"{arch}.rope.scaling.attn_factor": 1.0}
    assert convert_gguf(write_tiny_gguf(tmp_path / "p.gguf", model, metadata=plain), tmp_path / "ok").is_dir()
    assert not (tmp_path / "out").exists()


def test_gguf_bias_tensors_an_architecture_does_not_hold_are_refused_before_converting(tmp_path):
    """A llama GGUF with attention biases converted whole and then failed to load, asking whether it was a llama
    checkpoint; qwen2's own q/k/v biases convert."""
    path = write_tiny_gguf(tmp_path / "b.gguf", tiny_model("llama", attention_bias=True))
    with pytest.raises(MinirunError, match=r"GGUF tensor blk\.0\.attn_k\.bias \(8 bias tensors in all\): minirun "
                                           "converts llama files without such biases"):
        convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    model = tiny_model("qwen2")
    out = convert_gguf(write_tiny_gguf(tmp_path / "q.gguf", model), tmp_path / "q", dtype="float32")
    tokens = torch.arange(3, 20)[None]
    with torch.no_grad():
        assert (minirun.load(out).model(tokens) - model(tokens).logits).abs().max().item() <= 1e-4


def test_a_killed_conversions_hidden_folder_is_removed_and_a_racing_one_named(tmp_path):
    """SIGKILL left `.out.partial-*` (the checkpoint's size) for good; a live conversion's, written lately, is kept.
    Two conversions into one new folder: the second to finish said "directory not empty; check the path and the
    disk" after its whole conversion."""
    import os
    import time

    from minirun.checkpoints.convert import partial_dirs, staged_dir
    from minirun.paths import STALE_TEMP_SECONDS

    stale, live, recent = (tmp_path / f".out.partial-{pid}-x1b2" for pid in (2**31 - 5, os.getppid(), 2**31 - 7))
    for folder in (stale, live, recent):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"x" * 100)
    old = time.time() - STALE_TEMP_SECONDS - 5
    for path in (stale, live):
        os.utime(path, (old, old))
    convert_gguf(write_tiny_gguf(tmp_path / "m.gguf", tiny_model("llama")), tmp_path / "out", dtype="float32")
    assert partial_dirs(tmp_path / "out") == sorted([live, recent]) and (tmp_path / "out" / "config.json").is_file()
    with pytest.raises(MinirunError, match=r"other was written by another process while this one worked: it holds "
                                           "that one's result; remove it"):
        with staged_dir(tmp_path / "other") as tmp:
            (tmp / "config.json").write_text("{}")
            (tmp_path / "other").mkdir()
            (tmp_path / "other" / "config.json").write_text("theirs")
    assert (tmp_path / "other" / "config.json").read_text() == "theirs" and partial_dirs(tmp_path / "other") == []


def test_truncated_gguf(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", tiny_model("llama"))
    data = path.read_bytes()
    for cut in (len(data) - 1000, 2000, 10):
        path.write_bytes(data[:cut])
        with pytest.raises(MinirunError, match="truncated or corrupt"):
            convert_gguf(path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_a_gguf_of_an_unknown_format_version_is_not_called_corrupt(tmp_path):
    path = write_tiny_gguf(tmp_path / "m.gguf", tiny_model("llama"))
    data = bytearray(path.read_bytes())
    data[4:8] = (99).to_bytes(4, "little")  # the header's format version, after the magic
    path.write_bytes(bytes(data))
    with pytest.raises(MinirunError, match="version 99 .*convert it with a current llama.cpp") as e:
        convert_gguf(path, tmp_path / "out")
    assert "corrupt" not in str(e.value)


def test_missing_file_and_bad_dtype(tmp_path):
    with pytest.raises(MinirunError, match="does not exist"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out")
    with pytest.raises(MinirunError, match="unsupported dtype 'int8'"):
        convert_gguf(tmp_path / "nope.gguf", tmp_path / "out", dtype="int8")


def test_what_is_not_a_gguf_file_or_a_writable_output_is_named(tmp_path):
    """A folder was called missing, a safetensors file "truncated or corrupt", and an output under a file the hidden
    folder staged beside it."""
    (tmp_path / "pkg" / "data").mkdir(parents=True)
    gguf_file = write_tiny_gguf(tmp_path / "pkg" / "data" / "m.gguf", tiny_model("llama"))
    with pytest.raises(MinirunError, match=f"is a folder, not a GGUF file: give the file inside it, {gguf_file}"):
        convert_gguf(tmp_path / "pkg", tmp_path / "out")
    (tmp_path / "model.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}      ")
    with pytest.raises(MinirunError, match="is not a GGUF file .*a safetensors checkpoint folder loads as it is"):
        convert_gguf(tmp_path / "model.safetensors", tmp_path / "out")
    (tmp_path / "notes").write_text("x")
    for out, message in [(tmp_path / "notes" / "out", r"notes is a file, so .*notes/out cannot be made: choose an "
                                                      "output directory in a folder"),
                         (tmp_path / "notes", "is a file: give an output directory")]:
        with pytest.raises(MinirunError, match=message) as caught:
            convert_gguf(gguf_file, out)
        assert ".partial" not in str(caught.value) and ".tmp" not in str(caught.value)
    assert not (tmp_path / "out").exists()


def test_an_output_in_the_folder_the_command_runs_in(tmp_path, monkeypatch):
    """`convert m.gguf .` staged its folder inside the output (the parent of "." is "."), converted it all, then
    blamed another process; replaced, the folder would leave the user's shell in a deleted directory: refused first,
    naming a new folder. A relative path into a new folder converts."""
    gguf_file = write_tiny_gguf(tmp_path / "m.gguf", tiny_model("llama"))
    (tmp_path / "here").mkdir()
    monkeypatch.chdir(tmp_path / "here")
    with pytest.raises(MinirunError, match=r"^\. is the folder this command runs in: give a new folder for the "
                                           r"output, such as model$"):
        convert_gguf(gguf_file, ".")
    assert list((tmp_path / "here").iterdir()) == []
    assert (convert_gguf(gguf_file, "./model") / "config.json").is_file()


def test_a_tokenizer_that_cannot_be_written_is_one_line(tmp_path, monkeypatch):
    """The tokenizers library fails a write (a full disk) with a bare Exception: a traceback, where every other file
    gave one line."""
    import minirun.checkpoints.convert as convert

    real = convert.build_tokenizer

    class Full:
        def save(self, path: str) -> None:
            raise Exception("No space left on device (os error 28)")

    monkeypatch.setattr(convert, "build_tokenizer", lambda meta: (Full(), real(meta)[1]))
    with pytest.raises(MinirunError, match=r"cannot write .*out/tokenizer.json \(Exception: No space left on device "
                                           r"\(os error 28\)\): free space on that disk, or choose another output"):
        convert_gguf(write_tiny_gguf(tmp_path / "m.gguf", tiny_model("llama")), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_an_end_of_turn_id_past_the_vocabulary_is_refused(tmp_path):
    """eot/eom/padding ids go into generation_config.json's stops as bos and eos do: one past the vocabulary is a
    corrupt file, named as those are."""
    stop = {"tokenizer.ggml.eot_token_id": 10**6}
    gguf_file = write_tiny_gguf(tmp_path / "m.gguf", tiny_model("llama"), metadata=stop)
    with pytest.raises(MinirunError, match="GGUF tokenizer.ggml.eot_token_id 1000000 is outside its"):
        convert_gguf(gguf_file, tmp_path / "out")


LLAMA3 = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 32.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def test_llama3_rope_scaling_comes_back_from_rope_freqs(tmp_path):
    # llama.cpp stores Llama 3.1/3.2's scaling only as `rope_freqs.weight`; with head_dim 16 and theta 5e5
    # its 8 divisors are 1 (four), one between, and the factor (three): every branch of the rule
    model = tiny_model("llama", rope_parameters=LLAMA3)
    out = convert_gguf(write_tiny_gguf(tmp_path / "m.gguf", model), tmp_path / "hf", dtype="float32")
    config = json.loads((out / "config.json").read_text())
    assert config["rope_scaling"] == {k: v for k, v in LLAMA3.items() if k != "rope_theta"}
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, model.config.vocab_size, (1, 200), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (back(ids).logits - model(ids).logits).abs().max().item() <= 1e-5
    ours = minirun.load(out, dtype="float32")
    assert ours.config.rope_scaling["factor"] == 32.0
    other = tiny_model("llama", rope_parameters={**LLAMA3, "low_freq_factor": 2.0})  # not Meta's constants
    with pytest.raises(MinirunError, match="rope_freqs.weight is not llama3 rope scaling with Meta's constants"):
        convert_gguf(write_tiny_gguf(tmp_path / "o.gguf", other), tmp_path / "o")
    assert not (tmp_path / "o").exists()
