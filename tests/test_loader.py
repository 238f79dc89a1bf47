"""Loader and config errors: each a one-line MinirunError naming the problem."""
from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import minirun
from minirun.errors import MinirunError
from minirun.models.config import ModelConfig


@pytest.fixture
def copy(checkpoint_dirs, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(checkpoint_dirs["llama3"], dst)
    return dst


def _config(path):
    return json.loads((path / "config.json").read_text())


def test_unsupported_model_type(copy):
    raw = _config(copy)
    raw["model_type"] = "mamba"
    (copy / "config.json").write_text(json.dumps(raw))
    with pytest.raises(MinirunError, match=r"unsupported model_type 'mamba'.*llama, mistral, qwen2, qwen3"):
        minirun.load(copy)
    raw.update(model_type="mistral", sliding_window="4k")
    (copy / "config.json").write_text(json.dumps(raw))
    with pytest.raises(MinirunError, match=r"sliding_window '4k' must be a positive integer or null"):
        minirun.load(copy)
    (copy / "config.json").write_text("{}")  # was "unsupported model_type None"
    with pytest.raises(MinirunError, match=r"config.json has no model_type: it must name the architecture, one of"):
        minirun.load(copy)


def test_wrong_shape_names_tensor(copy):
    state = load_file(copy / "model.safetensors")
    state["model.layers.1.mlp.down_proj.weight"] = torch.zeros(3, 3)
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MinirunError, match=r"model\.layers\.1\.mlp\.down_proj\.weight has shape \(3, 3\)"):
        minirun.load(copy)


def test_a_config_off_in_its_heads_shows_each_of_q_k_and_v(copy):
    """A config.json that left out num_key_value_heads blamed q_proj, the one tensor whose shape was right."""
    config = {k: v for k, v in _config(copy).items() if k != "num_key_value_heads"}
    (copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(MinirunError, match=re.escape("tensors model.layers.0.self_attn.* have shapes q_proj (64, 64), "
                                                     "k_proj (32, 64), v_proj (32, 64), but config.json's heads, "
                                                     "key/value heads and head size need (192, 64) in all")):
        minirun.load(copy)
    (copy / "config.json").write_text(json.dumps({**config, "num_key_value_heads": 2, "intermediate_size": 100}))
    with pytest.raises(MinirunError, match=re.escape("tensors model.layers.0.mlp.* have shapes gate_proj (128, 64), "
                                                     "up_proj (128, 64), but config.json's intermediate_size needs "
                                                     "(200, 64) in all")):
        minirun.load(copy)


def test_missing_tensor_named(copy):
    state = load_file(copy / "model.safetensors")
    del state["model.norm.weight"]
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MinirunError, match=r"missing tensor model\.norm\.weight"):
        minirun.load(copy)


