"""Offline evaluation on MovieLens-100k with the Microsoft Recommenders benchmark protocol.

Protocol (their ``examples/06_benchmarks/movielens.ipynb``): every rating is a positive
interaction; ``python_stratified_split(ratio=0.75, filter_by="item", seed=42)`` —
:func:`models.split.stratified_split`, row for row the same split; each model recommends 10
items per test user, items the user has in training removed; :mod:`models.metrics` computes
Precision@10, Recall@10, NDCG@10 (binary relevance) and MAP exactly as ``python_evaluation``.

Models: popularity, category affinity, item-item shrunk-cosine k-NN, item-item EASE, ALS
(``implicit``), and the hybrid blend of all of them (:func:`models.hybrid.blend_top_k`).

Hyper-parameters are never chosen on the test set. With ``tune=True`` the training part is split
again, the same way (per item, 75/25, same seed), into a fitting part and a validation part;
every candidate is fitted on the first and scored on the second by ``P@10 + NDCG@10``; the
winners are then refitted on the whole training part and scored once on the test part. With
``tune=False`` the values stored in :data:`TUNED` (the outcome of such a run) are used directly.
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import scipy.sparse as sp
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from numpy.typing import NDArray
from threadpoolctl import threadpool_limits

from models.als import bm25_confidence, top_k_rows, train_als
from models.hybrid import blend_top_k, category_affinity_scores, popularity_scores
from models.itemknn import cosine_item_similarity, ease_item_weights, ease_scores, itemknn_scores
from models.metrics import RankingMetrics, hit_table_from_arrays, metrics_from_hits
from models.split import stratified_split
from shoppulse.datasets import load_movies, load_ratings

log = logging.getLogger(__name__)

K = 10
TRAIN_RATIO = 0.75
REPORT_NAME = "movielens-100k"
# Recommenders README, "Algorithm Comparison" table, MovieLens-100k:
# (MAP, nDCG@10, Precision@10, Recall@10).
REFERENCES: dict[str, tuple[float, float, float, float]] = {
    "SAR": (0.110591, 0.382461, 0.330753, 0.176385),
    "LightGCN": (0.088526, 0.419846, 0.379626, 0.144336),
    "BPR": (0.132478, 0.441997, 0.388229, 0.212522),
    "BiVAE": (0.146126, 0.475077, 0.411771, 0.219145),
}

Weighting = Literal["none", "bm25"]
Neighbourhood = Literal["history", "candidate"]
ScoreArray = NDArray[np.float32]
SOURCES = ("als", "ease", "knn", "popularity", "category")


@dataclass(frozen=True, slots=True)
class AlsParams:
    factors: int = 64
    regularization: float = 45.0
    alpha: float = 5.0
    iterations: int = 15
    weighting: Weighting = "none"


@dataclass(frozen=True, slots=True)
class KnnParams:
    neighbours: int = 100
    shrinkage: float = 10.0
    neighbourhood: Neighbourhood = "candidate"


@dataclass(frozen=True, slots=True)
class EvalParams:
    als: AlsParams = AlsParams()
    knn: KnnParams = KnnParams()
    ease_l2: float = 500.0
    blend: dict[str, float] = field(default_factory=lambda: {"als": 1.0})


# The outcome of ``evaluate_movielens(..., seed=42, tune=True)`` on the ratings in file order
# (the exact Recommenders split; see the JSON report's "params"). ``tune=False`` uses these.
TUNED = EvalParams(
    als=AlsParams(factors=128, regularization=45.0, alpha=5.0, iterations=15, weighting="none"),
    knn=KnnParams(neighbours=100, shrinkage=10.0, neighbourhood="candidate"),
    ease_l2=500.0,
    blend={"als": 1.0, "ease": 0.25, "knn": 0.0, "popularity": 0.0, "category": 0.0},
)

# Candidate values searched by ``tune=True`` (validation data only).
VALIDATION_FOLDS = 3
ALS_GRID: dict[str, Sequence[Any]] = {
    "weighting": ("none", "bm25"),
    "factors": (64, 128),
    "regularization": (30.0, 45.0, 70.0, 100.0),
    "alpha": (1.0, 2.0, 3.0, 5.0, 10.0),
    "iterations": (15,),
}
KNN_GRID: dict[str, Sequence[Any]] = {
    "neighbourhood": ("history", "candidate"),
    "neighbours": (50, 100, 200),
    "shrinkage": (0.0, 10.0, 50.0),
}
EASE_GRID: dict[str, Sequence[Any]] = {"l2": (200.0, 300.0, 500.0, 800.0, 1200.0)}
BLEND_GRID: dict[str, Sequence[float]] = {
    "als": (1.0,),
    "ease": (0.0, 0.25, 0.5, 1.0),
    "knn": (0.0, 0.25, 0.5),
    "popularity": (0.0, 0.05, 0.1),
    "category": (0.0, 0.05, 0.1),
}


@dataclass(frozen=True, slots=True)
class MetricsRow:
    """One model's test-set figures (top-10, training items removed)."""

    model: str
    precision: float
    recall: float
    ndcg: float
    map: float
    map_at_k: float
    users: int
    train_seconds: float


