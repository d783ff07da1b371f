"""Offline churn evaluation on the built-in shop simulator, against its ground truth.

Protocol (everything in event time, ``H`` = horizon days):

1. Simulate a shop (:mod:`shoppulse.simulator`, a published seed). The evaluation cutoff
   ``c`` is the last UTC midnight that leaves ``H`` days plus the alert window before the end.
2. Live through the events up to ``c``, one at a time, into capped per-user histories exactly
   as the service keeps them. Nothing after ``c`` is seen by training.
3. Training examples: features as of ``training_cutoffs`` cutoffs, ``spacing`` days apart,
   the latest ``H`` days before ``c`` so that every label is known at ``c``
   (:func:`models.churn.build_training_set`). Fit the churn model
   (:func:`models.churn.fit_churn_model`) and, on the same rows, the baselines: logistic
   regression on recency alone and on frequency (orders in the last 365 days) alone, and
   gradient-boosted trees on every feature as a check on the choice of a linear model.
4. Score every customer as of ``c`` and compare with **true churn**: no placed order in
   ``(c, c + H]``, read from the simulator's own order log (its ground truth). ROC-AUC, PR-AUC
   (churn positive), Brier score, log loss; for all customers and for *active* ones (an order
   in the 180 days before ``c``), where recency alone says least. A reference row "knows who
   has already left" scores 1 for customers whose true churn time is before ``c``: the best a
   model of the past can hope to tell, not a real model.
5. Alerts: the alert state machine (:mod:`models.alerts`) runs over every customer as of
   ``c`` (first scores) and then weekly for ``alert_weeks`` weeks while the events of each week
   are lived through (the model stays fixed). An alert is *right* when its user places no order
   in the ``H`` days after it. Reported: alert counts, precision, recall at ``c``, and how
   many of the churners missed at ``c`` are caught later as their silence grows.
6. Segments and value: K-means segments and the CLV of every customer as of ``c``, against the
   net spend they really made in ``(c, c + H]``.

Writes ``churn-{mode}.{md,json,png}`` into ``out_dir`` (mode ``clickstream`` or
``orders-only``); ``python -m workers.churn_eval OUT`` runs both modes and writes
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
from shoppulse.simulator import PUBLISHED_SEEDS, ShopConfig, SimulatedShop, simulate_shop

log = logging.getLogger(__name__)

ACTIVE_DAYS = 180.0
DEFAULT_THRESHOLD = 0.7
FloatArray = NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class EvalConfig:
    """What one evaluation run does; the defaults are the published figures."""

    seed: int = PUBLISHED_SEEDS[0]
    clickstream: bool = True
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
    compare_trees: bool = True  # also fit gradient-boosted trees, as a check on the model choice

    @property
    def mode(self) -> str:
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
    cutoff: float
    customers: int
    active_customers: int
    churn_rate: float
    active_churn_rate: float
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
) -> ChurnReport:
    """Run one evaluation (see the module docstring) and write its report into ``out_dir``."""
    config = config or EvalConfig(seed=seed, clickstream=clickstream)
    report = run(config)
    write_report(out_dir, report)
    return report


def run(config: EvalConfig) -> ChurnReport:
    # Small problems throughout: BLAS and OpenMP threads would only contend and spin (see
    # fit_churn_model); one thread each is faster, and steady on a busy machine.
    with threadpool_limits(limits=1):
        return _run(config)


def _run(config: EvalConfig) -> ChurnReport:
    timings: dict[str, float] = {}
    clock = _Stopwatch(timings)
    shop_config = replace(config.shop or ShopConfig(), clickstream=config.clickstream)
    shop = simulate_shop(config.seed, shop_config)
    clock.lap("simulate")
    horizon = config.horizon_days
    cutoff = math.floor((shop.end_ts - (horizon + 7 * config.alert_weeks) * DAY) / DAY) * DAY
    life = _Replay(shop, config.caps)
    life.until(cutoff)
    clock.lap("replay")
    cutoffs = training_cutoffs(cutoff, horizon, config.training_cutoffs, config.cutoff_spacing_days)
    training = build_training_set(life.histories, cutoffs, horizon, data_end=cutoff)
    clock.lap("training_set")
    model = fit_churn_model(training, f"churn-eval-{config.seed}-{config.mode}")
    clock.lap("fit")
    users, x, truth = _customers_as_of(life.histories, shop, cutoff, horizon)
    rows = _score_rows(model, training, x, truth, shop, users, cutoff, config.compare_trees)
    clock.lap("score")
    risks = model.score_matrix(x[:, [FEATURE_NAMES.index(f) for f in model.features]])
    alerts = _replay_alerts(config, life, model, shop, cutoff, users, risks, truth)
    clock.lap("alerts")
    segments, clv = _segments_and_value(config, shop, users, x, risks, cutoff)
    clock.lap("segments")
    active = x[:, FEATURE_NAMES.index("recency_days")] <= ACTIVE_DAYS
    return ChurnReport(
        config=config,
        cutoff=cutoff,
        customers=len(users),
        active_customers=int(active.sum()),
        churn_rate=float(truth.mean()),
        active_churn_rate=float(truth[active].mean()),
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


# -- living through the events -----------------------------------------------------------------


class _Replay:
    """Feeds the simulated events, in time order, into per-user histories."""

    def __init__(self, shop: SimulatedShop, caps: HistoryCaps) -> None:
        self.histories: dict[str, ChurnHistory] = {}
        self.caps = caps
        self._events = _merged(shop)
        self._next: tuple[float, int, dict[str, Any]] | None = next(self._events, None)

    def until(self, ts: float) -> None:
        """Apply every event with a timestamp at or before ``ts``."""
        while self._next is not None and self._next[0] <= ts:
            _, kind, event = self._next
            history = self.histories.setdefault(event["user_id"], ChurnHistory())
            if kind == 0:
                amount = sum(line["quantity"] * line["price"] for line in event["items"])
                history.record_order(event["ts"], amount, event["status"], self.caps)
            else:
                history.record_click(event["ts"], event["type"], event.get("session_id"), self.caps)
            self._next = next(self._events, None)


def _merged(shop: SimulatedShop) -> Iterator[tuple[float, int, dict[str, Any]]]:
    orders = ((float(e["ts"]), 0, e) for e in shop.orders)
    clicks = ((float(e["ts"]), 1, e) for e in shop.clicks)
    return heapq.merge(orders, clicks, key=lambda item: (item[0], item[1]))


def _customers_as_of(
    histories: Mapping[str, ChurnHistory], shop: SimulatedShop, cutoff: float, horizon: float
) -> tuple[list[str], FloatArray, NDArray[np.bool_]]:
    """Customers at ``cutoff``, their features then, and their true churn after it."""
    users, rows, truth = [], [], []
    for user in sorted(histories):
        features = features_as_of(histories[user], cutoff)
        if is_customer(features):
            users.append(user)
            rows.append([features[name] for name in FEATURE_NAMES])
            truth.append(shop.churned(user, cutoff, horizon))
    return users, np.asarray(rows), np.asarray(truth, dtype=np.bool_)


# -- scoring --------------------------------------------------------------------------------------


def _score_rows(
    model: ChurnModel,
    training: TrainingSet,
    x: FloatArray,
    truth: NDArray[np.bool_],
    shop: SimulatedShop,
    users: Sequence[str],
    cutoff: float,
    compare_trees: bool,
) -> list[Row]:
    active = x[:, FEATURE_NAMES.index("recency_days")] <= ACTIVE_DAYS
    scorers: dict[str, Callable[[], FloatArray]] = {
        "ShopPulse churn model": lambda: model.score_matrix(
            x[:, [FEATURE_NAMES.index(f) for f in model.features]]
        ),
        "recency alone": lambda: _single_feature(training, x, "recency_days"),
        "frequency alone": lambda: _single_feature(training, x, "orders_365d"),
        "gradient-boosted trees (check)": lambda: _boosted_trees(training, x),
        "knows who has already left (reference)": lambda: np.asarray(
            [_gone(shop, user, cutoff) for user in users], dtype=np.float64
        ),
    }
    if not compare_trees:
        del scorers["gradient-boosted trees (check)"]
    rows = []
    for name, score in scorers.items():
        p = score()
        everyone, recent = binary_metrics(truth, p), binary_metrics(truth[active], p[active])
        rows.append(
            Row(
                name,
                everyone["roc_auc"],
                everyone["pr_auc"],
                everyone["brier"],
                everyone["log_loss"],
                recent["roc_auc"],
                recent["pr_auc"],
                recent["brier"],
            )
        )
        log.info("%-40s ROC-AUC %.4f  Brier %.4f", name, everyone["roc_auc"], everyone["brier"])
    return rows


def _gone(shop: SimulatedShop, user: str, cutoff: float) -> float:
    churn_ts = shop.truth[user].churn_ts
    return 1.0 if churn_ts is not None and churn_ts <= cutoff else 0.0


def _single_feature(training: TrainingSet, x: FloatArray, name: str) -> FloatArray:
    """A baseline: logistic regression on one log feature, fitted on the same rows."""
    from sklearn.linear_model import LogisticRegression

    column = FEATURE_NAMES.index(name)
    fitted = LogisticRegression().fit(np.log1p(training.features[:, [column]]), training.labels)
    return np.asarray(fitted.predict_proba(np.log1p(x[:, [column]]))[:, 1], dtype=np.float64)


def _boosted_trees(training: TrainingSet, x: FloatArray) -> FloatArray:
    from sklearn.ensemble import HistGradientBoostingClassifier

    fitted = HistGradientBoostingClassifier(
        max_iter=150, learning_rate=0.1, max_depth=3, min_samples_leaf=100, random_state=0
    ).fit(training.features, training.labels)
    return np.asarray(fitted.predict_proba(x)[:, 1], dtype=np.float64)


# -- alerts -------------------------------------------------------------------------------------


def _replay_alerts(
    config: EvalConfig,
    life: _Replay,
    model: ChurnModel,
    shop: SimulatedShop,
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
            sum(shop.churned(u, t, horizon) for u, t in later) / len(later) if later else math.nan
        ),
        per_week=per_week,
        max_per_user=max(counts.values(), default=0),
        missed_churners=len(missed),
        missed_caught_later=len(missed & {user for user, _ in later}),
    )


# -- segments and value -------------------------------------------------------------------------


def _segments_and_value(
    config: EvalConfig,
    shop: SimulatedShop,
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
    actual = _net_spend(shop, set(users), cutoff, cutoff + horizon * DAY)
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


def _net_spend(shop: SimulatedShop, users: set[str], start: float, end: float) -> dict[str, float]:
    """Money each user really spent in ``(start, end]``: placed minus cancelled and returned."""
    spend: dict[str, float] = {}
    for event in shop.orders:
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
    return {
        "version": model.version,
        "features": list(model.features),
        "coefficients": {
            name: round(float(c), 4) for name, c in zip(model.features, model.coef, strict=True)
        },
        "intercept": model.intercept,
        **{k: v for k, v in model.params.items() if k not in ("trained_at", "cutoffs")},
    }


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
    lines = [
        f"# Churn risk on the simulated shop ({c.mode}, seed {c.seed})",
        "",
        f"Risk as of {cutoff} against true churn (no placed order in the next"
        f" {c.horizon_days:g} days) for {report.customers} customers"
        f" ({report.churn_rate:.1%} churn); active = ordered in the last {ACTIVE_DAYS:g} days"
        f" ({report.active_customers} customers, {report.active_churn_rate:.1%} churn)."
        f" Trained on {report.training_rows} examples from {len(report.training_cutoffs)}"
        f" earlier cutoffs ({report.training_churn_rate:.1%} churn).",
        "",
        "| scorer | ROC-AUC | PR-AUC | Brier | log loss | active ROC-AUC | active PR-AUC |"
        " active Brier |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in report.rows:
        lines.append(
            f"| {row.model} | {row.roc_auc:.4f} | {row.pr_auc:.4f} | {row.brier:.4f} |"
            f" {row.log_loss:.4f} | {row.active_roc_auc:.4f} | {row.active_pr_auc:.4f} |"
            f" {row.active_brier:.4f} |"
        )
    lines += [
        "",
        f"## Alerts (threshold {a.threshold:g}, re-arm below {a.threshold - a.margin:g},"
        f" cooldown {a.cooldown_days:g} days)",
        "",
        f"* At the cutoff (first scores): {a.at_cutoff} alerts, precision"
        f" {a.at_cutoff_precision:.3f}, recall {a.at_cutoff_recall:.3f}.",
        f"* Over the next {c.alert_weeks} weeks, scored weekly as events arrive: {a.later} alerts"
        f" (per week {a.per_week}), precision {a.later_precision:.3f} (no order in the"
        f" {c.horizon_days:g} days after the alert); at most {a.max_per_user} per user.",
        f"* Churners below the threshold at the cutoff: {a.missed_churners}; alerted within"
        f" {c.alert_weeks} weeks as their silence grew: {a.missed_caught_later}.",
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


def save_plot(path: Path, report: ChurnReport) -> None:
    """ROC-AUC (all and active customers) per scorer; cheap bars, no curves to recompute."""
    rows = report.rows
    figure = Figure(figsize=(9, 4), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    axes.bar(positions - 0.2, [r.roc_auc for r in rows], 0.4, label="all customers")
    axes.bar(positions + 0.2, [r.active_roc_auc for r in rows], 0.4, label="active customers")
    axes.set_xticks(positions, [r.model for r in rows], rotation=15, ha="right")
    axes.set_ylim(0.5, 1.0)
    axes.set_ylabel("ROC-AUC")
    axes.set_title(f"Churn risk vs true churn, {report.config.mode}, seed {report.config.seed}")
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
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    reports = []
    for clickstream in (True, False):
        config = EvalConfig(
            seed=args.seed,
            clickstream=clickstream,
            horizon_days=args.horizon_days,
            alert_threshold=args.threshold,
        )
        reports.append(evaluate_churn(args.out_dir, config=config))
    (args.out_dir / "churn.md").write_text(summary_markdown(reports))
    for report in reports:
        model, recency = report.row("ShopPulse churn model"), report.row("recency alone")
        print(
            f"{report.config.mode:12s} ROC-AUC {model.roc_auc:.4f} (recency {recency.roc_auc:.4f})"
            f"  active {model.active_roc_auc:.4f} (recency {recency.active_roc_auc:.4f})"
            f"  Brier {model.brier:.4f} (recency {recency.brier:.4f})"
        )


if __name__ == "__main__":
    main()