def test_a_tied_config_with_another_stored_head_is_refused(checkpoint_dirs, tmp_path):
    """transformers 4 drops a stored head a tied config does not use, 5 keeps it: a copy of the embeddings loads,
    a different head is an error rather than either guess."""
    tied = tmp_path / "tied"
    shutil.copytree(checkpoint_dirs["llama_tied"], tied)
    state = load_file(tied / "model.safetensors")
    embed = state["model.embed_tokens.weight"]
    reference = minirun.load(tied).model(torch.tensor([[1, 2, 3]]))
    save_file({**state, "lm_head.weight": embed.clone()}, tied / "model.safetensors", metadata={"format": "pt"})
    assert torch.equal(minirun.load(tied).model(torch.tensor([[1, 2, 3]])), reference)
    save_file({**state, "lm_head.weight": embed + 1}, tied / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(MinirunError, match="ties the output head to the embeddings, but model.safetensors holds a "
                                           "different lm_head.weight"):
        minirun.load(tied)


def _shard(path):
    """Split the checkpoint into two shards with an index, as large models ship."""
    state = load_file(path / "model.safetensors")
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for shard, keys in halves.items():
        save_file({k: state[k] for k in keys}, path / shard, metadata={"format": "pt"})
    (path / "model.safetensors").unlink()
    index = {"metadata": {}, "weight_map": {k: s for s, keys in halves.items() for k in keys}}
    (path / "model.safetensors.index.json").write_text(json.dumps(index))


def test_sharded_checkpoint_loads_identically(copy, checkpoint_dirs):
    _shard(copy)
    tokens = torch.arange(3, 40)[None]
    with torch.no_grad():
        a = minirun.load(copy).model(tokens)
        b = minirun.load(checkpoint_dirs["llama3"]).model(tokens)
    assert torch.equal(a, b)


def test_a_folder_with_one_file_and_shards_loads_the_one_file_as_transformers_does(copy, checkpoint_dirs):
    """Both model.safetensors and an index of shards (other weights): transformers loads the one file, minirun read
    the shards, and the two gave other logits for one folder."""
    from transformers import AutoModelForCausalLM

    single = load_file(copy / "model.safetensors")
    _shard(copy)
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        save_file({k: v + 1 for k, v in load_file(copy / shard).items()}, copy / shard, metadata={"format": "pt"})
    save_file(single, copy / "model.safetensors", metadata={"format": "pt"})
    tokens = torch.arange(3, 40)[None]
    with torch.no_grad():
        ours = minirun.load(copy).model(tokens)
        reference = AutoModelForCausalLM.from_pretrained(copy, dtype=torch.float32)(tokens).logits
    assert (ours - reference).abs().max().item() < 1e-4
    assert torch.equal(ours, minirun.load(checkpoint_dirs["llama3"]).model(tokens))


def test_missing_shard_named(copy):
    _shard(copy)
    (copy / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(MinirunError, match=r"missing shard model-00002-of-00002\.safetensors"):
        minirun.load(copy)


def test_an_index_naming_the_wrong_shard_blames_the_index(copy):
    _shard(copy)
    index = json.loads((copy / "model.safetensors.index.json").read_text())
    index["weight_map"]["model.norm.weight"] = "model-00002-of-00002.safetensors"
    (copy / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(MinirunError, match=r"^model-00002-of-00002\.safetensors holds no tensor model\.norm\.weight, "
                                           "though model.safetensors.index.json names it there") as caught:
        minirun.load(copy)
    assert "corrupt" not in str(caught.value)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.float8_e4m3fn])
def test_weights_stored_as_integers_or_float8_are_refused(copy, dtype):
    """Quantized values without their scales were cast to float and ran as other weights, silently (or failed in
    torch.cat where one of q/k/v was float8)."""
    state = load_file(copy / "model.safetensors")
    state["model.layers.0.self_attn.k_proj.weight"] = state["model.layers.0.self_attn.k_proj.weight"].to(dtype)
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    kind = str(dtype).removeprefix("torch.")
    with pytest.raises(MinirunError, match=f"tensor model.layers.0.self_attn.k_proj.weight in model.safetensors is "
                                           f"stored as {kind}: minirun reads float weights"):
        minirun.load(copy)
    state["model.layers.0.self_attn.k_proj.weight"] = state["model.layers.0.self_attn.k_proj.weight"].double()
    save_file(state, copy / "model.safetensors", metadata={"format": "pt"})
    assert minirun.load(copy, dtype="float32").model.embed.weight.dtype == torch.float32


def test_truncated_file_named(copy):
    data = (copy / "model.safetensors").read_bytes()
    (copy / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(MinirunError, match=r"model\.safetensors.*truncated or corrupt"):
        minirun.load(copy)


def test_missing_config(tmp_path):
    with pytest.raises(MinirunError, match="no config.json in .*: point --model at an HF-style checkpoint directory"):
        minirun.load(tmp_path)
    for name in ("smollm2", "Qwen/Qwen2.5-0.5B"):  # the models folder itself given: the checkpoints in it are named
        (tmp_path / name).mkdir(parents=True)
        (tmp_path / name / "config.json").write_text("{}")
    with pytest.raises(MinirunError, match=r"which holds the checkpoints smollm2, Qwen/Qwen2\.5-0\.5B: point --model "
                                           "at one of those$"):
        minirun.load(tmp_path)


def test_config_fields_qwen3_head_dim_and_eos_list():
    raw = {"model_type": "qwen3", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
           "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 32, "eos_token_id": [5, 7],
           "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                            "original_max_position_embeddings": 64}, "rope_theta": 5e5}
    c = ModelConfig.from_dict(raw)
    assert (c.head_dim, c.num_kv_heads, c.qk_norm, c.qkv_bias, c.eos_token_ids) == (32, 2, True, False, [5, 7])
    assert c.rope_theta == 5e5 and c.rope_scaling["rope_type"] == "llama3"


def test_both_spellings_of_rope_settings_read_alike():
    # transformers 4 wrote rope_scaling beside a top-level rope_theta (most Hub checkpoints); 5 writes rope_parameters
    scaling = {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 8192}
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 8}
    old = ModelConfig.from_dict({**base, "rope_scaling": scaling, "rope_theta": 500000.0})
    new = ModelConfig.from_dict({**base, "rope_parameters": {**scaling, "rope_theta": 500000.0}})
    assert old == new and old.rope_theta == 500000.0 and old.rope_scaling == scaling
    legacy = ModelConfig.from_dict({**base, "rope_scaling": {"type": "linear", "factor": 2.0}})  # "type", not "rope_type"
    assert legacy.rope_scaling == {"type": "linear", "factor": 2.0, "rope_type": "linear"} and legacy.rope_theta == 1e4


def test_rope_settings_that_two_transformers_versions_read_differently_are_refused():
    """rope_parameters (what transformers 5 reads second) beside a hand-added rope_scaling (what it reads first, and
    4 alone) would be a silent choice of frequencies; equal ones, or the type's two spellings, are fine."""
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 8}
    default = {"rope_type": "default", "rope_theta": 1e4}
    with pytest.raises(MinirunError, match="sets rope_parameters .* and rope_scaling .* which scale positions"):
        ModelConfig.from_dict({**base, "rope_parameters": default, "rope_scaling": {"type": "linear", "factor": 2.0}})
    linear = {"rope_type": "linear", "factor": 2.0}
    same = ModelConfig.from_dict({**base, "rope_parameters": {**linear, "rope_theta": 5e5},
                                  "rope_scaling": {"type": "linear", "factor": 2.0}, "rope_theta": 5e5})
    assert same.rope_scaling["factor"] == 2.0 and same.rope_theta == 5e5
    # transformers takes rope_scaling's base (its own, the top-level one, or 1e4): another base is refused
    for other in ({"rope_theta": 1e6}, {}, {"rope_scaling": {**linear, "rope_theta": 1e6}, "rope_theta": 5e5}):
        raw = {**base, "rope_parameters": {**linear, "rope_theta": 5e5}, "rope_scaling": linear, **other}
        with pytest.raises(MinirunError, match="rope_parameters give rope_theta 500000.0 but its rope_scaling"):
            ModelConfig.from_dict(raw)
    llama3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
              "original_max_position_embeddings": 64}
    with pytest.raises(MinirunError, match="original_max_position_embeddings 32 disagrees with its rope settings' 64"):
        ModelConfig.from_dict({**base, "rope_parameters": llama3, "original_max_position_embeddings": 32})
    assert ModelConfig.from_dict({**base, "rope_parameters": llama3, "original_max_position_embeddings": 64}).rope_scaling


