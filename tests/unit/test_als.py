"""ALS wrapper: fold-in = implicit's solve = the textbook solve, NaN guard, batch top-k."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.nearest_neighbours import bm25_weight
from threadpoolctl import threadpool_limits

from models.als import (
    AlsModel,
    TrainingError,
    bm25_confidence,
    check_factors,
    fold_in_user,
    log_confidence,
    recommend_batch,
    top_k_rows,
    train_als,
)
from shoppulse.errors import ShopPulseError

N_ITEMS, FACTORS = 12, 4


@pytest.fixture
def item_factors() -> np.ndarray:
    return np.random.default_rng(3).normal(size=(N_ITEMS, FACTORS)).astype(np.float32)


def _dense_solve(
    y: np.ndarray, ids: list[int], values: list[float], reg: float, alpha: float
) -> np.ndarray:
    """Hu et al.'s normal equations with the full confidence matrix written out."""
    confidence = np.ones(len(y))
    preference = np.zeros(len(y))
    confidence[ids] = alpha * np.asarray(values)
    preference[ids] = 1.0
    y64 = y.astype(np.float64)
    lhs = y64.T @ (confidence[:, None] * y64) + reg * np.eye(y.shape[1])
    return np.linalg.solve(lhs, y64.T @ (confidence * preference))


def test_fold_in_equals_the_full_solve(item_factors: np.ndarray) -> None:
    ids, values = [1, 4, 7, 10], [3.0, 1.0, 2.0, 5.0]
    got = fold_in_user(item_factors, ids, values, regularization=0.5, alpha=2.0)
    expected = _dense_solve(item_factors, ids, values, reg=0.5, alpha=2.0)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("values", [[3.0, 1.0, 2.0], [3.0, -2.0, 2.0]])
