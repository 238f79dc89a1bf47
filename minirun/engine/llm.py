"""`minirun.load(...)` and the `LLM` facade that tools and tests call."""
from __future__ import annotations

import contextlib
import gc
import operator
import os
from pathlib import Path
from typing import Callable, Iterator, Mapping

import torch

from minirun.checkpoints.loader import auto_device, load_model
from minirun.checkpoints.tokenizer import Tokenizer
from minirun.engine.allocator import keep_large_allocations
from minirun.engine.generate import Completion, Stopper, decode_loop, left_padded, stop_strings
from minirun.engine.sampling import SamplingParams, generation_params, sample
from minirun.engine.session import NO_HOOKS, Hooks, Prefixes, Session, cache_size
from minirun.errors import MinirunError, whole_number
from minirun.layers import flex
from minirun.layers.hidden_fusion import HeadMix, HiddenFusion
from minirun.models import Decoder


class LLM:
    """A loaded model with its tokenizer; `generate` runs batched prefill + decode."""

    def __init__(self, model: Decoder, tokenizer: Tokenizer, path: Path):
        self.model, self.tokenizer, self.path = model, tokenizer, path
        self.config = model.config
        self.prefixes = Prefixes()  # shared heads already encoded, reused by later sessions
        self.prompts: Prefixes | None = None  # within `reusing_prompts`: the last batch's prompts
        if model.device.type == "cpu":
            keep_large_allocations()

    @property
    def device(self) -> torch.device:
        return self.model.device

    @property
    def dtype(self) -> torch.dtype:
        return self.model.dtype

    @property
    def eos_ids(self) -> set[int]:
        """Every id a checkpoint's files call an end (config, generation config, tokenizer). transformers stops at the
        generation config's alone; the released Llama and Qwen checkpoints list the others there too, and where a
        file does not, an answer that ends its turn with the tokenizer's eos should still end."""
        ids = set(self.config.eos_token_ids)
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return ids

    @property
    def pad_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return pad if pad is not None else 0

    def prompt_ids(self, prompt: str, chat: bool | None = None, thinking: bool | None = None) -> list[int]:
        """Token ids of a user prompt, inside the chat template when `chat` (default: if it has one);
        `thinking` is the template's `enable_thinking` (None: the template's own default)."""
        if chat is None:
            chat = self.tokenizer.chat_template is not None
        if chat:
            switch = {} if thinking is None else {"enable_thinking": thinking}
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                                      **switch)
            return self.tokenizer.encode(text, add_special_tokens=False)
        return self.tokenizer.encode(prompt)

    def check_context(self, prompt_len: int, max_new_tokens: int) -> None:
        limit = self.config.max_position_embeddings
        if prompt_len + max_new_tokens > limit:
            raise MinirunError(f"prompt ({prompt_len} tokens) + max_new_tokens ({max_new_tokens}) exceeds the model's "
                               f"context of {limit}: shorten the prompt, lower --max-new-tokens or pass --truncate")

    def fit(self, prompt: str, max_new_tokens: int, truncate: bool, chat: bool | None = None,
            thinking: bool | None = None) -> list[int]:
        """`prompt_ids` of a prompt that fits the context with `max_new_tokens`, else a refusal, or with `truncate`
        of the prompt's text's end: the chat template around it and the tokenizer's BOS stay (a model sees them at
        the start of every prompt it was trained on; cutting the ids would drop them first)."""
        ids = self.prompt_ids(prompt, chat, thinking)
        room = self.config.max_position_embeddings - max_new_tokens
        if not truncate or len(ids) <= room:
            self.check_context(len(ids), max_new_tokens)
            return ids
        if room <= 0:
            raise MinirunError(f"max_new_tokens ({max_new_tokens}) leaves no room for a prompt in the model's context "
                               f"of {self.config.max_position_embeddings}: lower --max-new-tokens")
        text = self.tokenizer.encode(prompt, add_special_tokens=False)
        keep = len(text) - (len(ids) - room)
        while keep > 0:  # tokens merge across the cut now and then: one more round, a token or two shorter
            tail = self.tokenizer.decode(text[-keep:]).lstrip("\ufffd")  # not half a character's bytes
            ids = self.prompt_ids(tail, chat, thinking) if tail.strip() else []
            if ids and len(ids) <= room:
                return ids
            keep -= max(1, len(ids) - room)
        wrapper = len(self.prompt_ids(".", chat, thinking)) - 1
        raise MinirunError(f"max_new_tokens ({max_new_tokens}) leaves {room} of the model's context of "
                           f"{self.config.max_position_embeddings} tokens, the prompt's template takes {wrapper} of "
                           "them, and no end of the prompt's text but blank space fits in the rest: lower "
                           "--max-new-tokens")

    def session(self, batch: int, slots: int, hooks: Hooks = NO_HOOKS, reuse: bool = False, *,
                log_weights: torch.Tensor | None = None, fusion: HiddenFusion | None = None,
                head_mix: HeadMix | None = None) -> Session:
        """A fresh cache for `batch` rows of `slots` tokens (rounded up to the cache's sizes); with `reuse`
        (a method's batch of questions), its prompts are kept or copied within `reusing_prompts`. The
        rest is how the rows are fused (`Session`)."""
        return Session(self.model, batch, cache_size(slots), log_weights, hooks, fusion, prefixes=self.prefixes,
                       prompts=self.prompts if reuse else None, head_mix=head_mix)

    @contextlib.contextmanager
    def reusing_prompts(self) -> Iterator[Prefixes]:
        """Within, a session whose batch lays out the same prompts after the same head as the session
        before copies that one's prefill (`Session.prefill`): an evaluation runs per_prompt, avg and max
        on each batch in turn. Only a method's sessions (`session(reuse=True)`) keep or copy prompts, not
        sampling ones (confidences); off elsewhere: a benchmark repeating one batch must time its prefill."""
        previous, self.prompts = self.prompts, Prefixes(capacity=1)
        try:
            yield self.prompts
        finally:
            self.prompts = previous

    def release_memory(self) -> None:
        """Free what a batch that ran out of memory leaves held (its cache, a batch's prompts kept for reuse), so
        a smaller batch can allocate; the few-shot heads, one row each, stay."""
        self.model.release_cache()
        if self.prompts is not None:
            self.prompts.clear()
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def stopper(self, stop: tuple[str, ...] | list[str] = (), ignore_eos: bool = False,
                reasoning: bool = False) -> Stopper:
        """Ends a row at eos (unless `ignore_eos`: benchmarks need exactly N tokens) or a stop string in its answer
        (`reasoning`: after the thinking its prompt left open)."""
        stop = stop_strings(stop)
        specials = frozenset(i for s in stop if (i := self.tokenizer.special_id(s)) is not None)
        return Stopper(self.tokenizer, set() if ignore_eos else self.eos_ids, stop, specials, reasoning)

    def opens_reasoning(self, chat: bool | None, thinking: bool | None) -> bool:
        """Whether prompts rendered so (`prompt_ids`' chat and thinking) leave the model thinking first."""
        uses_template = chat if chat is not None else self.tokenizer.chat_template is not None
        return bool(uses_template) and self.tokenizer.opens_reasoning(thinking)

    @torch.inference_mode()
    def generate(self, prompts: str | list[str], max_new_tokens: int = 64, *, chat: bool | None = None,
                 temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                 seed: int | None = None, stop: tuple[str, ...] | list[str] = (), truncate: bool = False,
                 on_text: Callable[[str], None] | None = None,
                 thinking: bool | None = None) -> Completion | list[Completion]:
        """Generate for one prompt (returns a Completion) or a batch (returns a list). `on_text` is handed the first
        prompt's text as it grows (a stream shows one answer; a batch's others are in their Completions)."""
        max_new_tokens = whole_number(max_new_tokens, "max_new_tokens")
        for name, value in (("chat", chat), ("thinking", thinking)):
            if value is not None and not isinstance(value, bool):  # "no" would be true
                raise MinirunError(f"{name} must be True, False or None, got {value!r}")
        if thinking and chat is False:
            raise MinirunError("thinking is a chat template's switch, and chat=False uses none: drop one of them")
        if max_new_tokens < 1:
            raise MinirunError(f"max_new_tokens must be at least 1, got {max_new_tokens}: ask for one token or more")
        params = generation_params(temperature, top_k, top_p, seed)
        single = isinstance(prompts, str)
        if not single and not isinstance(prompts, (list, tuple)):
            raise MinirunError(f"prompts must be a text or a list of texts, got {type(prompts).__name__}: e.g. "
                               "generate('Who wrote Hamlet?') or generate(['Who wrote Hamlet?', 'Capital of France?'])")
        batch = [prompts] if single else list(prompts)
        if not batch:
            raise MinirunError("no prompts given: pass at least one prompt")
        if bad := [i for i, p in enumerate(batch) if not isinstance(p, str) or not p.strip()]:
            raise MinirunError(f"prompt {bad[0]} is {'empty' if isinstance(batch[bad[0]], str) else 'not text'}: "
                               "every prompt needs some text")
        ids = [self.fit(p, max_new_tokens, truncate, chat, thinking) for p in batch]
        results = self.generate_ids(ids, max_new_tokens, params, stop, on_text, self.opens_reasoning(chat, thinking))
        return results[0] if single else results

    @torch.inference_mode()
    def generate_ids(self, prompts: list[list[int]], max_new_tokens: int, params: SamplingParams,
                     stop: tuple[str, ...] | list[str] = (), on_text: Callable[[str], None] | None = None,
                     reasoning: bool = False) -> list[Completion]:
        """Independent rows of different lengths, left-padded into one batch (`reasoning`: their prompts leave the
        model thinking first, and stop strings count after its thinking)."""
        vocab = self.config.vocab_size
        for i, ids in enumerate(prompts):  # `generate` fitted its prompts; ids given here directly are checked here
            try:  # lists, numpy arrays or tensors of whole numbers
                empty = len(ids) == 0
                valid = not empty and all(0 <= operator.index(t) < vocab for t in ids)
            except TypeError:
                empty, valid = False, False
            if not valid:
                raise MinirunError(f"prompt {i} is {'empty' if empty else 'not token ids'}: give each row at least "
                                   f"one id from 0 to {vocab - 1} (this model's vocabulary)")
            self.check_context(len(ids), max_new_tokens)
        layout = left_padded(prompts, self.pad_id, self.device)
        session = self.session(len(prompts), layout.length + max_new_tokens)
        logits = session.prefill(layout.tokens, layout.positions, layout.segments)
        generator = params.generator(self.device)
        results = decode_loop(session, logits, layout.next_positions, lambda l, rows: sample(l, params, generator),
                              max_new_tokens, self.stopper(stop, reasoning=reasoning), on_text=on_text,
                              deterministic=params.greedy)
        for result, ids in zip(results, prompts):
            result.prompt_tokens = len(ids)
        return results


