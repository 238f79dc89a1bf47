"""Tokenizer from `tokenizer.json` plus the chat template, rendered the way transformers renders it."""
from __future__ import annotations

import json
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment
from tokenizers import AddedToken, Regex, decoders, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from minirun.errors import MinirunError
from minirun.models.config import checkpoint_json
from minirun.text import THINK_END, THINK_START

SPECIAL_KEYS = ("bos_token", "eos_token", "unk_token", "pad_token")
LLAMA_CLASSES = ("LlamaTokenizer", "LlamaTokenizerFast")  # what Llama 2's, TinyLlama's and Mistral 7B's files name
CODE_LLAMA_CLASSES = ("CodeLlamaTokenizer", "CodeLlamaTokenizerFast")  # Code Llama's: no `legacy` switch
QWEN2_CLASSES = ("Qwen2Tokenizer", "Qwen2TokenizerFast")  # Qwen2/2.5's, Qwen3's and QwQ's files name these
QWEN2_TYPES = ("qwen2", "qwen2_moe", "qwen3", "qwen3_moe")  # the Qwen model types transformers 5 gives Qwen2Tokenizer
_LLAMA_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
_QWEN2_TOKENS = {"eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>", "pad_token": "<|endoftext|>"}
# the special tokens transformers 5's tokenizer classes take where the files name none (their __init__ defaults)
CLASS_TOKENS = {**{name: _LLAMA_TOKENS for name in (*LLAMA_CLASSES, *CODE_LLAMA_CLASSES)},
                "Qwen2Tokenizer": _QWEN2_TOKENS, "Qwen2TokenizerFast": _QWEN2_TOKENS}


def loaded_class(checkpoint: Path, config: dict) -> str | None:
    """The class transformers 5's AutoTokenizer loads this checkpoint's tokenizer as where that class builds the
    pipeline itself (`llama_pipeline`, `qwen2_pipeline`) rather than reading tokenizer.json as written (None).
    Qwen2Tokenizer for a file naming it, for a qwen2 model whatever class its file names (transformers holds the
    names on that type's files wrong: DeepSeek-R1's Qwen distills name LlamaTokenizerFast), and for a Qwen model
    naming none; a Llama class as named, unless config.json's model type is mistral (loaded as written) or the file
    is byte-level (Llama 3's fine-tunes that name LlamaTokenizerFast; transformers tests the text for "ByteLevel"
    alike)."""
    model_type = checkpoint_json(checkpoint / "config.json").get("model_type")
    named = config.get("tokenizer_class")
    if named in QWEN2_CLASSES or model_type == "qwen2" or (named is None and model_type in QWEN2_TYPES):
        return "Qwen2Tokenizer"
    if named not in (*LLAMA_CLASSES, *CODE_LLAMA_CLASSES) or model_type == "mistral":
        return None
    return None if '"ByteLevel"' in (checkpoint / "tokenizer.json").read_text(encoding="utf-8") else named


def llama_pipeline(tok: HFTokenizer, config: dict) -> None:
    """The pipeline transformers 5's LlamaTokenizer builds: tokenizer.json's vocabulary, merges and special tokens,
    the rest from tokenizer_config.json, so Llama 2's legacy normalizer (a "▁" before the text, every space a "▁":
    " Paris" as "▁▁Paris") gives way to a Metaspace that marks the first word only (`legacy` false, transformers 5's
    default) or every text between special tokens (`legacy` true), or none (`add_prefix_space` false); Code Llama's
    class has no `legacy` and always strips the decoded text's first space."""
    code = config.get("tokenizer_class") in CODE_LLAMA_CLASSES
    prefix = config.get("add_prefix_space")
    prefix = True if prefix is None else bool(prefix)
    scheme = ("always" if config.get("legacy") and not code else "first") if prefix else "never"
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme=scheme, split=False)
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     *([decoders.Strip(" ", 1, 0)] if prefix or code else [])])
    tok.model.fuse_unk, tok.model.byte_fallback = True, True


# transformers 5's Qwen2Tokenizer splits text by this pattern before its byte-level step (Qwen's own files say the same)
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|"
               r"\s+(?!\S)|\s+")


# texts on which two pipelines' splits, normalisation or byte handling part ways
PIPELINE_PROBES = ("a\n\nb", "  two  spaces  \t\r\n", "x 12345 3.14", "It's I'LL don't", "ﬁne Ünïcödé 你好，世界 🙂",
                   "caf\u0065\u0301 (an accent apart)")


