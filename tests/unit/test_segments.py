"""Segments (K-means on log-RFM, exported as arrays) and lifetime value: known answers."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.churn_features import FEATURE_NAMES
from models.segments import (
    AOV_PRIOR_ORDERS,
    ARCHETYPES,
    RFM,
    SegmentModel,
    SegmentModelError,
    decode_segment_model,
    encode_segment_model,
    fit_rate_prior,
    fit_segments,
    label_centroids,
)


def customer(recency: float, orders: float, spend: float, **more: float) -> dict[str, float]:
    features = dict.fromkeys(FEATURE_NAMES, 0.0)
    features.update(
        recency_days=recency,
        orders_total=orders,
        spend_total=spend,
        avg_order_value=spend / orders if orders else 0.0,
        tenure_days=more.pop("tenure_days", 365.0),
    )
    features.update(more)
    return features


def three_groups(rng: np.random.Generator) -> list[dict[str, float]]:
    """Recent big spenders, long-gone one-timers and brand-new one-timers."""
    groups = [(3.0, 30.0, 3000.0), (400.0, 1.0, 20.0), (4.0, 1.0, 60.0)]
    return [
        customer(r * rng.uniform(0.8, 1.25), round(f * rng.uniform(0.8, 1.25)), m)
        for r, f, m in groups
        for _ in range(40)
    ]


def test_segments_find_and_name_the_groups() -> None:
    rng = np.random.default_rng(0)
    customers = three_groups(rng)
    model = fit_segments(customers, "seg-1", k=3, seed=0)
    names = [model.segment(c) for c in customers]
    assert set(names[:40]) == {"champions"}
    assert set(names[40:80]) <= {"hibernating", "lost"} and len(set(names[40:80])) == 1
    assert set(names[80:]) == {"new"}
    by_label = {d["label"]: d for d in model.describe()}
    assert by_label["champions"]["orders_total"] == pytest.approx(30, rel=0.2)
    assert by_label["new"]["recency_days"] == pytest.approx(4, rel=0.3)


def test_numpy_assignment_matches_scikit_learn() -> None:
    from sklearn.cluster import KMeans

    rng = np.random.default_rng(1)
    customers = three_groups(rng) + [
        customer(rng.uniform(0, 500), rng.integers(1, 40), rng.uniform(5, 4000)) for _ in range(80)
    ]
    model = fit_segments(customers, "seg", k=5, seed=3)
    rows = np.asarray([[c[name] for name in RFM] for c in customers])
    z = (np.log1p(rows) - model.mean) / model.scale
    fitted = KMeans(n_clusters=5, n_init=10, random_state=3).fit(z)
    assert np.array_equal(model.assign_matrix(rows), fitted.predict(z))


@settings(max_examples=50, deadline=None)
@given(st.integers(2, len(ARCHETYPES)), st.integers(0, 2**16))
def test_every_segment_gets_its_own_label(k: int, seed: int) -> None:
    centroids = np.random.default_rng(seed).normal(size=(k, 3))
    labels = label_centroids(centroids)
    assert len(set(labels)) == k and set(labels) <= set(ARCHETYPES)


def test_segment_labels_follow_the_centroids() -> None:
    # In standardised space, recency first (high = long ago).
    centroids = np.array([[-1.2, 1.5, 1.5], [1.5, -0.8, -0.7], [-1.0, -0.8, -0.6]])
    assert label_centroids(centroids) == ("champions", "lost", "new")


# -- lifetime value ---------------------------------------------------------------------------


def value_model(**overrides: Any) -> SegmentModel:
    fields: dict[str, Any] = {
        "version": "v",
        "mean": np.zeros(3),
        "scale": np.ones(3),
        "centroids": np.zeros((2, 3)) + np.array([[0.0], [1.0]]),
        "labels": ("loyal", "lost"),
        "rate_shape": 1.0,
        "rate_rate": 30.0,  # prior mean: one order per 30 days
        "mean_order_value": 50.0,
    }
    fields.update(overrides)
    return SegmentModel(**fields)


def test_clv_by_hand() -> None:
    model = value_model()
    # 4 orders (3 repeats) in 90 days of tenure: rate (1 + 3) / (30 + 90) = 1/30 per day.
    c = customer(10.0, 4.0, 200.0, tenure_days=90.0)
    assert model.order_rate(c) == pytest.approx(1 / 30)
    # 90 days: expected 3 orders if active; given at least one, 3 / (1 - e^-3).
    # Order value shrunk towards 50 by one order: (4 * 50 + 1 * 50) / 5 = 50.
    expected = (1 - 0.25) * 3 / (1 - math.exp(-3)) * 50.0
    assert model.clv(c, churn_risk=0.25, horizon_days=90) == pytest.approx(expected)


def test_clv_limits() -> None:
    model = value_model(rate_shape=1e-9, rate_rate=1e9)  # essentially never orders again
    c = customer(10.0, 1.0, 80.0, tenure_days=0.0)
    aov = (80.0 + AOV_PRIOR_ORDERS * 50.0) / (1 + AOV_PRIOR_ORDERS)
    # Whoever buys at all buys once: (1 - risk) * order value.
    assert model.clv(c, churn_risk=0.4, horizon_days=90) == pytest.approx(0.6 * aov)
    assert value_model().clv(c, churn_risk=1.0, horizon_days=90) == 0.0
    # Refunds are taken off.
    refunds = customer(10.0, 1.0, 80.0, tenure_days=0.0, refund_share=0.25)
    assert model.clv(refunds, 0.4, 90) == pytest.approx(0.6 * aov * 0.75)
    with pytest.raises(ValueError):
        model.clv(c, churn_risk=1.5, horizon_days=90)


def test_rate_prior_by_the_method_of_moments() -> None:
    # Everyone orders at exactly 0.1 a day over long tenures: mean 0.1, almost no spread,
    # so the prior is sharp and nearly every posterior rate is 0.1.
    customers = [customer(1.0, 1 + 0.1 * t, 10.0, tenure_days=t) for t in (1000.0, 2000.0)]
    shape, rate = fit_rate_prior(customers * 50)
    assert shape / rate == pytest.approx(0.1, rel=1e-6)
    assert shape > 50
    assert fit_rate_prior([]) == (1.0, 60.0)  # nobody with a month of tenure yet


# -- storage ----------------------------------------------------------------------------------


def test_encode_decode_round_trip() -> None:
    model = fit_segments(three_groups(np.random.default_rng(2)), "seg-2", k=3, seed=1)
    again = decode_segment_model(encode_segment_model(model))
    for name in ("mean", "scale", "centroids"):
        assert np.array_equal(getattr(again, name), getattr(model, name))
    assert again.labels == model.labels
    assert (again.rate_shape, again.rate_rate) == (model.rate_shape, model.rate_rate)
    c = customer(30.0, 3.0, 90.0)
    assert again.segment(c) == model.segment(c)
    assert again.clv(c, 0.3, 90) == model.clv(c, 0.3, 90)


def tampered(change: Any) -> bytes:
    document = orjson.loads(encode_segment_model(value_model()))
    change(document)
    return orjson.dumps(document)


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        tampered(lambda d: d.update(format="other")),
        tampered(lambda d: d.update(features=["a", "b", "c"])),
        tampered(lambda d: d.update(mean=[0.0, 0.0])),
        tampered(lambda d: d.update(centroids=[[0.0, 0.0], [1.0, 1.0]])),
        tampered(lambda d: d.update(centroids=[[0.0, 0.0, 0.0], [1.0, 1.0]])),
        tampered(lambda d: d.update(centroids=[[0.0, 0.0, None], [1.0, 1.0, 1.0]])),
        tampered(lambda d: d.update(labels=["loyal", "loyal"])),
        tampered(lambda d: d.update(labels=["loyal"])),
        tampered(lambda d: d.update(scale=[1.0, 0.0, 1.0])),
        tampered(lambda d: d.update(rate_rate=-1.0)),
        tampered(lambda d: d.pop("mean_order_value")),
    ],
)
def test_decode_refuses_anything_inconsistent(raw: bytes) -> None:
    with pytest.raises(SegmentModelError):
        decode_segment_model(raw)


def test_nan_never_reaches_a_model() -> None:
    with pytest.raises(SegmentModelError):
        value_model(centroids=np.array([[0.0, float("nan"), 0.0], [1.0, 1.0, 1.0]]))
    with pytest.raises(SegmentModelError):
        fit_segments([customer(1.0, 1.0, 1.0)] * 10, "x", k=3)  # too few distinct customers