@dataclass(frozen=True, slots=True)
class Interactions:
    """Ratings as index arrays in file order, plus the item x genre membership matrix."""

    users: NDArray[np.int64]
    items: NDArray[np.int64]
    n_users: int
    n_items: int
    genres: Any  # items x genres CSR, 0/1

    def matrix(self, rows: NDArray[np.bool_]) -> Any:
        """Binary users x items CSR of the selected rows (every rating is a positive)."""
        ones = np.ones(int(rows.sum()), dtype=np.float32)
        x = sp.csr_matrix(
            (ones, (self.users[rows], self.items[rows])), shape=(self.n_users, self.n_items)
        )
        x.sum_duplicates()
        x.data[:] = 1.0
        return x


@dataclass(frozen=True, slots=True)
class Trial:
    params: dict[str, Any]
    precision: float
    ndcg: float

    @property
    def objective(self) -> float:
        return self.precision + self.ndcg


@dataclass(frozen=True, slots=True)
class Fold:
    fit: Any  # users x items CSR the candidates are fitted on
    valid: Any  # users x items CSR they are scored against


@dataclass(frozen=True, slots=True)
class Tuning:
    params: EvalParams
    trials: dict[str, list[Trial]]
    seconds: float


# -- entry point ----------------------------------------------------------------------------


def evaluate_movielens(
    data_dir: Path, out_dir: Path, seed: int = 42, tune: bool = True
) -> list[MetricsRow]:
    """Run the benchmark, write ``movielens-100k.{md,json,png}`` into ``out_dir``, return rows."""
    started = time.perf_counter()
    data = load_interactions(data_dir)
    train_rows = stratified_split(data.users, data.items, TRAIN_RATIO, seed, by="item")
    train, test = data.matrix(train_rows), data.matrix(~train_rows)
    log.info("split: %d train / %d test interactions", train.nnz, test.nnz)
    tuning = tune_params(data, train_rows, seed) if tune else None
    params = tuning.params if tuning is not None else TUNED
    rows = score_on_test(train, test, data.genres, params, seed)
    timings = {"total_seconds": time.perf_counter() - started}
    if tuning is not None:
        timings["tuning_seconds"] = tuning.seconds
    write_report(out_dir, rows, params, tuning, seed, timings)
    return rows


def load_interactions(data_dir: Path) -> Interactions:
    """Ratings in file order.

    The split draws one random number per rating in that order, so the order decides the
    split: the ``ml-100k.inter`` file order (= ``u.data``, what Recommenders reads) gives
    Recommenders' split exactly.
    """
    ratings = load_ratings(data_dir, file_order=True)
    user_ids, users = np.unique([r.user_id for r in ratings], return_inverse=True)
    item_ids, items = np.unique([r.item_id for r in ratings], return_inverse=True)
    return Interactions(
        users.astype(np.int64),
        items.astype(np.int64),
        len(user_ids),
        len(item_ids),
        genre_matrix(item_ids.tolist(), load_movies(data_dir)),
    )


def genre_matrix(item_ids: Sequence[str], movies: Mapping[str, Any]) -> Any:
    """Items x genres 0/1 CSR (genre columns in name order); unknown items have no genre."""
    names = sorted({genre for movie in movies.values() for genre in movie.genres})
    column = {name: n for n, name in enumerate(names)}
    rows, cols = [], []
    for row, item_id in enumerate(item_ids):
        movie = movies.get(item_id)
        for genre in movie.genres if movie is not None else ():
            rows.append(row)
            cols.append(column[genre])
    ones = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((ones, (rows, cols)), shape=(len(item_ids), len(names)))


