"""Exponential time decay in event time.

Two representations:

* a *decayed value as of a timestamp* ``(value, ts)``, updated with :func:`decayed_add`; it
  accepts out-of-order amounts by decaying whichever side is older, so the result does not
  depend on arrival order;
* a *log forward-decayed score*, ``log(sum_i w_i * 2 ** (t_i / half_life))``, whose order is the
  order of the decayed values at any common time. It never overflows (unlike the plain forward
  decay landmark trick over years of data) and can be merged with :func:`logaddexp`, which is
  what popularity sorted sets in Redis store.
"""

from __future__ import annotations

import math

LN2 = math.log(2.0)


def decay_factor(elapsed: float, half_life: float) -> float:
    """Weight left after ``elapsed`` seconds with the given half-life; 1.0 for elapsed <= 0."""
    if elapsed <= 0.0:
        return 1.0
    return math.exp(-LN2 * elapsed / half_life)


def decayed_value_at(value: float, value_ts: float, at_ts: float, half_life: float) -> float:
    """A decayed value known as of ``value_ts``, read at ``at_ts``.

    Reading before ``value_ts`` returns ``value`` unchanged: decay never runs backwards.
    """
    return value * decay_factor(at_ts - value_ts, half_life)


def decayed_add(
    value: float, value_ts: float, amount: float, amount_ts: float, half_life: float
) -> tuple[float, float]:
    """Add ``amount`` observed at ``amount_ts`` to ``value`` known as of ``value_ts``.

    Returns the new ``(value, as_of)``, with ``as_of`` the later of the two timestamps.
    """
    if amount_ts >= value_ts:
        return decayed_value_at(value, value_ts, amount_ts, half_life) + amount, amount_ts
    return value + decayed_value_at(amount, amount_ts, value_ts, half_life), value_ts


def log_forward_weight(weight: float, ts: float, half_life: float) -> float:
    """``log(weight * 2 ** (ts / half_life))``: one observation as a log forward-decayed score."""
    if weight <= 0.0:
        raise ValueError("log_forward_weight needs a positive weight")
    return math.log(weight) + LN2 * ts / half_life


def logaddexp(a: float, b: float) -> float:
    """``log(exp(a) + exp(b))`` without overflow."""
    high, low = (a, b) if a >= b else (b, a)
    return high + math.log1p(math.exp(low - high))


def log_score_to_weight(log_score: float, at_ts: float, half_life: float) -> float:
    """The decayed weight, as of ``at_ts``, behind a log forward-decayed score."""
    return math.exp(log_score - LN2 * at_ts / half_life)
