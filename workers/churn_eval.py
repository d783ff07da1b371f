"""Offline churn evaluation: on the built-in shop simulator against its ground truth, and on
CDNOW, a real order history (dates and amounts only).

Protocol (everything in event time, ``H`` = horizon days):

1. Take the events: simulate a shop (:mod:`shoppulse.simulator`, a published seed), or read
   CDNOW's orders (:func:`shoppulse.datasets.cdnow_order_events`; 23,570 customers who first
   bought in Q1 1997, every purchase until the end of June 1998). The evaluation cutoff ``c``
   is the last UTC midnight that leaves ``H`` days plus the alert window before the end.
2. Live through the events up to ``c``, one at a time, into capped per-user histories exactly
   as the service keeps them. Nothing after ``c`` is seen by training.
3. Training examples, exactly as ``shoppulse retrain`` builds them at a clock of ``c``: features
   as of ``training_cutoffs`` cutoffs, ``spacing`` days apart, the latest ``H`` days before
   ``c`` so that every label is known at ``c`` (:func:`models.churn.build_training_set`).
   Fit the churn model (:func:`models.churn.fit_churn_model`) and, on the same rows, the
   comparisons: the previous model (sign-bounded logistic regression), and the baselines,
   logistic regression on recency alone and on frequency (orders in the last 365 days) alone.
4. Score every customer as of ``c`` and compare with **true churn**: no placed order in
   ``(c, c + H]``, read from the full order log (the simulator's own, or CDNOW's). ROC-AUC,
   PR-AUC (churn positive), Brier score, log loss; for all customers, for *active* ones (an
   order in the 180 days before ``c``), where recency alone says least, and for *repeat
   buyers* (two or more orders by ``c``). On the simulator a reference row "knows who has
   already left" scores 1 for customers whose true churn time is before ``c``: the best a
   model of the past can hope to tell, not a real model.
5. Alerts: the alert state machine (:mod:`models.alerts`) runs over every customer as of
   ``c`` (first scores) and then weekly for ``alert_weeks`` weeks while the events of each week
   are lived through (the model stays fixed). An alert is *right* when its user places no order
   in the ``H`` days after it. Reported: alert counts, precision, recall at ``c``, and how
   many of the churners missed at ``c`` are caught later as their silence grows. (CDNOW ends
   ``H`` days after its cutoff: alerts at ``c`` only.)
6. Segments and value: K-means segments and the CLV of every customer as of ``c``, against the
   net spend they really made in ``(c, c + H]``.

Writes ``churn-{mode}.{md,json,png}`` into ``out_dir`` (mode ``clickstream``, ``orders-only``
or ``cdnow``); ``python -m workers.churn_eval OUT`` runs both simulator modes and writes
``churn.md`` with both tables.
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from models.alerts import AlertPolicy, AlertState, update_alert
from models.churn import (
    LOGISTIC,
    ChurnModel,
    TrainingSet,
    binary_metrics,
    build_training_set,
    fit_churn_model,
    reasons,
    training_cutoffs,
)
from models.churn_features import (
    DAY,
    FEATURE_NAMES,
    ChurnHistory,
    HistoryCaps,
    features_as_of,
    is_customer,
)
from models.segments import fit_segments
from shoppulse import datasets
from shoppulse.simulator import PUBLISHED_SEEDS, ShopConfig, SimulatedShop, simulate_shop

log = logging.getLogger(__name__)

ACTIVE_DAYS = 180.0
REPEAT_ORDERS = 2.0
DEFAULT_THRESHOLD = 0.7
SIMULATOR, CDNOW = "simulator", "cdnow"
MODEL_ROW = "ShopPulse churn model"
PREVIOUS_ROW = "sign-bounded logistic regression (previous model)"
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class EvalConfig:
    """What one evaluation run does; the defaults are the published figures."""

    seed: int = PUBLISHED_SEEDS[0]
    clickstream: bool = True
    dataset: str = SIMULATOR  # or CDNOW (orders only: clickstream is ignored)
    horizon_days: float = 90.0
    training_cutoffs: int = 6
    cutoff_spacing_days: float = 30.0
    alert_threshold: float = DEFAULT_THRESHOLD
    alert_margin: float = 0.1
    alert_cooldown_days: float = 30.0
    alert_weeks: int = 8
    segments: int = 5
    caps: HistoryCaps = field(default_factory=HistoryCaps)
    shop: ShopConfig | None = None  # None: the default shop (its clickstream set by the above)
    compare_logistic: bool = True  # also fit the previous model, as a check on the model choice
    data_dir: Path | None = None  # CDNOW: the cache folder (default ~/.cache/shoppulse/cdnow)

    def __post_init__(self) -> None:
        if self.dataset not in (SIMULATOR, CDNOW):
            raise ValueError(f"dataset must be {SIMULATOR!r} or {CDNOW!r}")

    @property
    def mode(self) -> str:
        if self.dataset == CDNOW:
            return CDNOW
        return "clickstream" if self.clickstream else "orders-only"


@dataclass(frozen=True, slots=True)
class Row:
    """One scorer's figures on the customers as of the evaluation cutoff."""

    model: str
    roc_auc: float
    pr_auc: float
    brier: float
    log_loss: float
    active_roc_auc: float
    active_pr_auc: float
    active_brier: float
    repeat_roc_auc: float = math.nan
    repeat_pr_auc: float = math.nan
    repeat_brier: float = math.nan


