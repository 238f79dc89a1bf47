"""Fusion rules as pure functions on hand-made logits."""
from __future__ import annotations

import math

import pytest
import torch

from minirun.methods.fusion import ROW_WEIGHTS, RULES, normalised

LOGITS = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.5, 1.4], [0.0, 0.0, 3.0]])


def test_avg_is_mean_of_raw_logits():
    assert torch.allclose(RULES["avg"](LOGITS, None), torch.tensor([2 / 3, 2.5 / 3, 4.4 / 3]))


def test_avg_logprob_is_the_mean_log_probability_and_avg_once_normalised():
    """A mean of log-probabilities is the mean of the logits less a constant: the same distribution as avg's, even
    where the rows' scales differ (the README says so)."""
    scaled = torch.tensor([[10.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    assert torch.allclose(RULES["avg_logprob"](scaled, None), scaled.log_softmax(-1).mean(0))
    assert not torch.allclose(RULES["avg_logprob"](scaled, None), RULES["avg"](scaled, None))
    assert torch.allclose(RULES["avg_logprob"](scaled, None).softmax(-1), RULES["avg"](scaled, None).softmax(-1))


def test_avg_prob_is_the_mixture_of_the_rows_distributions():
    """The mean of probabilities, the one mean rule that is not avg's distribution: one sure row is outvoted by two
    leaning the other way, where a mean of logits follows the sure row; in float32 a token every row finds
    unlikely keeps its log-probability (a softmax's own exp would underflow to a log of -inf)."""
    rows = torch.tensor([[3.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
    fused = RULES["avg_prob"](rows, None)
    assert torch.allclose(fused.exp(), rows.softmax(-1).mean(0))
    assert torch.allclose(fused.exp().sum(), torch.tensor(1.0))
    assert fused.argmax() == 1 and RULES["avg"](rows, None).argmax() == 0 == RULES["avg_logprob"](rows, None).argmax()
    far = RULES["avg_prob"](torch.tensor([[0.0, -200.0], [0.0, -300.0]]), None)
    assert torch.allclose(far, torch.tensor([0.0, -200.0 - math.log(2)]))
    same = torch.tensor([[0.5, 2.0, -1.0]] * 4)
    assert torch.allclose(RULES["avg_prob"](same, None), same[0].log_softmax(-1), atol=1e-6)


def test_max_takes_elementwise_max_probability():
    expected = LOGITS.softmax(-1).amax(0)
    assert torch.allclose(RULES["max"](LOGITS, None).exp(), expected)
    assert RULES["max"](LOGITS, None).argmax() == 2  # row 3 is the most peaked


def test_weighted_avg_uses_normalised_confidences():
    w = torch.tensor([1.0, 3.0, 0.0])
    got = RULES["weighted_avg"](LOGITS, w)
    assert torch.allclose(got, 0.25 * LOGITS[0] + 0.75 * LOGITS[1])
    assert got.argmax() == 1


def test_weighted_max_is_most_confident_row():
    assert torch.equal(RULES["weighted_max"](LOGITS, torch.tensor([0.1, 0.2, 0.9])), LOGITS[2])
    assert torch.equal(RULES["weighted_max"](LOGITS, torch.tensor([0.5, 0.5, 0.1])), LOGITS[0])


def test_zero_confidences_fall_back_to_uniform():
    assert torch.allclose(normalised(torch.zeros(4)), torch.full((4,), 0.25))


def test_identical_rows_fuse_to_that_row():
    rows = LOGITS[:1].expand(3, -1)
    for name, rule in RULES.items():  # the same next-token distribution as the row alone, not only its argmax
        fused = rule(rows, torch.tensor([0.2, 0.3, 0.5]))
        assert torch.allclose(fused.softmax(-1), LOGITS[0].softmax(-1), atol=1e-6), name


def test_weighted_sum_rules_equal_the_head_of_mixed_states():
    """For avg, weighted_avg and weighted_max, rule(states @ W.T) == (w @ states) @ W.T: the
    vocabulary head can run once per question on the mixed state."""
    states, head = torch.randn(4, 8, dtype=torch.float64), torch.randn(11, 8, dtype=torch.float64)
    confidences = torch.tensor([0.1, 0.4, 0.4, 0.1])  # a tie: weighted_max takes the first
    assert set(ROW_WEIGHTS) == {"avg", "weighted_avg", "weighted_max"}  # max, avg_logprob: softmax first
    for name, weights in ROW_WEIGHTS.items():
        w = weights(4, confidences).double()
        assert torch.allclose(RULES[name](states @ head.T, confidences.double()), (w @ states) @ head.T), name
    assert ROW_WEIGHTS["weighted_max"](4, confidences).tolist() == [0.0, 1.0, 0.0, 0.0]


def test_confidence_weights_are_worked_out_in_doubles():
    from minirun.methods.fusion import confidence_weights

    assert confidence_weights("weighted_avg", [1e39, 1e39]) == [0.5, 0.5]  # float32 would hold inf
    assert confidence_weights("weighted_avg", [1e-40, 3e-40]) == pytest.approx([0.25, 0.75], rel=1e-15)  # subnormal in float32
    assert confidence_weights("weighted_avg", [0.0, 0.0, 0.0, 0.0]) == [0.25] * 4
    assert confidence_weights("weighted_max", [0.3, 0.30000001, 0.1]) == [0.0, 1.0, 0.0]  # equal in float32
    assert confidence_weights("weighted_max", [0.5, 0.5, 0.1]) == [1.0, 0.0, 0.0]  # the first of equals


def test_the_rules_names_kept_apart_from_their_code_are_the_rules():
    """`methods.names` lists them for the command line without torch: the two lists must not drift apart."""
    from minirun.methods.names import METHODS, OPTION_READERS, RULE_NAMES, WEIGHTED

    assert RULE_NAMES == tuple(RULES) and set(WEIGHTED) <= set(RULES) and set(ROW_WEIGHTS) <= set(RULES)
    assert set(RULE_NAMES) <= set(METHODS) and all(set(r) <= set(METHODS) for r in OPTION_READERS.values())