def load(path: str | Path, device: str = "cpu", dtype: str | None = None, compile: bool | None = None) -> LLM:
    """Load a checkpoint directory (or a hub id, resolved with huggingface_hub) for inference; "auto" is the GPU
    where one is visible, and under torchrun "cuda" is this process's own GPU (`rank_device`). `compile` switches
    the process to compiled kernels (True: FlexAttention and the decode step compiled, what `--compile` does) or to
    eager ones (False); it is process-wide, as torch.compile's caches are, and None leaves it as is."""
    if compile is not None:
        flex.set_compiled(compile)
    checkpoint = Path(path)
    if not checkpoint.is_dir():
        from minirun.checkpoints.hub import resolve_model

        checkpoint = resolve_model(path)
    device = auto_device(device)
    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    placed = rank_device(device, os.environ, visible)
    if placed != device:
        torch.cuda.set_device(placed)  # kernels, graphs and caches made later in this process go there too
    model = load_model(checkpoint, placed, dtype)
    return LLM(model, Tokenizer(checkpoint, model.config.vocab_size), checkpoint)


def rank_device(device: str, environ: Mapping[str, str], visible_gpus: int) -> str:
    """The device this process loads on: under torchrun (WORLD_SIZE > 1) a bare "cuda" is cuda:LOCAL_RANK,
    so K ranks on a K-GPU node use one GPU each instead of all K models sharing GPU 0 while the rest idle.
    An explicit index (cuda:1) and every other device are kept as given."""
    if device != "cuda" or int(environ.get("WORLD_SIZE", "1")) <= 1 or "LOCAL_RANK" not in environ or not visible_gpus:
        return device
    local = int(environ["LOCAL_RANK"])
    if local >= visible_gpus:
        raise MinirunError(f"torchrun started more processes on this node than it has GPUs (local rank {local}, "
                           f"{visible_gpus} GPU{'s' if visible_gpus > 1 else ''} visible): pass --nproc_per_node "
                           f"{visible_gpus} or fewer")
    return f"cuda:{local}"