@dataclass(frozen=True, slots=True)
class AlertFigures:
    threshold: float
    margin: float
    cooldown_days: float
    at_cutoff: int  # alerts fired by the first scoring at the cutoff
    at_cutoff_precision: float
    at_cutoff_recall: float  # of all churners at the cutoff
    later: int  # alerts fired in the following weeks
    later_precision: float  # judged each against the H days after it
    per_week: list[int]
    max_per_user: int
    missed_churners: int  # churners below the threshold at the cutoff ...
    missed_caught_later: int  # ... of whom this many were alerted in the following weeks


@dataclass(slots=True)
class ChurnReport:
    config: EvalConfig
    title: str
    cutoff: float
    customers: int
    active_customers: int
    churn_rate: float
    active_churn_rate: float
    repeat_customers: int
    repeat_churn_rate: float
    training_rows: int
    training_churn_rate: float
    training_cutoffs: list[float]
    model_params: dict[str, Any]
    rows: list[Row]
    alerts: AlertFigures
    segments: list[dict[str, Any]]
    clv: dict[str, float]
    examples: list[dict[str, Any]]
    timings: dict[str, float]

    def row(self, model: str) -> Row:
        return next(row for row in self.rows if row.model == model)


# -- entry points -------------------------------------------------------------------------------


def evaluate_churn(
    out_dir: Path,
    seed: int = PUBLISHED_SEEDS[0],
    clickstream: bool = True,
    config: EvalConfig | None = None,
    data: EvalData | None = None,
) -> ChurnReport:
    """Run one evaluation (see the module docstring) and write its report into ``out_dir``."""
    config = config or EvalConfig(seed=seed, clickstream=clickstream)
    report = run(config, data)
    write_report(out_dir, report)
    return report


def run(config: EvalConfig, data: EvalData | None = None) -> ChurnReport:
    """``data`` (default: what ``config`` names, simulated or fetched) is evaluated."""
    # Small problems throughout: BLAS and OpenMP threads would only contend and spin (see
    # fit_churn_model); one thread each is faster, and steady on a busy machine.
    with threadpool_limits(limits=1):
        return _run(config, data)


