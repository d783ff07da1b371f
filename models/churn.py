"""Churn risk: labels at cutoffs, training, a model that is plain data, scoring and reasons.

Definitions (``H`` = horizon in days):

* A user **churns as of a cutoff** ``c`` when they place no order in ``(c, c + H]``. Churn is
  only defined for *customers*: users with at least one placed order at or before ``c``.
  Users who never bought are left out of training and get no risk (that is conversion, a
  different question).
* A **training example** is a customer's features as of a cutoff ``c`` (only events with
  ``ts <= c``, see :mod:`models.churn_features`) with the label above. Only cutoffs whose
  whole horizon lies before the end of the data are used, so no label is guessed from a
  horizon that has not happened yet; rows whose capped history cannot give exact features or
  labels at ``c`` are skipped.

The model is gradient-boosted trees (scikit-learn's ``HistGradientBoostingClassifier``, log
loss), the number of trees chosen by grouped cross-validation (a user's rows never straddle
folds), with ``monotonic_cst`` set from how each feature moves while a user is silent
(:data:`models.churn_features.SILENCE`): risk can only rise with features that grow in silence
(recency, overdue) and only fall with those that shrink (windowed counts, decayed clicks). So
**risk never falls while a customer stays silent** — by construction, and checked again on
every model loaded (:mod:`models.churn_trees`). The trees are exported node by node into
arrays and scored with numpy: no estimator object, no pickle.

The previous model, logistic regression on standardised ``log1p`` features with coefficient
signs bounded by the same directions (fitted with SciPy, since scikit-learn's
``LogisticRegression`` cannot bound signs; regularisation by grouped cross-validation), is kept:
``fit_churn_model(..., kind="logistic")`` fits it, models of that kind still load and score,
and the evaluation reports it beside the trees. The trees have the lower Brier score on every
simulator seed and on CDNOW, and the same or a higher ROC-AUC within the bootstrap noise
(README, "Churn risk").

A :class:`ChurnModel` scores ``calibrate(sigmoid(intercept + coef . z(x) + trees(x)))``: a
tree model has zero coefficients, a logistic one no trees. An isotonic recalibration
(non-decreasing, so the guarantee holds) is kept only if it lowers the validated Brier score
clearly; a log-loss fit is usually calibrated already.

:func:`encode_churn_model` / :func:`decode_churn_model` turn a model into JSON bytes and back,
validating every shape and value (no pickles: whoever can write the store cannot run code).
"""

from __future__ import annotations

import math
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson
from numpy.typing import NDArray

from models.churn_features import (
    DAY,
    DOWN,
    FEATURE_NAMES,
    FEATURES_VERSION,
    PLACED,
    SILENCE,
    STEADY,
    UP,
    ChurnDataError,
    ChurnHistory,
    exact_as_of,
    features_as_of,
    is_customer,
)
from models.churn_trees import (
    L2_REGULARIZATION,
    LEARNING_RATE,
    MAX_DEPTH,
    TreeEnsemble,
    choose_trees,
    export_trees,
    min_leaf,
    new_classifier,
)
from shoppulse.errors import ShopPulseError

FORMAT = "shoppulse-churn-2"  # adds trees; format 1 (logistic only) still loads
FORMATS = ("shoppulse-churn-1", FORMAT)
TREES, LOGISTIC = "trees", "logistic"
FloatArray = NDArray[np.float64]

# The features the model uses. Left out: spend totals (log spend = log orders + log average
# order value, so they would only split one effect between collinear coefficients and make
# the reasons unreadable) and raw reversal counts (their rates are kept).
MODEL_FEATURES: tuple[str, ...] = tuple(
    name
    for name in FEATURE_NAMES
    if name not in ("spend_total", "spend_90d", "spend_365d", "cancellations", "returns")
)
C_GRID = (0.01, 0.1, 1.0, 10.0)
CV_FOLDS = 5
# Isotonic recalibration must lower the validated Brier score by this share to be kept.
CALIBRATION_GAIN = 0.01
# A reason must move the log-odds by at least this much (x1.1 on the odds) to be told.
MIN_REASON_PUSH = 0.1


class ChurnModelError(ShopPulseError):
    """A churn model cannot be trained, published or loaded (too little data, NaN, bad data)."""


