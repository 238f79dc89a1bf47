"""hidden_avg: the fusion function alone, its exact degenerate cases, and the KV-cached decode
against a reference that recomputes every step without a cache (float32, CPU)."""
from __future__ import annotations

import pytest
import torch
from hidden_reference import recompute_hidden_avg

import minirun
from minirun.layers.hidden_fusion import HiddenFusion, fuse_newest, group_fusion, head_mix, mix_states, retain_head_rows, retain_rows
from minirun.methods import EnsembleOptions, Question, run_method
from minirun.methods.packing import encode_question
from minirun.methods.runner import default_fusion_layer

QUESTION = "The capital of France is"
PARAS = ["The capital of France is", "France's capital city is", "Which city is France's capital?"]
PREFIX = "Q: Water boils at\nA: 100 degrees\n\n"


@pytest.fixture(scope="module", params=["llama3", "qwen3"])
def llm(request, checkpoint_dirs):
    return minirun.load(checkpoint_dirs[request.param])


def run(llm, method: str, paraphrases: list[str], **kw):
    options = EnsembleOptions(**{"max_new_tokens": 24, "chat": True, **kw})
    return run_method(llm, method, [Question(QUESTION, paraphrases, PREFIX)], options)[0]


def test_fuse_newest_replaces_only_the_last_token():
    x = torch.randn(4, 3, 8)
    fusion = group_fusion([[0, 1, 2], [3]], alpha=0.25, first_block=1, device=x.device)
    out = fuse_newest(x, fusion)
    assert torch.equal(out[:, :2], x[:, :2])
    mean = x[:3, -1].mean(0)
    assert torch.allclose(out[:3, -1], 0.75 * x[:3, -1] + 0.25 * mean, atol=1e-6)
    assert torch.allclose(out[3, -1], x[3, -1], atol=1e-6)  # a group of one is itself


def test_fuse_newest_keeps_identical_rows_bit_identical():
    row = torch.randn(1, 2, 16)
    x = torch.cat([row, row, row, torch.randn(1, 2, 16)])
    out = fuse_newest(x, group_fusion([[0, 1, 2], [3]], 1.0, 1, x.device))
    assert torch.equal(out[:3], x[:3])


def test_group_fusion_mixes_within_groups_only():
    fusion = group_fusion([[0, 1], [2, 3, 4]], 1.0, 5, torch.device("cpu"))
    assert fusion.first_block == 5 and fusion.anchor.tolist() == [0, 0, 2, 2, 2]
    assert torch.allclose(fusion.mix.sum(1), torch.ones(5)) and fusion.mix[0, 2] == 0 and fusion.mix[2, 0] == 0


def test_retained_rows_keep_their_groups_fusion():
    """Dropping a finished group leaves the others' fusion as if they had been the whole batch."""
    fusion = group_fusion([[0, 1], [2], [3, 4, 5]], 0.5, 2, torch.device("cpu"))
    kept = retain_rows(fusion, torch.tensor([0, 1, 3, 4, 5]))
    alone = group_fusion([[0, 1], [2, 3, 4]], 0.5, 2, torch.device("cpu"))
    assert torch.equal(kept.mix, alone.mix) and torch.equal(kept.anchor, alone.anchor)
    assert kept.first_block == 2


@pytest.mark.parametrize("layers, expected", [(28, 21), (32, 24), (16, 12), (36, 27), (30, 23), (2, 2)])
def test_default_fusion_layer(layers, expected):
    assert default_fusion_layer(layers) == expected


@pytest.mark.parametrize("layer", [1, 2])
def test_identical_paraphrases_equal_origin(llm, layer):
    assert run(llm, "hidden_avg", [QUESTION] * 3, fusion_layer=layer).token_ids == run(llm, "origin", []).token_ids


def test_alpha_zero_equals_avg(llm):
    assert run(llm, "hidden_avg", PARAS, fusion_layer=1, fusion_alpha=0.0).token_ids == run(llm, "avg", PARAS).token_ids


def test_fusion_changes_the_answer_and_records_its_layer(llm):
    """The premise of the tests above: fusing distinct paraphrases is not a no-op."""
    fused = run(llm, "hidden_avg", PARAS, fusion_layer=1)
    assert fused.fusion_layer == 1 and run(llm, "hidden_avg", PARAS).fusion_layer == default_fusion_layer(2)
    layouts = {tuple(run(llm, m, PARAS, **kw).token_ids) for m, kw in
               [("hidden_avg", {"fusion_layer": 1}), ("avg", {}), ("hidden_avg", {"fusion_layer": 1, "fusion_alpha": 0.5})]}
    assert len(layouts) >= 2


