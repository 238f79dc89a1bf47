"""Ragged batches: the layouts are pure functions, and an eager padded prefill skips its padding."""
from __future__ import annotations

import torch

import minirun
from minirun.engine import session as session_module
from minirun.engine.generate import left_padded
from minirun.engine.session import Session, cache_size
from minirun.layers.hidden_fusion import group_fusion
from minirun.layers.ragged import last_of_rows, pack, pack_heads, real_tokens, unpack, unpack_heads


def test_pack_and_unpack_move_only_the_real_tokens():
    real = torch.tensor([[False, True, True], [True, True, True]])
    r = real_tokens(real)
    x = torch.arange(2 * 3 * 4, dtype=torch.float32).view(2, 3, 4)
    packed = pack(x, r)
    assert packed.shape == (1, 5, 4) and torch.equal(packed[0], x[real])
    back = unpack(packed, r)
    assert torch.equal(back[real], x[real]) and not back[~real].any()
    heads = torch.randn(2, 3, 3, 8)  # [B, C, T, D]
    assert torch.equal(unpack_heads(pack_heads(heads, r), r)[:, :, 1:], heads[:, :, 1:])
    assert torch.equal(pack_heads(heads, r)[0].transpose(0, 1), heads.transpose(1, 2)[real])
    assert real_tokens(torch.ones(2, 3, dtype=torch.bool)) is None


def test_last_of_rows_finds_each_rows_last_token_among_the_packed_ones():
    real = torch.tensor([[False, False, True], [True, True, True], [False, True, True]])
    x = torch.arange(3 * 3, dtype=torch.float32).view(3, 3, 1)
    r = real_tokens(real)
    assert torch.equal(pack(x, r)[0, last_of_rows(r)], x[:, -1])


def prefill_and_decode(llm, rows, monkeypatch, ragged: bool, fusion=None) -> tuple[torch.Tensor, list[int]]:
    """Logits of a left-padded prefill and two decode steps, and the row counts the first product saw."""
    if not ragged:
        monkeypatch.setattr(session_module, "real_tokens", lambda real: None)
    seen = []
    hook = llm.model.layers[0].attn.wqkv.register_forward_hook(lambda m, args, out: seen.append(args[0].shape[:2]))
    layout = left_padded(rows, llm.pad_id, llm.device)
    session = Session(llm.model, len(rows), cache_size(layout.length + 2))
    session.fusion = fusion
    with torch.inference_mode():
        out = [session.prefill(layout.tokens, layout.positions, layout.segments)]
        for step in range(2):
            out.append(session.decode(out[-1].argmax(-1), layout.next_positions + step))
    hook.remove()
    monkeypatch.undo()
    return torch.stack(out), seen


def test_an_eager_padded_prefill_computes_only_its_real_tokens(arch_dir, monkeypatch):
    """Rows of 9, 4 and 1 tokens: the products see 14 tokens, not 27, and every logit of the prefill
    and of the steps after it (which read the cache it wrote) is what the padded prefill gives."""
    arch, path = arch_dir
    llm = minirun.load(path)
    g = torch.Generator().manual_seed(1)
    rows = [torch.randint(3, 320, (n,), generator=g).tolist() for n in (9, 4, 1)]
    padded, padded_seen = prefill_and_decode(llm, rows, monkeypatch, ragged=False)
    ragged, ragged_seen = prefill_and_decode(llm, rows, monkeypatch, ragged=True)
    assert padded_seen[0] == (3, 9) and ragged_seen[0] == (1, 14)
    assert (ragged - padded).abs().max().item() <= 1e-5, arch


def test_hidden_fusion_over_a_ragged_prefill_matches_the_padded_one(checkpoint_dirs, monkeypatch):
    llm = minirun.load(checkpoint_dirs["llama3"])
    rows = [[5, 6, 7, 8, 9], [11, 12], [13, 14, 15]]
    fusion = group_fusion([[0, 1, 2]], 1.0, 1, llm.device)
    padded, _ = prefill_and_decode(llm, rows, monkeypatch, ragged=False, fusion=fusion)
    ragged, _ = prefill_and_decode(llm, rows, monkeypatch, ragged=True, fusion=fusion)
    assert (ragged - padded).abs().max().item() <= 1e-5
    assert (padded[:, 0] - padded[:, 1]).abs().max().item() <= 1e-5  # fused: the rows agree