# -- labels and training examples -------------------------------------------------------------


def label_at(history: ChurnHistory, cutoff: float, horizon_days: float) -> bool:
    """True when the user places no order in ``(cutoff, cutoff + horizon_days]``.

    Says nothing about whether they were a customer at ``cutoff`` (``build_training_set``
    leaves non-customers out). Raises :class:`ChurnDataError` when the capped history has
    dropped orders from after ``cutoff``: the label is then unknown, not "churned".
    """
    until = history.dropped.until
    if until is not None and until > cutoff:
        raise ChurnDataError("the history no longer holds every order after this cutoff")
    end = cutoff + horizon_days * DAY
    return not any(cutoff < ts <= end for ts, _, status in history.orders if status == PLACED)


def training_cutoffs(
    data_end: float, horizon_days: float, count: int = 6, spacing_days: float = 30.0
) -> list[float]:
    """``count`` cutoffs ``spacing_days`` apart, the latest a whole UTC day at least a horizon
    before ``data_end`` (so every label has fully happened), oldest first."""
    latest = math.floor((data_end - horizon_days * DAY) / DAY) * DAY
    return [latest - k * spacing_days * DAY for k in reversed(range(count))]


@dataclass(frozen=True, slots=True)
class TrainingSet:
    """Rows of raw features (``FEATURE_NAMES`` order) with labels and where they came from."""

    features: FloatArray  # rows x len(FEATURE_NAMES)
    labels: NDArray[np.bool_]
    users: list[str]
    cutoffs: FloatArray  # the cutoff of each row
    horizon_days: float
    used_cutoffs: tuple[float, ...]
    skipped_cutoffs: tuple[float, ...]  # horizon not over by data_end
    skipped_inexact: int  # rows left out because the capped history was not exact there

    def __len__(self) -> int:
        return len(self.labels)


def build_training_set(
    histories: Mapping[str, ChurnHistory],
    cutoffs: Sequence[float],
    horizon_days: float,
    data_end: float,
) -> TrainingSet:
    """Features as of each cutoff and what happened in the horizon after it, for every user who
    was a customer at that cutoff. ``data_end`` is the end of the data (the service's clock):
    a cutoff whose horizon ends after it is skipped, never half-labelled."""
    if not horizon_days > 0.0:
        raise ValueError("horizon_days must be positive")
    used = tuple(c for c in cutoffs if c + horizon_days * DAY <= data_end)
    skipped = tuple(c for c in cutoffs if c + horizon_days * DAY > data_end)
    rows: list[list[float]] = []
    labels: list[bool] = []
    users: list[str] = []
    row_cutoffs: list[float] = []
    inexact = 0
    for user in sorted(histories):
        history = histories[user]
        for cutoff in used:
            features = features_as_of(history, cutoff)
            if not is_customer(features):
                continue
            if not exact_as_of(history, cutoff):
                inexact += 1
                continue
            rows.append([features[name] for name in FEATURE_NAMES])
            labels.append(label_at(history, cutoff, horizon_days))
            users.append(user)
            row_cutoffs.append(cutoff)
    return TrainingSet(
        np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES)),
        np.asarray(labels, dtype=np.bool_),
        users,
        np.asarray(row_cutoffs, dtype=np.float64),
        float(horizon_days),
        used,
        skipped,
        inexact,
    )


