"""Published models as data (bytes and JSON, never a pickle) and the scorer a stream worker
keeps: fold-in against implicit and the textbook solve, decay, top-n."""

from __future__ import annotations

import json
import pickle
from typing import Any

import numpy as np
import orjson
import pytest
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from threadpoolctl import threadpool_limits

from models.als import TrainingError, fold_in_user
from models.serving import (
    FORMAT,
    AlsScorer,
    PublishedModel,
    decode_model,
    encode_model,
    fold_in_fully,
    trained_through,
)
from models.training import build_matrix, hold_out_latest

N_ITEMS, N_USERS, FACTORS = 7, 3, 4
ITEM_IDS = [f"i{n}" for n in range(N_ITEMS - 1)] + ["größe/ü 42"]  # non-ASCII id too
USER_IDS = ["u0", "u1", "u2"]


def _item_factors() -> np.ndarray:
    y = np.random.default_rng(11).normal(size=(N_ITEMS, FACTORS)).astype(np.float32)
    # Values whose bits a lossy round trip (text, float64 JSON, ...) would change.
    y[0, 0] = -0.0
    y[0, 1] = np.float32(1e-42)  # subnormal
    y[0, 2] = np.finfo(np.float32).max
    y[0, 3] = np.nextafter(np.float32(1.0), np.float32(2.0))
    return y


@pytest.fixture
def model() -> PublishedModel:
    users = np.random.default_rng(12).normal(size=(N_USERS, FACTORS)).astype(np.float32)
    params = {
        "factors": FACTORS,
        "regularization": 0.3,
        "alpha": 2.5,
        "half_life": None,
        "clock": 1_700_000_000.125,
        "holdout_hit_rate": 0.1 + 0.2,  # 0.30000000000000004 must survive exactly
    }
    return PublishedModel(
        "als-test-1", list(ITEM_IDS), _item_factors(), list(USER_IDS), users, params
    )


def _bits(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array, dtype="<f4").view("<u4")


# -- encode / decode --------------------------------------------------------------------------


def test_round_trip_is_exact(model: PublishedModel) -> None:
    fields = encode_model(model)
    for decoded in (decode_model(fields), decode_model({k.encode(): v for k, v in fields.items()})):
        assert decoded.version == "als-test-1"
        assert decoded.item_ids == ITEM_IDS
        assert decoded.user_ids == USER_IDS
        assert decoded.params == model.params
        assert decoded.item_factors.dtype == decoded.user_factors.dtype == np.float32
        assert decoded.item_factors.shape == (N_ITEMS, FACTORS)
        assert decoded.user_factors.shape == (N_USERS, FACTORS)
        np.testing.assert_array_equal(_bits(decoded.item_factors), _bits(model.item_factors))
        np.testing.assert_array_equal(_bits(decoded.user_factors), _bits(model.user_factors))
        # A writable copy, not a view on the (read-only) bytes.
        assert decoded.item_factors.flags.writeable


def test_encoded_fields_are_plain_bytes_json_and_raw_floats(model: PublishedModel) -> None:
    fields = encode_model(model)
    assert set(fields) == {"header", "item_ids", "user_ids", "item_factors", "user_factors"}
    assert all(type(value) is bytes for value in fields.values())
    header = json.loads(fields["header"])
    assert header["format"] == FORMAT
    assert header["version"] == "als-test-1"
    assert (header["factors"], header["items"], header["users"]) == (FACTORS, N_ITEMS, N_USERS)
    assert header["params"] == model.params
    assert json.loads(fields["item_ids"]) == ITEM_IDS
    assert json.loads(fields["user_ids"]) == USER_IDS
    # Raw little-endian float32, nothing else: 7 x 4 x 4 = 112 bytes, 3 x 4 x 4 = 48 bytes.
    assert fields["item_factors"] == model.item_factors.astype("<f4").tobytes()
    assert len(fields["item_factors"]) == 112
    assert fields["user_factors"] == model.user_factors.astype("<f4").tobytes()
    assert len(fields["user_factors"]) == 48
    # No pickle stream anywhere (a pickle of protocol >= 2 starts with PROTO, b"\x80").
    for name in ("header", "item_ids", "user_ids"):
        assert not fields[name].startswith(b"\x80")