# -- the data -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EvalData:
    """Events in the ShopPulse contract format, in time order, and what they are judged by."""

    title: str
    orders: list[dict[str, Any]]
    clicks: list[dict[str, Any]]
    end_ts: float  # nothing is known after this moment
    placed_times: dict[str, list[float]]  # user -> placed-order times, ascending
    churn_ts: dict[str, float | None] | None = None  # true churn moments, if anyone knows

    def churned(self, user_id: str, cutoff: float, horizon_days: float) -> bool:
        """True churn: no placed order in ``(cutoff, cutoff + H]`` (needs ``cutoff + H <= end``)."""
        if cutoff + horizon_days * DAY > self.end_ts:
            raise ValueError("the horizon runs past the end of the data")
        times = self.placed_times.get(user_id, [])
        return not any(cutoff < ts <= cutoff + horizon_days * DAY for ts in times)

    @classmethod
    def from_shop(cls, shop: SimulatedShop) -> EvalData:
        mode = "clickstream" if shop.config.clickstream else "orders only"
        return cls(
            f"the simulated shop ({mode}, seed {shop.seed})",
            shop.orders,
            shop.clicks,
            shop.end_ts,
            shop.placed_times,
            {user: truth.churn_ts for user, truth in shop.truth.items()},
        )

    @classmethod
    def from_orders(cls, title: str, orders: list[dict[str, Any]]) -> EvalData:
        """Real orders: the data ends with the last UTC day that has an event."""
        ordered = sorted(orders, key=lambda e: float(e["ts"]))
        placed: dict[str, list[float]] = {}
        for event in ordered:
            if event.get("status", "placed") == "placed":
                placed.setdefault(event["user_id"], []).append(float(event["ts"]))
        last = float(ordered[-1]["ts"]) if ordered else 0.0
        return cls(title, ordered, [], math.floor(last / DAY) * DAY + DAY, placed)


def on_cdnow(config: EvalConfig) -> EvalConfig:
    """``config`` for CDNOW: orders only, and no alert weeks (the data ends one horizon after
    the cutoff)."""
    return replace(config, dataset=CDNOW, clickstream=False, alert_weeks=0)


def load_data(config: EvalConfig) -> EvalData:
    """The events ``config`` names: the simulated shop of its seed, or CDNOW (fetched from the
    Lifetimes wheel on first use; DatasetError if that fails)."""
    if config.dataset == CDNOW:
        path = datasets.cdnow_path(config.data_dir)
        orders = datasets.cdnow_order_events(datasets.load_cdnow(path))
        return EvalData.from_orders("CDNOW (real orders: dates and amounts only)", orders)
    shop_config = replace(config.shop or ShopConfig(), clickstream=config.clickstream)
    return EvalData.from_shop(simulate_shop(config.seed, shop_config))


def _run(config: EvalConfig, data: EvalData | None) -> ChurnReport:
    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    data = data or load_data(config)
    clock.lap("load")
    horizon = config.horizon_days
    cutoff = math.floor((data.end_ts - (horizon + 7 * config.alert_weeks) * DAY) / DAY) * DAY
    life = _Replay(data, config.caps)
    life.until(cutoff)
    clock.lap("replay")
    cutoffs = training_cutoffs(cutoff, horizon, config.training_cutoffs, config.cutoff_spacing_days)
    training = build_training_set(life.histories, cutoffs, horizon, data_end=cutoff)
    clock.lap("training_set")
    model = fit_churn_model(training, f"churn-eval-{config.seed}-{config.mode}")
    clock.lap("fit")
    users, x, truth = _customers_as_of(life.histories, data, cutoff, horizon)
    rows = _score_rows(model, training, x, truth, data, users, cutoff, config.compare_logistic)
    clock.lap("score")
    risks = model.score_matrix(x[:, [FEATURE_NAMES.index(f) for f in model.features]])
    alerts = _replay_alerts(config, life, model, data, cutoff, users, risks, truth)
    clock.lap("alerts")
    segments, clv = _segments_and_value(config, data, users, x, risks, cutoff)
    clock.lap("segments")
    active, repeat = customer_subsets(x)
    return ChurnReport(
        config=config,
        title=data.title,
        cutoff=cutoff,
        customers=len(users),
        active_customers=int(active.sum()),
        churn_rate=float(truth.mean()),
        active_churn_rate=float(truth[active].mean()),
        repeat_customers=int(repeat.sum()),
        repeat_churn_rate=float(truth[repeat].mean()),
        training_rows=len(training),
        training_churn_rate=float(training.labels.mean()),
        training_cutoffs=list(training.used_cutoffs),
        model_params=_model_summary(model),
        rows=rows,
        alerts=alerts,
        segments=segments,
        clv=clv,
        examples=_examples(model, users, x, risks, truth),
        timings=timings,
    )