# -- the model as data --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ChurnModel:
    """``risk = calibrate(sigmoid(intercept + coef . (log1p(x) - mean) / scale + trees(x)))``.

    A tree model has ``coef`` all zero (``mean`` 0, ``scale`` 1) and its trees on the raw
    features; a logistic one has no trees. ``calibration_x``/``calibration_y`` are an isotonic
    map from that probability to the calibrated one (``np.interp``); both empty when it is used
    as is. ``reference`` is the average *retained* training customer in model space
    (``(log1p(x) - mean) / scale``): reasons say what sets a user apart from customers who stay
    (against the average customer, who in most shops has long gone, a clearly lapsing user
    would look unremarkable).
    """

    version: str
    features: tuple[str, ...]
    mean: FloatArray
    scale: FloatArray
    coef: FloatArray
    intercept: float
    horizon_days: float
    reference: FloatArray
    calibration_x: FloatArray = field(default_factory=lambda: np.zeros(0))
    calibration_y: FloatArray = field(default_factory=lambda: np.zeros(0))
    params: dict[str, Any] = field(default_factory=dict)
    trees: TreeEnsemble = field(default_factory=TreeEnsemble.empty)

    def __post_init__(self) -> None:
        _validate(self)

    @property
    def kind(self) -> str:
        return TREES if self.trees.trees else LOGISTIC

    def matrix(self, rows: Sequence[Mapping[str, float]]) -> FloatArray:
        """Feature dicts as rows in this model's feature order."""
        try:
            return np.asarray(
                [[float(row[name]) for name in self.features] for row in rows], dtype=np.float64
            ).reshape(len(rows), len(self.features))
        except KeyError as exc:
            raise ChurnModelError(f"features lack {exc.args[0]!r}") from exc

    def standardise(self, x: FloatArray) -> FloatArray:
        """Model space: ``(log1p(x) - mean) / scale``; negative inputs count as 0."""
        return (np.log1p(np.maximum(x, 0.0)) - self.mean) / self.scale

    def score_matrix(self, x: FloatArray) -> FloatArray:
        """Risks of rows already in this model's feature order."""
        if x.ndim != 2 or x.shape[1] != len(self.features):
            raise ChurnModelError(f"expected rows of {len(self.features)} features")
        if not np.isfinite(x).all():
            raise ChurnModelError("features must be finite")
        logits = self.trees.raw(x, self.intercept + self.standardise(x) @ self.coef)
        risk = 1.0 / (1.0 + np.exp(-np.clip(logits, -500.0, 500.0)))
        if len(self.calibration_x):
            risk = np.interp(risk, self.calibration_x, self.calibration_y)
        return np.asarray(np.clip(risk, 0.0, 1.0), dtype=np.float64)

    def score_many(self, rows: Sequence[Mapping[str, float]]) -> FloatArray:
        return self.score_matrix(self.matrix(rows))

    def score(self, features: Mapping[str, float]) -> float:
        """The churn risk in [0, 1] of one user's features."""
        return float(self.score_matrix(self.matrix([features]))[0])

    def typical(self) -> dict[str, float]:
        """The average retained training customer's features, in their own units."""
        raw = np.expm1(self.mean + self.scale * self.reference)
        return {name: float(v) for name, v in zip(self.features, raw, strict=True)}

    def contributions(self, features: Mapping[str, float]) -> dict[str, float]:
        """Each feature's push on the log-odds against the average retained customer."""
        return self.pushes(features, {name: (name,) for name in self.features})

    def pushes(
        self, features: Mapping[str, float], sets: Mapping[str, Sequence[str]]
    ) -> dict[str, float]:
        """How much each named set of features pushes the log-odds up against the average
        retained customer: the coefficients times the set's distances from them, plus, for the
        trees, how much lower the log-odds would be with the whole set at their values. (A set
        at once, because trees may read one fact from any of several features, recency or
        overdue: taking one away alone would show little.) Features the model lacks push 0."""
        x = self.matrix([features])
        linear = self.coef * (self.standardise(x)[0] - self.reference)
        columns = {name: n for n, name in enumerate(self.features)}
        chosen = {key: [columns[f] for f in names if f in columns] for key, names in sets.items()}
        result = {key: float(linear[cols].sum()) for key, cols in chosen.items()}
        if self.trees.trees:
            typical = np.expm1(self.mean + self.scale * self.reference)
            probes = np.repeat(x, len(chosen) + 1, axis=0)
            for row, cols in enumerate(chosen.values(), start=1):
                probes[row, cols] = typical[cols]
            raw = self.trees.raw(probes)
            for row, key in enumerate(chosen, start=1):
                result[key] += float(raw[0] - raw[row])
        return result


def risk_as_of(history: ChurnHistory, model: ChurnModel, as_of: float) -> float | None:
    """The user's risk as of ``as_of`` (None if they are not a customer by then)."""
    features = features_as_of(history, as_of)
    return model.score(features) if is_customer(features) else None


