"""Customer segments (K-means on RFM) and lifetime value for the next H days, as plain data.

**Segments.** Each customer is a point ``(recency_days, orders_total, spend_total)`` from
:func:`models.churn_features.features_as_of`; ``log1p`` tames the long tails (one customer
with 300 orders must not own a cluster), standardising makes the three count equally.
scikit-learn's K-means fits the centroids; a :class:`SegmentModel` keeps only the scaler and
the centroids, and assigns with numpy (nearest centroid). Each centroid gets a readable label by
matching it to archetypes (:data:`ARCHETYPES`, e.g. "champions": bought recently, often, a lot;
"at risk": often and a lot, but not lately) with one-to-one assignment, so two clusters never
share a label.

**Lifetime value** over the next ``H`` days::

    clv = P(buys in H) * E[orders in H | buys] * expected order value
        = (1 - churn_risk) * (lam H / (1 - exp(-lam H))) * aov * (1 - refund_share)

where ``churn_risk`` is the churn model's ``P(no order in H)``, ``lam`` is the customer's order
rate while active (Gamma-Poisson: a population Gamma(r, alpha) prior on the daily rate updated
with their repeat orders over their tenure, so one order does not mean "never again" nor
"daily") and ``aov`` their average order value shrunk towards the population's. If they order
at all in ``H``, a Poisson count conditioned on at least one has mean ``lam H / (1 - e^-lam H)``
(-> 1 when ``lam H`` is small), which ties the value to the calibrated churn risk.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from shoppulse.errors import ShopPulseError

FORMAT = "shoppulse-segments-1"
FloatArray = NDArray[np.float64]
RFM = ("recency_days", "orders_total", "spend_total")
# Archetype centroids in standardised (recency score, frequency, monetary) space, where the
# recency score is the *negated* standardised recency (higher = bought more recently).
ARCHETYPES: dict[str, tuple[float, float, float]] = {
    "champions": (1.2, 1.5, 1.5),  # bought lately, often, a lot
    "loyal": (0.8, 0.8, 0.6),  # often, and lately
    "new": (1.0, -0.8, -0.6),  # lately, once
    "promising": (0.6, -0.2, -0.1),  # lately, a few times
    "needs attention": (0.0, 0.2, 0.2),  # average everything
    # Often and a lot, not lately. Its recency sits near the middle on purpose: in most shops
    # the average customer has long gone, so "a while ago" for a frequent buyer is average.
    "at risk": (-0.3, 1.0, 1.0),
    "hibernating": (-0.8, -0.6, -0.5),  # long ago, little
    "lost": (-1.5, -0.8, -0.7),  # longest ago, least
}
AOV_PRIOR_ORDERS = 1.0  # the population's average order value counts as this many orders
_MIN_TENURE_DAYS = 30.0  # rates from shorter tenures are too noisy to fit the prior with


class SegmentModelError(ShopPulseError):
    """A segment model cannot be fitted or loaded (too few customers, bad data)."""


@dataclass(frozen=True, slots=True)
class SegmentModel:
    """Scaler, centroids and labels of the segments, and the lifetime-value priors."""

    version: str
    mean: FloatArray  # of log1p(RFM), shape (3,)
    scale: FloatArray  # shape (3,)
    centroids: FloatArray  # standardised, shape (k, 3)
    labels: tuple[str, ...]  # one per centroid, distinct
    rate_shape: float  # Gamma prior on the daily order rate: shape r ...
    rate_rate: float  # ... and rate alpha (mean r / alpha orders per day)
    mean_order_value: float  # population average order value
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        _validate(self)

    def standardise(self, rows: FloatArray) -> FloatArray:
        return (np.log1p(np.maximum(rows, 0.0)) - self.mean) / self.scale

    def assign_matrix(self, rows: FloatArray) -> NDArray[np.int64]:
        """Nearest centroid of each ``(recency_days, orders_total, spend_total)`` row."""
        z = self.standardise(np.asarray(rows, dtype=np.float64).reshape(-1, len(RFM)))
        distances = ((z[:, None, :] - self.centroids[None, :, :]) ** 2).sum(axis=2)
        return np.asarray(distances.argmin(axis=1), dtype=np.int64)

    def segment(self, features: Mapping[str, float]) -> str:
        """The label of the customer's segment."""
        return self.labels[int(self.assign_matrix(rfm_row(features))[0])]

    def order_rate(self, features: Mapping[str, float]) -> float:
        """Posterior mean daily order rate while active (Gamma-Poisson)."""
        repeats = max(features["orders_total"] - 1.0, 0.0)
        return (self.rate_shape + repeats) / (self.rate_rate + max(features["tenure_days"], 0.0))

    def clv(self, features: Mapping[str, float], churn_risk: float, horizon_days: float) -> float:
        """Expected net spend in the next ``horizon_days`` (see the module docstring)."""
        if not (0.0 <= churn_risk <= 1.0) or not horizon_days > 0.0:
            raise ValueError("churn_risk must lie in [0, 1] and horizon_days be positive")
        expected = self.order_rate(features) * horizon_days
        # E[N | N >= 1] for a Poisson count; its limit is 1 as the rate goes to 0.
        if_buying = expected / -math.expm1(-expected) if expected > 1e-9 else 1.0 + expected / 2
        orders = features["orders_total"]
        aov = (orders * features["avg_order_value"] + AOV_PRIOR_ORDERS * self.mean_order_value) / (
            orders + AOV_PRIOR_ORDERS
        )
        kept = 1.0 - min(max(features["refund_share"], 0.0), 1.0)
        return (1.0 - churn_risk) * if_buying * aov * kept

    def describe(self) -> list[dict[str, Any]]:
        """Each segment's label and centroid in days, orders and money (for reports)."""
        raw = np.expm1(self.centroids * self.scale + self.mean)
        return [
            {"label": label, **{name: float(v) for name, v in zip(RFM, row, strict=True)}}
            for label, row in zip(self.labels, raw, strict=True)
        ]