def test_a_rotation_of_part_of_each_head_is_refused():
    """partial_rotary_factor (another architecture's key) would rotate part of a head; minirun rotates all of it."""
    base = {"model_type": "llama", "vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1,
            "num_attention_heads": 8}
    for raw in ({**base, "rope_parameters": {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}},
                {**base, "partial_rotary_factor": 0.5}):
        with pytest.raises(MinirunError, match="partial_rotary_factor 0.5: minirun rotates every dimension"):
            ModelConfig.from_dict(raw)
    assert ModelConfig.from_dict({**base, "partial_rotary_factor": 1.0}).head_dim == 8
    assert ModelConfig.from_dict({**base, "partial_rotary_factor": None}).head_dim == 8  # null: none, as transformers


BASE = {"vocab_size": 10, "hidden_size": 64, "intermediate_size": 8, "num_hidden_layers": 1, "num_attention_heads": 8}


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3"])
def test_keys_config_json_leaves_out_default_as_transformers_does(model_type):
    import transformers

    ours = ModelConfig.from_dict({"model_type": model_type, **BASE})
    theirs = transformers.AutoConfig.for_model(model_type, **BASE)
    assert ours.rms_norm_eps == theirs.rms_norm_eps
    assert ours.max_position_embeddings == theirs.max_position_embeddings
    assert ours.head_dim == (theirs.head_dim if model_type == "qwen3" else BASE["hidden_size"] // 8)
    assert ours.tie_word_embeddings == theirs.tie_word_embeddings


@pytest.mark.parametrize("change, message", [
    ({"hidden_act": "gelu"}, "unsupported hidden_act 'gelu'"),
    ({"num_attention_heads": None}, "config.json lacks 'num_attention_heads'"),
    ({"rope_scaling": {"rope_type": "linear"}}, "linear rope scaling lacks 'factor'"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}},
     "llama3 rope scaling lacks 'low_freq_factor', 'high_freq_factor'"),
    ({"rope_scaling": {"rope_type": "longrope", "factor": 4.0}},
     "unsupported rope type 'longrope': minirun supports default, linear, dynamic, yarn, llama3"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}},
     "yarn rope scaling has original_max_position_embeddings 0: it must be a positive number"),
    ({"rope_scaling": {"rope_type": "dynamic", "factor": "2"}}, "dynamic rope scaling has factor '2'"),
    ({"quantization_config": {"quant_method": "gptq", "bits": 4}}, "weights are quantized (gptq)"),
    ({"hidden_size": "576"}, "config.json has hidden_size '576': it must be a positive integer"),
    ({"num_hidden_layers": 30.0}, "config.json has num_hidden_layers 30.0: it must be a positive integer"),
    ({"max_position_embeddings": -5}, "config.json has max_position_embeddings -5: it must be a positive integer"),
    ({"rms_norm_eps": "1e-5"}, "config.json has rms_norm_eps '1e-5': it must be a positive number"),
    ({"eos_token_id": "</s>"}, "config.json has eos_token_id '</s>': it must be a token id or a list of them"),
])
def test_config_problems_are_one_line(change, message):
    raw = {k: v for k, v in {"model_type": "llama", **BASE, **change}.items() if v is not None}
    with pytest.raises(MinirunError, match=re.escape(message)):
        ModelConfig.from_dict(raw)
    assert ModelConfig.from_dict({"model_type": "llama", **BASE, "hidden_act": "swish"}).num_heads == 8