def customer_subsets(x: FloatArray) -> tuple[NDArray[np.bool_], NDArray[np.bool_]]:
    """Active customers (an order in the last ACTIVE_DAYS) and repeat buyers (2+ orders)."""
    active = x[:, FEATURE_NAMES.index("recency_days")] <= ACTIVE_DAYS
    repeat = x[:, FEATURE_NAMES.index("orders_total")] >= REPEAT_ORDERS
    return active, repeat


# -- living through the events -----------------------------------------------------------------


class _Replay:
    """Feeds the events, in time order, into per-user histories."""

    def __init__(self, data: EvalData, caps: HistoryCaps) -> None:
        self.histories: dict[str, ChurnHistory] = {}
        self.caps = caps
        self._events = _merged(data)
        self._next: tuple[float, int, dict[str, Any]] | None = next(self._events, None)

    def until(self, ts: float) -> None:
        """Apply every event with a timestamp at or before ``ts``."""
        while self._next is not None and self._next[0] <= ts:
            _, kind, event = self._next
            history = self.histories.setdefault(event["user_id"], ChurnHistory())
            if kind == 0:
                amount = sum(line["quantity"] * line["price"] for line in event["items"])
                status = event.get("status", "placed")
                history.record_order(event["ts"], amount, status, self.caps)
            else:
                history.record_click(event["ts"], event["type"], event.get("session_id"), self.caps)
            self._next = next(self._events, None)


def _merged(data: EvalData) -> Iterator[tuple[float, int, dict[str, Any]]]:
    orders = ((float(e["ts"]), 0, e) for e in data.orders)
    clicks = ((float(e["ts"]), 1, e) for e in data.clicks)
    return heapq.merge(orders, clicks, key=lambda item: (item[0], item[1]))


def _customers_as_of(
    histories: Mapping[str, ChurnHistory], data: EvalData, cutoff: float, horizon: float
) -> tuple[list[str], FloatArray, NDArray[np.bool_]]:
    """Customers at ``cutoff``, their features then, and their true churn after it."""
    users, rows, truth = [], [], []
    for user in sorted(histories):
        features = features_as_of(histories[user], cutoff)
        if is_customer(features):
            users.append(user)
            rows.append([features[name] for name in FEATURE_NAMES])
            truth.append(data.churned(user, cutoff, horizon))
    return (
        users,
        np.asarray(rows).reshape(len(rows), len(FEATURE_NAMES)),
        np.asarray(truth, dtype=np.bool_),
    )


# -- scoring --------------------------------------------------------------------------------------


def _score_rows(
    model: ChurnModel,
    training: TrainingSet,
    x: FloatArray,
    truth: NDArray[np.bool_],
    data: EvalData,
    users: Sequence[str],
    cutoff: float,
    compare_logistic: bool,
) -> list[Row]:
    active, repeat = customer_subsets(x)
    scorers: dict[str, Callable[[], FloatArray]] = {
        MODEL_ROW: lambda: _model_risks(model, x),
    }
    if compare_logistic:
        scorers[PREVIOUS_ROW] = lambda: _model_risks(
            fit_churn_model(training, "churn-eval-logistic", kind=LOGISTIC), x
        )
    scorers["recency alone"] = lambda: _single_feature(training, x, "recency_days")
    scorers["frequency alone"] = lambda: _single_feature(training, x, "orders_365d")
    if data.churn_ts is not None:
        churn_ts = data.churn_ts
        scorers["knows who has already left (reference)"] = lambda: np.asarray(
            [_gone(churn_ts.get(user), cutoff) for user in users], dtype=np.float64
        )
    rows = []
    for name, score in scorers.items():
        p = score()
        rows.append(metric_row(name, truth, p, active, repeat))
        log.info("%-40s ROC-AUC %.4f  Brier %.4f", name, rows[-1].roc_auc, rows[-1].brier)
    return rows


