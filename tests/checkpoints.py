"""Small random-weight checkpoints written with transformers' own configs and save_pretrained."""
from __future__ import annotations

import datetime
from pathlib import Path

import torch

ARCHS = {
    # GQA group size 2, untied embeddings, llama3 rope scaling
    "llama3": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                   num_attention_heads=4, num_key_value_heads=2, vocab_size=320, max_position_embeddings=512,
                   tie_word_embeddings=False, rms_norm_eps=1e-5,
                   rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64}),
    # tied embeddings, GQA group size 3 (SmolLM2's shape family), linear rope scaling
    "llama_tied": dict(model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                       num_attention_heads=6, num_key_value_heads=2, vocab_size=320, max_position_embeddings=512,
                       tie_word_embeddings=True,
                       rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}),
    # q/k/v bias, MHA (group size 1)
    "qwen2": dict(model_type="qwen2", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=4, vocab_size=320, max_position_embeddings=512,
                  tie_word_embeddings=True, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # Llama 2's MHA (as many kv heads as heads) with every bias and head_dim != hidden/heads, plain rope
    "llama_bias": dict(model_type="llama", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, head_dim=32, vocab_size=320,
                       max_position_embeddings=512, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0}),
    # Mistral v0.2+ (no sliding window): one kv head for all (MQA), head_dim != hidden/heads as Mistral Nemo's
    "mistral": dict(model_type="mistral", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                    num_attention_heads=4, num_key_value_heads=1, head_dim=32, vocab_size=320,
                    max_position_embeddings=512, tie_word_embeddings=False, sliding_window=None,
                    rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
    # q/k norm, head_dim != hidden/heads, GQA group size 4
    "qwen3": dict(model_type="qwen3", hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=8, num_key_value_heads=2, head_dim=32, vocab_size=320,
                  max_position_embeddings=512, tie_word_embeddings=False,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}),
}


SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
CORPUS = [
    "The capital of France is Paris. The capital of Japan is Tokyo.",
    "Who wrote Hamlet? William Shakespeare wrote Hamlet in 1600.",
    "Water boils at 100 degrees Celsius; ice melts at 0 degrees.",
    "def add(a, b):\n    return a + b  # numbers 12345 67890",
] * 20


QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def write_tokenizer(out: Path) -> None:
    """A small byte-level BPE trained here, saved by transformers with a ChatML template."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([  # Qwen2's pipeline, which transformers imposes for qwen2
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   unk_token="<|endoftext|>", pad_token="<|endoftext|>")
    fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out)


def write_sentencepiece_tokenizer(out: Path) -> None:
    """Llama 2's files (TinyLlama's, Mistral 7B's too): tokenizer.json with the legacy SentencePiece-as-BPE pipeline
    ("▁" prepended to the text and for every space, byte fallback, BOS added), and tokenizer_config.json naming
    LlamaTokenizer with `legacy` false, so transformers 5 encodes a llama model's with the Metaspace pipeline it
    builds itself (and a mistral model's as the file is written)."""
    import json

    from tokenizers import Tokenizer, decoders, models, normalizers, processors, trainers

    tok = Tokenizer(models.BPE(byte_fallback=True, unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, show_progress=False,
                                  special_tokens=["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)])
    tok.train_from_iterator(CORPUS, trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    tok.save(str(out / "tokenizer.json"))
    (out / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                                           "add_bos_token": True,
                                                           "tokenizer_class": "LlamaTokenizer", "legacy": False}))


def hf_config(arch: str, **changes):
    from transformers import AutoConfig

    kwargs = {**ARCHS[arch], **changes}
    return AutoConfig.for_model(kwargs.pop("model_type"), bos_token_id=1, eos_token_id=2, pad_token_id=0, **kwargs)


def write_checkpoint(arch: str, out: Path, seed: int = 0, sentencepiece: bool = False, **changes) -> Path:
    """Random weights (scaled up so logits are not flat) saved as safetensors + config.json, with the
    byte-level BPE tokenizer or (`sentencepiece`) Llama 2's; `changes` replace config fields of `arch`."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(hf_config(arch, **changes), dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.2 if p.dim() > 1 else 0.5).add_(1.0 if p.dim() == 1 else 0.0)
    model.save_pretrained(out)
    (write_sentencepiece_tokenizer if sentencepiece else write_tokenizer)(out)
    return out


def with_dated_template(checkpoint: Path, out: Path) -> Path:
    """A copy of `checkpoint` whose chat template writes today's date, as Llama 3.2's does."""
    import shutil

    out = shutil.copytree(checkpoint, out)
    template = out / "chat_template.jinja"  # where transformers 5 saves it
    template.write_text("{{ '<|im_start|>system\\nToday Date: ' + strftime_now('%d %b %Y') + '<|im_end|>\\n' }}"
                        + template.read_text())
    return out


def with_thinking_switch(checkpoint: Path, out: Path) -> Path:
    """A copy of `checkpoint` whose chat template reads Qwen3's reasoning switch: enable_thinking false renders an
    empty think block after the generation prompt."""
    import json
    import shutil

    out = shutil.copytree(checkpoint, out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config["chat_template"] = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
                               "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% if enable_thinking "
                               "is defined and enable_thinking is false %}<think>\n\n</think>\n\n{% endif %}"
                               "{% endif %}")
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    return out


class Clock(datetime.datetime):
    """What `date.today()` and `datetime.now()` say to minirun's templates and runs: a day of December 2026 that a
    test moves with `monkeypatch.setattr(Clock, "day", d)` (the rest of datetime as it is)."""

    day = 6

    @classmethod
    def install(cls, monkeypatch, day: int) -> None:
        import minirun.checkpoints.tokenizer
        import minirun.eval.loop
        import minirun.eval.sweep

        monkeypatch.setattr(cls, "day", day)
        monkeypatch.setattr(minirun.checkpoints.tokenizer, "datetime", cls)
        for module in (minirun.eval.loop, minirun.eval.sweep):
            monkeypatch.setattr(module, "date", cls)

    @classmethod
    def now(cls, tz=None):
        return datetime.datetime(2026, 12, cls.day, 23, 59)

    @classmethod
    def today(cls):
        return cls.now().date()