# -- scoring --------------------------------------------------------------------------------


def fit_als(train: Any, params: AlsParams, seed: int) -> ScoreArray:
    confidence = bm25_confidence(train) if params.weighting == "bm25" else train
    # implicit's ALS is much slower when OpenBLAS runs its own threads next to implicit's.
    with threadpool_limits(limits=1, user_api="blas"):
        model = train_als(
            confidence,
            factors=params.factors,
            regularization=params.regularization,
            iterations=params.iterations,
            alpha=params.alpha,
            seed=seed,
        )
    return model.user_factors @ model.item_factors.T


def fit_knn(train: Any, params: KnnParams) -> ScoreArray:
    similarity = cosine_item_similarity(train, params.shrinkage, params.neighbours)
    return itemknn_scores(train, similarity, params.neighbourhood)


def fit_ease(train: Any, l2: float) -> ScoreArray:
    return ease_scores(train, ease_item_weights(train, l2))


def fit_sources(
    train: Any, genres: Any, params: EvalParams, seed: int
) -> tuple[dict[str, ScoreArray], dict[str, float]]:
    """Every source's scores for every user, and the seconds each took to fit and score."""
    builders: dict[str, Callable[[], ScoreArray]] = {
        "popularity": lambda: popularity_scores(train),
        "category": lambda: category_affinity_scores(train, genres),
        "knn": lambda: fit_knn(train, params.knn),
        "ease": lambda: fit_ease(train, params.ease_l2),
        "als": lambda: fit_als(train, params.als, seed),
    }
    scores: dict[str, ScoreArray] = {}
    seconds: dict[str, float] = {}
    for name, build in builders.items():
        started = time.perf_counter()
        scores[name] = build()
        seconds[name] = time.perf_counter() - started
    return scores, seconds


def top_k_excluding(scores: ScoreArray, exclude: Any) -> NDArray[np.int64]:
    """Each user's top ``K`` ids from one source (``[users, items]`` or ``[items]``), the
    items in the users x items CSR ``exclude`` removed."""
    matrix = np.array(np.broadcast_to(scores, exclude.shape), dtype=np.float32)
    coo = sp.coo_matrix(exclude)
    matrix[coo.row, coo.col] = -np.inf
    return top_k_rows(matrix, K)[0]


def measure(top_ids: NDArray[np.int64], truth: Any) -> RankingMetrics:
    """Metrics of ``[users, K]`` ids against a users x items CSR of held-out interactions."""
    relevant = [truth.indices[truth.indptr[u] : truth.indptr[u + 1]] for u in range(truth.shape[0])]
    return metrics_from_hits(hit_table_from_arrays(top_ids, relevant, K))


def blended_ids(
    scores: Mapping[str, ScoreArray], weights: Mapping[str, float], exclude: Any
) -> NDArray[np.int64]:
    return blend_top_k(scores, weights, exclude, K).ids


def score_on_test(
    train: Any, test: Any, genres: Any, params: EvalParams, seed: int
) -> list[MetricsRow]:
    """Refit every model on the whole training part and score it once on the test part."""
    scores, seconds = fit_sources(train, genres, params, seed)
    rows = []
    labels = {
        "popularity": "popularity",
        "category": "category affinity",
        "knn": "item-item cosine kNN",
        "ease": "item-item EASE",
        "als": "ALS (implicit)",
    }
    for name, label in labels.items():
        metrics = measure(top_k_excluding(scores[name], train), test)
        rows.append(_row(label, metrics, seconds[name]))
    started = time.perf_counter()
    ids = blended_ids(scores, params.blend, train)
    used = [name for name, weight in params.blend.items() if weight > 0.0]
    hybrid_seconds = sum(seconds[name] for name in used) + time.perf_counter() - started
    rows.append(_row("hybrid", measure(ids, test), hybrid_seconds))
    for row in rows:
        log.info("%-22s P@10 %.4f  NDCG@10 %.4f", row.model, row.precision, row.ndcg)
    return rows


def _row(model: str, metrics: RankingMetrics, seconds: float) -> MetricsRow:
    return MetricsRow(
        model=model,
        precision=metrics.precision,
        recall=metrics.recall,
        ndcg=metrics.ndcg,
        map=metrics.map,
        map_at_k=metrics.map_at_k,
        users=metrics.users,
        train_seconds=round(seconds, 3),
    )