def metric_row(
    name: str,
    truth: NDArray[np.bool_],
    p: FloatArray,
    active: NDArray[np.bool_],
    repeat: NDArray[np.bool_],
) -> Row:
    """One scorer's figures on everyone, the active customers and the repeat buyers."""
    everyone = binary_metrics(truth, p)
    recent = binary_metrics(truth[active], p[active])
    again = binary_metrics(truth[repeat], p[repeat])
    return Row(
        name,
        everyone["roc_auc"],
        everyone["pr_auc"],
        everyone["brier"],
        everyone["log_loss"],
        recent["roc_auc"],
        recent["pr_auc"],
        recent["brier"],
        again["roc_auc"],
        again["pr_auc"],
        again["brier"],
    )


def _model_risks(model: ChurnModel, x: FloatArray) -> FloatArray:
    return model.score_matrix(x[:, [FEATURE_NAMES.index(f) for f in model.features]])


def _gone(churn_ts: float | None, cutoff: float) -> float:
    return 1.0 if churn_ts is not None and churn_ts <= cutoff else 0.0


def _single_feature(training: TrainingSet, x: FloatArray, name: str) -> FloatArray:
    """A baseline: logistic regression on one log feature, fitted on the same rows."""
    from sklearn.linear_model import LogisticRegression

    column = FEATURE_NAMES.index(name)
    fitted = LogisticRegression().fit(np.log1p(training.features[:, [column]]), training.labels)
    return np.asarray(fitted.predict_proba(np.log1p(x[:, [column]]))[:, 1], dtype=np.float64)


# -- alerts -------------------------------------------------------------------------------------


def _replay_alerts(
    config: EvalConfig,
    life: _Replay,
    model: ChurnModel,
    data: EvalData,
    cutoff: float,
    users: list[str],
    risks: FloatArray,
    truth: NDArray[np.bool_],
) -> AlertFigures:
    policy = AlertPolicy(
        config.alert_threshold, config.alert_margin, config.alert_cooldown_days * DAY
    )
    horizon = config.horizon_days
    states: dict[str, AlertState] = {}
    first: set[str] = set()
    for user, risk in zip(users, risks, strict=True):
        states[user], alert = update_alert(AlertState(), float(risk), cutoff, policy)
        if alert is not None:
            first.add(user)
    churners = {u for u, churned in zip(users, truth, strict=True) if churned}
    later: list[tuple[str, float]] = []
    per_week = []
    for week in range(1, config.alert_weeks + 1):
        as_of = cutoff + week * 7 * DAY
        life.until(as_of)
        fired = 0
        for user, history in life.histories.items():
            features = features_as_of(history, as_of)
            if not is_customer(features):
                continue
            state = states.get(user, AlertState())
            states[user], alert = update_alert(state, model.score(features), as_of, policy)
            if alert is not None:
                later.append((user, as_of))
                fired += 1
        per_week.append(fired)
    counts: dict[str, int] = {user: 1 for user in first}
    for user, _ in later:
        counts[user] = counts.get(user, 0) + 1
    missed = churners - first
    return AlertFigures(
        threshold=policy.threshold,
        margin=policy.margin,
        cooldown_days=config.alert_cooldown_days,
        at_cutoff=len(first),
        at_cutoff_precision=len(first & churners) / len(first) if first else math.nan,
        at_cutoff_recall=len(first & churners) / len(churners) if churners else math.nan,
        later=len(later),
        later_precision=(
            sum(data.churned(u, t, horizon) for u, t in later) / len(later) if later else math.nan
        ),
        per_week=per_week,
        max_per_user=max(counts.values(), default=0),
        missed_churners=len(missed),
        missed_caught_later=len(missed & {user for user, _ in later}),
    )