def _validate(model: ChurnModel) -> None:
    n = len(model.features)
    if n == 0 or len(set(model.features)) != n:
        raise ChurnModelError("a model needs distinct features")
    unknown = [name for name in model.features if name not in FEATURE_NAMES]
    if unknown:
        raise ChurnModelError(f"unknown features {unknown}")
    for name in ("mean", "scale", "coef", "reference"):
        array = getattr(model, name)
        if not isinstance(array, np.ndarray) or array.shape != (n,):
            raise ChurnModelError(f"{name} must hold {n} values")
        if not np.isfinite(array).all():
            raise ChurnModelError(f"{name} is not all finite")
    if not (model.scale > 0.0).all():
        raise ChurnModelError("scale must be positive")
    wrong = [
        name for name, c in zip(model.features, model.coef, strict=True) if c * SILENCE[name] < 0.0
    ]
    if wrong:
        # Such a model could lower a silent customer's risk: refuse it whoever made it.
        raise ChurnModelError(f"coefficients of {wrong} go against how silence moves them")
    if not math.isfinite(model.intercept):
        raise ChurnModelError("intercept is not finite")
    _validate_trees(model)
    if not (math.isfinite(model.horizon_days) and model.horizon_days > 0.0):
        raise ChurnModelError("horizon_days must be positive")
    _validate_calibration(model.calibration_x, model.calibration_y)


def _validate_trees(model: ChurnModel) -> None:
    trees = model.trees
    if not isinstance(trees, TreeEnsemble):
        raise ChurnModelError("trees must be a TreeEnsemble")
    if trees.trees == 0:
        return
    if (trees.feature >= len(model.features)).any():
        raise ChurnModelError("a tree splits on a feature the model does not have")
    wrong = trees.monotonic_violations([SILENCE[name] for name in model.features])
    if wrong:
        # As for coefficients: a silent customer's risk could fall. Refused whoever made it.
        names = [model.features[n] for n in wrong]
        raise ChurnModelError(f"trees split on {names} against how silence moves them")


def _validate_calibration(x: FloatArray, y: FloatArray) -> None:
    if x.ndim != 1 or y.shape != x.shape or len(x) == 1:
        raise ChurnModelError("calibration needs two arrays of equal length, none or >= 2")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ChurnModelError("calibration is not all finite")
    if len(x) and ((np.diff(x) < 0).any() or (np.diff(y) < 0).any()):
        raise ChurnModelError("calibration must be non-decreasing")
    if len(y) and (y.min() < 0.0 or y.max() > 1.0 or x.min() < 0.0 or x.max() > 1.0):
        raise ChurnModelError("calibration must map [0, 1] into [0, 1]")


def encode_churn_model(model: ChurnModel) -> bytes:
    """UTF-8 JSON; :func:`decode_churn_model` is the inverse (floats round-trip exactly)."""
    document = {
        "format": FORMAT,
        "features_version": FEATURES_VERSION,
        "version": model.version,
        "features": list(model.features),
        "mean": model.mean.tolist(),
        "scale": model.scale.tolist(),
        "coef": model.coef.tolist(),
        "intercept": model.intercept,
        "horizon_days": model.horizon_days,
        "reference": model.reference.tolist(),
        "calibration": {"x": model.calibration_x.tolist(), "y": model.calibration_y.tolist()},
        "trees": model.trees.to_trees(),
        "params": model.params,
    }
    return orjson.dumps(document, option=orjson.OPT_SERIALIZE_NUMPY)


def decode_churn_model(raw: bytes) -> ChurnModel:
    """A model from :func:`encode_churn_model`'s bytes; ChurnModelError if anything is off."""
    try:
        document = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ChurnModelError(f"churn model is not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") not in FORMATS:
        raise ChurnModelError("not a churn model of format " + " or ".join(FORMATS))
    if document.get("features_version") != FEATURES_VERSION:
        raise ChurnModelError(
            f"model features v{document.get('features_version')}, code v{FEATURES_VERSION}"
        )
    try:
        calibration = document["calibration"]
        trees = document["trees"] if document["format"] == FORMAT else []  # format 1: none
        if not isinstance(trees, list):
            raise ChurnModelError("trees must be a list")
        return ChurnModel(
            version=str(document["version"]),
            features=tuple(str(name) for name in document["features"]),
            mean=_floats(document["mean"]),
            scale=_floats(document["scale"]),
            coef=_floats(document["coef"]),
            intercept=float(document["intercept"]),
            horizon_days=float(document["horizon_days"]),
            reference=_floats(document["reference"]),
            calibration_x=_floats(calibration["x"]),
            calibration_y=_floats(calibration["y"]),
            params=dict(document["params"]),
            trees=TreeEnsemble.from_trees(trees, len(document["features"])),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ChurnModelError(f"churn model is malformed: {exc}") from exc


def _floats(values: Any) -> FloatArray:
    if not isinstance(values, list) or not all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in values
    ):
        raise ChurnModelError("expected a list of numbers")
    return np.asarray(values, dtype=np.float64)


