"""Numerical parity with transformers on random-weight Llama / Mistral / Qwen2 / Qwen3 checkpoints."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

import minirun
from minirun.engine.generate import left_padded
from minirun.engine.session import Session, cache_size

LOGIT_ATOL = 1e-4  # float32
BF16_RTOL = 0.05  # bfloat16 vs float32: max-abs logit difference within 5% of the logit scale


@pytest.fixture
def pair(arch_dir):
    arch, path = arch_dir
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    return arch, ref, minirun.load(path)


def varied_batch(vocab: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (4, 57), generator=g)


def test_logits_match_transformers(pair):
    arch, ref, llm = pair
    tokens = varied_batch(llm.config.vocab_size)
    with torch.no_grad():
        expected = ref(tokens).logits
        got = llm.model(tokens)
    assert got.shape == expected.shape
    assert (got - expected).abs().max().item() <= LOGIT_ATOL, arch


def test_positions_are_relative(pair):
    """RoPE is relative: shifting every position by a constant leaves the logits unchanged."""
    _, _, llm = pair
    tokens = varied_batch(llm.config.vocab_size)[:1, :20]
    base = torch.arange(20)[None]
    with torch.no_grad():
        a, b = llm.model(tokens, base), llm.model(tokens, base + 7)
    assert (a - b).abs().max().item() <= LOGIT_ATOL


PROMPTS = ["The capital of France is", "Who wrote Hamlet? William", "def add(a, b):\n   ", "12345 67890 water"]


def test_greedy_generation_token_identical(pair):
    arch, ref, llm = pair
    for prompt in PROMPTS:
        ids = llm.tokenizer.encode(prompt)
        with torch.no_grad():
            out = ref.generate(torch.tensor([ids]), max_new_tokens=32, do_sample=False,
                               attention_mask=torch.ones(1, len(ids), dtype=torch.long))
        got = llm.generate(prompt, max_new_tokens=32, chat=False)
        assert got.token_ids == out[0, len(ids):].tolist(), (arch, prompt)


def test_batch_of_different_lengths_equals_single_runs(pair):
    _, _, llm = pair
    batch = llm.generate(PROMPTS, max_new_tokens=16, chat=False)
    for prompt, result in zip(PROMPTS, batch, strict=True):
        assert result.token_ids == llm.generate(prompt, max_new_tokens=16, chat=False).token_ids


def test_cached_decode_equals_full_recomputation(pair):
    _, _, llm = pair
    ids = llm.tokenizer.encode(PROMPTS[0])
    layout = left_padded([ids], llm.pad_id, llm.device)
    session = Session(llm.model, 1, cache_size(layout.length + 12))
    seq = list(ids)
    with torch.no_grad():
        logits = session.prefill(layout.tokens, layout.positions, layout.segments)
        for step in range(12):
            full = llm.model(torch.tensor([seq]))[0, -1]
            assert (logits[0] - full).abs().max().item() <= LOGIT_ATOL
            token = logits.argmax(-1)
            seq.append(token.item())
            logits = session.decode(token, layout.next_positions + step)


def test_bfloat16_stays_close_to_float32(arch_dir):
    _, path = arch_dir
    f32, bf16 = minirun.load(path), minirun.load(path, dtype="bfloat16")
    assert bf16.model.embed.weight.dtype == torch.bfloat16
    tokens = varied_batch(f32.config.vocab_size)[:, :24]
    with torch.no_grad():
        expected = f32.model(tokens)
        diff = (expected - bf16.model(tokens).float()).abs().max().item()
    assert diff <= BF16_RTOL * expected.abs().max().item()
    assert bf16.generate(PROMPTS[0], max_new_tokens=4, chat=False).finish_reason in ("length", "eos")


@pytest.mark.parametrize("arch, rope", [
    ("qwen3", {"rope_type": "yarn", "rope_theta": 1000000.0, "factor": 4.0, "original_max_position_embeddings": 128}),
    ("llama3", {"rope_type": "dynamic", "rope_theta": 500000.0, "factor": 2.0}),
])
def test_scaled_rope_checkpoints_match_transformers(tmp_path, arch, rope):
    """A config.json with yarn (Qwen's long-context setting) or dynamic rope scaling: logits within float32's
    bound and greedy tokens identical to transformers, compiled as well as eager."""
    from checkpoints import write_checkpoint

    path = write_checkpoint(arch, tmp_path / arch, rope_parameters=rope)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = minirun.load(path)
    tokens = varied_batch(llm.config.vocab_size)
    with torch.no_grad():
        assert (llm.model(tokens) - ref(tokens).logits).abs().max().item() <= LOGIT_ATOL
    ids = llm.tokenizer.encode(PROMPTS[1])
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=24, do_sample=False,
                           attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    expected = out[0, len(ids):].tolist()
    assert llm.generate(PROMPTS[1], max_new_tokens=24, chat=False).token_ids == expected
    try:
        compiled = minirun.load(path, compile=True).generate(PROMPTS[1], max_new_tokens=24, chat=False)
    finally:
        minirun.load(path, compile=False)  # the mode is process-wide
    assert compiled.token_ids == expected


def test_mistral_with_a_sliding_window_runs_within_it_exactly_and_refuses_past_it(tmp_path):
    """Mistral 7B v0.1's window: a sequence within it attends as with full causal attention, so minirun's context
    is the window, where transformers' logits and greedy tokens are matched; a longer one is refused in one line.
    Mistral's projections have no bias even where config.json says attention_bias."""
    from checkpoints import write_checkpoint

    from minirun.errors import MinirunError

    path = write_checkpoint("mistral", tmp_path / "mistral", sliding_window=24, attention_bias=True)
    ref = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    llm = minirun.load(path)
    assert llm.config.max_position_embeddings == 24 and not llm.config.qkv_bias
    tokens = varied_batch(llm.config.vocab_size)[:, :24]
    with torch.no_grad():
        assert (llm.model(tokens) - ref(tokens).logits).abs().max().item() <= LOGIT_ATOL
    ids = llm.tokenizer.encode(PROMPTS[0])
    new = 24 - len(ids)
    with torch.no_grad():
        out = ref.generate(torch.tensor([ids]), max_new_tokens=new, do_sample=False,
                           attention_mask=torch.ones(1, len(ids), dtype=torch.long))
    assert llm.generate(PROMPTS[0], max_new_tokens=new, chat=False).token_ids == out[0, len(ids):].tolist()
    with pytest.raises(MinirunError, match=rf"prompt \({len(ids)} tokens\) \+ max_new_tokens \({new + 1}\) exceeds "
                                           r"the model's context of 24"):
        llm.generate(PROMPTS[0], max_new_tokens=new + 1, chat=False)