# -- segments and value -------------------------------------------------------------------------


def _segments_and_value(
    config: EvalConfig,
    data: EvalData,
    users: list[str],
    x: FloatArray,
    risks: FloatArray,
    cutoff: float,
) -> tuple[list[dict[str, Any]], dict[str, float]]:
    rows = [dict(zip(FEATURE_NAMES, row.tolist(), strict=True)) for row in x]
    segments = fit_segments(rows, "segments-eval", k=config.segments, seed=config.seed)
    horizon = config.horizon_days
    predicted = np.asarray(
        [segments.clv(f, float(r), horizon) for f, r in zip(rows, risks, strict=True)]
    )
    actual = _net_spend(data, set(users), cutoff, cutoff + horizon * DAY)
    real = np.asarray([actual.get(user, 0.0) for user in users])
    labels = [segments.segment(f) for f in rows]
    described = segments.describe()
    for entry in described:
        members = [n for n, label in enumerate(labels) if label == entry["label"]]
        entry["customers"] = len(members)
        entry["mean_risk"] = float(risks[members].mean()) if members else math.nan
        entry["mean_clv"] = float(predicted[members].mean()) if members else math.nan
        entry["mean_actual_spend"] = float(real[members].mean()) if members else math.nan
    clv = {
        "predicted_total": float(predicted.sum()),
        "actual_total": float(real.sum()),
        "spearman": _spearman(predicted, real),
        "top_decile_share_of_actual": _top_decile_share(predicted, real),
    }
    return described, clv


def _net_spend(data: EvalData, users: set[str], start: float, end: float) -> dict[str, float]:
    """Money each user really spent in ``(start, end]``: placed minus cancelled and returned."""
    spend: dict[str, float] = {}
    for event in data.orders:
        if event["user_id"] in users and start < event["ts"] <= end:
            amount = sum(line["quantity"] * line["price"] for line in event["items"])
            sign = 1.0 if event["status"] == "placed" else -1.0
            spend[event["user_id"]] = spend.get(event["user_id"], 0.0) + sign * amount
    return spend


def _spearman(a: FloatArray, b: FloatArray) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(a, b).statistic)


