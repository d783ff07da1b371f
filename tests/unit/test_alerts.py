"""The churn alert state machine: crossings, hysteresis, cooldown, first scores, stale scores."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.alerts import DAY, Alert, AlertPolicy, AlertState, alert_id, update_alert

POLICY = AlertPolicy(threshold=0.7, margin=0.1, cooldown_seconds=30 * DAY)


def run(
    risks: list[tuple[float, float]], policy: AlertPolicy = POLICY
) -> tuple[AlertState, list[Alert]]:
    """Feed ``(day, risk)`` scores; the final state and every alert fired."""
    state, alerts = AlertState(), []
    for day, risk in risks:
        state, alert = update_alert(state, risk, day * DAY, policy)
        if alert is not None:
            alerts.append(alert)
    return state, alerts


def test_an_upward_crossing_alerts_once_however_long_the_risk_stays_high() -> None:
    state, alerts = run([(0, 0.2), (1, 0.5), (2, 0.75), (3, 0.8), (40, 0.9), (100, 0.95)])
    assert alerts == [Alert(risk=0.75, previous_risk=0.5, threshold=0.7, as_of=2 * DAY)]
    assert state == AlertState(
        armed=False, last_risk=0.95, scored_at=100 * DAY, last_alert_at=2 * DAY
    )


def test_hysteresis_a_risk_wobbling_around_the_threshold_does_not_re_alert() -> None:
    # 0.65 is below the threshold but not below 0.7 - 0.1: still disarmed.
    _, alerts = run([(0, 0.5), (1, 0.71), (40, 0.65), (80, 0.72), (120, 0.69), (160, 0.74)])
    assert [a.as_of / DAY for a in alerts] == [1]


def test_falling_below_threshold_minus_margin_re_arms() -> None:
    _, alerts = run([(0, 0.5), (1, 0.71), (40, 0.59), (80, 0.72)])
    assert [(a.as_of / DAY, a.previous_risk) for a in alerts] == [(1, 0.5), (80, 0.59)]


def test_a_crossing_inside_the_cooldown_waits_for_it_to_end() -> None:
    # Alert on day 1, re-armed on day 5, crosses again on day 10 (inside 30 days): no alert
    # until the first score after day 31 that is still high.
    _, alerts = run([(0, 0.5), (1, 0.8), (5, 0.3), (10, 0.8), (20, 0.85), (31, 0.82), (32, 0.9)])
    assert [a.as_of / DAY for a in alerts] == [1, 31]
    assert alerts[1].previous_risk == 0.85


def test_a_crossing_inside_the_cooldown_that_falls_back_never_alerts() -> None:
    _, alerts = run([(0, 0.5), (1, 0.8), (5, 0.3), (10, 0.8), (20, 0.4), (40, 0.5)])
    assert [a.as_of / DAY for a in alerts] == [1]


def test_cooldown_boundary_is_inclusive() -> None:
    _, alerts = run([(0, 0.8), (10, 0.1), (30, 0.8)])
    assert [a.as_of / DAY for a in alerts] == [0, 30]


def test_first_score_above_threshold_alerts_by_default() -> None:
    state, alerts = run([(0, 0.9)])
    assert alerts == [Alert(0.9, None, 0.7, 0.0)]
    assert not state.armed


def test_first_score_above_threshold_can_be_treated_as_old_news() -> None:
    quiet = AlertPolicy(0.7, 0.1, 30 * DAY, alert_on_first_score=False)
    state, alerts = run([(0, 0.9), (10, 0.95)], quiet)
    assert alerts == [] and not state.armed
    # Only a recovery and a new crossing alert.
    _, alerts = run([(0, 0.9), (10, 0.5), (20, 0.8)], quiet)
    assert [a.as_of / DAY for a in alerts] == [20]
    # A first score below the threshold is an ordinary armed start.
    _, alerts = run([(0, 0.65), (1, 0.75)], quiet)
    assert [a.as_of / DAY for a in alerts] == [1]


def test_a_stale_score_changes_nothing() -> None:
    state, _ = run([(0, 0.5), (10, 0.8)])
    again, alert = update_alert(state, 0.1, 5 * DAY, POLICY)
    assert alert is None and again == state
    # The same moment again is not stale (a model swap re-scores at the same clock).
    _, alert = update_alert(AlertState(True, 0.5, 10 * DAY, None), 0.9, 10 * DAY, POLICY)
    assert alert is not None


@pytest.mark.parametrize("risk", [float("nan"), -0.1, 1.5, float("inf")])
def test_invalid_risks_are_refused(risk: float) -> None:
    with pytest.raises(ValueError):
        update_alert(AlertState(), risk, 0.0, POLICY)


@pytest.mark.parametrize(
    ("threshold", "margin", "cooldown"),
    [(0.0, 0.0, 0.0), (1.2, 0.1, 0.0), (0.5, 0.5, 0.0), (0.5, -0.1, 0.0), (0.5, 0.1, -1.0)],
)
def test_invalid_policies_are_refused(threshold: float, margin: float, cooldown: float) -> None:
    with pytest.raises(ValueError):
        AlertPolicy(threshold, margin, cooldown)


def test_state_round_trips_through_plain_data() -> None:
    state, _ = run([(0, 0.5), (3, 0.8)])
    assert AlertState.from_dict(state.to_dict()) == state
    assert AlertState.from_dict({}) == AlertState()
    with pytest.raises(ValueError):
        AlertState.from_dict({"armed": "yes"})
    with pytest.raises(ValueError):
        AlertState.from_dict({"last_risk": float("nan")})


def test_alert_ids_are_deterministic_and_distinct() -> None:
    assert alert_id("u1", 100.0) == alert_id("u1", 100.0)
    assert len({alert_id("u1", 100.0), alert_id("u1", 101.0), alert_id("u2", 100.0)}) == 3
    # No accidental collisions between ids that concatenate to the same text.
    assert alert_id("u1", 11.0) != alert_id("u11", 1.0)


scores = st.lists(st.tuples(st.floats(0.0, 20.0), st.floats(0.0, 1.0)), min_size=1, max_size=60)


@settings(max_examples=200, deadline=None)
@given(scores, st.floats(0.05, 1.0), st.floats(0.0, 0.3), st.floats(0.0, 60.0))
def test_no_alert_storms(
    steps: list[tuple[float, float]], threshold: float, margin: float, cooldown_days: float
) -> None:
    """Alerts are at or above the threshold, a cooldown apart, and each needs a re-arm."""
    margin = min(margin, threshold * 0.99)
    policy = AlertPolicy(threshold, margin, cooldown_days * DAY)
    state, day, alerts, rearms = AlertState(), 0.0, [], 0
    for wait, risk in steps:
        day += wait
        if not state.armed and risk < threshold - margin:
            rearms += 1
        state, alert = update_alert(state, risk, day * DAY, policy)
        if alert is not None:
            alerts.append(alert)
            assert alert.risk >= threshold
    assert len(alerts) <= rearms + 1
    for earlier, later in itertools.pairwise(alerts):
        assert later.as_of - earlier.as_of >= cooldown_days * DAY