def rfm_row(features: Mapping[str, float]) -> FloatArray:
    return np.asarray([[float(features[name]) for name in RFM]], dtype=np.float64)


# -- fitting ------------------------------------------------------------------------------------


def fit_segments(
    customers: Sequence[Mapping[str, float]], version: str, k: int = 5, seed: int = 0
) -> SegmentModel:
    """Segments and value priors from customers' features (as of the clock)."""
    # Imported here: stream workers only assign and never need scikit-learn.
    from sklearn.cluster import KMeans

    if not 2 <= k <= len(ARCHETYPES):
        raise SegmentModelError(f"k must lie in 2..{len(ARCHETYPES)}")
    rows = np.vstack([rfm_row(f) for f in customers]) if customers else np.zeros((0, 3))
    if len(np.unique(rows, axis=0)) < k:
        raise SegmentModelError(f"need at least {k} distinct customers to fit {k} segments")
    logged = np.log1p(np.maximum(rows, 0.0))
    mean = logged.mean(axis=0)
    scale = np.where(logged.std(axis=0) > 1e-9, logged.std(axis=0), 1.0)
    fitted = KMeans(n_clusters=k, n_init=10, random_state=seed).fit((logged - mean) / scale)
    centroids = np.asarray(fitted.cluster_centers_, dtype=np.float64)
    shape, rate = fit_rate_prior(customers)
    spend = sum(f["spend_total"] for f in customers)
    orders = sum(f["orders_total"] for f in customers)
    return SegmentModel(
        version,
        mean,
        scale,
        centroids,
        label_centroids(centroids),
        shape,
        rate,
        spend / orders if orders > 0 else 0.0,
        {"k": k, "seed": seed, "customers": len(customers), "trained_at": time.time()},
    )


def label_centroids(centroids: FloatArray) -> tuple[str, ...]:
    """A distinct archetype label per standardised centroid, by least total distance."""
    from scipy.optimize import linear_sum_assignment

    names = list(ARCHETYPES)
    archetypes = np.asarray([ARCHETYPES[name] for name in names])
    # Recency score: recent is good, so compare against the negated recency.
    points = centroids * np.asarray([-1.0, 1.0, 1.0])
    cost = ((points[:, None, :] - archetypes[None, :, :]) ** 2).sum(axis=2)
    rows, cols = linear_sum_assignment(cost)
    labels = [""] * len(centroids)
    for row, col in zip(rows, cols, strict=True):
        labels[int(row)] = names[int(col)]
    return tuple(labels)