def test_fusing_after_the_last_block_is_a_function_of_final_states(llm):
    """With L = the last block, prefill logits = lm_head(norm(mix @ unfused final states))."""
    enc = encode_question(llm, PARAS, PREFIX, chat=True)
    rows = [enc.full(i) for i in range(len(PARAS))]
    width = max(map(len, rows))
    tokens = torch.tensor([[0] * (width - len(r)) + r for r in rows])
    positions = torch.tensor([[0] * (width - len(r)) + list(range(len(r))) for r in rows])
    segments = torch.tensor([[-1] * (width - len(r)) + [0] * len(r) for r in rows])
    last = llm.config.num_layers
    fusion = group_fusion([[0, 1, 2]], 0.7, last, llm.device)
    finals = {}
    handle = llm.model.norm.register_forward_hook(lambda m, args, out: finals.setdefault("x", args[0]))
    with torch.inference_mode():
        session = llm.session(3, width + 4)
        unfused = session.prefill(tokens, positions, segments)
        handle.remove()
        expected = llm.model.lm_head(llm.model.norm(fuse_newest(finals["x"], fusion)))[:, -1].float()
        session = llm.session(3, width + 4)
        session.fusion = fusion
        fused = session.prefill(tokens, positions, segments)
    assert (fused - expected).abs().max().item() <= 1e-5
    assert (fused - unfused).abs().max().item() > 1e-3  # fusion did something


def test_hidden_fusion_rejects_out_of_range_options(llm):
    with pytest.raises(minirun.MinirunError, match="--fusion-layer 3 is outside the model's blocks 1..2"):
        run(llm, "hidden_avg", PARAS, fusion_layer=3)
    with pytest.raises(minirun.MinirunError, match="--fusion-alpha 1.5 is outside"):
        run(llm, "hidden_avg", PARAS, fusion_alpha=1.5)


def test_first_answer_token_equals_the_recompute_reference(llm):
    """Cached and recomputed agree on the first token (no earlier answer token exists yet); later
    tokens may differ, because the cache keeps fused states of earlier answer tokens."""
    cached = run(llm, "hidden_avg", PARAS, fusion_layer=1, share_prefix=False)
    reference = recompute_hidden_avg(llm, encode_question(llm, PARAS, PREFIX, chat=True), 1, 1.0, 24)
    assert cached.token_ids[0] == reference[0]


def test_recompute_reference_equals_cached_when_fusing_after_the_last_block(llm):
    """Fused only after the last block, no cached key/value depends on fusion: both agree exactly."""
    last = llm.config.num_layers
    cached = run(llm, "hidden_avg", PARAS, fusion_layer=last, share_prefix=False)
    reference = recompute_hidden_avg(llm, encode_question(llm, PARAS, PREFIX, chat=True), last, 1.0, 24)
    assert cached.token_ids == reference[:len(cached.token_ids)]


def test_hidden_fusion_type_is_frozen():
    fusion = HiddenFusion(1, torch.eye(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(AttributeError):
        fusion.first_block = 2


def test_mix_states_is_each_groups_weighted_sum():
    x = torch.randn(5, 16)
    mixing = head_mix([[0, 1], [2, 3, 4]], [torch.tensor([0.25, 0.75]), torch.tensor([0.2, 0.3, 0.5])], x.device)
    assert mixing.anchor.tolist() == [1, 4] and mixing.group.tolist() == [0, 0, 1, 1, 1]
    expected = torch.stack([0.25 * x[0] + 0.75 * x[1], 0.2 * x[2] + 0.3 * x[3] + 0.5 * x[4]])
    assert torch.allclose(mix_states(x, mixing), expected, atol=1e-6)


def test_mix_states_keeps_identical_rows_and_one_hot_weights_bit_identical():
    row = torch.randn(1, 16)
    x = torch.cat([row, row, row, torch.randn(2, 16)])
    mixing = head_mix([[0, 1, 2], [3, 4]], [torch.full((3,), 1 / 3), torch.tensor([0.0, 1.0])], x.device)
    out = mix_states(x, mixing)
    assert torch.equal(out[0], x[0]) and torch.equal(out[1], x[4])


def test_retained_rows_keep_their_groups_head_mix():
    weights = [torch.tensor([0.5, 0.5]), torch.tensor([1.0]), torch.tensor([0.1, 0.6, 0.3])]
    kept = retain_head_rows(head_mix([[0, 1], [2], [3, 4, 5]], weights, torch.device("cpu")), torch.tensor([0, 1, 3, 4, 5]))
    alone = head_mix([[0, 1], [2, 3, 4]], [weights[0], weights[2]], torch.device("cpu"))
    assert torch.equal(kept.mix, alone.mix) and torch.equal(kept.anchor, alone.anchor)
    assert torch.equal(kept.group, alone.group)
