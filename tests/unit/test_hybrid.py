"""Batch blend: hand-computed scores, tie-breaking, attribution, agreement with models.recommend."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from models.hybrid import (
    blend_top_k,
    category_affinity_scores,
    normalise_per_user,
    popularity_scores,
)
from models.recommend import blend

ALS = np.array([[4.0, 2.0, 1.0, -1.0], [0.0, 3.0, 3.0, 0.0]], dtype=np.float32)
POP = np.array([10.0, 5.0, 5.0, 0.0], dtype=np.float32)  # the same for every user
SEEN = sp.csr_matrix(np.array([[1, 0, 0, 0], [0, 0, 0, 0]], dtype=np.float32))


def test_blend_by_hand() -> None:
    got = blend_top_k({"als": ALS, "pop": POP}, {"als": 1.0, "pop": 0.5}, SEEN, k=3)
    # user 0: item 0 seen; als / 2 (best eligible) = 0 1 .5 0; pop / 5 * .5 = 0 .5 .5 0
    #   totals 1.5 (item 1), 1.0 (item 2); item 3 scores nothing -> empty slot
    # user 1: als / 3 = 0 1 1 0; pop / 10 * .5 = .5 .25 .25 0 -> 1.25, 1.25 (tie: 1 before 2), .5
    assert got.ids.tolist() == [[1, 2, -1], [1, 2, 0]]
    np.testing.assert_allclose(got.scores[0, :2], [1.5, 1.0])
    assert np.isneginf(got.scores[0, 2])
    np.testing.assert_allclose(got.scores[1], [1.25, 1.25, 0.5])
    # item 2 of user 0: als and pop both give .5 -> the first name wins, as in ``blend``
    assert got.source_names() == [["als", "als"], ["als", "als", "pop"]]
    assert got.sources[0, 2] == -1


def test_sources_without_positive_weight_are_ignored() -> None:
    got = blend_top_k({"als": ALS, "pop": POP}, {"als": 1.0, "pop": 0.0}, None, k=2)
    assert got.names == ("als",)
    assert got.ids.tolist() == [[0, 1], [1, 2]]
    with pytest.raises(ValueError, match="positive weight"):
        blend_top_k({"als": ALS}, {"als": 0.0}, None, k=2)


def test_shapes_are_checked() -> None:
    with pytest.raises(ValueError):
        blend_top_k({"als": ALS, "pop": POP[:3]}, {"als": 1.0, "pop": 1.0}, None, k=2)
    with pytest.raises(ValueError):
        blend_top_k({"als": ALS}, {"als": 1.0}, sp.csr_matrix((3, 4)), k=2)


def test_normalise_per_user_uses_the_best_eligible_score() -> None:
    got = normalise_per_user(ALS, SEEN, n_users=2)
    np.testing.assert_allclose(got, [[0.0, 1.0, 0.5, 0.0], [0.0, 1.0, 1.0, 0.0]])
    assert normalise_per_user(np.zeros(3), None, n_users=2).tolist() == [[0.0] * 3] * 2


def test_agrees_with_the_streaming_blend_when_nothing_is_excluded() -> None:
    rng = np.random.default_rng(11)
    n_users, n_items = 6, 9
    sources = {
        "als": rng.normal(size=(n_users, n_items)).astype(np.float32),
        "knn": np.round(rng.random((n_users, n_items)), 1).astype(np.float32),
        "popularity": rng.integers(0, 4, n_items).astype(np.float32),
    }
    weights = {"als": 1.0, "knn": 0.7, "popularity": 0.2}
    batch = blend_top_k(sources, weights, None, k=5)
    names = [f"{i:02d}" for i in range(n_items)]  # string order = index order, for tie-breaks
    for user in range(n_users):
        per_user = {
            name: dict(
                zip(names, np.broadcast_to(s, (n_users, n_items))[user].tolist(), strict=True)
            )
            for name, s in sources.items()
        }
        expected = blend(per_user, weights, set(), 5)
        got_ids = [names[i] for i in batch.ids[user] if i >= 0]
        assert got_ids == [r.item_id for r in expected]
        np.testing.assert_allclose(
            batch.scores[user, : len(expected)], [r.score for r in expected], atol=1e-5
        )
        assert batch.source_names()[user] == [r.source for r in expected]


def test_popularity_is_interaction_mass_per_item() -> None:
    x = sp.csr_matrix(np.array([[1, 0, 2], [1, 0, 0]], dtype=np.float32))
    assert popularity_scores(x).tolist() == [2.0, 0.0, 2.0]


def test_category_affinity_by_hand() -> None:
    x = sp.csr_matrix(
        np.array([[1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 0], [0, 1, 1, 0]], dtype=np.float32)
    )
    # item 0: c0; item 1: c0 and c1; item 2: c1; item 3: none. Popularity 1 2 2 0.
    categories = sp.csr_matrix(np.array([[1, 0], [1, 1], [0, 1], [0, 0]], dtype=np.float32))
    got = category_affinity_scores(x, categories)
    # shares: u0 (2/3, 1/3), u1 (0, 1), u2 none, u3 (1/3, 2/3)
    # popularity relative to the category's best: c0 -> item0 .5, item1 1; c1 -> items 1, 2: 1
    expected = np.array(
        [
            [1 / 3, 2 / 3, 1 / 3, 0.0],
            [0.0, 1.0, 1.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [1 / 6, 2 / 3, 2 / 3, 0.0],
        ]
    )
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    with pytest.raises(ValueError):
        category_affinity_scores(x, categories[:3])
