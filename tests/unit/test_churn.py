"""Churn labels at cutoffs (no leakage), the model as data, scoring, training and reasons."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.churn import (
    LOGISTIC,
    MODEL_FEATURES,
    TREES,
    ChurnModel,
    ChurnModelError,
    TrainingSet,
    build_training_set,
    decode_churn_model,
    encode_churn_model,
    fit_churn_model,
    label_at,
    reasons,
    risk_as_of,
    training_cutoffs,
)
from models.churn_features import (
    DAY,
    FEATURE_NAMES,
    SILENCE,
    ChurnDataError,
    ChurnHistory,
    HistoryCaps,
    features_as_of,
    history_from_events,
)
from shoppulse.simulator import ShopConfig, simulate_shop
from workers.churn_eval import EvalConfig, EvalData, evaluate_churn, on_cdnow

H = 90.0


def placed(*days: float) -> ChurnHistory:
    return history_from_events([(d * DAY, 10.0, "placed") for d in days])


# -- labels -----------------------------------------------------------------------------------


def test_label_is_no_placed_order_in_the_horizon_after_the_cutoff() -> None:
    history = placed(0, 100)
    assert label_at(history, 0.0, 90) is True  # day 100 is after (0, 90]
    assert label_at(history, 0.0, 100) is False  # the horizon end is included
    assert label_at(history, 10 * DAY, 90) is False
    assert label_at(history, 100 * DAY, 90) is True  # an order at the cutoff is the past


def test_cancellations_and_returns_are_not_orders() -> None:
    history = history_from_events(
        [(0.0, 10.0, "placed"), (5 * DAY, 10.0, "cancelled"), (6 * DAY, 3.0, "returned")]
    )
    assert label_at(history, DAY, 90) is True


def test_label_refuses_to_guess_when_the_capped_history_lost_the_horizon() -> None:
    history = history_from_events(
        [(d * DAY, 1.0, "placed") for d in range(10)], caps=HistoryCaps(orders=3)
    )
    with pytest.raises(ChurnDataError):
        label_at(history, 2 * DAY, 90)  # orders of days 3..6 were dropped


def test_training_cutoffs_are_whole_days_and_their_horizons_are_over() -> None:
    end = 1_000 * DAY + 5_000
    cutoffs = training_cutoffs(end, H, count=3, spacing_days=30)
    assert cutoffs == [850 * DAY, 880 * DAY, 910 * DAY]
    assert all(c + H * DAY <= end for c in cutoffs)


def test_training_set_uses_only_cutoffs_whose_horizon_is_over() -> None:
    histories = {"a": placed(0, 50, 200), "b": placed(120), "c": placed(10)}
    training = build_training_set(histories, [30 * DAY, 100 * DAY, 150 * DAY], H, 200 * DAY)
    assert training.used_cutoffs == (30 * DAY, 100 * DAY)
    assert training.skipped_cutoffs == (150 * DAY,)  # 150 + 90 > 200: label not known yet
    rows = {
        (user, cutoff / DAY): bool(label)
        for user, cutoff, label in zip(
            training.users, training.cutoffs, training.labels, strict=True
        )
    }
    # "b" bought first on day 120: no customer at 30 or 100, so no row (not "churned").
    assert rows == {
        ("a", 30.0): False,  # ordered on day 50
        ("a", 100.0): True,  # nothing in (100, 190]
        ("c", 30.0): True,
        ("c", 100.0): True,
    }
    assert training.features.shape == (4, len(FEATURE_NAMES))


def test_training_features_never_see_past_the_cutoff() -> None:
    """The same rows whether or not the history also holds the horizon and beyond."""
    history = history_from_events(
        [(d * DAY, 10.0 + d, "placed") for d in (0, 20, 45, 70, 130, 160)],
        [(d * DAY + 60, "view", "s") for d in (5, 44, 69, 100, 129)],
    )
    cutoff = 80 * DAY
    truncated = history_from_events(
        [e for e in history.orders if e[0] <= cutoff],
        [(d * DAY + 60, "view", "s") for d in (5, 44, 69)],
    )
    full = build_training_set({"u": history}, [cutoff], H, 400 * DAY)
    past = features_as_of(truncated, cutoff)
    assert full.features[0].tolist() == [past[name] for name in FEATURE_NAMES]
    assert full.labels.tolist() == [False]  # day 130 is within (80, 170]


# -- the model as data ------------------------------------------------------------------------


def tiny_model(**overrides: Any) -> ChurnModel:
    """risk = sigmoid(log1p(overdue)) : one feature, mean 0, scale 1, coefficient 1."""
    fields: dict[str, Any] = {
        "version": "t",
        "features": ("overdue",),
        "mean": np.zeros(1),
        "scale": np.ones(1),
        "coef": np.ones(1),
        "intercept": 0.0,
        "horizon_days": H,
        "reference": np.zeros(1),
    }
    fields.update(overrides)
    return ChurnModel(**fields)


def some_features(**values: float) -> dict[str, float]:
    features = dict.fromkeys(FEATURE_NAMES, 0.0)
    features.update(values)
    return features


def test_score_by_hand() -> None:
    model = tiny_model()
    assert model.score(some_features(overdue=math.e - 1)) == pytest.approx(1 / (1 + math.exp(-1)))
    assert model.score(some_features(overdue=0.0)) == pytest.approx(0.5)
    # An isotonic map halves every probability.
    halved = tiny_model(calibration_x=np.array([0.0, 1.0]), calibration_y=np.array([0.0, 0.5]))
    assert halved.score(some_features(overdue=0.0)) == pytest.approx(0.25)


def test_score_refuses_missing_or_non_finite_features() -> None:
    model = tiny_model()
    with pytest.raises(ChurnModelError):
        model.score({"recency_days": 3.0})
    with pytest.raises(ChurnModelError):
        model.score(some_features(overdue=float("nan")))


def test_encode_decode_round_trip_is_exact() -> None:
    rng = np.random.default_rng(3)
    n = len(MODEL_FEATURES)
    coef = np.asarray(
        [
            abs(v) * SILENCE[f] if SILENCE[f] else v
            for f, v in zip(MODEL_FEATURES, rng.normal(size=n), strict=True)
        ]
    )
    model = ChurnModel(
        "churn-1",
        MODEL_FEATURES,
        rng.normal(size=n),
        rng.uniform(0.1, 2.0, n),
        coef,
        0.3,
        H,
        rng.normal(size=n),
        np.array([0.0, 0.4, 1.0]),
        np.array([0.0, 0.5, 1.0]),
        {"c": 1.0, "rows": 10},
    )
    again = decode_churn_model(encode_churn_model(model))
    for name in ("mean", "scale", "coef", "reference", "calibration_x", "calibration_y"):
        assert np.array_equal(getattr(again, name), getattr(model, name))
    assert (again.version, again.features, again.intercept) == ("churn-1", MODEL_FEATURES, 0.3)
    assert again.params == model.params
    features = some_features(recency_days=40.0, overdue=2.0, orders_total=3.0)
    assert again.score(features) == model.score(features)


def tampered(change: Any) -> bytes:
    document = orjson.loads(encode_churn_model(tiny_model()))
    change(document)
    return orjson.dumps(document)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"[]",
        tampered(lambda d: d.update(format="shoppulse-als-1")),
        tampered(lambda d: d.update(features_version=0)),
        tampered(lambda d: d.update(coef=[1.0, 2.0])),  # wrong shape
        tampered(lambda d: d.update(mean=["1"])),  # not numbers
        tampered(lambda d: d.update(mean=[True])),
        tampered(lambda d: d.update(scale=[0.0])),
        tampered(lambda d: d.update(intercept=None)),
        tampered(lambda d: d.update(features=["shoe_size"])),
        tampered(lambda d: d.update(features=[])),
        tampered(lambda d: d.update(coef=[-1.0])),  # risk would fall with silence
        tampered(lambda d: d.update(horizon_days=0)),
        tampered(lambda d: d.pop("reference")),
        tampered(lambda d: d.update(calibration={"x": [0.0, 1.0], "y": [0.6, 0.2]})),
        tampered(lambda d: d.update(calibration={"x": [0.0], "y": [0.1]})),
        tampered(lambda d: d.update(calibration={"x": [0.0, 1.0], "y": [0.0, 2.0]})),
    ],
)
def test_decode_refuses_anything_inconsistent(raw: bytes) -> None:
    with pytest.raises(ChurnModelError):
        decode_churn_model(raw)


def test_nan_never_reaches_a_model() -> None:
    # orjson writes NaN as null, which decode refuses; the constructor refuses NaN itself.
    with pytest.raises(ChurnModelError):
        tiny_model(mean=np.array([float("nan")]))
    with pytest.raises(ChurnModelError):
        decode_churn_model(tampered(lambda d: d.update(mean=[float("nan")])))


# -- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shop_histories() -> tuple[TrainingSet, dict[str, ChurnHistory], float]:
    """A small simulated shop (orders only): its histories and training set at its end."""
    shop = simulate_shop(7, ShopConfig(customers=500, prospects=0, days=600, clickstream=False))
    end = shop.end_ts
    histories: dict[str, ChurnHistory] = {}
    for event in shop.orders:
        amount = sum(line["quantity"] * line["price"] for line in event["items"])
        histories.setdefault(event["user_id"], ChurnHistory()).record_order(
            event["ts"], amount, event["status"]
        )
    return build_training_set(histories, training_cutoffs(end, H, 4, 30), H, end), histories, end


@pytest.fixture(scope="module", params=[TREES, LOGISTIC])
def trained(
    request: pytest.FixtureRequest,
    shop_histories: tuple[TrainingSet, dict[str, ChurnHistory], float],
) -> tuple[ChurnModel, dict[str, ChurnHistory], float]:
    """The served model (trees) and the previous one (logistic), trained on that shop."""
    training, histories, end = shop_histories
    return fit_churn_model(training, "churn-test", kind=request.param, folds=3), histories, end


def test_training_gives_a_validated_model_that_respects_silence(
    trained: tuple[ChurnModel, dict[str, ChurnHistory], float],
) -> None:
    model, histories, end = trained
    assert model.features == MODEL_FEATURES
    assert model.params["validation"]["roc_auc"] > 0.85
    assert model.params["calibration"] in ("none", "isotonic")
    if model.kind == TREES:
        assert 1 <= model.params["trees"] <= 300 and model.trees.trees == model.params["trees"]
        assert not model.coef.any()
        assert model.trees.monotonic_violations([SILENCE[f] for f in model.features]) == []
    else:
        assert model.params["c"] in (0.01, 0.1, 1.0, 10.0)
        assert model.trees.trees == 0
        for name, c in zip(model.features, model.coef, strict=True):
            assert c * SILENCE[name] >= 0.0, name
    # Published and loaded again, it scores the same.
    again = decode_churn_model(encode_churn_model(model))
    rows = [features_as_of(h, end) for h in histories.values()]
    assert np.array_equal(again.score_many(rows), model.score_many(rows))


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.floats(1.0, 300.0), st.floats(1.0, 300.0))
def test_a_silent_customers_risk_only_rises(
    trained: tuple[ChurnModel, dict[str, ChurnHistory], float], pick: int, wait: float, more: float
) -> None:
    model, histories, _ = trained
    users = sorted(histories)
    history = histories[users[pick % len(users)]]
    last = history.orders[-1][0]
    first = risk_as_of(history, model, last + wait * DAY)
    later = risk_as_of(history, model, last + (wait + more) * DAY)
    assert first is not None and later is not None
    assert later >= first - 1e-12


def test_risk_is_none_for_users_who_never_bought(
    trained: tuple[ChurnModel, dict[str, ChurnHistory], float],
) -> None:
    model, _, end = trained
    assert risk_as_of(history_from_events([], [(0.0, "view", None)]), model, end) is None


def test_too_little_data_is_refused() -> None:
    training = build_training_set({"a": placed(0, 10), "b": placed(5)}, [20 * DAY], H, 400 * DAY)
    with pytest.raises(ChurnModelError):
        fit_churn_model(training, "x")


# -- reasons ----------------------------------------------------------------------------------


def reason_model() -> ChurnModel:
    names = ("overdue", "orders_365d", "avg_order_value")
    return ChurnModel(
        "r",
        names,
        np.zeros(3),
        np.ones(3),
        np.array([2.0, -1.0, -0.5]),
        0.0,
        H,
        reference=np.log1p(np.array([0.5, 6.0, 10.0])),  # customers who stay
    )


def test_reasons_in_words_by_hand() -> None:
    features = some_features(
        recency_days=94.0,
        activity_recency_days=94.0,
        overdue=94 / 21,
        gap_mean_days=21.0,
        orders_total=8.0,
        orders_365d=2.0,
        orders_90d=0.0,
        avg_order_value=30.0,
    )
    # overdue pushes most, then two orders this year against six for those who stay; the
    # larger-than-usual orders push down and say nothing.
    assert reasons(features, reason_model()) == [
        "no order for 94 days, usually orders every 21 days",
        "no order in the last 90 days, against 2 orders in the 9 months before",
    ]
    assert reasons(features, reason_model(), top=1) == [
        "no order for 94 days, usually orders every 21 days"
    ]


def test_small_orders_are_a_reason_when_the_model_says_so() -> None:
    features = some_features(recency_days=2.0, overdue=0.5, orders_365d=6.0, avg_order_value=4.0)
    assert reasons(features, reason_model()) == [
        "orders of 4.00 on average, against 10.00 for customers who stay"
    ]


def test_a_customer_like_those_who_stay_gets_no_reasons() -> None:
    features = some_features(
        recency_days=3.0, overdue=0.1, orders_365d=12.0, orders_90d=3.0, avg_order_value=10.0
    )
    assert reasons(features, reason_model()) == []


def test_reasons_mention_the_last_visit_with_clickstream() -> None:
    features = some_features(
        recency_days=60.0,
        activity_recency_days=12.0,
        has_clickstream=1.0,
        overdue=3.0,
        gap_mean_days=20.0,
        orders_total=4.0,
        orders_365d=4.0,
        orders_90d=1.0,
    )
    assert reasons(features, reason_model())[0] == (
        "no order for 60 days (last visit 12 days ago), usually orders every 20 days"
    )


# -- the evaluation runner --------------------------------------------------------------------


def test_evaluation_runner_writes_its_report(tmp_path: Path) -> None:
    config = EvalConfig(
        seed=5,
        clickstream=False,
        training_cutoffs=3,
        alert_weeks=2,
        shop=ShopConfig(customers=300, prospects=0, days=450, clickstream=False),
    )
    report = evaluate_churn(tmp_path, config=config)
    for suffix in ("md", "json", "png"):
        assert (tmp_path / f"churn-orders-only.{suffix}").stat().st_size > 0
    document = orjson.loads((tmp_path / "churn-orders-only.json").read_bytes())
    assert [row["model"] for row in document["rows"]] == [
        "ShopPulse churn model",
        "sign-bounded logistic regression (previous model)",
        "recency alone",
        "frequency alone",
        "knows who has already left (reference)",
    ]
    model = report.row("ShopPulse churn model")
    assert 0.5 < model.roc_auc <= 1.0 and 0.0 <= model.brier < 0.25
    assert 0.5 < model.repeat_roc_auc <= 1.0 and 0 < report.repeat_customers < report.customers
    assert report.model_params["kind"] == "trees"
    assert report.alerts.max_per_user <= 2


def test_real_orders_are_evaluated_without_a_truth_beyond_the_orders(tmp_path: Path) -> None:
    """What CDNOW goes through: orders only, no known churn moments, no alert weeks."""
    shop = simulate_shop(6, ShopConfig(customers=300, prospects=0, days=450, clickstream=False))
    placed_only = [e for e in shop.orders if e["status"] == "placed"]
    data = EvalData.from_orders("some real shop", placed_only)
    assert data.end_ts % DAY == 0.0 and data.end_ts > placed_only[-1]["ts"]
    config = on_cdnow(EvalConfig(training_cutoffs=3, compare_logistic=False))
    report = evaluate_churn(tmp_path, config=config, data=data)
    assert [row.model for row in report.rows] == [
        "ShopPulse churn model",
        "recency alone",
        "frequency alone",
    ]
    assert report.cutoff == math.floor((data.end_ts - H * DAY) / DAY) * DAY
    assert report.alerts.per_week == [] and report.alerts.at_cutoff > 0
    text = (tmp_path / "churn-cdnow.md").read_text()
    assert text.startswith("# Churn risk on some real shop")
    assert "No later weeks" in text and "repeat ROC-AUC" in text
