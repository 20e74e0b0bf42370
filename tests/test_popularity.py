"""analysis.popularity: the one home of popularity groups, terciles, head and tail."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from analysis import fairness, popularity, variance
from analysis.popularity import (TERCILE_LABELS, as_counts, head_items, long_tail_mask, popularity_groups,
                                 popularity_terciles)

counts_strategy = st.lists(st.integers(0, 30), min_size=1, max_size=60).map(np.array)


def test_old_homes_re_export_the_same_functions():
    assert fairness.popularity_groups is popularity.popularity_groups
    assert fairness.long_tail_mask is popularity.long_tail_mask
    assert fairness.GROUP_MODES is popularity.GROUP_MODES
    assert variance.head_items is popularity.head_items


def test_every_notion_is_documented_in_the_module_docstring():
    doc = popularity.__doc__
    for name in ("popularity_groups", "popularity_terciles", "long_tail_mask", "head_items",
                 '"interactions"', '"items"', "fig. 7", "APLT", "PROTOCOLS.md §5", "§6"):
        assert name in doc, name


def test_terciles_hand():
    counts = np.array([5, 1, 1, 3, 0, 10])
    # ascending, ties by id: 4(0) 1(1) 2(1) 3(3) 0(5) 5(10) → two items per tercile
    assert popularity_terciles(counts).tolist() == ["head", "tail", "mid", "mid", "tail", "head"]


@settings(max_examples=60, deadline=None)
@given(counts_strategy)
def test_terciles_are_the_items_mode_groups(counts):
    labels = popularity_terciles(counts)
    groups = popularity_groups(counts, n_groups=3, mode="items").numpy()
    assert labels.tolist() == [TERCILE_LABELS[g] for g in groups]
    sizes = [int((labels == name).sum()) for name in TERCILE_LABELS]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(counts)
    rank = {name: k for k, name in enumerate(TERCILE_LABELS)}
    order = np.lexsort((np.arange(len(counts)), counts))  # ascending count, ties by id
    assert all(rank[labels[a]] <= rank[labels[b]] for a, b in zip(order, order[1:]))


@settings(max_examples=60, deadline=None)
@given(counts_strategy, st.floats(0.05, 0.95))
def test_long_tail_head_is_the_top_of_the_group_order(counts, share):
    tail = long_tail_mask(counts, share).numpy()
    order = np.lexsort((np.arange(len(counts)), counts))  # the order of popularity_groups
    head_in_order = ~tail[order]
    n_head = int(head_in_order.sum())
    assert head_in_order[len(counts) - n_head:].all()  # the head is a suffix: the most popular items
    assert (counts[~tail] > 0).all()
    if counts.sum() > 0:
        top = counts[order][len(counts) - n_head:]
        assert top.sum() >= share * counts.sum() - 1e-9  # it covers the share …
        assert n_head == 0 or top[1:].sum() < share * counts.sum()  # … and is the shortest such prefix


@settings(max_examples=60, deadline=None)
@given(counts_strategy, st.floats(0.05, 0.95))
def test_head_items_are_the_top_fraction_by_count(counts, fraction):
    head = head_items(counts, fraction).numpy()
    n = len(counts)
    expected = min(max(1, int(np.ceil(fraction * n - 1e-9))), n - 1) if n > 1 else n
    assert head.sum() == expected
    if head.any() and (~head).any():
        assert counts[head].min() >= counts[~head].max()


def test_head_notions_differ_as_documented():
    # one dominant item: it alone covers 80 % of the interactions, while the 20 % head takes two items
    counts = np.array([1, 1, 1, 1, 1, 1, 1, 1, 1, 40])
    assert (~long_tail_mask(counts)).sum() == 1
    assert head_items(counts, 0.2).sum() == 2
    # ten interaction groups: the dominant item starts at 9/49 of the mass, so it shares group 1; groups 2–9 are empty
    assert popularity_groups(counts, 10).tolist() == [0] * 5 + [1] * 5
    assert popularity_terciles(counts)[9] == "head"


def test_as_counts_validates():
    assert as_counts(np.array([2.0, 0.0])).dtype == torch.int64
    for bad, match in ((np.array([1.5]), "integer"), (np.array([-1]), "non-negative"),
                       (np.ones((2, 2)), "1-D")):
        with pytest.raises(ValueError, match=match):
            as_counts(bad)