@pytest.mark.parametrize("change, message", [
    ({"rms_norm_eps": None}, "config.json has rms_norm_eps null: it must be a positive number"),
    ({"max_position_embeddings": None}, "config.json has max_position_embeddings null: it must be a positive integer"),
    ({"hidden_size": None}, "config.json has hidden_size null: it must be a positive integer"),
    ({"rope_theta": None}, "config.json has rope_theta null: it must be a positive number"),
    ({"rope_parameters": {"rope_type": "default", "rope_theta": 0}}, "config.json has rope_theta 0: it must be a"),
    ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": "1",
                          "high_freq_factor": 4.0}}, "llama3 rope scaling has low_freq_factor '1': it must be a"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "beta_fast": "32"}}, "yarn rope scaling has beta_fast '32'"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "mscale": -1}},
     "yarn rope scaling has mscale -1: it must be a number, 0 or more"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "truncate": "no"}}, "has truncate 'no': it must be true or"),
    ({"rope_parameters": ["linear", 2.0]}, "config.json has rope_parameters ['linear', 2.0]: it must be an object"),
    ({"rope_scaling": "linear"}, "config.json has rope_scaling 'linear': it must be an object of rope settings"),
    ({"num_key_value_heads": 3}, "config.json has 3 key/value heads for 8 attention heads: the query heads must share"),
    ({"layer_types": ["full_attention", "sliding_attention"]},
     "config.json's layer_types give layers 'sliding_attention', which minirun does not run"),
    ({"layer_types": "full_attention"}, "config.json has layer_types 'full_attention': it must be a list"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "attention_factor": 0}},
     "yarn rope scaling has attention_factor 0: it must be a positive number"),
])
def test_null_and_malformed_config_values_are_one_line(change, message):
    """A key present but null, or a rope setting that is not a number, loaded and then failed at the first forward
    (or gave NaN logits: a base of 0 inside rope_parameters); a layer_types' sliding layer ran full attention."""
    with pytest.raises(MinirunError, match=re.escape(message)):
        ModelConfig.from_dict({"model_type": "qwen2", **BASE, **change})
    nullable = ModelConfig.from_dict({"model_type": "qwen2", **BASE, "num_key_value_heads": None, "head_dim": None,
                                      "layer_types": ["full_attention"], "rope_scaling": None,
                                      "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "mscale_all_dim": 0}})
    assert (nullable.num_kv_heads, nullable.head_dim, nullable.rope_scaling["mscale_all_dim"]) == (8, 8, 0)
    mistral = {"model_type": "mistral", **BASE, "sliding_window": 64, "layer_types": ["sliding_attention"]}
    assert ModelConfig.from_dict(mistral).max_position_embeddings == 64  # its window caps the context instead


def test_unknown_dtype(copy):
    with pytest.raises(MinirunError, match="unsupported dtype 'int8'"):
        minirun.load(copy, dtype="int8")


@pytest.mark.parametrize("checkpoint_dtype,flags,expected", [
    ("bfloat16", {"avx2": True, "avx512_bf16": True}, torch.bfloat16),   # AMD EPYC Zen 4
    ("bfloat16", {"avx2": True, "amx_bf16": True}, torch.bfloat16),      # Intel Xeon with AMX
    ("bfloat16", {"avx2": True}, torch.float32),                         # AMD EPYC Zen 3: emulated bf16
    ("float16", {"avx512_bf16": True, "amx_bf16": True}, torch.float32),
    (None, {"amx_bf16": True}, torch.float32),
])
def test_cpu_default_dtype_follows_the_checkpoint_where_bfloat16_is_native(monkeypatch, checkpoint_dtype, flags, expected):
    """eval's sweep ran faster in bfloat16 only on CPUs with bfloat16 arithmetic; elsewhere float32."""
    from minirun.checkpoints.loader import resolve_dtype
    from minirun.layers import calibrate

    monkeypatch.setattr(calibrate, "cpu_facts", lambda: {"cpu": "test", "flags": flags})
    config = ModelConfig.from_dict({"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                                    "num_hidden_layers": 1, "num_attention_heads": 4, "torch_dtype": checkpoint_dtype})
    assert resolve_dtype(None, config, torch.device("cpu")) == expected
    assert resolve_dtype("float32", config, torch.device("cpu")) == torch.float32
    assert resolve_dtype(torch.float16, config, torch.device("cpu")) == torch.float16
    with pytest.raises(MinirunError, match="unsupported dtype 'int8'"):  # not a load_state_dict error later
        resolve_dtype(torch.int8, config, torch.device("cpu"))


def test_the_checkpoint_digest_sees_other_weights_and_tokenizers_but_not_timestamps(checkpoint_dirs, tmp_path):
    """A run directory resumed after its checkpoint path was overwritten mixed two models' rows."""
    import os

    from minirun.checkpoints.loader import checkpoint_digest

    ckpt = shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / "ckpt")
    digest = checkpoint_digest(ckpt)
    for f in ckpt.iterdir():
        os.utime(f, (0, 0))  # a re-pull: the same bytes, new times
    assert checkpoint_digest(ckpt) == digest == checkpoint_digest(shutil.copytree(ckpt, tmp_path / "copy"))

    weights = load_file(ckpt / "model.safetensors")
    name = sorted(weights)[-1]  # one tensor changed, the last in the file: a fine-tune of one layer
    save_file({**weights, name: weights[name] + 1e-3}, ckpt / "model.safetensors", metadata={"format": "pt"})
    assert checkpoint_digest(ckpt) != digest
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    assert checkpoint_digest(ckpt) == digest  # the same tensors written again

    # an edit in place of a few rows inside one tensor (a knowledge edit), same size: neither a tensor's first
    # 4 KiB (the digest's old sample) nor its last ones, and the file written within the same second
    raw = bytearray((ckpt / "model.safetensors").read_bytes())
    length = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + length])
    start, end = (8 + length + o for o in max((v for k, v in header.items() if k != "__metadata__"),
                                               key=lambda v: v["data_offsets"][1] - v["data_offsets"][0])["data_offsets"])
    middle = (start + end) // 2
    assert end - start > 3 * 4096
    times = os.stat(ckpt / "model.safetensors")
    raw[middle:middle + 8] = bytes(255 - b for b in raw[middle:middle + 8])
    (ckpt / "model.safetensors").write_bytes(bytes(raw))
    os.utime(ckpt / "model.safetensors", ns=(times.st_atime_ns, times.st_mtime_ns))  # even its time kept
    assert checkpoint_digest(ckpt) != digest
    save_file(weights, ckpt / "model.safetensors", metadata={"format": "pt"})
    assert checkpoint_digest(ckpt) == digest

    template = json.loads((ckpt / "tokenizer_config.json").read_text())
    (ckpt / "tokenizer_config.json").write_text(json.dumps({**template, "chat_template": "{{ messages }}"}))
    assert checkpoint_digest(ckpt) != digest


def test_the_digest_cache_forgets_files_gone_and_versions_replaced(checkpoint_dirs, tmp_path, monkeypatch):
    """The cache kept every version of every file ever hashed (568 entries, 12 files still there), read whole
    on every load: a researcher evaluating each checkpoint of a training run and deleting it grew it without end."""
    import os

    from minirun.checkpoints.loader import checkpoint_digest

    monkeypatch.setenv("MINIRUN_CACHE", str(tmp_path / "cache"))
    cache = tmp_path / "cache" / "file-digests.json"

    def settle(ckpt) -> None:
        for f in ckpt.iterdir():
            os.utime(f, (1, 1))  # long written: its hash is cached

    old, kept = (shutil.copytree(checkpoint_dirs["qwen2"], tmp_path / name) for name in ("old", "kept"))
    for ckpt in (old, kept):
        settle(ckpt)
        checkpoint_digest(ckpt)
    files = len(json.loads(cache.read_text())) // 2
    shutil.rmtree(old)
    (kept / "config.json").write_text((kept / "config.json").read_text() + " ")  # a new version of one file
    settle(kept)
    checkpoint_digest(kept)
    entries = json.loads(cache.read_text())
    assert len(entries) == files and all(key.startswith(str(kept.resolve())) for key in entries)


@pytest.mark.parametrize("name, text, message", [
    ("config.json", "[1, 2]", "config.json holds a JSON list, not an object"),
    ("config.json", '{"model_type": ', "config.json is not valid JSON"),
    ("generation_config.json", '{"eos_token_id": ', "generation_config.json is not valid JSON"),
    ("tokenizer.json", '{"version": "1.0",\n', "cannot read"),
    ("tokenizer_config.json", "{", "tokenizer_config.json is not valid JSON"),
    ("special_tokens_map.json", "nope", "special_tokens_map.json is not valid JSON"),
    ("model.safetensors.index.json", '{"metadata": {}}', "has no weight_map of tensor names to shard files"),
])
def test_a_damaged_checkpoint_file_is_one_line_naming_it(copy, name, text, message):
    """A checkpoint file cut short or edited by hand fails naming the file, not with a traceback from deep inside
    the tokenizer or the model."""
    if name == "model.safetensors.index.json":
        _shard(copy)  # an index is read where no model.safetensors is (`transformers` takes the one file first)
    (copy / name).write_text(text)
    with pytest.raises(MinirunError, match=re.escape(message)) as e:
        minirun.load(copy)
    assert "\n" not in str(e.value) and (name in str(e.value) or name == "tokenizer.json")


MEMINFO = ("MemTotal:       24683784 kB\nMemFree:         1000000 kB\nMemAvailable:   20000000 kB\n"
           "SwapTotal:       2000000 kB\nSwapFree:        1000000 kB\n")


def test_host_memory_is_what_is_available_plus_free_swap_within_a_cgroup_limit():
    from minirun.checkpoints.loader import meminfo_available

    assert meminfo_available(MEMINFO) == (21_000_000 * 1024, 26_683_784 * 1024)
    assert meminfo_available(MEMINFO, {"memory.max": "max\n", "memory.current": "5000\n"}) == meminfo_available(MEMINFO)
    limited = {"memory.max": "8000000000\n", "memory.current": "3000000000\n",
               "memory.stat": "anon 2000000000\nfile 1000000000\n"}
    assert meminfo_available(MEMINFO, limited) == (6_000_000_000, 8_000_000_000)  # the page cache counts as free
    assert meminfo_available("MemTotal: 1 kB\n") is None  # a kernel that does not say what is available: no check


def test_weights_that_cannot_fit_are_refused(copy, monkeypatch):
    """On the host the kernel would kill the process unannounced minutes into the read; on a GPU it would end in an
    out-of-memory error whose advice is a smaller batch."""
    from minirun.checkpoints import loader

    weights = sum(p.numel() for p in minirun.load(copy).model.parameters()) * 4  # float32, the head tied or not
    monkeypatch.setattr(loader, "available_memory", lambda device: (weights - 1, 2 * weights))
    with pytest.raises(MinirunError, match=rf"^ckpt's weights need {weights / 1e9:.2f} GB in float32 but this machine "
                                           r"has .* GB of memory available \(of .* GB\): free memory .*, use a larger "
                                           r"machine, --dtype bfloat16, or a smaller model$"):
        minirun.load(copy, dtype="float32")
    monkeypatch.setattr(loader, "available_memory", lambda device: (weights, 2 * weights))  # exactly enough
    assert minirun.load(copy, dtype="float32").model.dtype == torch.float32


def test_a_gpu_without_room_for_the_weights_names_its_free_memory(copy, monkeypatch):
    from minirun.checkpoints import loader

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (1_000, 80_000_000_000))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 3_000_000)  # a freed model's, kept by torch
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda device: 2_000_000)
    assert loader.available_memory(torch.device("cuda")) == (1_001_000, 80_000_000_000)
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda device: 2_000_000)  # none unused
    with pytest.raises(MinirunError, match=r"weights need .* GB in bfloat16 but cuda has 0.00 GB free \(of 80.00 GB\): "
                                           r"free memory \(other processes hold it\), use a larger machine, or a "
                                           r"smaller"):
        minirun.load(copy, device="cuda", dtype="bfloat16")


def test_the_weights_size_of_a_plan_is_the_checkpoints_tensors_in_the_dtype_asked(arch_dir):
    """What `sweep --dry-run` shows and the load checks: every stored tensor, a tied head once, at the load's dtype."""
    from minirun.checkpoints.loader import weights_size

    arch, path = arch_dir
    tied = _config(path).get("tie_word_embeddings", False)
    stored = {n: t.numel() for f in path.glob("*.safetensors") for n, t in load_file(f).items()}
    numel = sum(n for name, n in stored.items() if not (tied and name == "lm_head.weight"))
    assert weights_size(path, "float32", "cpu") == (4 * numel, torch.float32, torch.device("cpu"))
    assert weights_size(path, "bfloat16", "cuda:1") == (2 * numel, torch.bfloat16, torch.device("cuda:1"))  # a plan