# -- training -----------------------------------------------------------------------------------


def fit_churn_model(
    training: TrainingSet,
    version: str,
    features: Sequence[str] = MODEL_FEATURES,
    kind: str = TREES,
    c_grid: Sequence[float] = C_GRID,
    folds: int = CV_FOLDS,
    min_rows_per_class: int = 20,
) -> ChurnModel:
    """Fit the model on ``training``: its regularisation (the number of trees, or C for
    ``kind="logistic"``) by grouped cross-validated log loss, recalibration only if it clearly
    helps, then a refit on every row.

    Raises ChurnModelError when either class has fewer than ``min_rows_per_class`` rows (a
    young shop: keep serving the previous model, or none).
    """
    if kind not in (TREES, LOGISTIC):
        raise ValueError(f"kind must be {TREES!r} or {LOGISTIC!r}")
    y = training.labels.astype(np.float64)
    positives = int(y.sum())
    if min(positives, len(y) - positives) < min_rows_per_class:
        raise ChurnModelError(
            f"too few examples to train: {positives} churned, {len(y) - positives} stayed"
        )
    columns = [FEATURE_NAMES.index(name) for name in features]
    raw = np.maximum(training.features[:, columns], 0.0)
    z = np.log1p(raw)
    fold = _folds(training.users, folds)
    signs = [SILENCE[name] for name in features]
    n = len(columns)
    from threadpoolctl import threadpool_limits

    # Products of a few thousand rows by ~20 columns: BLAS threads only fight each other (and
    # the stream worker next door); one thread is several times faster here.
    with threadpool_limits(limits=1, user_api="blas"):
        if kind == LOGISTIC:
            c, oof = _choose_c(z, y, fold, c_grid, signs)
            calibration, brier = _choose_calibration(oof, y, fold)
            mean, scale, coef, intercept = _fit_logistic(z, y, c, signs)
            trees = TreeEnsemble.empty()
            chosen: dict[str, Any] = {"c": c}
        else:
            count, oof = choose_trees(raw, y, fold, signs)
            calibration, brier = _choose_calibration(oof, y, fold)
            try:
                intercept, trees = export_trees(new_classifier(signs, count, len(y)).fit(raw, y))
            except ValueError as exc:
                raise ChurnModelError(f"the fitted trees cannot be exported: {exc}") from exc
            mean, scale, coef = np.zeros(n), np.ones(n), np.zeros(n)
            if not (math.isfinite(intercept) and np.isfinite(trees.value).all()):
                raise ChurnModelError("training produced non-finite trees")
            chosen = {
                "trees": count,
                "learning_rate": LEARNING_RATE,
                "max_depth": MAX_DEPTH,
                "min_samples_leaf": min_leaf(len(y)),
                "l2_regularization": L2_REGULARIZATION,
            }
    reference = (z[y == 0.0].mean(axis=0) - mean) / scale
    params = {
        "kind": kind,
        **chosen,
        "rows": len(y),
        "churned": positives,
        "cutoffs": list(training.used_cutoffs),
        "calibration": "isotonic" if len(calibration[0]) else "none",
        # Out-of-fold (users unseen in fitting) figures; brier after the chosen calibration.
        "validation": {**binary_metrics(y, oof), "brier": brier},
        "trained_at": time.time(),
    }
    return ChurnModel(
        version,
        tuple(features),
        mean,
        scale,
        coef,
        intercept,
        training.horizon_days,
        reference,
        calibration[0],
        calibration[1],
        params,
        trees,
    )


def _folds(users: Sequence[str], folds: int) -> NDArray[np.int64]:
    """A fold per row from a stable hash of its user: a user's rows never straddle folds."""
    return np.asarray([zlib.crc32(user.encode()) % folds for user in users], dtype=np.int64)