def qwen2_pipeline(tok: HFTokenizer, config: dict) -> None:
    """The pipeline transformers 5's Qwen2Tokenizer builds whatever tokenizer.json says: the file's vocabulary, merges,
    special tokens and post-processor, under NFC, Qwen's split pattern and a byte-level step, with a plain BPE (no
    unknown token, no byte fallback). Qwen's own files already read so; a fine-tune's other file does not."""
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=bool(config.get("add_prefix_space")), use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    model = tok.model
    model.dropout, model.unk_token, model.fuse_unk, model.byte_fallback = None, None, False, False
    model.continuing_subword_prefix, model.end_of_word_suffix, model.ignore_merges = "", "", False


def _token_text(value: Any) -> str | None:
    """tokenizer_config.json stores special tokens as strings or as AddedToken dicts."""
    return value.get("content") if isinstance(value, dict) else value


def _raise(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(x: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    # Jinja's own tojson escapes HTML characters; chat templates expect plain JSON.
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def template_day(text: str) -> datetime:
    """A day given as YYYY-MM-DD (a run's `--template-date`) as the moment a dated chat template renders at."""
    try:
        return datetime.strptime(text, "%Y-%m-%d")
    except (TypeError, ValueError):
        raise MinirunError(f"template date {text!r} is not a day as YYYY-MM-DD: give e.g. 2024-07-26") from None


def day_text(text: str) -> str:
    """A `--template-date` checked and written as run keys hold it: 2024-7-26 is 2024-07-26."""
    return template_day(text).date().isoformat()


STRIP_FLAGS = ("lstrip", "rstrip", "single_word")  # how an added token takes the spaces around it


def added_token_flags(tok: HFTokenizer, config: dict) -> None:
    """tokenizer_config.json's `added_tokens_decoder` flags over tokenizer.json's, as transformers 5 applies them: a
    token there marked rstrip (Phi-3's <|end|> style) eats the spaces after it in the text, whatever tokenizer.json
    says, and one marked plain there does not. Only the flags of tokens both files hold, under one id and text."""
    entries = config.get("added_tokens_decoder")
    held = tok.get_added_tokens_decoder()
    for key, entry in (entries.items() if isinstance(entries, dict) else ()):
        token = held.get(int(key)) if str(key).isdigit() else None
        if token is None or not isinstance(entry, dict) or entry.get("content") != token.content:
            continue
        flags = {name: entry.get(name, getattr(token, name)) for name in STRIP_FLAGS}
        if all(isinstance(v, bool) for v in flags.values()) and any(flags[n] != getattr(token, n) for n in flags):
            tok.add_tokens([AddedToken(token.content, **flags, normalized=token.normalized, special=token.special)])


def unstripped(tok: HFTokenizer, texts: set[str]) -> None:
    """The added tokens written `texts` with no strip flags: transformers' Qwen2Tokenizer re-adds the special tokens
    it names (bos, eos, pad, unk, its additional ones) so, whatever either file says of them."""
    for token in tok.get_added_tokens_decoder().values():
        if token.content in texts and any(getattr(token, name) for name in STRIP_FLAGS):
            tok.add_tokens([AddedToken(token.content, lstrip=False, rstrip=False, single_word=False,
                                       normalized=token.normalized, special=token.special)])


def refusing_template(why: str) -> str:
    """A chat template that stops with `why` when rendered: a chat run is refused then, with the fix, while a run
    without the template (--raw, --no-chat) goes on as if the checkpoint had none."""
    return "{{ raise_exception(" + json.dumps(why) + ") }}"


class GenerationTag(jinja2.ext.Extension):
    """transformers' `{% generation %}...{% endgeneration %}`, which marks an assistant's text for training
    masks: rendered as its body, as transformers renders it when no mask is asked for."""

    tags = {"generation"}

    def parse(self, parser: Any) -> list:
        next(parser.stream)
        return parser.parse_statements(("name:endgeneration",), drop_needle=True)


def compile_template(source: str) -> jinja2.Template:
    """Same environment options as transformers, so templates render byte-identically."""
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols, GenerationTag])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)


