"""engrain.engine.mask: the pre-filter's rule (ties, padding, forced, boost, short rows) and the
judge-selection mask."""

from __future__ import annotations

import pytest
import torch

from engrain.engine.mask import all_positions, candidates, prefilter_topk, selection_mask


def rows(mask):
    return [candidates(r) for r in mask]


def test_largest_abs_delta_per_row():
    delta = torch.tensor([[0.1, -2.0, 0.5, 1.5, -0.2],
                          [3.0, 0.0, -0.1, 0.2, 0.3]])
    valid = torch.ones(2, 5, dtype=torch.bool)
    assert rows(prefilter_topk(delta, valid, 2)) == [[1, 3], [0, 4]]


def test_ties_pick_the_earlier_position():
    delta = torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.5]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    assert rows(prefilter_topk(delta, valid, 2)) == [[0, 1]]
    assert rows(prefilter_topk(delta, valid, 3)) == [[0, 1, 2]]


def test_padding_never_selected_even_if_forced_or_huge():
    delta = torch.tensor([[0.1, 0.2, 9.0, float("nan")]])      # padding holds junk
    valid = torch.tensor([[True, True, False, False]])
    forced = torch.tensor([[False, False, True, True]])
    out = prefilter_topk(delta, valid, 3, forced=forced)
    assert rows(out) == [[0, 1]]


def test_rows_with_fewer_than_t_valid_select_all_valid():
    delta = torch.tensor([[0.3, 0.1, 0.2, 0.0], [0.5, 0.4, 0.0, 0.0]])
    valid = torch.tensor([[True, True, True, True], [True, False, False, False]])
    out = prefilter_topk(delta, valid, 3)
    assert rows(out) == [[0, 1, 2], [0]]
    assert out.sum(dim=1).tolist() == [3, 1]


def test_forced_first_then_fill_up_to_t():
    delta = torch.tensor([[5.0, 4.0, 0.1, 3.0, 0.2]])
    valid = torch.ones(1, 5, dtype=torch.bool)
    forced = torch.tensor([[False, False, True, False, True]])
    # forced {2, 4} count toward t=3; the one slot left goes to the largest |Δ| (position 0)
    assert rows(prefilter_topk(delta, valid, 3, forced=forced)) == [[0, 2, 4]]


def test_more_forced_than_t_keeps_the_best_forced():
    delta = torch.tensor([[9.0, 0.1, 0.3, 0.2]])
    valid = torch.ones(1, 4, dtype=torch.bool)
    forced = torch.tensor([[False, True, True, True]])
    assert rows(prefilter_topk(delta, valid, 2, forced=forced)) == [[2, 3]]


def test_boost_adds_to_abs_delta():
    delta = torch.tensor([[1.0, -0.5, 0.8]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    boost = torch.tensor([[0.0, 0.6, 0.0]])                    # |−0.5| + 0.6 = 1.1 > 1.0
    assert rows(prefilter_topk(delta, valid, 1, boost=boost)) == [[1]]
    assert rows(prefilter_topk(delta, valid, 1)) == [[0]]


def test_min_delta_leaves_out_what_the_context_did_not_move():
    delta = torch.tensor([[0.05, -0.9, 0.2, 1.5],       # a corrected answer: two positions moved
                          [0.01, -0.02, 0.03, 0.0]])    # an unrelated next turn: nothing moved
    valid = torch.ones(2, 4, dtype=torch.bool)
    assert rows(prefilter_topk(delta, valid, 3, min_delta=0.5)) == [[1, 3], []]
    assert rows(prefilter_topk(delta, valid, 3)) == [[1, 2, 3], [0, 1, 2]]        # 0: today's top T
    forced = torch.tensor([[False, False, False, False], [False, True, False, False]])
    assert rows(prefilter_topk(delta, valid, 3, forced=forced, min_delta=0.5)) == [[1, 3], [1]]
    # a naive reference: the top T of the positions at or over the floor, forced ones first
    for row, frc in zip(delta, forced):
        keep = [i for i in range(4) if abs(row[i]) >= 0.5 or frc[i]]
        want = sorted(sorted(keep, key=lambda i: (not frc[i], -abs(row[i]), i))[:3])
        assert rows(prefilter_topk(row[None], valid[:1], 3, forced=frc[None], min_delta=0.5)) == [want]


def test_t_zero_and_t_larger_than_length():
    delta = torch.tensor([[1.0, 2.0]])
    valid = torch.ones(1, 2, dtype=torch.bool)
    assert rows(prefilter_topk(delta, valid, 0)) == [[]]
    assert rows(prefilter_topk(delta, valid, 10)) == [[0, 1]]


def test_all_positions_is_valid_and_a_copy():
    valid = torch.tensor([[1, 1, 0]])
    out = all_positions(valid)
    assert out.dtype == torch.bool and out.tolist() == [[True, True, False]]


def test_candidates_and_selection_mask():
    cand = torch.tensor([[True, False, True, True], [False, True, False, False]])
    assert candidates(cand[0]) == [0, 2, 3]
    out = selection_mask((2, 4), [[3, 0, 3], []], candidates_mask=cand)
    assert out.tolist() == [[True, False, False, True], [False, False, False, False]]
    assert selection_mask((1, 3), [[2]]).tolist() == [[False, False, True]]


@pytest.mark.parametrize("selected, message", [
    ([[1], []], "not a candidate"),
    ([[7], []], "out of range"),
    ([[-1], []], "out of range"),
    ([["2"], []], "not an int"),
    ([[True], []], "not an int"),
    ([[0]], "rows"),
])
def test_selection_mask_rejects_bad_indices(selected, message):
    cand = torch.tensor([[True, False, True, True], [False, True, False, False]])
    with pytest.raises(ValueError, match=message):
        selection_mask((2, 4), selected, candidates_mask=cand)