def _fit_logistic(
    z: FloatArray, y: FloatArray, c: float, signs: Sequence[int]
) -> tuple[FloatArray, FloatArray, FloatArray, float]:
    """L2-regularised logistic regression on standardised ``z`` with sign-bounded coefficients.

    scikit-learn's ``LogisticRegression`` cannot bound coefficient signs, and the bounds are
    what make a silent customer's risk rise (:data:`models.churn_features.SILENCE`): the same
    objective (log loss + ``|w|^2 / 2C``, intercept free) is minimised with SciPy's L-BFGS-B.
    """
    from scipy.optimize import minimize  # only training needs SciPy's optimiser

    mean = z.mean(axis=0)
    scale = z.std(axis=0)
    scale = np.where(scale > 1e-9, scale, 1.0)  # a constant feature (no clickstream) stays 0
    x = (z - mean) / scale

    def objective(w: FloatArray) -> tuple[float, FloatArray]:
        logits = w[0] + x @ w[1:]
        loss = np.sum(np.logaddexp(0.0, logits) - y * logits) + 0.5 / c * w[1:] @ w[1:]
        residual = 1.0 / (1.0 + np.exp(-logits)) - y
        gradient = np.concatenate([[residual.sum()], x.T @ residual + w[1:] / c])
        return float(loss), gradient

    bounds = [(None, None)] + [_SIGN_BOUNDS[sign] for sign in signs]
    start = np.zeros(x.shape[1] + 1)
    found = minimize(
        objective, start, jac=True, method="L-BFGS-B", bounds=bounds, options={"maxiter": 5000}
    )
    coef = np.asarray(found.x[1:], dtype=np.float64)
    intercept = float(found.x[0])
    if not (np.isfinite(coef).all() and math.isfinite(intercept)):
        raise ChurnModelError("training produced non-finite coefficients")
    return mean, scale, coef, intercept


_SIGN_BOUNDS: dict[int, tuple[float | None, float | None]] = {
    UP: (0.0, None),
    DOWN: (None, 0.0),
    STEADY: (None, None),
}


def _logistic(
    z: FloatArray, mean: FloatArray, scale: FloatArray, coef: FloatArray, b: float
) -> FloatArray:
    return np.asarray(1.0 / (1.0 + np.exp(-(b + ((z - mean) / scale) @ coef))), dtype=np.float64)


def _choose_c(
    z: FloatArray,
    y: FloatArray,
    fold: NDArray[np.int64],
    c_grid: Sequence[float],
    signs: Sequence[int],
) -> tuple[float, FloatArray]:
    """The C with the lowest out-of-fold log loss, and its out-of-fold probabilities."""
    best: tuple[float, float, FloatArray] | None = None
    for c in c_grid:
        oof = np.zeros(len(y))
        for k in np.unique(fold):
            train, valid = fold != k, fold == k
            if len(np.unique(y[train])) < 2:
                oof[valid] = y[train].mean()
                continue
            mean, scale, coef, b = _fit_logistic(z[train], y[train], c, signs)
            oof[valid] = _logistic(z[valid], mean, scale, coef, b)
        loss = _log_loss(y, oof)
        if best is None or loss < best[0] - 1e-12:
            best = (loss, c, oof)
    assert best is not None, "c_grid must not be empty"
    return best[1], best[2]


def _choose_calibration(
    oof: FloatArray, y: FloatArray, fold: NDArray[np.int64]
) -> tuple[tuple[FloatArray, FloatArray], float]:
    """Isotonic recalibration if, fitted on the other folds' out-of-fold probabilities, it
    lowers each fold's Brier score by CALIBRATION_GAIN overall; else none."""
    from sklearn.isotonic import IsotonicRegression

    raw = float(np.mean((oof - y) ** 2))
    recalibrated = np.zeros(len(y))
    for k in np.unique(fold):
        train, valid = fold != k, fold == k
        iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        recalibrated[valid] = iso.fit(oof[train], y[train]).predict(oof[valid])
    calibrated = float(np.mean((recalibrated - y) ** 2))
    if calibrated > raw * (1.0 - CALIBRATION_GAIN):
        return (np.zeros(0), np.zeros(0)), raw
    iso = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(oof, y)
    x = np.asarray(iso.X_thresholds_, dtype=np.float64)
    return (x, np.asarray(iso.y_thresholds_, dtype=np.float64)), calibrated