def _top_decile_share(predicted: FloatArray, actual: FloatArray) -> float:
    """Share of the real spend made by the 10% of customers with the highest predicted CLV."""
    top = np.argsort(-predicted)[: max(1, len(predicted) // 10)]
    total = actual.sum()
    return float(actual[top].sum() / total) if total > 0 else math.nan


# -- report -------------------------------------------------------------------------------------


def _model_summary(model: ChurnModel) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "version": model.version,
        "kind": model.kind,
        "features": list(model.features),
        "intercept": model.intercept,
    }
    if model.trees.trees:
        # How often the trees split on each feature: what the model looks at.
        splits = model.trees.feature[model.trees.feature >= 0]
        used = np.bincount(splits, minlength=len(model.features)).tolist()
        ranked = sorted(zip(model.features, used, strict=True), key=lambda item: -item[1])
        summary["splits"] = {name: int(n) for name, n in ranked if n}
    else:
        summary["coefficients"] = {
            name: round(float(c), 4) for name, c in zip(model.features, model.coef, strict=True)
        }
    summary.update({k: v for k, v in model.params.items() if k not in ("trained_at", "cutoffs")})
    return summary


def _examples(
    model: ChurnModel,
    users: list[str],
    x: FloatArray,
    risks: FloatArray,
    truth: NDArray[np.bool_],
    count: int = 5,
) -> list[dict[str, Any]]:
    """A few customers of middling-to-high risk with their reasons, as a marketer sees them."""
    orders = x[:, FEATURE_NAMES.index("orders_total")]
    picks = [n for n in np.argsort(-risks) if 0.6 <= risks[n] <= 0.95 and orders[n] >= 2]
    examples = []
    for n in picks[:: max(1, len(picks) // count)][:count]:
        features = dict(zip(FEATURE_NAMES, x[n].tolist(), strict=True))
        examples.append(
            {
                "user_id": users[n],
                "risk": round(float(risks[n]), 3),
                "churned": bool(truth[n]),
                "reasons": reasons(features, model),
            }
        )
    return examples


def write_report(out_dir: Path, report: ChurnReport) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    name = f"churn-{report.config.mode}"
    (out_dir / f"{name}.md").write_text(markdown(report))
    document = asdict(report)
    document["config"]["mode"] = report.config.mode
    (out_dir / f"{name}.json").write_text(json.dumps(document, indent=2, default=str) + "\n")
    save_plot(out_dir / f"{name}.png", report)


def markdown(report: ChurnReport) -> str:
    c = report.config
    a = report.alerts
    cutoff = time.strftime("%Y-%m-%d", time.gmtime(report.cutoff))
    ends = time.strftime("%Y-%m-%d", time.gmtime(report.cutoff + c.horizon_days * DAY - DAY))
    lines = [
        f"# Churn risk on {report.title}",
        "",
        f"Risk as of {cutoff} 00:00 UTC against true churn (no placed order in the next"
        f" {c.horizon_days:g} days, {cutoff}..{ends}) for {report.customers} customers"
        f" ({report.churn_rate:.1%} churn); active = ordered in the last {ACTIVE_DAYS:g} days"
        f" ({report.active_customers} customers, {report.active_churn_rate:.1%} churn); repeat ="
        f" {REPEAT_ORDERS:g} or more orders ({report.repeat_customers} customers,"
        f" {report.repeat_churn_rate:.1%} churn). Trained as `shoppulse retrain` would at that"
        f" clock: {report.training_rows} examples from {len(report.training_cutoffs)}"
        f" earlier cutoffs ({report.training_churn_rate:.1%} churn);"
        f" model: {_model_words(report.model_params)}.",
        "",
        "| scorer | ROC-AUC | PR-AUC | Brier | log loss | active ROC-AUC | active PR-AUC |"
        " active Brier | repeat ROC-AUC | repeat PR-AUC | repeat Brier |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.model} | {row.roc_auc:.4f} | {row.pr_auc:.4f} | {row.brier:.4f} |"
            f" {row.log_loss:.4f} | {row.active_roc_auc:.4f} | {row.active_pr_auc:.4f} |"
            f" {row.active_brier:.4f} | {row.repeat_roc_auc:.4f} | {row.repeat_pr_auc:.4f} |"
            f" {row.repeat_brier:.4f} |"
        )
    lines += [
        "",
        f"## Alerts (threshold {a.threshold:g}, re-arm below {a.threshold - a.margin:g},"
        f" cooldown {a.cooldown_days:g} days)",
        "",
        f"* At the cutoff (first scores): {a.at_cutoff} alerts, precision"
        f" {a.at_cutoff_precision:.3f}, recall {a.at_cutoff_recall:.3f}.",
    ]
    if c.alert_weeks:
        lines += [
            f"* Over the next {c.alert_weeks} weeks, scored weekly as events arrive: {a.later}"
            f" alerts (per week {a.per_week}), precision {a.later_precision:.3f} (no order in the"
            f" {c.horizon_days:g} days after the alert); at most {a.max_per_user} per user.",
            f"* Churners below the threshold at the cutoff: {a.missed_churners}; alerted within"
            f" {c.alert_weeks} weeks as their silence grew: {a.missed_caught_later}.",
        ]
    else:
        lines.append("* No later weeks: the data ends one horizon after the cutoff.")
    lines += [
        "",
        "## Segments and lifetime value as of the cutoff",
        "",
        "| segment | customers | recency days | orders | spend | mean risk | mean CLV |"
        " mean real spend next H |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in report.segments:
        lines.append(
            f"| {s['label']} | {s['customers']} | {s['recency_days']:.0f} |"
            f" {s['orders_total']:.1f} | {s['spend_total']:.0f} | {s['mean_risk']:.3f} |"
            f" {s['mean_clv']:.1f} | {s['mean_actual_spend']:.1f} |"
        )
    v = report.clv
    lines += [
        "",
        f"CLV over the next {c.horizon_days:g} days: predicted total {v['predicted_total']:.0f},"
        f" real {v['actual_total']:.0f}; Spearman {v['spearman']:.3f}; the top 10% by CLV made"
        f" {v['top_decile_share_of_actual']:.1%} of the real spend.",
        "",
        "## Example reasons",
        "",
    ]
    for e in report.examples:
        outcome = "churned" if e["churned"] else "ordered again"
        lines.append(
            f"* {e['user_id']} risk {e['risk']:.2f} ({outcome}): " + "; ".join(e["reasons"])
        )
    lines += ["", "Timings (s): " + json.dumps({k: round(t, 2) for k, t in report.timings.items()})]
    return "\n".join(lines) + "\n"


def _model_words(params: Mapping[str, Any]) -> str:
    if params.get("kind") == LOGISTIC:
        return f"sign-bounded logistic regression, C = {params.get('c')}"
    return (
        f"{params.get('trees')} monotone boosted trees of depth {params.get('max_depth')},"
        f" calibration {params.get('calibration')}"
    )


def save_plot(path: Path, report: ChurnReport) -> None:
    """ROC-AUC (all and active customers) per scorer; cheap bars, no curves to recompute."""
    rows = report.rows
    figure = Figure(figsize=(9, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    axes.bar(positions - 0.27, [r.roc_auc for r in rows], 0.27, label="all customers")
    axes.bar(positions, [r.active_roc_auc for r in rows], 0.27, label="active customers")
    axes.bar(positions + 0.27, [r.repeat_roc_auc for r in rows], 0.27, label="repeat buyers")
    axes.set_xticks(positions, [r.model for r in rows], rotation=15, ha="right")
    axes.set_ylim(0.5, 1.0)
    axes.set_ylabel("ROC-AUC")
    axes.set_title(f"Churn risk vs true churn on {report.title}", fontsize=10)
    axes.legend()
    figure.savefig(path, dpi=110)


def summary_markdown(reports: Sequence[ChurnReport]) -> str:
    return "\n".join(markdown(report) for report in reports)


class _Stopwatch:
    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings
        self.started = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = now - self.last
        self.timings["total"] = now - self.started
        self.last = now


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=PUBLISHED_SEEDS[0])
    parser.add_argument("--horizon-days", type=float, default=90.0)
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--dataset", choices=(SIMULATOR, CDNOW), default=SIMULATOR)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    base = EvalConfig(
        seed=args.seed, horizon_days=args.horizon_days, alert_threshold=args.threshold
    )
    reports = []
    if args.dataset == CDNOW:
        reports.append(evaluate_churn(args.out_dir, config=on_cdnow(base)))
    else:
        for clickstream in (True, False):
            config = replace(base, clickstream=clickstream)
            reports.append(evaluate_churn(args.out_dir, config=config))
        (args.out_dir / "churn.md").write_text(summary_markdown(reports))
    for report in reports:
        model, recency = report.row(MODEL_ROW), report.row("recency alone")
        print(
            f"{report.config.mode:12s} ROC-AUC {model.roc_auc:.4f} (recency {recency.roc_auc:.4f})"
            f"  active {model.active_roc_auc:.4f} (recency {recency.active_roc_auc:.4f})"
            f"  Brier {model.brier:.4f} (recency {recency.brier:.4f})"
        )


if __name__ == "__main__":
    main()