# -- tuning (validation data carved out of the training part only) ------------------------


def tune_params(data: Interactions, train_rows: NDArray[np.bool_], seed: int) -> Tuning:
    """Choose every hyper-parameter on validation folds carved out of the training rows."""
    started = time.perf_counter()
    folds = validation_folds(data, train_rows, seed)
    trials: dict[str, list[Trial]] = {}
    als, trials["als"] = _search(ALS_GRID, lambda f, p: fit_als(f, AlsParams(**p), seed), folds)
    knn, trials["knn"] = _search(KNN_GRID, lambda f, p: fit_knn(f, KnnParams(**p)), folds)
    ease, trials["ease"] = _search(EASE_GRID, lambda f, p: fit_ease(f, float(p["l2"])), folds)
    params = EvalParams(AlsParams(**als), KnnParams(**knn), float(ease["l2"]))
    sources = [fit_sources(fold.fit, data.genres, params, seed)[0] for fold in folds]
    blend, trials["blend"] = _search_blend(sources, folds)
    return Tuning(replace(params, blend=blend), trials, time.perf_counter() - started)


def validation_folds(data: Interactions, train_rows: NDArray[np.bool_], seed: int) -> list[Fold]:
    """Per-item 75/25 splits of the training rows only, one per seed ``seed, seed + 1, ...``.

    Averaging over several such splits keeps the choice between near-equal candidates from
    hanging on one draw of ~19k validation interactions.
    """
    train_index = np.flatnonzero(train_rows)
    users, items = data.users[train_index], data.items[train_index]
    folds = []
    for fold_seed in range(seed, seed + VALIDATION_FOLDS):
        fit_part = stratified_split(users, items, TRAIN_RATIO, fold_seed, by="item")
        fit_rows = np.zeros_like(train_rows)
        fit_rows[train_index[fit_part]] = True
        valid_rows = np.zeros_like(train_rows)
        valid_rows[train_index[~fit_part]] = True
        folds.append(Fold(data.matrix(fit_rows), data.matrix(valid_rows)))
    log.info("tuning on %d folds of %d fitting interactions", len(folds), folds[0].fit.nnz)
    return folds


def _grid(grid: Mapping[str, Sequence[Any]]) -> Iterable[dict[str, Any]]:
    names = list(grid)
    for values in itertools.product(*(grid[name] for name in names)):
        yield dict(zip(names, values, strict=True))


def _trial(params: dict[str, Any], runs: Sequence[RankingMetrics]) -> Trial:
    precision = float(np.mean([run.precision for run in runs]))
    return Trial(params, precision, float(np.mean([run.ndcg for run in runs])))


def _best(trials: Sequence[Trial], stage: str) -> Trial:
    """Highest mean ``P@10 + NDCG@10`` over the folds (the first one listed on ties)."""
    best = max(trials, key=lambda trial: trial.objective)
    log.info(
        "%s: %s (validation P@10 %.4f, NDCG@10 %.4f)", stage, best.params, best.precision, best.ndcg
    )
    return best


def _search(
    grid: Mapping[str, Sequence[Any]],
    fit_scores: Callable[[Any, dict[str, Any]], ScoreArray],
    folds: Sequence[Fold],
) -> tuple[dict[str, Any], list[Trial]]:
    """Fit and score every combination on every fold."""
    trials = []
    for params in _grid(grid):
        runs = [
            measure(top_k_excluding(fit_scores(fold.fit, params), fold.fit), fold.valid)
            for fold in folds
        ]
        trials.append(_trial(params, runs))
    return _best(trials, "/".join(grid)).params, trials


def _search_blend(
    sources: Sequence[Mapping[str, ScoreArray]], folds: Sequence[Fold]
) -> tuple[dict[str, float], list[Trial]]:
    trials = []
    for weights in _grid(BLEND_GRID):
        runs = [
            measure(blended_ids(fold_sources, weights, fold.fit), fold.valid)
            for fold_sources, fold in zip(sources, folds, strict=True)
        ]
        trials.append(_trial(weights, runs))
    best = _best(trials, "blend")
    return {name: float(weight) for name, weight in best.params.items()}, trials