def test_fold_in_equals_implicit_recalculate_user(
    item_factors: np.ndarray, values: list[float]
) -> None:
    ids = [0, 5, 9]
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=FACTORS, regularization=0.3, alpha=4.0)
    model.item_factors = item_factors
    row = sp.csr_matrix((values, ([0, 0, 0], ids)), shape=(1, N_ITEMS), dtype=np.float32)
    expected = model.recalculate_user(0, row)
    got = fold_in_user(item_factors, ids, values, regularization=0.3, alpha=4.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_fold_in_adds_up_repeated_items(item_factors: np.ndarray) -> None:
    twice = fold_in_user(item_factors, [2, 2, 6], [1.0, 2.0, 1.0], regularization=0.1)
    once = fold_in_user(item_factors, [2, 6], [3.0, 1.0], regularization=0.1)
    np.testing.assert_allclose(twice, once, rtol=1e-6)


def test_fold_in_with_a_given_gram_is_the_same_solve(item_factors: np.ndarray) -> None:
    ids, values = [1, 5, 9], [2.0, 1.0, 0.5]
    plain = fold_in_user(item_factors, ids, values, regularization=0.3, alpha=4.0)
    y = item_factors.astype(np.float64)
    given = fold_in_user(item_factors, ids, values, regularization=0.3, alpha=4.0, gram=y.T @ y)
    np.testing.assert_array_equal(given, plain)
    # A wrong gram does change the answer: it is really used, not recomputed.
    off = fold_in_user(item_factors, ids, values, 0.3, alpha=4.0, gram=2.0 * (y.T @ y))
    assert not np.allclose(off, plain)


def test_fold_in_against_user_factors_is_implicits_item_step() -> None:
    # Users and items swapped: the vector of a new item from the users who took it.
    user_factors = np.random.default_rng(8).normal(size=(15, FACTORS)).astype(np.float32)
    users, values = [0, 4, 11], [1.0, 3.0, 2.0]
    with threadpool_limits(1, "blas"):
        model = AlternatingLeastSquares(factors=FACTORS, regularization=0.3, alpha=4.0)
    model.user_factors = user_factors
    column = sp.csr_matrix((values, ([0, 0, 0], users)), shape=(1, 15), dtype=np.float32)
    expected = model.recalculate_item(0, column)
    x = user_factors.astype(np.float64)
    got = fold_in_user(user_factors, users, values, 0.3, alpha=4.0, gram=x.T @ x)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_fold_in_of_a_trained_user_is_close_to_its_trained_vector() -> None:
    rng = np.random.default_rng(1)
    x = sp.csr_matrix((rng.random((30, 20)) < 0.3).astype(np.float32))
    with threadpool_limits(1, "blas"):
        model = train_als(x, factors=3, regularization=0.1, iterations=30, alpha=2.0, seed=0)
    row = x[4]
    folded = fold_in_user(model.item_factors, row.indices, row.data, 0.1, alpha=2.0)
    # ALS ends on an item step, so the user step is one half-iteration behind: close, not equal.
    np.testing.assert_allclose(folded, model.user_factors[4], atol=0.05)


def test_training_returns_float32_factors_reproducibly() -> None:
    x = sp.csr_matrix(np.eye(6, dtype=np.float32) + np.eye(6, k=1, dtype=np.float32))
    with threadpool_limits(1, "blas"):
        first = train_als(x, factors=2, regularization=0.1, iterations=5, seed=7)
        second = train_als(x, factors=2, regularization=0.1, iterations=5, seed=7)
    assert first.user_factors.shape == (6, 2) and first.item_factors.shape == (6, 2)
    assert first.user_factors.dtype == first.item_factors.dtype == np.float32
    np.testing.assert_array_equal(first.user_factors, second.user_factors)


def test_nan_training_raises_training_error() -> None:
    x = sp.csr_matrix(np.eye(5, dtype=np.float32))
    x.data[2] = np.nan
    with threadpool_limits(1, "blas"), pytest.raises(TrainingError):
        train_als(x, factors=2, iterations=2)
    assert issubclass(TrainingError, ShopPulseError)


def test_infinite_factors_are_refused() -> None:
    good = np.ones((2, 2), dtype=np.float32)
    bad = good.copy()
    bad[1, 0] = np.inf
    check_factors(AlsModel(good, good))
    with pytest.raises(TrainingError, match="item"):
        check_factors(AlsModel(good, bad))


def test_two_communities_get_their_own_items() -> None:
    # users 0-4 like items 0-4, users 5-9 like items 5-9; user 0 lacks item 3
    dense = np.zeros((10, 10), dtype=np.float32)
    dense[:5, :5] = 1.0
    dense[5:, 5:] = 1.0
    dense[0, 3] = 0.0
    x = sp.csr_matrix(dense)
    with threadpool_limits(1, "blas"):
        model = train_als(x, factors=2, regularization=0.01, iterations=20, seed=0)
    ids, _ = recommend_batch(model.user_factors, model.item_factors, x, k=1)
    assert ids[0, 0] == 3


def test_recommend_batch_excludes_seen_breaks_ties_by_index_and_pads() -> None:
    users = np.array([[1.0], [1.0]], dtype=np.float32)
    items = np.array([[0.5], [2.0], [2.0], [1.0]], dtype=np.float32)  # scores .5 2 2 1
    seen = sp.csr_matrix(np.array([[0, 0, 0, 0], [1, 1, 1, 0]], dtype=np.float32))
    ids, scores = recommend_batch(users, items, seen, k=3)
    assert ids.tolist() == [[1, 2, 3], [3, -1, -1]]
    assert scores[0].tolist() == [2.0, 2.0, 1.0]
    assert scores[1, 0] == 1.0 and np.isneginf(scores[1, 1:]).all()


def test_top_k_rows_keeps_every_tied_column_in_the_running() -> None:
    scores = np.array([[1.0, 3.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0]], dtype=np.float32)
    ids, top = top_k_rows(scores, 2)
    assert ids.tolist() == [[1, 2], [0, 1]]
    assert top.tolist() == [[3.0, 3.0], [0.0, 0.0]]
    wide, _ = top_k_rows(scores[:1], 7)
    assert wide.tolist() == [[1, 2, 4, 3, 0, -1, -1]]


def test_bm25_matches_implicit() -> None:
    rng = np.random.default_rng(2)
    x = sp.csr_matrix((rng.random((15, 9)) < 0.4) * rng.integers(1, 5, (15, 9)), dtype=np.float32)
    expected = sp.csr_matrix(bm25_weight(x, K1=50.0, B=0.6)).toarray()
    np.testing.assert_allclose(bm25_confidence(x, k1=50.0, b=0.6).toarray(), expected, rtol=1e-5)


def test_log_confidence() -> None:
    x = sp.csr_matrix(np.array([[0.0, 1.0, 3.0]], dtype=np.float32))
    got = log_confidence(x, scale=1.0).toarray()
    np.testing.assert_allclose(got, [[0.0, 1 + np.log(2.0), 1 + np.log(4.0)]], rtol=1e-6)