def test_encode_writes_little_endian_float32_whatever_the_input_layout(
    model: PublishedModel,
) -> None:
    big_endian = model.item_factors.astype(">f4")
    as_float64 = model.item_factors.astype(np.float64)
    fortran = np.asfortranarray(model.item_factors)
    expected = model.item_factors.astype("<f4").tobytes()
    for factors in (big_endian, as_float64, fortran):
        fields = encode_model(
            PublishedModel("v", ITEM_IDS, factors, [], np.zeros((0, FACTORS), np.float32))
        )
        assert fields["item_factors"] == expected


def test_decode_needs_no_pickle(model: PublishedModel, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fields written by hand from json and ndarray.tobytes() decode, with unpickling broken."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("decode_model must not unpickle")

    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(np, "load", refuse)
    fields = {
        b"header": json.dumps(
            {
                "format": FORMAT,
                "version": "by-hand",
                "factors": FACTORS,
                "items": N_ITEMS,
                "users": N_USERS,
                "params": {"alpha": 2.0},
            }
        ).encode(),
        b"item_ids": json.dumps(ITEM_IDS).encode(),
        b"user_ids": json.dumps(USER_IDS).encode(),
        b"item_factors": model.item_factors.astype("<f4").tobytes(),
        b"user_factors": model.user_factors.astype("<f4").tobytes(),
    }
    decoded = decode_model(fields)
    assert decoded.version == "by-hand"
    assert decoded.item_ids == ITEM_IDS and decoded.user_ids == USER_IDS
    assert decoded.params == {"alpha": 2.0}
    np.testing.assert_array_equal(_bits(decoded.item_factors), _bits(model.item_factors))
    np.testing.assert_array_equal(_bits(decoded.user_factors), _bits(model.user_factors))


def test_decode_without_users_skips_user_data(model: PublishedModel) -> None:
    fields = encode_model(model)
    # What ModelStore.load(with_users=False) passes: no user fields at all.
    items_only = {k: fields[k] for k in ("header", "item_ids", "item_factors")}
    decoded = decode_model(items_only, with_users=False)
    assert decoded.user_ids == []
    assert decoded.user_factors.shape == (0, FACTORS)
    np.testing.assert_array_equal(_bits(decoded.item_factors), _bits(model.item_factors))
    # User data is not even looked at: corrupt user fields do not matter.
    broken = dict(fields, user_ids=b"not json", user_factors=b"\x00\x00\xc0\x7f")  # 1 NaN
    assert decode_model(broken, with_users=False).user_ids == []
    with pytest.raises(TrainingError):
        decode_model(broken, with_users=True)


def _with_header(fields: dict[str, bytes], **changes: Any) -> dict[str, bytes]:
    header = orjson.loads(fields["header"])
    header.update(changes)
    return dict(fields, header=orjson.dumps(header))


@pytest.mark.parametrize("fmt", ["shoppulse-als-0", "shoppulse-als-2", "", None, "pickle"])
def test_decode_rejects_an_unknown_format(model: PublishedModel, fmt: str | None) -> None:
    fields = _with_header(encode_model(model), format=fmt)
    with pytest.raises(TrainingError, match="format"):
        decode_model(fields)


def test_decode_rejects_factor_bytes_that_do_not_match_ids_times_factors(
    model: PublishedModel,
) -> None:
    fields = encode_model(model)
    items, users = fields["item_factors"], fields["user_factors"]
    bad_fields = [
        dict(fields, item_factors=items[:-4]),  # one float short
        dict(fields, item_factors=items + b"\x00\x00\x00\x00"),  # one float too many
        dict(fields, item_factors=items[:-1]),  # not even whole floats
        dict(fields, item_factors=b""),
        dict(fields, user_factors=users[:-4]),
        dict(fields, item_ids=orjson.dumps([*ITEM_IDS, "extra"])),  # 8 ids, 7 rows
        dict(fields, user_ids=orjson.dumps(USER_IDS[:2])),  # 2 ids, 3 rows
        _with_header(fields, factors=FACTORS - 1),  # 7 x 3 x 4 = 84 != 112 bytes
        _with_header(fields, factors=FACTORS + 1),
    ]
    for bad in bad_fields:
        with pytest.raises(TrainingError):
            decode_model(bad)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("which", ["item_factors", "user_factors"])
def test_decode_rejects_non_finite_factors(model: PublishedModel, value: float, which: str) -> None:
    item_factors = model.item_factors.copy()
    user_factors = model.user_factors.copy()
    (item_factors if which == "item_factors" else user_factors)[1, 2] = value
    fields = dict(
        encode_model(model),
        item_factors=item_factors.astype("<f4").tobytes(),
        user_factors=user_factors.astype("<f4").tobytes(),
    )
    with pytest.raises(TrainingError, match="finite"):
        decode_model(fields)


@pytest.mark.parametrize(
    "missing", ["header", "item_ids", "user_ids", "item_factors", "user_factors"]
)
def test_decode_rejects_missing_fields(model: PublishedModel, missing: str) -> None:
    fields = encode_model(model)
    del fields[missing]
    with pytest.raises(TrainingError):
        decode_model(fields)


def test_decode_rejects_fields_that_are_not_json(model: PublishedModel) -> None:
    fields = encode_model(model)
    for name in ("header", "item_ids", "user_ids"):
        with pytest.raises(TrainingError):
            decode_model(dict(fields, **{name: b"\x80\x04K\x01."}))  # a pickle of 1


@pytest.mark.parametrize(
    "header_change",
    [
        pytest.param({"drop": "format"}, id="no-format"),
        pytest.param({"drop": "factors"}, id="no-factors"),
        pytest.param({"drop": "version"}, id="no-version"),
        pytest.param({"drop": "params"}, id="no-params"),
        pytest.param({"raw": b"[]"}, id="header-is-a-list"),
        pytest.param({"raw": b"null"}, id="header-is-null"),
    ],
)
def test_decode_rejects_incomplete_headers(
    model: PublishedModel, header_change: dict[str, Any]
) -> None:
    fields = encode_model(model)
    if "drop" in header_change:
        header = orjson.loads(fields["header"])
        del header[header_change["drop"]]
        fields["header"] = orjson.dumps(header)
    else:
        fields["header"] = header_change["raw"]
    with pytest.raises(TrainingError):
        decode_model(fields)


# -- AlsScorer.user_vector --------------------------------------------------------------------

SCORER_ITEMS = [f"item{n}" for n in range(8)]
REG, ALPHA = 0.3, 2.0


def _random_y(seed: int = 5, items: int = 8, factors: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(items, factors)).astype(np.float32)


def _scorer(
    y: np.ndarray,
    regularization: float = REG,
    alpha: float = ALPHA,
    half_life: float | None = None,
    item_ids: list[str] | None = None,
) -> AlsScorer:
    ids = item_ids if item_ids is not None else [f"item{n}" for n in range(len(y))]
    params = {"regularization": regularization, "alpha": alpha, "half_life": half_life}
    return AlsScorer(PublishedModel("v", ids, y, [], np.zeros((0, y.shape[1]), np.float32), params))


def _dense_solve(
    y: np.ndarray, observed: dict[int, float], regularization: float, alpha: float
) -> np.ndarray:
    """x = (YᵀCY + λI)⁻¹ YᵀCp, C = diag(c_i) over every item: 1 when unobserved,
    alpha * value when observed; p_i = 1 when observed, else 0."""
    y64 = y.astype(np.float64)
    c = np.ones(len(y))
    p = np.zeros(len(y))
    for row, value in observed.items():
        c[row] = alpha * value
        p[row] = 1.0
    big_c = np.diag(c)
    lhs = y64.T @ big_c @ y64 + regularization * np.eye(y.shape[1])
    return np.linalg.solve(lhs, y64.T @ big_c @ p)


def test_user_vector_agrees_with_fold_in_and_the_dense_solve() -> None:
    y = _random_y()
    scorer = _scorer(y)
    interactions = [("item1", 3.0, 0.0), ("item4", 1.0, 0.0), ("item6", 2.5, 0.0)]
    got = scorer.user_vector(interactions, clock=0.0)
    assert got is not None and got.shape == (3,)
    fold = fold_in_user(y, [1, 4, 6], [3.0, 1.0, 2.5], regularization=REG, alpha=ALPHA)
    dense = _dense_solve(y, {1: 3.0, 4: 1.0, 6: 2.5}, REG, ALPHA)
    np.testing.assert_allclose(got, fold, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got, dense, rtol=1e-4, atol=1e-6)


def test_user_vector_agrees_with_the_dense_solve_on_random_cases() -> None:
    rng = np.random.default_rng(2024)
    for _ in range(20):
        n_items, factors = int(rng.integers(3, 15)), int(rng.integers(1, 6))
        y = rng.normal(size=(n_items, factors)).astype(np.float32)
        reg, alpha = float(rng.uniform(0.01, 2.0)), float(rng.uniform(0.5, 10.0))
        rows = rng.choice(n_items, size=int(rng.integers(1, n_items + 1)), replace=False)
        values = rng.uniform(0.1, 5.0, size=len(rows))
        scorer = _scorer(y, regularization=reg, alpha=alpha)
        got = scorer.user_vector(
            [(f"item{r}", v, 0.0) for r, v in zip(rows, values, strict=True)], 0.0
        )
        expected = _dense_solve(
            y, dict(zip(rows.tolist(), values.tolist(), strict=True)), reg, alpha
        )
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_user_vector_agrees_with_implicit_recalculate_user_on_a_trained_model() -> None:
    # 6 users x 8 items, two overlapping groups of tastes.
    dense = np.array(
        [
            [1, 2, 0, 1, 0, 0, 0, 0],
            [0, 1, 3, 1, 0, 0, 0, 0],
            [2, 0, 1, 0, 0, 0, 1, 0],
            [0, 0, 0, 1, 2, 1, 0, 1],
            [0, 0, 0, 0, 1, 3, 1, 1],
            [0, 1, 0, 0, 0, 1, 2, 0],
        ],
        dtype=np.float32,
    )
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(
            factors=3, regularization=REG, alpha=ALPHA, iterations=5, random_state=0, num_threads=1
        )
        als.fit(sp.csr_matrix(dense), show_progress=False)
        row = sp.csr_matrix(
            ([3.0, 1.0, 2.0], ([0, 0, 0], [0, 5, 7])), shape=(1, 8), dtype=np.float32
        )
        expected = als.recalculate_user(0, row)
    y = np.asarray(als.item_factors, dtype=np.float32)
    scorer = _scorer(y)
    got = scorer.user_vector([("item0", 3.0, 0.0), ("item5", 1.0, 0.0), ("item7", 2.0, 0.0)], 0.0)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_user_vector_ignores_unknown_and_non_positive_items() -> None:
    scorer = _scorer(_random_y())
    known = [("item2", 2.0, 0.0), ("item5", 1.5, 0.0)]
    base = scorer.user_vector(known, 0.0)
    noisy = [("nope", 9.0, 0.0), *known, ("item3", 0.0, 0.0), ("item7", -4.0, 0.0), ("x", 1, 0)]
    got = scorer.user_vector(noisy, 0.0)
    assert base is not None and got is not None
    np.testing.assert_array_equal(got, base)


@pytest.mark.parametrize(
    "interactions",
    [
        [],
        [("unknown", 1.0, 0.0)],
        [("unknown", 1.0, 0.0), ("other", 5.0, 0.0)],
        [("item1", 0.0, 0.0), ("item2", -1.0, 0.0)],  # known, but nothing positive
    ],
)
def test_user_vector_is_none_without_a_known_item(
    interactions: list[tuple[str, float, float]],
) -> None:
    assert _scorer(_random_y()).user_vector(interactions, 0.0) is None


def test_half_life_in_params_decays_older_interactions() -> None:
    y = _random_y()
    decayed = _scorer(y, half_life=10.0)
    plain = _scorer(y, half_life=None)
    raw = [("item1", 3.0, 90.0), ("item4", 1.0, 100.0), ("item6", 2.5, 80.0)]
    # At clock 100 with a 10 s half-life: 3 * 1/2 = 1.5, 1 * 1 = 1, 2.5 * 1/4 = 0.625.
    by_hand = [("item1", 1.5, 100.0), ("item4", 1.0, 100.0), ("item6", 0.625, 100.0)]
    got = decayed.user_vector(raw, clock=100.0)
    np.testing.assert_allclose(got, plain.user_vector(by_hand, clock=100.0), rtol=1e-12)
    np.testing.assert_allclose(
        got,
        fold_in_user(y, [1, 4, 6], [1.5, 1.0, 0.625], regularization=REG, alpha=ALPHA),
        rtol=1e-4,
        atol=1e-6,
    )
    # Without a half-life the raw weights count in full: a different vector.
    assert not np.allclose(plain.user_vector(raw, clock=100.0), got, rtol=1e-3)


def test_scorer_defaults_when_params_are_missing() -> None:
    y = _random_y()
    scorer = AlsScorer(PublishedModel("v", SCORER_ITEMS, y, [], np.zeros((0, 3), np.float32)))
    assert (scorer.regularization, scorer.alpha, scorer.half_life) == (0.01, 1.0, None)
    got = scorer.user_vector([("item3", 2.0, 0.0)], 1e9)  # no decay however old
    np.testing.assert_allclose(got, _dense_solve(y, {3: 2.0}, 0.01, 1.0), rtol=1e-4, atol=1e-6)


def test_user_vector_sums_a_repeated_item_like_training_does() -> None:
    scorer = _scorer(_random_y())
    twice = scorer.user_vector([("item2", 1.0, 0.0), ("item2", 2.0, 0.0)], 0.0)
    once = scorer.user_vector([("item2", 3.0, 0.0)], 0.0)
    np.testing.assert_allclose(twice, once, rtol=1e-6)


# -- top_items / top_items_batch --------------------------------------------------------------


def _true_top(scores: np.ndarray, n: int) -> set[int]:
    return set(np.argsort(-scores, kind="stable")[:n].tolist())


def test_top_items_are_the_true_top_n() -> None:
    rng = np.random.default_rng(9)
    y = rng.normal(size=(20, 4)).astype(np.float32)
    ids = [f"p{n}" for n in range(20)]
    scorer = _scorer(y, item_ids=ids)
    for _ in range(10):
        vector = rng.normal(size=4)
        scores = y.astype(np.float64) @ vector
        for n in (1, 3, 10, 19, 20):
            top = scorer.top_items(vector, n)
            assert set(top) == {ids[i] for i in _true_top(scores, n)}
            for item, score in top.items():
                assert score == pytest.approx(scores[ids.index(item)], rel=1e-9, abs=1e-12)


def test_top_items_with_n_larger_than_the_catalog_returns_every_item() -> None:
    y = _random_y(items=5)
    scorer = _scorer(y)
    vector = np.array([0.5, -1.0, 2.0])
    top = scorer.top_items(vector, 100)
    assert set(top) == {f"item{n}" for n in range(5)}
    expected = y.astype(np.float64) @ vector
    for n in range(5):
        assert top[f"item{n}"] == pytest.approx(expected[n], rel=1e-9)
    assert scorer.top_items(vector, 0) == {}


def test_top_items_batch_is_the_top_n_of_each_row() -> None:
    rng = np.random.default_rng(10)
    y = rng.normal(size=(12, 3)).astype(np.float32)
    scorer = _scorer(y)
    vectors = rng.normal(size=(6, 3))
    scores = vectors @ y.astype(np.float64).T
    for n in (1, 4, 12, 50):
        batch = scorer.top_items_batch(vectors, n)
        assert len(batch) == 6
        for row, top in enumerate(batch):
            assert len(top) == min(n, 12)
            assert set(top) == {f"item{i}" for i in _true_top(scores[row], n)}
            for item, score in top.items():
                assert score == pytest.approx(scores[row, int(item[4:])], rel=1e-9, abs=1e-12)
            # One row alone gives the same items (scores may differ in the last bit: BLAS).
            assert set(top) == set(scorer.top_items(vectors[row], n))
    assert scorer.top_items_batch(np.zeros((0, 3)), 5) == []


def test_top_items_known_small_case() -> None:
    # Items along axes; vector (1, 2): scores a = 1, b = 2, c = -1, d = 1 + 2 = 3.
    y = np.array([[1, 0], [0, 1], [-1, 0], [1, 1]], dtype=np.float32)
    scorer = _scorer(y, item_ids=["a", "b", "c", "d"])
    assert scorer.top_items(np.array([1.0, 2.0]), 2) == {"d": 3.0, "b": 2.0}
    assert scorer.top_items(np.array([1.0, 2.0]), 3) == {"d": 3.0, "b": 2.0, "a": 1.0}


# -- trained_through --------------------------------------------------------------------------


def test_trained_through_is_read_from_new_and_old_headers(model: PublishedModel) -> None:
    # A header written before trained_through existed decodes as before and falls back to the
    # clock it was trained at.
    old = decode_model(encode_model(model))
    assert "trained_through" not in old.params
    assert trained_through(old) == 1_700_000_000.125
    newer = PublishedModel(
        model.version,
        model.item_ids,
        model.item_factors,
        model.user_ids,
        model.user_factors,
        {**model.params, "trained_through": 1_700_000_500.5},
    )
    assert trained_through(decode_model(encode_model(newer))) == 1_700_000_500.5


@pytest.mark.parametrize(
    "params",
    [{}, {"clock": None}, {"clock": "soon"}, {"clock": True}, {"trained_through": float("nan")}],
)
def test_trained_through_is_none_without_a_usable_time(params: dict[str, Any]) -> None:
    y = _random_y()
    empty = np.zeros((0, y.shape[1]), np.float32)
    assert trained_through(PublishedModel("v", SCORER_ITEMS, y, [], empty, params)) is None


# -- fold_in_fully ----------------------------------------------------------------------------

HELD = {
    # Two tastes; h0 and h1 are held back. h1's latest item "fresh" nobody else has.
    **{f"a{n}": [("A1", 1.0, 1.0), ("A2", 1.0, 2.0), ("A3", 1.0, 3.0 + n)] for n in range(6)},
    **{f"b{n}": [("B1", 1.0, 1.0), ("B2", 1.0, 2.0), ("B3", 1.0, 3.0 + n)] for n in range(6)},
    "h0": [("A1", 1.0, 1.0), ("A2", 2.0, 2.0), ("A3", 1.0, 50.0)],
    "h1": [("B1", 1.0, 1.0), ("B2", 1.0, 2.0), ("fresh", 3.0, 60.0)],
}


def _trained_without_held_back() -> tuple[PublishedModel, dict[str, str]]:
    holdout = hold_out_latest(HELD, max_users=2, newer_than=40.0)
    assert holdout.held_out == {"h0": "A3", "h1": "fresh"}
    matrix = build_matrix(holdout.train, clock=100.0, half_life=None)
    assert "fresh" not in matrix.item_ids
    with threadpool_limits(1, "blas"):
        als = AlternatingLeastSquares(factors=3, regularization=0.5, alpha=2.0, random_state=0)
        als.fit(matrix.values, show_progress=False)
    params = {"regularization": 0.5, "alpha": 2.0, "half_life": None}
    model = PublishedModel(
        "v", matrix.item_ids, als.item_factors, matrix.user_ids, als.user_factors, params
    )
    return model, holdout.held_out


def test_fold_in_fully_solves_held_back_users_from_all_their_interactions() -> None:
    model, held_out = _trained_without_held_back()
    done = fold_in_fully(model, HELD, held_out, clock=100.0)
    rows = {user: n for n, user in enumerate(done.user_ids)}
    scorer = AlsScorer(done)
    for user in held_out:
        expected = scorer.user_vector(HELD[user], clock=100.0)
        assert expected is not None
        np.testing.assert_allclose(done.user_factors[rows[user]], expected, rtol=1e-5, atol=1e-6)
    # Everyone else, and every item the model had, is untouched.
    others = [rows[u] for u in done.user_ids if u not in held_out]
    np.testing.assert_array_equal(done.user_factors[others], model.user_factors[others])
    np.testing.assert_array_equal(done.item_factors[: len(model.item_ids)], model.item_factors)
    assert model.item_ids == done.item_ids[: len(model.item_ids)]  # the input is not modified
    # h0's held-back A3 now counts: its score for A3 is its folded-in least-squares fit.
    a3 = done.item_ids.index("A3")
    before = float(model.user_factors[rows["h0"]] @ model.item_factors[a3])
    after = float(done.user_factors[rows["h0"]] @ done.item_factors[a3])
    assert after > before


def test_fold_in_fully_adds_an_item_only_held_back_users_had() -> None:
    model, held_out = _trained_without_held_back()
    done = fold_in_fully(model, HELD, held_out, clock=100.0)
    assert done.item_ids == [*model.item_ids, "fresh"]
    # Its vector is ALS's item step from the trained user vectors: h1 took it with value 3.
    h1 = model.user_ids.index("h1")
    x = model.user_factors.astype(np.float64)
    expected = fold_in_user(model.user_factors, [h1], [3.0], 0.5, alpha=2.0, gram=x.T @ x)
    np.testing.assert_allclose(done.item_factors[-1], expected, rtol=1e-5, atol=1e-6)
    # h1's own vector now includes it, and fresh is h1's best item outside A*.
    scores = done.item_factors @ done.user_factors[h1]
    a_items = [n for n, item in enumerate(done.item_ids) if item.startswith("A")]
    assert scores[-1] > max(scores[n] for n in a_items)
    decoded = decode_model(encode_model(done))
    assert decoded.item_ids == done.item_ids and decoded.item_factors.shape == (7, 3)


def test_fold_in_fully_ignores_unknown_users_and_changes_nothing_without_users() -> None:
    model, _ = _trained_without_held_back()
    same = fold_in_fully(model, HELD, ["nobody"], clock=100.0)
    assert same.item_ids == model.item_ids
    np.testing.assert_array_equal(same.user_factors, model.user_factors)
    np.testing.assert_array_equal(
        fold_in_fully(model, HELD, [], 100.0).item_factors, model.item_factors
    )
