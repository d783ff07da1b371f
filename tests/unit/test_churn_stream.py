"""The stream's churn wiring without Redis: what goes into a user's history, scoring records,
alert documents, settings and keys."""

from __future__ import annotations

import math

import pytest

from models.churn_features import DAY, features_as_of
from models.profile import Interaction, ItemDeltas, Order, OrderLine, UserRecord
from shoppulse.settings import Settings
from stream.churn import BatchHistories, ChurnConfig, changes_history, history_of, score_records
from stream.keys import Keys
from stream.model_store import ChurnModels
from stream.processor import profile_params
from tests.churn_models import overdue_model

# risk = sigmoid(log1p(overdue) - 1): one feature, rising with silence.
MODEL = overdue_model("m1")
MODELS = ChurnModels("m1", MODEL, None)
CONFIG = ChurnConfig.from_settings(Settings(churn_alert_threshold=0.5, churn_alert_margin=0.1))
PARAMS = profile_params(Settings())


def placed(user: str, n: int, day: float, order_id: str | None = None) -> Order:
    line = OrderLine(f"i{n}", 1.0, 20.0)
    return Order(f"e{n}", order_id or f"o{n}", user, day * DAY, "placed", (line,))


def apply(record: UserRecord, events: list[Interaction | Order]) -> None:
    """What the processor does per batch: record applied, history-changing events only."""
    histories = BatchHistories(CONFIG.caps)
    for event in events:
        counts = changes_history(record, event)
        if isinstance(event, Order):
            applied = record.apply_order(event, {}, PARAMS, ItemDeltas())
        else:
            applied = record.apply_interaction(event, None, PARAMS, ItemDeltas())
        if applied and counts:
            histories.record(record, event)
    histories.write_back({record.user_id: record})


def test_only_events_that_change_the_profile_reach_the_history() -> None:
    record = UserRecord.new("u")
    first = placed("u", 1, 10)
    again = placed("u", 2, 11, order_id="o1")  # same order id under another event id
    cancel = Order("e3", "o1", "u", 12 * DAY, "cancelled", ())
    cancel_again = Order("e4", "o1", "u", 13 * DAY, "cancelled", ())
    click = Interaction("e5", "u", "i1", "view", 14 * DAY, "s1")
    apply(record, [first, first, again, cancel, cancel_again, click, click])
    history = history_of(record)
    assert [status for _, _, status in history.orders] == ["placed", "cancelled"]
    assert [(d.views, len(d.sessions)) for d in history.click_days] == [(1, 1)]
    assert record.state["churn"] == history.to_dict()  # plain JSON in the user's state


def test_scoring_writes_risk_and_fires_one_alert_per_crossing() -> None:
    record = UserRecord.new("u")
    apply(record, [placed("u", 1, 0)])
    early = score_records([record], 1 * DAY, MODELS, CONFIG)
    assert early.alerts == [] and early.risks[0][1] < 0.5
    assert record.profile["churn_risk"] == early.risks[0][1]
    assert record.profile["segment"] is None and record.profile["clv"] is None  # no segments
    late = score_records([record], 200 * DAY, MODELS, CONFIG)
    assert len(late.alerts) == 1
    alert = late.alerts[0]
    assert set(alert) == {
        "alert_id",
        "user_id",
        "risk",
        "previous_risk",
        "threshold",
        "as_of",
        "model_version",
        "reasons",
    }
    assert alert["previous_risk"] == early.risks[0][1] and alert["model_version"] == "m1"
    expected = MODEL.score(features_as_of(history_of(record), 200 * DAY))
    assert math.isclose(alert["risk"], expected) and alert["as_of"] == 200 * DAY
    assert score_records([record], 201 * DAY, MODELS, CONFIG).alerts == []  # still high: quiet


def test_non_customers_and_older_moments_are_not_scored() -> None:
    browser = UserRecord.new("b")
    apply(browser, [Interaction("e1", "b", "i1", "view", 5 * DAY)])
    record = UserRecord.new("u")
    apply(record, [placed("u", 1, 0)])
    score_records([record], 100 * DAY, MODELS, CONFIG)
    assert score_records([browser], 100 * DAY, MODELS, CONFIG).risks == []
    assert browser.profile["churn_risk"] is None
    assert score_records([record], 50 * DAY, MODELS, CONFIG).risks == []  # stale moment


def test_churn_settings_and_their_check() -> None:
    settings = Settings()
    assert (settings.churn_horizon_days, settings.churn_alert_threshold) == (90.0, 0.7)
    assert (settings.churn_orders_cap, settings.churn_click_days_cap, settings.segments) == (
        100,
        180,
        5,
    )
    with pytest.raises(ValueError, match="margin"):
        Settings(churn_alert_threshold=0.2, churn_alert_margin=0.3)


def test_churn_keys_byte_for_byte() -> None:
    keys = Keys("shop")
    assert keys.risk() == "shop:risk"
    assert keys.alerts() == "shop:alerts"
    assert keys.churn_models() == "shop:churnmodels"
    assert keys.rescore_marker("day-19000") == "shop:rescore:day-19000"
    assert keys.current_model("churn") == "shop:current:churn"


def test_shop_events_catalog_first_then_user_events_in_time_order() -> None:
    from shoppulse.replay import shop_events

    orders = [
        {"event_id": "o", "user_id": "u", "ts": 20.0, "items": [{"item_id": "a", "price": 3.0}]}
    ]
    clicks = [
        {"event_id": "c1", "user_id": "u", "item_id": "b", "ts": 10.0, "type": "view"},
        {"event_id": "c2", "user_id": "v", "item_id": "a", "ts": 30.0, "type": "view"},
    ]
    stream = shop_events(orders, clicks)
    assert [key for key, _ in stream.catalog] == [b"a", b"b"]
    assert [(kind, ts) for kind, ts, _ in stream.events] == [
        ("clicks", 10.0),
        ("orders", 20.0),
        ("clicks", 30.0),
    ]
    assert all(message[0] in (b"u", b"v") for _, _, message in stream.events)
