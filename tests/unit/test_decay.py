"""Exponential decay in event time: known answers and order independence."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from models.decay import (
    decay_factor,
    decayed_add,
    decayed_value_at,
    log_forward_weight,
    log_score_to_weight,
    logaddexp,
)

DAY = 86_400.0
LN2 = 0.6931471805599453  # ln 2, written out rather than taken from the module


# -- decay_factor / decayed_value_at ---------------------------------------------------------


def test_one_half_life_halves_and_two_quarter() -> None:
    assert decay_factor(DAY, DAY) == pytest.approx(0.5, rel=1e-12)
    assert decay_factor(2 * DAY, DAY) == pytest.approx(0.25, rel=1e-12)
    # 3 half-lives of 10 s: 2 ** -3 = 0.125
    assert decay_factor(30.0, 10.0) == pytest.approx(0.125, rel=1e-12)


def test_no_elapsed_time_or_negative_elapsed_keeps_everything() -> None:
    assert decay_factor(0.0, DAY) == 1.0
    assert decay_factor(-5 * DAY, DAY) == 1.0


def test_decayed_value_at_reads_forward_but_never_backwards() -> None:
    # 8 as of t=1000, read one half-life later: 8 / 2 = 4
    assert decayed_value_at(8.0, 1000.0, 1000.0 + DAY, DAY) == pytest.approx(4.0, rel=1e-12)
    # read before its own timestamp: unchanged
    assert decayed_value_at(8.0, 1000.0, 0.0, DAY) == 8.0


# -- decayed_add ------------------------------------------------------------------------------


def test_decayed_add_in_order() -> None:
    # 4 as of t=0, add 1 at t=1 day: 4 * 0.5 + 1 = 3, as of 1 day
    value, as_of = decayed_add(4.0, 0.0, 1.0, DAY, DAY)
    assert value == pytest.approx(3.0, rel=1e-12)
    assert as_of == DAY


def test_decayed_add_out_of_order_amount_is_decayed_to_the_value_time() -> None:
    # 4 as of t=2 days, then an amount 8 observed at t=0 arrives late:
    # 4 + 8 * 0.25 = 6, still as of 2 days
    value, as_of = decayed_add(4.0, 2 * DAY, 8.0, 0.0, DAY)
    assert value == pytest.approx(6.0, rel=1e-12)
    assert as_of == 2 * DAY


def test_decayed_add_a_then_b_equals_b_then_a_known_answer() -> None:
    # a = 2 at t=0, b = 3 at t=1 day; at 1 day the total is 2 * 0.5 + 3 = 4
    start = (0.0, 0.0)
    ab = decayed_add(*decayed_add(*start, 2.0, 0.0, DAY), 3.0, DAY, DAY)
    ba = decayed_add(*decayed_add(*start, 3.0, DAY, DAY), 2.0, 0.0, DAY)
    assert ab[0] == pytest.approx(4.0, rel=1e-12)
    assert ba[0] == pytest.approx(4.0, rel=1e-12)
    assert ab[1] == ba[1] == DAY


observations = st.lists(
    st.tuples(
        st.floats(min_value=0.0, max_value=100.0, allow_nan=False),  # amount
        st.floats(min_value=0.0, max_value=30 * DAY, allow_nan=False),  # timestamp
    ),
    min_size=1,
    max_size=12,
)


@given(observations, st.randoms(use_true_random=False))
def test_decayed_add_is_order_independent(
    obs: list[tuple[float, float]], rnd: random.Random
) -> None:
    half_life = 3 * DAY

    def fold(items: list[tuple[float, float]]) -> tuple[float, float]:
        value, as_of = 0.0, 0.0
        for amount, ts in items:
            value, as_of = decayed_add(value, as_of, amount, ts, half_life)
        return value, as_of

    shuffled = list(obs)
    rnd.shuffle(shuffled)
    forward, backward, mixed = fold(obs), fold(list(reversed(obs))), fold(shuffled)

    # Closed form: sum_i a_i * 2 ** (-(T - t_i) / h), T = latest timestamp.
    latest = max(ts for _, ts in obs)
    expected = sum(a * 2.0 ** (-(latest - ts) / half_life) for a, ts in obs)
    for value, as_of in (forward, backward, mixed):
        assert as_of == latest
        assert value == pytest.approx(expected, rel=1e-9, abs=1e-9)


# -- log forward-decayed scores ---------------------------------------------------------------


def test_log_forward_weight_known_value() -> None:
    # log(2 * 2 ** (3 half-lives)) = ln 2 + 3 ln 2 = 4 ln 2
    assert log_forward_weight(2.0, 3 * DAY, DAY) == pytest.approx(4 * LN2, rel=1e-12)
    assert log_forward_weight(1.0, 0.0, DAY) == 0.0


def test_log_forward_weight_rejects_non_positive_weight() -> None:
    with pytest.raises(ValueError):
        log_forward_weight(0.0, 10.0, DAY)
    with pytest.raises(ValueError):
        log_forward_weight(-1.0, 10.0, DAY)


def test_log_scores_rank_like_decayed_values() -> None:
    # X: weight 3 at t=0.  Y: weight 2 at t=1 day.  At 1 day X = 1.5 < Y = 2.
    # Z: weight 5 at t=0 -> 2.5 at 1 day, above Y.
    x = log_forward_weight(3.0, 0.0, DAY)
    y = log_forward_weight(2.0, DAY, DAY)
    z = log_forward_weight(5.0, 0.0, DAY)
    assert x < y < z


@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.01, max_value=100.0),
            st.floats(min_value=1.6e9, max_value=1.6e9 + 60 * DAY),
        ),
        min_size=2,
        max_size=2,
    )
)
def test_log_scores_rank_like_decayed_values_property(obs: list[tuple[float, float]]) -> None:
    half_life = 7 * DAY
    (wa, ta), (wb, tb) = obs
    at = max(ta, tb)
    decayed_a = wa * 2.0 ** (-(at - ta) / half_life)
    decayed_b = wb * 2.0 ** (-(at - tb) / half_life)
    log_a = log_forward_weight(wa, ta, half_life)
    log_b = log_forward_weight(wb, tb, half_life)
    if abs(decayed_a - decayed_b) > 1e-9 * max(decayed_a, decayed_b):
        assert (log_a < log_b) == (decayed_a < decayed_b)


def test_logaddexp_small_values_match_the_definition() -> None:
    # log(e^0 + e^0) = ln 2
    assert logaddexp(0.0, 0.0) == pytest.approx(LN2, rel=1e-12)
    # log(e^1 + e^2), computed directly (no overflow at this size)
    assert logaddexp(1.0, 2.0) == pytest.approx(math.log(math.e + math.e**2), rel=1e-12)
    assert logaddexp(2.0, 1.0) == pytest.approx(math.log(math.e + math.e**2), rel=1e-12)
    # log(1 + 3) = ln 4 = 2 ln 2
    assert logaddexp(0.0, math.log(3.0)) == pytest.approx(2 * LN2, rel=1e-12)


def test_logaddexp_large_inputs_do_not_overflow() -> None:
    # Realistic epoch times with a 1-day half-life give scores of about
    # 1.7e9 / 86400 * ln 2 ~ 13636, far beyond what exp() can take (~709).
    big = 13_636.0
    with pytest.raises(OverflowError):
        math.exp(big)
    # log(e^b + e^b) = b + ln 2
    assert logaddexp(big, big) == pytest.approx(big + LN2, rel=1e-15)
    # log(e^b + e^(b - ln 3)) = b + log(1 + 1/3) = b + log(4/3)
    assert logaddexp(big, big - math.log(3.0)) == pytest.approx(big + math.log(4.0 / 3.0), abs=1e-9)
    # A vastly smaller term contributes nothing measurable.
    assert logaddexp(big, -big) == big
    assert logaddexp(-big, big) == big


def test_merged_log_scores_equal_the_sum_of_decayed_weights() -> None:
    # weight 1 at t=0 and weight 4 at t=2 days, read at t=2 days: 1 * 0.25 + 4 = 4.25
    merged = logaddexp(log_forward_weight(1.0, 0.0, DAY), log_forward_weight(4.0, 2 * DAY, DAY))
    assert log_score_to_weight(merged, 2 * DAY, DAY) == pytest.approx(4.25, rel=1e-12)


def test_log_score_to_weight_round_trip_at_realistic_epoch_times() -> None:
    t = 1_700_000_000.0
    score = log_forward_weight(3.0, t, DAY)
    # read at the same moment: the weight itself
    assert log_score_to_weight(score, t, DAY) == pytest.approx(3.0, rel=1e-9)
    # read one half-life later: 3 / 2 = 1.5
    assert log_score_to_weight(score, t + DAY, DAY) == pytest.approx(1.5, rel=1e-9)
    # read three half-lives later: 3 / 8 = 0.375
    assert log_score_to_weight(score, t + 3 * DAY, DAY) == pytest.approx(0.375, rel=1e-9)


@given(
    st.floats(min_value=1e-6, max_value=1e6),
    st.floats(min_value=0.0, max_value=4e9),
    st.floats(min_value=60.0, max_value=365 * DAY),
)
def test_log_score_to_weight_round_trip_property(
    weight: float, ts: float, half_life: float
) -> None:
    score = log_forward_weight(weight, ts, half_life)
    assert math.isfinite(score)
    assert log_score_to_weight(score, ts, half_life) == pytest.approx(weight, rel=1e-6)
