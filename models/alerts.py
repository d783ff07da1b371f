"""Churn alerts: when to tell marketing, as a pure state machine in event time.

``update_alert(state, risk, as_of, policy) -> (state, alert | None)``. Rules:

* **Crossing**: an alert fires when the risk is at or above ``threshold`` while the user is
  *armed*. Firing disarms them, so one crossing gives at most one alert however long the risk
  stays high and however often it is re-scored.
* **Hysteresis**: a disarmed user is re-armed only once their risk falls below
  ``threshold - margin``; a risk wobbling around the threshold does not re-alert.
* **Cooldown**: no alert within ``cooldown_seconds`` (event time) of the user's previous one.
  A crossing inside the cooldown is not lost: the user stays armed, and the alert fires at the
  first score after the cooldown if the risk is still at or above the threshold.
* **First score**: a user scored for the first time at or above the threshold counts as a
  crossing when ``alert_on_first_score`` (the default); otherwise they start disarmed and
  alert only after coming back below ``threshold - margin`` and crossing again (use that to
  switch the service on over an existing customer base without a flood of old news).
* **Event time only**: a score older than the state's last one is stale (it was computed
  before something the state already reflects) and changes nothing.

The state is plain data (:meth:`AlertState.to_dict` is JSON) so the stream can keep it
beside the user's history and update both in one atomic write.
"""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

DAY = 86_400.0
# Fixed namespace for alert ids: uuid5(namespace, user + as_of) is the same on every worker
# and every replay, so a redelivered alert can be recognised downstream.
_ALERT_NAMESPACE = uuid.UUID("4f1f8f0e-6c1b-4b53-9d1e-3a6cb2a7c1d4")


@dataclass(frozen=True, slots=True)
class AlertPolicy:
    """When to alert (from settings)."""

    threshold: float
    margin: float = 0.1
    cooldown_seconds: float = 30 * DAY
    alert_on_first_score: bool = True

    def __post_init__(self) -> None:
        if not 0.0 < self.threshold <= 1.0:
            raise ValueError("threshold must lie in (0, 1]")
        if not 0.0 <= self.margin < self.threshold:
            raise ValueError("margin must lie in [0, threshold)")
        if not (math.isfinite(self.cooldown_seconds) and self.cooldown_seconds >= 0.0):
            raise ValueError("cooldown_seconds must be finite and >= 0")

    @property
    def rearm_below(self) -> float:
        return self.threshold - self.margin


@dataclass(frozen=True, slots=True)
class AlertState:
    """One user's alerting state."""

    armed: bool = True
    last_risk: float | None = None  # the previous score (an alert's previous_risk)
    scored_at: float | None = None  # event time of the previous score
    last_alert_at: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "armed": self.armed,
            "last_risk": self.last_risk,
            "scored_at": self.scored_at,
            "last_alert_at": self.last_alert_at,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AlertState:
        def optional(name: str) -> float | None:
            value = data.get(name)
            if value is None:
                return None
            number = float(value)
            if not math.isfinite(number):
                raise ValueError(f"alert state {name} is not finite")
            return number

        armed = data.get("armed", True)
        if not isinstance(armed, bool):
            raise ValueError("alert state armed must be a boolean")
        return cls(armed, optional("last_risk"), optional("scored_at"), optional("last_alert_at"))


@dataclass(frozen=True, slots=True)
class Alert:
    """What fired; the stream adds user, model version and reasons to make the message."""

    risk: float
    previous_risk: float | None
    threshold: float
    as_of: float


def update_alert(
    state: AlertState, risk: float, as_of: float, policy: AlertPolicy
) -> tuple[AlertState, Alert | None]:
    """The state after scoring ``risk`` as of ``as_of``, and the alert it fires, if any."""
    if not (math.isfinite(risk) and 0.0 <= risk <= 1.0):
        raise ValueError(f"risk must lie in [0, 1], got {risk!r}")
    if not math.isfinite(as_of):
        raise ValueError(f"as_of must be finite, got {as_of!r}")
    if state.scored_at is not None and as_of < state.scored_at:
        return state, None  # stale
    high = risk >= policy.threshold
    armed = state.armed or risk < policy.rearm_below
    if state.scored_at is None and high and not policy.alert_on_first_score:
        armed = False  # already high when first seen: not a crossing we watched happen
    cooled = state.last_alert_at is None or as_of - state.last_alert_at >= policy.cooldown_seconds
    if armed and high and cooled:
        alert = Alert(risk, state.last_risk, policy.threshold, as_of)
        return AlertState(False, risk, as_of, as_of), alert
    return AlertState(armed, risk, as_of, state.last_alert_at), None


def alert_id(user_id: str, as_of: float) -> str:
    """A deterministic id for the alert of ``user_id`` as of ``as_of`` (same on replays)."""
    return str(uuid.uuid5(_ALERT_NAMESPACE, f"{user_id}\x00{as_of!r}"))
