"""The soak's verdicts: slopes over the second half of the run, on known series."""

from __future__ import annotations

import pytest

from shoppulse.soak import Sample, second_half, slope_per_minute, verdicts

MIB = 1024 * 1024


def series(rss_mib_per_min: float, backlog_per_min: float, seconds: int = 120) -> list[Sample]:
    return [
        Sample(
            t=float(t),
            published=1000 * t + int(backlog_per_min * t / 60),
            seen=1000 * t,
            rss_bytes=int((150 + rss_mib_per_min * t / 60) * MIB),
            redis_used_bytes=500 * MIB,
            namespace_bytes=int((40 + (10 if t < 60 else 0) * t / 60) * MIB),
            keys=1000,
        )
        for t in range(0, seconds + 1, 5)
    ]


def test_slope_per_minute_of_a_line() -> None:
    assert slope_per_minute([0, 30, 60, 90], [1, 2, 3, 4]) == pytest.approx(2.0)
    assert slope_per_minute([0, 1], [0, 1]) is None


def test_second_half_starts_in_the_middle() -> None:
    half = second_half(series(0, 0))
    assert half[0].t == 60 and half[-1].t == 120


def test_flat_run() -> None:
    v = verdicts(series(0.0, 0.0), rate=1000)
    assert v["memory_flat"] and v["redis_bounded"] and v["lag_not_growing"]
    assert v["worker_rss_mib_per_min"] == pytest.approx(0, abs=0.01)
    # Namespace memory grew in the first half only (caps filling), so it counts as bounded.
    assert v["redis_namespace_mib_per_min"] == pytest.approx(0, abs=0.01)


def test_leaking_worker_and_growing_backlog() -> None:
    v = verdicts(series(rss_mib_per_min=5.0, backlog_per_min=5000.0), rate=1000)
    assert not v["memory_flat"]
    assert v["worker_rss_mib_per_min"] == pytest.approx(5.0, rel=0.01)
    assert not v["lag_not_growing"]
    assert v["backlog_events_per_min"] == pytest.approx(5000, rel=0.02)
