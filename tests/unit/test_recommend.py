"""Candidate sources and the blend, with hand-computed scores."""

from __future__ import annotations

import math

import pytest

from models.recommend import (
    Recommendation,
    blend,
    category_scores,
    itemknn_scores,
    log_scores_to_relative,
)

DAY = 86_400.0
LN2 = 0.6931471805599453


# -- itemknn_scores ---------------------------------------------------------------------------


def test_itemknn_sums_weighted_similarities_with_recency_decay() -> None:
    recent = [("A", 2.0, 10 * DAY), ("B", 1.0, 9 * DAY)]
    neighbours = {"A": [("X", 0.5), ("Y", 0.25)], "B": [("X", 0.4), ("A", 0.9)]}
    scores = itemknn_scores(recent, neighbours, DAY)
    # latest interaction: 10 days. vote(A) = 2 * 1 = 2;  vote(B) = 1 * 0.5 (1 day older) = 0.5
    # X = 2 * 0.5 + 0.5 * 0.4 = 1.2;  Y = 2 * 0.25 = 0.5;  A = 0.5 * 0.9 = 0.45
    assert dict(scores) == pytest.approx({"X": 1.2, "Y": 0.5, "A": 0.45}, rel=1e-12)


def test_itemknn_recency_is_relative_to_the_latest_recent_item() -> None:
    # The same history shifted by a year gives the same scores: only gaps matter.
    neighbours = {"A": [("X", 1.0)], "B": [("X", 1.0)]}
    early = itemknn_scores([("A", 1.0, 0.0), ("B", 1.0, 2 * DAY)], neighbours, DAY)
    late = itemknn_scores([("A", 1.0, 365 * DAY), ("B", 1.0, 367 * DAY)], neighbours, DAY)
    # X = 1 * 0.25 + 1 * 1 = 1.25
    assert early["X"] == pytest.approx(1.25, rel=1e-12)
    assert late["X"] == pytest.approx(1.25, rel=1e-12)


def test_itemknn_of_no_history_or_no_neighbours() -> None:
    assert dict(itemknn_scores([], {"A": [("X", 1.0)]}, DAY)) == {}
    assert dict(itemknn_scores([("A", 1.0, 0.0)], {}, DAY)) == {}


# -- log_scores_to_relative -------------------------------------------------------------------


def test_log_scores_to_relative_known_values() -> None:
    # scores one and two halvings below the best: 1, 0.5, 0.25
    rel = log_scores_to_relative([("a", 10.0), ("b", 10.0 - LN2), ("c", 10.0 - 2 * LN2)])
    assert rel == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.25}, rel=1e-12)


def test_log_scores_to_relative_with_huge_scores_does_not_overflow() -> None:
    big = 50_000.0  # exp(50000) overflows
    rel = log_scores_to_relative([("a", big - LN2), ("b", big)])
    assert rel == pytest.approx({"a": 0.5, "b": 1.0}, rel=1e-9)


def test_log_scores_to_relative_empty() -> None:
    assert log_scores_to_relative([]) == {}


# -- category_scores --------------------------------------------------------------------------


def test_category_scores_multiply_affinity_by_relative_popularity() -> None:
    affinities = [("shoes", 2.0), ("hats", 1.5), ("zero", 0.0), ("unknown", 3.0)]
    category_items = {
        "shoes": [("s1", 5.0), ("s2", 5.0 - LN2)],  # relative 1, 0.5
        "hats": [("h1", -3.0), ("s2", -3.0)],  # relative 1, 1
        "zero": [("z1", 100.0)],
    }
    scores = category_scores(affinities, category_items)
    # s1 = 2 * 1 = 2;  s2 = max(2 * 0.5, 1.5 * 1) = 1.5;  h1 = 1.5 * 1 = 1.5
    # zero affinity adds nothing; unknown category has no items
    assert dict(scores) == pytest.approx({"s1": 2.0, "s2": 1.5, "h1": 1.5}, rel=1e-12)


def test_category_scores_of_nothing() -> None:
    assert dict(category_scores([], {"shoes": [("s1", 1.0)]})) == {}


# -- blend ------------------------------------------------------------------------------------