def _log_loss(y: FloatArray, p: FloatArray) -> float:
    p = np.clip(p, 1e-12, 1.0 - 1e-12)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)))


def binary_metrics(y: NDArray[Any], p: NDArray[Any]) -> dict[str, float]:
    """ROC-AUC, PR-AUC (average precision, churn is the positive class), Brier, log loss."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    truth = np.asarray(y, dtype=np.float64)
    prob = np.asarray(p, dtype=np.float64)
    both = 0.0 < truth.mean() < 1.0
    return {
        "roc_auc": float(roc_auc_score(truth, prob)) if both else math.nan,
        "pr_auc": float(average_precision_score(truth, prob)) if both else math.nan,
        "brier": float(np.mean((prob - truth) ** 2)),
        "log_loss": _log_loss(truth, prob),
    }


# -- reasons ------------------------------------------------------------------------------------

# Features that tell one story are summed into one reason, so correlated features cannot
# crowd the top three with the same fact, and coefficients split between collinear features
# (recency and activity recency in an orders-only shop) still add up.
REASON_GROUPS: dict[str, tuple[str, ...]] = {
    "rhythm": ("recency_days", "overdue", "gap_mean_days", "gap_std_days", "last_gap_ratio"),
    "frequency": ("orders_total", "orders_30d", "orders_90d", "orders_365d", "tenure_days"),
    "slowdown": ("order_trend",),
    "value": ("avg_order_value", "spend_total", "spend_90d", "spend_365d"),
    "reversals": ("cancellations", "returns", "reversal_rate", "refund_share"),
    "activity": ("activity_recency_days",),
    "engagement": (
        "has_clickstream",
        "views_30d",
        "active_days_30d",
        "views_decayed",
        "sessions_decayed",
        "view_trend",
    ),
    "cart": ("cart_adds_decayed", "carts_abandoned"),
}

# A group speaks only if its key features push up too: a group can come out positive from
# coefficients of collinear features cancelling each other, and then its words would be wrong.
REASON_KEYS: dict[str, tuple[str, ...]] = {
    "rhythm": ("overdue", "recency_days"),
    "frequency": ("orders_365d", "orders_90d"),
    "slowdown": ("order_trend",),
    "value": ("avg_order_value",),
    "reversals": ("reversal_rate", "refund_share"),
    "activity": ("activity_recency_days",),
    "engagement": (
        "views_30d",
        "active_days_30d",
        "views_decayed",
        "sessions_decayed",
        "view_trend",
    ),
    "cart": ("carts_abandoned",),
}


def reasons(features: Mapping[str, float], model: ChurnModel, top: int = 3) -> list[str]:
    """What pushes this user's risk up most against customers who stay, strongest first, in
    words a marketer reads (e.g. "no order for 94 days, usually orders every 21 days"); at
    most ``top``, possibly none for a user who looks like those who stay."""
    group_sets = dict(REASON_GROUPS)
    key_sets = dict(REASON_KEYS)
    if features["has_clickstream"] < 1.0:
        # Without clickstream, activity recency is order recency: one story, told once.
        group_sets["rhythm"] += group_sets.pop("activity")
        key_sets["rhythm"] += key_sets.pop("activity")
    pushes = model.pushes(
        features, {**group_sets, **{f"key:{name}": names for name, names in key_sets.items()}}
    )
    groups = {name: pushes[name] for name in group_sets}
    keys = {name: pushes[f"key:{name}"] for name in key_sets}
    told = [(push, name) for name, push in groups.items() if push >= MIN_REASON_PUSH]
    ranked = [name for _, name in sorted(told, reverse=True) if keys[name] > 0.0]
    typical = model.typical()
    texts = (_REASON_TEXT[name](features, typical) for name in _untold_twice(ranked, features))
    return [text for text in texts if text][:top]


def _untold_twice(ranked: list[str], f: Mapping[str, float]) -> list[str]:
    """Drop groups whose story another group already tells: the order rhythm also tells the
    last visit; silence in days says more than "no visits in the last 30 days"."""
    if "rhythm" in ranked:
        ranked = [name for name in ranked if name != "activity"]
    silent = f["activity_recency_days"] >= 30.0
    if f["views_30d"] == 0 and silent and ({"rhythm", "activity"} & set(ranked)):
        ranked = [name for name in ranked if name != "engagement"]
    return ranked


# Each text gets the user's features and the typical retained customer's (model features
# only). Features whose coefficient sign is free can push risk up from either side; a text
# that names a direction ("slowed down", "more returns") checks it is the user's side.


def _n(value: float) -> int:
    return round(value)


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _below(f: Mapping[str, float], typical: Mapping[str, float], name: str) -> bool:
    return name not in typical or f[name] < typical[name]


def _rhythm_text(f: Mapping[str, float], typical: Mapping[str, float]) -> str | None:
    days = _n(f["recency_days"])
    if days < 1:
        return None
    visit = _n(f["activity_recency_days"])
    if f["has_clickstream"] < 1.0:
        silence = f"no order for {days} days"
    elif visit >= days - 1:
        silence = f"no order or visit for {days} days"
    else:
        silence = f"no order for {days} days (last visit {_plural(visit, 'day')} ago)"
    if f["orders_total"] >= 2 and _n(f["gap_mean_days"]) < 1:
        return f"{silence}, since the one day they placed all {_n(f['orders_total'])} orders"
    if f["orders_total"] >= 2:
        return f"{silence}, usually orders every {_n(f['gap_mean_days'])} days"
    return f"{silence} since their first and only order"


def _frequency_text(f: Mapping[str, float], typical: Mapping[str, float]) -> str | None:
    if f["orders_90d"] == 0 and f["orders_365d"] > 0:
        earlier = _plural(_n(f["orders_365d"]), "order")
        return f"no order in the last 90 days, against {earlier} in the 9 months before"
    if f["orders_total"] <= 2:
        orders = _plural(_n(f["orders_total"]), "order")
        return f"only {orders} in {_n(f['tenure_days'])} days as a customer"
    return f"only {_plural(_n(f['orders_365d']), 'order')} in the last year"


def _slowdown_text(f: Mapping[str, float], typical: Mapping[str, float]) -> str | None:
    if f["order_trend"] < 1.0 and _below(f, typical, "order_trend"):
        return "ordering slowed down before their last order"
    return None


def _value_text(f: Mapping[str, float], typical: Mapping[str, float]) -> str | None:
    if "avg_order_value" not in typical:
        return None
    mine, usual = f["avg_order_value"], typical["avg_order_value"]
    return f"orders of {mine:.2f} on average, against {usual:.2f} for customers who stay"


def _reversals_text(f: Mapping[str, float], typical: Mapping[str, float]) -> str | None:
    reversed_ = _n(f["cancellations"] + f["returns"])
    more = not _below(f, typical, "reversal_rate") or not _below(f, typical, "refund_share")
    if reversed_ < 1 or not more:
        return None
    return f"cancelled or returned {reversed_} of {_plural(_n(f['orders_total']), 'order')}"


def _activity_text(f: Mapping[str, float], typical: Mapping[str, float]) -> str | None:
    days = _n(f["activity_recency_days"])
    return f"no visit or order for {days} days" if days >= 7 else None


def _engagement_text(f: Mapping[str, float], typical: Mapping[str, float]) -> str | None:
    if f["has_clickstream"] < 1.0:
        return None
    views = _n(f["views_30d"])
    if views == 0:
        return "no visits in the last 30 days"
    if not _below(f, typical, "views_30d") and not _below(f, typical, "view_trend"):
        return None
    days = _plural(_n(f["active_days_30d"]), "day")
    return f"browsing less: {_plural(views, 'page view')} on {days} in the last 30 days"


def _cart_text(f: Mapping[str, float], typical: Mapping[str, float]) -> str | None:
    carts = _n(f["carts_abandoned"])
    if carts < 1 or _below(f, typical, "carts_abandoned"):
        return None
    return f"left {_plural(carts, 'item')} in the cart without ordering"


_REASON_TEXT = {
    "rhythm": _rhythm_text,
    "frequency": _frequency_text,
    "slowdown": _slowdown_text,
    "value": _value_text,
    "reversals": _reversals_text,
    "activity": _activity_text,
    "engagement": _engagement_text,
    "cart": _cart_text,
}
