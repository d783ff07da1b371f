"""Offline item-item models: hand-computed k-NN, agreement with the streaming formula, EASE."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp

from models.itemknn import (
    cosine_item_similarity,
    ease_item_weights,
    ease_scores,
    itemknn_scores,
)
from models.similarity import cosine_similarities

# C = XᵀX: C01 = C02 = 2, C12 = 1; N = (3, 2, 2)
X = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 1], [1, 1, 1]], dtype=np.float32))
SIM_01 = 2 / math.sqrt(3 * 2) * 2 / (2 + 1)  # shrinkage 1
SIM_12 = 1 / math.sqrt(2 * 2) * 1 / (1 + 1)


def test_shrunk_cosine_by_hand() -> None:
    got = cosine_item_similarity(X, shrinkage=1.0, neighbours=5).toarray()
    expected = np.array([[0, SIM_01, SIM_01], [SIM_01, 0, SIM_12], [SIM_01, SIM_12, 0]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_keeps_top_neighbours_per_item_with_ties_to_the_lower_index() -> None:
    got = cosine_item_similarity(X, shrinkage=1.0, neighbours=1).toarray()
    # item 0: items 1 and 2 tie -> 1; items 1 and 2: item 0 beats each other
    expected = np.array([[0, SIM_01, 0], [SIM_01, 0, 0], [SIM_01, 0, 0]])
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_history_and_candidate_neighbourhoods() -> None:
    similarity = cosine_item_similarity(X, shrinkage=1.0, neighbours=1)
    user0 = X[0]  # has items 0 and 1
    history = itemknn_scores(user0, similarity, "history")
    candidate = itemknn_scores(user0, similarity, "candidate")
    # history: item 0 votes for 1, item 1 votes for 0; nobody keeps item 2
    np.testing.assert_allclose(history, [[SIM_01, SIM_01, 0.0]], rtol=1e-6)
    # candidate: item 2's own neighbour (item 0) is in the user's history
    np.testing.assert_allclose(candidate, [[SIM_01, SIM_01, SIM_01]], rtol=1e-6)
    with pytest.raises(ValueError):
        itemknn_scores(user0, similarity, "both")  # type: ignore[arg-type]


def test_agrees_with_the_streaming_per_item_formula() -> None:
    rng = np.random.default_rng(4)
    weights = (rng.random((25, 10)) < 0.35) * rng.uniform(0.5, 3.0, (25, 10))
    x = sp.csr_matrix(weights.astype(np.float32))
    batch = cosine_item_similarity(x, shrinkage=2.5, neighbours=10).toarray()
    co = weights.T @ weights
    norms = {str(j): co[j, j] for j in range(10)}
    for i in range(10):
        pairs = {str(j): co[i, j] for j in range(10) if j != i and co[i, j] > 0}
        streaming = cosine_similarities(pairs, co[i, i], norms, 2.5)
        for j in range(10):
            assert batch[i, j] == pytest.approx(streaming.get(str(j), 0.0), rel=1e-5)


def test_empty_columns_have_no_neighbours() -> None:
    x = sp.csr_matrix(np.array([[1, 0, 1], [1, 0, 0]], dtype=np.float32))
    got = cosine_item_similarity(x, shrinkage=0.0, neighbours=3).toarray()
    assert not got[1].any() and not got[:, 1].any()
    with pytest.raises(ValueError):
        cosine_item_similarity(x, neighbours=0)


def test_ease_is_per_column_ridge_regression_without_the_item_itself() -> None:
    rng = np.random.default_rng(5)
    dense = (rng.random((30, 6)) < 0.4).astype(np.float64)
    l2 = 3.0
    weights = ease_item_weights(sp.csr_matrix(dense), l2=l2)
    assert weights.dtype == np.float32
    assert not np.diag(weights).any()
    for j in range(6):
        others = [i for i in range(6) if i != j]
        a = dense[:, others]
        ridge = np.linalg.solve(a.T @ a + l2 * np.eye(5), a.T @ dense[:, j])
        np.testing.assert_allclose(weights[others, j], ridge, rtol=1e-4, atol=1e-6)
    scores = ease_scores(sp.csr_matrix(dense[:2]), weights)
    np.testing.assert_allclose(scores, dense[:2] @ weights, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError):
        ease_item_weights(sp.csr_matrix(dense), l2=0.0)