def test_blend_normalises_each_source_by_its_best_and_weights_it() -> None:
    sources = {
        "itemknn": {"a": 4.0, "b": 2.0},  # / 4 -> a 1, b 0.5
        "popularity": {"b": 10.0, "c": 5.0},  # / 10 -> b 1, c 0.5
    }
    weights = {"itemknn": 1.0, "popularity": 0.8}
    ranked = blend(sources, weights, set(), 10)
    # a = 1 * 1 = 1.0;  b = 1 * 0.5 + 0.8 * 1 = 1.3;  c = 0.8 * 0.5 = 0.4
    assert [r.item_id for r in ranked] == ["b", "a", "c"]
    assert [r.score for r in ranked] == pytest.approx([1.3, 1.0, 0.4], abs=1e-6)
    # labels: the larger part. b: itemknn 0.5 < popularity 0.8
    assert [r.source for r in ranked] == ["popularity", "itemknn", "popularity"]
    assert all(isinstance(r, Recommendation) for r in ranked)


def test_blend_scale_of_a_source_does_not_matter() -> None:
    small = blend({"s": {"a": 0.002, "b": 0.001}}, {"s": 1.0}, set(), 5)
    large = blend({"s": {"a": 2000.0, "b": 1000.0}}, {"s": 1.0}, set(), 5)
    assert small == large == [Recommendation("a", 1.0, "s"), Recommendation("b", 0.5, "s")]


def test_blend_label_is_the_largest_contribution_even_if_weight_is_smaller() -> None:
    sources = {"alpha": {"x": 1.0, "top": 10.0}, "beta": {"x": 1.0}}
    # alpha part for x: 2 * 1/10 = 0.2;  beta part: 0.5 * 1/1 = 0.5 -> beta
    ranked = blend(sources, {"alpha": 2.0, "beta": 0.5}, set(), 5)
    by_item = {r.item_id: r for r in ranked}
    assert by_item["x"].source == "beta"
    assert by_item["x"].score == pytest.approx(0.7, abs=1e-6)
    assert by_item["top"].source == "alpha"
    assert by_item["top"].score == pytest.approx(2.0, abs=1e-6)


def test_blend_breaks_ties_by_item_id_and_limits_to_n() -> None:
    sources = {"s": {"b": 1.0, "c": 1.0, "a": 1.0, "d": 0.5}}
    ranked = blend(sources, {"s": 1.0}, set(), 3)
    assert [r.item_id for r in ranked] == ["a", "b", "c"]
    assert blend(sources, {"s": 1.0}, set(), 0) == []


def test_blend_excludes_items() -> None:
    sources = {"s": {"a": 2.0, "b": 1.0, "c": 0.5}}
    ranked = blend(sources, {"s": 1.0}, {"b", "not-a-candidate"}, 10)
    assert [r.item_id for r in ranked] == ["a", "c"]
    assert [r.score for r in ranked] == pytest.approx([1.0, 0.25], abs=1e-6)


def test_blend_normalises_by_the_best_candidate_that_can_be_recommended() -> None:
    sources = {"itemknn": {"seen": 10.0, "x": 5.0}, "popularity": {"y": 1.0}}
    ranked = blend(sources, {"itemknn": 1.0, "popularity": 1.0}, {"seen"}, 5)
    # after excluding "seen", itemknn's best candidate x should count 1.0, like popularity's y;
    # equal totals -> tie broken by id: x before y
    assert [(r.item_id, r.score) for r in ranked] == [("x", 1.0), ("y", 1.0)]


def test_blend_ignores_sources_without_or_with_zero_or_negative_weight() -> None:
    sources = {
        "used": {"a": 1.0},
        "zero": {"z": 100.0},
        "negative": {"n": 100.0},
        "unweighted": {"u": 100.0},
    }
    ranked = blend(sources, {"used": 1.0, "zero": 0.0, "negative": -1.0}, set(), 10)
    assert ranked == [Recommendation("a", 1.0, "used")]


def test_blend_ignores_empty_and_non_positive_sources_and_scores() -> None:
    assert blend({}, {"s": 1.0}, set(), 10) == []
    assert blend({"s": {}}, {"s": 1.0}, set(), 10) == []
    assert blend({"s": {"a": 0.0, "b": -1.0}}, {"s": 1.0}, set(), 10) == []
    # zero and negative scores are dropped next to a positive one
    ranked = blend({"s": {"a": 2.0, "b": 0.0, "c": -1.0}}, {"s": 1.0}, set(), 10)
    assert ranked == [Recommendation("a", 1.0, "s")]


def test_blend_rounds_scores_to_six_digits() -> None:
    # 1/3 of the best -> 0.333333
    ranked = blend({"s": {"a": 3.0, "b": 1.0}}, {"s": 1.0}, set(), 10)
    assert ranked[1].score == 0.333333
    assert math.isclose(ranked[0].score, 1.0)
