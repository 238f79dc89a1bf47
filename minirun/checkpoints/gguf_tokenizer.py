"""Rebuild `tokenizer.json` and `tokenizer_config.json` from the vocabulary a GGUF file carries.

A GGUF stores a byte-level BPE tokenizer as metadata: the tokens (already spelled in GPT-2's byte
alphabet), the merges, a type per token, the special token ids and a pre-tokenizer *name*
(`tokenizer.ggml.pre`). The name stands for the text-splitting regexes llama.cpp applies before BPE;
we rebuild the same split with the `tokenizers` library so ids match the original HF tokenizer.
"""
from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from minirun.errors import MinirunError

CONTROL, USER_DEFINED = 3, 4  # llama.cpp token types that must be matched whole, before BPE

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
ADDS_BOS = {"llama-bpe", "llama3"}  # llama.cpp adds a bos for these when the file has no add_bos_token key
# llama.cpp pre-tokenizer name -> (split regex run before byte-level, or None for GPT-2's own regex,
# whether digits are first isolated one by one, whether whole-word vocab hits skip the merges).
PRE_TOKENIZERS: dict[str, tuple[str | None, bool, bool]] = {
    "default": (None, False, False),
    "gpt2": (None, False, False),
    "smollm": (None, True, False),
    "starcoder": (None, True, False),
    "refact": (None, True, False),
    "codeshell": (None, True, False),
    "llama-bpe": (_LLAMA3_SPLIT, False, True),
    "llama3": (_LLAMA3_SPLIT, False, True),
    "smaug-bpe": (_LLAMA3_SPLIT, False, True),
    "qwen2": (_QWEN2_SPLIT, False, False),
    "deepseek-r1-qwen": (_QWEN2_SPLIT, False, False),
}


def _pipeline(tokenizer: Tokenizer, pre: str) -> None:
    """Set normalizer, pre-tokenizer and decoder the way the named llama.cpp pre-tokenizer splits text."""
    split, isolate_digits, _ = PRE_TOKENIZERS[pre]
    steps: list[Any] = []
    if isolate_digits:
        steps.append(pre_tokenizers.Digits(individual_digits=True))
    if split is not None:
        steps.append(pre_tokenizers.Split(Regex(split), behavior="isolated"))
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=split is None))
    tokenizer.pre_tokenizer = steps[0] if len(steps) == 1 else pre_tokenizers.Sequence(steps)
    if split == _QWEN2_SPLIT:
        tokenizer.normalizer = normalizers.NFC()  # Qwen2's own tokenizer.json normalizes to NFC
    tokenizer.decoder = decoders.ByteLevel()


def _post_processor(bos: tuple[str, int] | None, eos: tuple[str, int] | None) -> Any:
    """Add BOS/EOS around every encoding when the GGUF asks for it, else keep byte-level offsets."""
    if bos is None and eos is None:
        return processors.ByteLevel(trim_offsets=False)
    specials = [t for t in (bos, eos) if t is not None]
    prefix = f"{bos[0]}:0 " if bos else ""
    suffix = f" {eos[0]}:0" if eos else ""
    return processors.TemplateProcessing(
        single=f"{prefix}$A:0{suffix}", pair=f"{prefix}$A:0{suffix} {prefix}$B:1{suffix}", special_tokens=specials
    )


def build_tokenizer(meta: dict[str, Any]) -> tuple[Tokenizer, dict[str, Any]]:
    """`(tokenizer, tokenizer_config)` from GGUF metadata (`tokenizer.*` keys, values already decoded)."""
    kind = meta.get("tokenizer.ggml.model")
    if kind != "gpt2":
        raise MinirunError(
            f"GGUF tokenizer model {kind!r} is not supported: only byte-level BPE ('gpt2') vocabularies convert; "
            "pull the original HF checkpoint instead"
        )
    pre = meta.get("tokenizer.ggml.pre", "default")
    if pre not in PRE_TOKENIZERS:
        raise MinirunError(
            f"GGUF pre-tokenizer {pre!r} is not supported (known: {', '.join(PRE_TOKENIZERS)}); "
            "pull the original HF checkpoint instead"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    types: list[int] = meta.get("tokenizer.ggml.token_type") or [1] * len(tokens)
    if not meta.get("tokenizer.ggml.merges"):  # without them every text would split into single bytes
        raise MinirunError("GGUF has no tokenizer.ggml.merges, which a byte-level BPE vocabulary needs: the file is "
                           "incomplete; download it again or pull the original HF checkpoint")
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    if bad := next((m for m in merges if len(m) != 2), None):
        raise MinirunError(f"GGUF tokenizer merge {' '.join(bad)!r} is not two tokens apart by a space: the file is "
                           "corrupt; download it again")
    vocab = {token: i for i, token in enumerate(tokens)}
    try:
        bpe = models.BPE(vocab=vocab, merges=merges, fuse_unk=False, ignore_merges=PRE_TOKENIZERS[pre][2])
    except Exception as e:  # the tokenizers library raises a bare Exception for merges its vocabulary lacks
        raise MinirunError(f"GGUF tokenizer merges do not fit its vocabulary ({str(e).splitlines()[0]}): the file is "
                           "corrupt; download it again") from None
    tokenizer = Tokenizer(bpe)
    _pipeline(tokenizer, pre)
    # Added tokens already sit in the vocab, so `tokenizers` keeps their GGUF ids.
    tokenizer.add_special_tokens(
        [AddedToken(t, special=True, normalized=False) for t, k in zip(tokens, types) if k == CONTROL]
    )
    tokenizer.add_tokens(
        [AddedToken(t, special=False, normalized=False) for t, k in zip(tokens, types) if k == USER_DEFINED]
    )

    def token(key: str) -> str | None:
        index = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[index] if index is not None and 0 <= index < len(tokens) else None

    specials = {name: token(key) for name, key in
                [("bos_token", "bos"), ("eos_token", "eos"), ("unk_token", "unknown"), ("pad_token", "padding")]}
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", pre in ADDS_BOS)) and specials["bos_token"] is not None
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False)) and specials["eos_token"] is not None
    tokenizer.post_processor = _post_processor(
        (specials["bos_token"], vocab[specials["bos_token"]]) if add_bos else None,
        (specials["eos_token"], vocab[specials["eos_token"]]) if add_eos else None,
    )
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "added_tokens_decoder": {
            str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                     "single_word": False, "special": k == CONTROL}
            for i, (t, k) in enumerate(zip(tokens, types)) if k in (CONTROL, USER_DEFINED)
        },
        **{name: value for name, value in specials.items() if value is not None},
    }
    if meta.get("tokenizer.chat_template"):
        config["chat_template"] = meta["tokenizer.chat_template"]
    return tokenizer, config