class Tokenizer:
    """Encode/decode with exactly the ids and text transformers' fast tokenizer gives."""

    def __init__(self, checkpoint: str | Path, vocab_limit: int | None = None):
        """`vocab_limit`: the model's embedding rows, where a model will take the ids (an id past them is refused
        when encoded, naming the token, instead of failing in the model)."""
        checkpoint = Path(checkpoint)
        path = checkpoint / "tokenizer.json"
        if not path.is_file():
            raise MinirunError(f"no tokenizer.json in {checkpoint}: the checkpoint needs its tokenizer files")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the tokenizers library raises a bare Exception for a file it cannot parse
            raise MinirunError(f"cannot read {path} ({str(e).splitlines()[0] if str(e) else type(e).__name__}): "
                               "re-download the checkpoint or restore the file") from None
        # a file saved after a call with truncation or padding keeps them; transformers turns both off for every
        # encode, or a prompt would be cut (past the context check) or padded without a word
        self._tok.no_truncation()
        self._tok.no_padding()
        self.checkpoint, self.vocab_limit = checkpoint, vocab_limit
        config = checkpoint_json(checkpoint / "tokenizer_config.json")
        # the ids transformers 5 encodes, not the file's alone; runs record it, as minirun once read the file
        loaded = loaded_class(checkpoint, config) if type(self._tok.model).__name__ == "BPE" else None
        self.rebuilt = loaded is not None and loaded not in QWEN2_CLASSES
        if self.rebuilt:
            llama_pipeline(self._tok, config)
        elif loaded is not None:
            written = [self._tok.encode(text).ids for text in PIPELINE_PROBES]
            qwen2_pipeline(self._tok, config)  # Qwen's own files encode alike: their runs keep their keys
            self.rebuilt = written != [self._tok.encode(text).ids for text in PIPELINE_PROBES]
        added_token_flags(self._tok, config)
        legacy = checkpoint_json(checkpoint / "special_tokens_map.json")  # older checkpoints name special tokens here
        self.special_tokens = {k: _token_text(config.get(k) if config.get(k) is not None else legacy.get(k))
                               for k in SPECIAL_KEYS if config.get(k) is not None or legacy.get(k) is not None}
        defaults = CLASS_TOKENS.get(loaded or config.get("tokenizer_class"), {})
        self.special_tokens.update({k: text for k, text in defaults.items() if k not in config and k not in legacy
                                    and self._tok.token_to_id(text) is not None})
        if loaded in QWEN2_CLASSES:
            extra = [config.get(k) for k in ("additional_special_tokens", "extra_special_tokens")]
            unstripped(self._tok, {*self.special_tokens.values(),
                                   *(_token_text(t) for texts in extra if isinstance(texts, list) for t in texts)})
        # transformers skips this clean-up for BPE models (it strips real spaces before punctuation) unless forced
        self.clean_up_spaces = bool(config.get("clean_up_tokenization_spaces", False)) and (
            type(self._tok.model).__name__ != "BPE"
            or bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output", False)))
        self.chat_template = self._find_template(checkpoint, config)
        self._template: jinja2.Template | None = None  # compiled at first use: --raw never needs it
        self.clock: datetime | None = None  # what the template's strftime_now reads (None: now, as transformers)
        self._opens: dict[bool | None, bool] = {}  # `opens_reasoning` by thinking switch: the template never changes

    @property
    def reads_clock(self) -> bool:
        """Whether the chat template writes the date (Llama 3.2's "Today Date:"), so a prompt depends on the day."""
        return self.chat_template is not None and "strftime_now" in self.chat_template

    def opens_reasoning(self, thinking: bool | None = None) -> bool:
        """Whether the chat template's generation prompt leaves a <think> block open (DeepSeek-R1's distillations
        do, whatever `thinking` says), so every answer begins with the model's thinking."""
        if self.chat_template is None:
            return False
        if thinking not in self._opens:  # asked per batch and per stop rule: rendered once
            switch = {} if thinking is None else {"enable_thinking": thinking}
            prompt = self.apply_chat_template([{"role": "user", "content": "?"}], add_generation_prompt=True, **switch)
            self._opens[thinking] = prompt.rfind(THINK_START) > prompt.rfind(THINK_END)
        return self._opens[thinking]

    @property
    def thinking_switch(self) -> bool:
        """Whether the chat template reads `enable_thinking` (Qwen3's reasoning switch): its prompt differs with it
        on and off. A template without one renders both alike, so asking it to think changes nothing."""
        if self.chat_template is None:
            return False
        on, off = (self.apply_chat_template([{"role": "user", "content": "?"}], add_generation_prompt=True,
                                            enable_thinking=switch) for switch in (True, False))
        return on != off

    @contextmanager
    def pinned_clock(self, moment: datetime | None) -> Iterator[None]:
        """Render every chat template at `moment` inside the block: a run resumed another day (or crossing
        midnight) then asks its questions in the words it began with. None leaves the clock as it is."""
        before = self.clock
        self.clock = moment if moment is not None else before
        try:
            yield
        finally:
            self.clock = before

    @staticmethod
    def _find_template(checkpoint: Path, config: dict) -> str | None:
        jinja_file = checkpoint / "chat_template.jinja"
        without = "or ask without a template (generate --raw, eval --no-chat, a sweep's chat = false)"
        if jinja_file.is_file():
            try:
                return jinja_file.read_text(encoding="utf-8")  # as transformers reads it, whatever the locale
            except UnicodeDecodeError:
                return refusing_template(f"{jinja_file} is not UTF-8 text: save it as UTF-8, {without}")
        template = config.get("chat_template")
        if isinstance(template, list):  # named templates: transformers uses "default", and refuses to guess without
            if not all(isinstance(t, dict) and isinstance(t.get("name"), str) and isinstance(t.get("template"), str)
                       for t in template):
                return refusing_template("tokenizer_config.json's chat_template list needs a \"name\" and a "
                                         f"\"template\" text in each entry: restore the file, {without}")
            named = {t["name"]: t["template"] for t in template}
            why = (f"tokenizer_config.json names chat templates ({', '.join(named)}) and none \"default\", the one "
                   f"transformers applies: write the one to use to chat_template.jinja, {without}")
            template = named.get("default", refusing_template(why))
        elif template is not None and not isinstance(template, str):
            return refusing_template(f"tokenizer_config.json's chat_template is {type(template).__name__}, not a "
                                     f"template's text: restore the file, {without}")
        return template

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size()

    def token_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    @property
    def eos_token_id(self) -> int | None:
        eos = self.special_tokens.get("eos_token")
        return None if eos is None else self.token_id(eos)

    @property
    def pad_token_id(self) -> int | None:
        pad = self.special_tokens.get("pad_token") or self.special_tokens.get("eos_token")
        return None if pad is None else self.token_id(pad)

    def special_id(self, text: str) -> int | None:
        """The id of the special token written `text` (decoding skips it, so only its id can show it)."""
        return next((i for i, t in self._tok.get_added_tokens_decoder().items() if t.special and t.content == text),
                    None)

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self._tok.encode(text, add_special_tokens=add_special_tokens).ids
        if self.vocab_limit is not None and ids and max(ids) >= self.vocab_limit:
            past = next(i for i in ids if i >= self.vocab_limit)
            raise MinirunError(f"the tokenizer of {self.checkpoint} gives {self._tok.id_to_token(past)!r} the id "
                               f"{past}, past the model's {self.vocab_limit} embedding rows (config.json's "
                               "vocab_size): its tokenizer files are another model's, restore the checkpoint's own")
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = False) -> str:
        text = self._tok.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self.clean_up_spaces else text

    def apply_chat_template(self, messages: list[dict[str, Any]], add_generation_prompt: bool = True,
                            **kwargs: Any) -> str:
        if self.chat_template is None:
            raise MinirunError("this tokenizer has no chat template: pass --raw (or chat=False) to use plain prompts")
        try:
            if self._template is None:
                self._template = compile_template(self.chat_template)
            clock = {} if self.clock is None else {"strftime_now": self.clock.strftime}
            return self._template.render(messages=messages, add_generation_prompt=add_generation_prompt,
                                         tools=None, documents=None, **{**self.special_tokens, **clock, **kwargs})
        except jinja2.exceptions.TemplateError as e:
            raise MinirunError(f"the chat template of {self.checkpoint} failed: {type(e).__name__}: {e}; pass --raw "
                               "(or chat=False) to use plain prompts") from None


def _clean_up(text: str) -> str:
    """transformers' clean_up_tokenization: drop spaces before punctuation and contractions."""
    for a, b in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                 (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(a, b)
    return text