def fit_rate_prior(customers: Sequence[Mapping[str, float]]) -> tuple[float, float]:
    """Gamma(shape, rate) prior on daily order rates, by the method of moments.

    Raw rates ``repeats / tenure`` of customers with at least a month of tenure have mean
    ``m``; their variance, less the Poisson noise ``mean(rate / tenure)``, estimates the
    variance ``v`` of true rates; then ``shape = m^2 / v`` and ``rate = m / v``.
    """
    pairs = [
        (max(f["orders_total"] - 1.0, 0.0), f["tenure_days"])
        for f in customers
        if f["tenure_days"] >= _MIN_TENURE_DAYS
    ]
    if not pairs:
        return 1.0, 60.0  # one order per 60 days, as weak as one observed gap
    raw = np.asarray([x / t for x, t in pairs])
    tenure = np.asarray([t for _, t in pairs])
    m = max(float(raw.mean()), 1e-6)
    v = max(float(raw.var() - (raw / tenure).mean()), m * m / 100.0)
    return m * m / v, m / v


# -- storage ------------------------------------------------------------------------------------


def _validate(model: SegmentModel) -> None:
    for name, shape in (("mean", (3,)), ("scale", (3,))):
        array = getattr(model, name)
        if not isinstance(array, np.ndarray) or array.shape != shape:
            raise SegmentModelError(f"{name} must hold 3 values")
    c = model.centroids
    if not isinstance(c, np.ndarray) or c.ndim != 2 or c.shape[1] != 3 or len(c) < 1:
        raise SegmentModelError("centroids must be a k x 3 array")
    if len(model.labels) != len(c) or len(set(model.labels)) != len(c):
        raise SegmentModelError("need one distinct label per centroid")
    arrays = (model.mean, model.scale, c)
    if not all(np.isfinite(a).all() for a in arrays):
        raise SegmentModelError("segment arrays are not all finite")
    if not (model.scale > 0.0).all():
        raise SegmentModelError("scale must be positive")
    numbers = (model.rate_shape, model.rate_rate, model.mean_order_value)
    if not all(math.isfinite(v) for v in numbers) or min(numbers[:2]) <= 0.0:
        raise SegmentModelError("value priors must be finite and positive")
    if model.mean_order_value < 0.0:
        raise SegmentModelError("mean order value must be >= 0")


def encode_segment_model(model: SegmentModel) -> bytes:
    """UTF-8 JSON; :func:`decode_segment_model` is the inverse."""
    return orjson.dumps(
        {
            "format": FORMAT,
            "version": model.version,
            "features": list(RFM),
            "mean": model.mean.tolist(),
            "scale": model.scale.tolist(),
            "centroids": model.centroids.tolist(),
            "labels": list(model.labels),
            "rate_shape": model.rate_shape,
            "rate_rate": model.rate_rate,
            "mean_order_value": model.mean_order_value,
            "params": model.params,
        }
    )


def decode_segment_model(raw: bytes) -> SegmentModel:
    """A model from :func:`encode_segment_model`'s bytes; SegmentModelError if anything is off."""
    try:
        document = orjson.loads(raw)
        if not isinstance(document, dict) or document.get("format") != FORMAT:
            raise SegmentModelError("not a segment model of format " + FORMAT)
        if document.get("features") != list(RFM):
            raise SegmentModelError(f"segment features must be {list(RFM)}")
        return SegmentModel(
            version=str(document["version"]),
            mean=_numbers(document["mean"]),
            scale=_numbers(document["scale"]),
            centroids=_numbers(document["centroids"]),
            labels=tuple(str(label) for label in document["labels"]),
            rate_shape=float(document["rate_shape"]),
            rate_rate=float(document["rate_rate"]),
            mean_order_value=float(document["mean_order_value"]),
            params=dict(document["params"]),
        )
    except orjson.JSONDecodeError as exc:
        raise SegmentModelError(f"segment model is not JSON: {exc}") from exc
    except (KeyError, TypeError, ValueError) as exc:
        raise SegmentModelError(f"segment model is malformed: {exc}") from exc


def _numbers(values: Any) -> FloatArray:
    """A list (of lists) of plain numbers as a float array; anything else is refused."""
    array = np.asarray(values, dtype=object)
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in array.ravel()):
        raise SegmentModelError("expected numbers")
    return np.asarray(values, dtype=np.float64)