# -- report ---------------------------------------------------------------------------------


def write_report(
    out_dir: Path,
    rows: Sequence[MetricsRow],
    params: EvalParams,
    tuning: Tuning | None,
    seed: int,
    timings: Mapping[str, float],
) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{REPORT_NAME}.md").write_text(markdown_table(rows, params, tuning is not None))
    document = {
        "dataset": "MovieLens-100k",
        "protocol": {
            "split": "per-item stratified (Recommenders python_stratified_split)",
            "train_ratio": TRAIN_RATIO,
            "seed": seed,
            "k": K,
            "relevance": "every rating is a positive interaction",
            "seen_items": "removed",
            "selection": "validation split of the training part, objective P@10 + NDCG@10",
        },
        "tuned": tuning is not None,
        "params": asdict(params),
        "rows": [asdict(row) for row in rows],
        "references": {
            name: dict(zip(("map", "ndcg", "precision", "recall"), values, strict=True))
            for name, values in REFERENCES.items()
        },
        "validation": _validation_summary(tuning),
        "timings": dict(timings),
    }
    (out_dir / f"{REPORT_NAME}.json").write_text(json.dumps(document, indent=2) + "\n")
    save_plot(out_dir / f"{REPORT_NAME}.png", rows)


def _validation_summary(tuning: Tuning | None) -> dict[str, Any] | None:
    if tuning is None:
        return None
    summary: dict[str, Any] = {}
    for stage, trials in tuning.trials.items():
        best = max(trials, key=lambda trial: trial.objective)
        summary[stage] = {
            "candidates": len(trials),
            "best": {**best.params, "precision": best.precision, "ndcg": best.ndcg},
            "trials": [{**t.params, "precision": t.precision, "ndcg": t.ndcg} for t in trials],
        }
    return summary


def markdown_table(rows: Sequence[MetricsRow], params: EvalParams, tuned: bool) -> str:
    lines = [
        "# MovieLens-100k, Recommenders benchmark protocol",
        "",
        "Per-item stratified 75/25 split (seed 42), every rating positive, top-10, training items"
        " removed.",
        "",
        "| model | P@10 | R@10 | NDCG@10 | MAP | MAP@10 | fit+score s |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        lines.append(
            f"| {row.model} | {row.precision:.4f} | {row.recall:.4f} | {row.ndcg:.4f} |"
            f" {row.map:.4f} | {row.map_at_k:.4f} | {row.train_seconds:.2f} |"
        )
    for name, (map_, ndcg, precision, recall) in REFERENCES.items():
        lines.append(
            f"| *{name} (published)* | {precision:.4f} | {recall:.4f} | {ndcg:.4f} |"
            f" {map_:.4f} | | |"
        )
    source = "tuned on validation in this run" if tuned else "stored values (tune=False)"
    lines += ["", f"Hyper-parameters ({source}):", "", "```", json.dumps(asdict(params), indent=2)]
    lines += ["```", ""]
    return "\n".join(lines)


def save_plot(path: Path, rows: Sequence[MetricsRow]) -> None:
    """Grouped bars of the four metrics for our models and the published references."""
    labels = [row.model for row in rows] + [f"{name}*" for name in REFERENCES]
    values = np.array(
        [[row.precision, row.recall, row.ndcg, row.map] for row in rows]
        + [[p, r, n, m] for m, n, p, r in REFERENCES.values()]
    )
    figure = Figure(figsize=(11, 5), layout="constrained")
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    width = 0.2
    positions = np.arange(len(labels))
    for column, metric in enumerate(("P@10", "R@10", "NDCG@10", "MAP")):
        axes.bar(positions + (column - 1.5) * width, values[:, column], width, label=metric)
    axes.set_xticks(positions, labels, rotation=25, ha="right")
    axes.set_ylabel("score")
    axes.set_title("MovieLens-100k, per-item stratified 75/25, top-10 (* = published)")
    axes.legend()
    figure.savefig(path, dpi=120)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--no-tune", action="store_true", help="use the stored TUNED values")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    rows = evaluate_movielens(args.data_dir, args.out_dir, args.seed, tune=not args.no_tune)
    for row in rows:
        print(f"{row.model:24s} P@10 {row.precision:.4f}  NDCG@10 {row.ndcg:.4f}")


if __name__ == "__main__":
    main()
