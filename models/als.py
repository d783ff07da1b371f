"""Implicit-feedback ALS (Hu, Koren & Volinsky 2008) on top of ``implicit``, as plain arrays.

Training delegates to ``implicit.cpu.als.AlternatingLeastSquares``; what comes out is an
:class:`AlsModel` of two float32 factor matrices, which is all a worker needs to publish and all
a stream worker needs to score. Serving needs no ``implicit`` object: :func:`recommend_batch`
scores with one matrix product per chunk of users and :func:`fold_in_user` recomputes one
user's vector from their current interactions, between retrains.

Confidence convention (``implicit``'s): the matrix handed to :func:`train_als` holds ``r_ui``;
the confidence of an observed pair is ``c_ui = alpha * r_ui`` and every unobserved pair has
confidence 1 and preference 0. :func:`bm25_confidence` and :func:`log_confidence` are the usual
re-weightings of ``r_ui`` before that.

BLAS threads: ``implicit`` warns when OpenBLAS/MKL run their own thread pool, which slows ALS
down badly. Callers that train should wrap training in
``threadpoolctl.threadpool_limits(1, "blas")`` *after* importing this module (the limit only
reaches BLAS libraries already loaded, and ``implicit`` loads SciPy's); importing this module
changes no setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, cast

import numpy as np
import scipy.sparse as sp
from implicit.cpu.als import AlternatingLeastSquares
from implicit.recommender_base import ModelFitError
from numpy.typing import ArrayLike, NDArray

from shoppulse.errors import ShopPulseError

FloatArray = NDArray[np.float32]
IdArray = NDArray[np.int64]
_CHUNK_USERS = 2048  # rows of the score matrix materialised at once by recommend_batch


class TrainingError(ShopPulseError):
    """Training produced a model that must not be published (NaN or infinite factors)."""


@dataclass(frozen=True, slots=True)
class AlsModel:
    """Trained factors: ``score(u, i) = user_factors[u] @ item_factors[i]``."""

    user_factors: FloatArray  # [users, factors]
    item_factors: FloatArray  # [items, factors]


def train_als(
    confidence: Any,
    factors: int = 64,
    regularization: float = 0.01,
    iterations: int = 15,
    alpha: float = 1.0,
    seed: int = 42,
    show_progress: bool = False,
    num_threads: int = 0,
) -> AlsModel:
    """Fit ALS on a users x items CSR matrix of ``r_ui`` (see the module docstring).

    ``num_threads=0`` lets ``implicit`` use every core; results do not depend on it (each
    half-step solves users, then items, independently). Raises :class:`TrainingError` when a
    factor is NaN or infinite, so a broken model is never returned.
    """
    matrix = _as_csr32(confidence)
    model = AlternatingLeastSquares(
        factors=factors,
        regularization=regularization,
        alpha=alpha,
        iterations=iterations,
        random_state=seed,
        num_threads=num_threads,
    )
    try:
        model.fit(matrix, show_progress=show_progress)
    except ModelFitError as error:
        raise TrainingError(f"ALS training failed: {error}") from error
    result = AlsModel(
        np.ascontiguousarray(model.user_factors, dtype=np.float32),
        np.ascontiguousarray(model.item_factors, dtype=np.float32),
    )
    check_factors(result)
    return result


def check_factors(model: AlsModel) -> None:
    """Raise :class:`TrainingError` unless every factor is finite."""
    for name, matrix in (("user", model.user_factors), ("item", model.item_factors)):
        if not np.isfinite(matrix).all():
            raise TrainingError(f"ALS produced non-finite {name} factors")


def recommend_batch(
    user_vectors: NDArray[np.floating],
    item_factors: NDArray[np.floating],
    exclude: Any | None,
    k: int,
) -> tuple[IdArray, FloatArray]:
    """Top ``k`` items for each user vector, best first, skipping ``exclude``'s items.

    ``exclude`` is a users x items CSR matrix (any non-zero entry is excluded) or ``None``.
    Ties are broken by the lower item index. A user with fewer than ``k`` candidates gets
    ``-1`` ids and ``-inf`` scores in the slots left over.
    """
    vectors = np.atleast_2d(np.asarray(user_vectors, dtype=np.float32))
    items = np.asarray(item_factors, dtype=np.float32)
    if exclude is not None and exclude.shape != (len(vectors), len(items)):
        raise ValueError("exclude must be users x items")
    ids = np.full((len(vectors), k), -1, dtype=np.int64)
    scores = np.full((len(vectors), k), -np.inf, dtype=np.float32)
    for start in range(0, len(vectors), _CHUNK_USERS):
        stop = min(start + _CHUNK_USERS, len(vectors))
        block = vectors[start:stop] @ items.T
        if exclude is not None:
            mask_rows(block, exclude[start:stop])
        ids[start:stop], scores[start:stop] = top_k_rows(block, k)
    return ids, scores


def mask_rows(scores: NDArray[np.floating], exclude: Any) -> None:
    """Set ``scores[u, i] = -inf`` in place wherever the CSR ``exclude`` has an entry."""
    coo = sp.coo_matrix(exclude)
    scores[coo.row, coo.col] = -np.inf


def top_k_rows(scores: NDArray[np.floating], k: int) -> tuple[IdArray, FloatArray]:
    """Per row: the ``k`` best column indices (ties: lower index first) and their scores.

    ``-inf`` entries never count as candidates; missing slots are ``-1`` / ``-inf``.
    """
    if k <= 0:
        raise ValueError("k must be positive")
    n_rows, n_cols = scores.shape
    width = min(k, n_cols)
    if width < n_cols:
        # argpartition's k-th boundary is arbitrary among equal scores: widen the cut to every
        # column tied with the k-th best so the index tie-break below sees all of them.
        kth = -np.partition(-scores, width - 1, axis=1)[:, width - 1 : width]
        candidates = scores >= kth
        cand_rows, cand_cols = np.nonzero(candidates)
    else:
        cand_rows, cand_cols = np.divmod(np.arange(n_rows * n_cols), n_cols)
    cand_scores = scores[cand_rows, cand_cols]
    order = np.lexsort((cand_cols, -cand_scores, cand_rows))
    cand_rows, cand_cols, cand_scores = cand_rows[order], cand_cols[order], cand_scores[order]
    starts = np.searchsorted(cand_rows, np.arange(n_rows))
    slot = np.arange(len(cand_rows)) - starts[cand_rows]
    keep = (slot < width) & np.isfinite(cand_scores)
    ids = np.full((n_rows, k), -1, dtype=np.int64)
    top = np.full((n_rows, k), -np.inf, dtype=np.float32)
    ids[cand_rows[keep], slot[keep]] = cand_cols[keep]
    top[cand_rows[keep], slot[keep]] = cand_scores[keep]
    return ids, top


def fold_in_user(
    item_factors: NDArray[np.floating],
    item_ids: ArrayLike,
    confidences: ArrayLike,
    regularization: float,
    alpha: float = 1.0,
    gram: NDArray[np.floating] | None = None,
) -> FloatArray:
    """A user's factor vector from their interactions, with the item factors held fixed.

    The exact least-squares step ``implicit`` takes for one user (its Cholesky
    ``recalculate_user``), with ``c_i = alpha * confidences[i]``::

        x = (YᵀY + Σ_i (|c_i| - 1) y_i y_iᵀ + λI)⁻¹ Σ_{c_i > 0} c_i y_i

    i.e. ``(YᵀY + Yᵀ(C_u - I)Y + λI)⁻¹ Yᵀ C_u p(u)`` without forming ``C_u``. A negative
    confidence means "disliked" (preference 0), as in ``implicit``. Repeated item ids add up,
    as they would in a CSR row. Computed in float64, returned as float32. ``gram`` is ``YᵀY``
    if the caller has it already (it is the same for every row solved against ``Y``).

    The same step with users and items swapped is ALS's item step: pass the user factors as
    ``item_factors`` and an item's users as ``item_ids`` to get that item's vector.
    """
    y = np.asarray(item_factors, dtype=np.float64)
    ids = np.asarray(item_ids, dtype=np.int64)
    c = alpha * np.asarray(confidences, dtype=np.float64)
    if ids.shape != c.shape or ids.ndim != 1:
        raise ValueError("item_ids and confidences must be 1-d and of the same length")
    ids, c = _sum_duplicates(ids, c)
    rows = y[ids]
    shared = y.T @ y if gram is None else np.asarray(gram, dtype=np.float64)
    a = shared + regularization * np.eye(y.shape[1])
    a += (rows * (np.abs(c) - 1.0)[:, None]).T @ rows
    b = rows.T @ np.where(c > 0.0, c, 0.0)
    return np.linalg.solve(a, b).astype(np.float32)


def _sum_duplicates(
    ids: NDArray[np.int64], values: NDArray[np.float64]
) -> tuple[NDArray[np.int64], NDArray[np.float64]]:
    unique, inverse = np.unique(ids, return_inverse=True)
    if len(unique) == len(ids):
        return ids, values
    summed = np.zeros(len(unique), dtype=np.float64)
    np.add.at(summed, inverse, values)
    return unique, summed


def bm25_confidence(matrix: Any, k1: float = 100.0, b: float = 0.8) -> Any:
    """BM25 re-weighting of a users x items matrix, ``implicit``'s ``bm25_weight`` formula.

    Each item column is an IDF-weighted "term" and each user row a "document"::

        r'_ui = r_ui * (k1 + 1) / (k1 * (1 - b + b * len_u / avg_len) + r_ui) * idf_i
        idf_i = log(n_users / (1 + users_with_i))

    which damps heavy users and very popular items. Returns CSR float32.
    """
    x = _as_csr32(matrix)
    coo = x.tocoo()
    n_users = x.shape[0]
    idf = np.log(n_users) - np.log1p(np.bincount(coo.col, minlength=x.shape[1]))
    row_sums = np.asarray(x.sum(axis=1)).ravel()
    length_norm = (1.0 - b) + b * row_sums / max(float(row_sums.mean()), 1e-12)
    data = coo.data * (k1 + 1.0) / (k1 * length_norm[coo.row] + coo.data) * idf[coo.col]
    return sp.csr_matrix((data.astype(np.float32), (coo.row, coo.col)), shape=x.shape)


def log_confidence(matrix: Any, scale: float = 1.0) -> Any:
    """``1 + log1p(r_ui / scale)``: confidence that grows slowly with interaction strength."""
    x = _as_csr32(matrix).copy()
    x.data = (1.0 + np.log1p(x.data / scale)).astype(np.float32)
    return x


def _as_csr32(matrix: Any) -> Any:
    csr = sp.csr_matrix(matrix, dtype=np.float32)
    csr.sum_duplicates()
    return cast(Any, csr)
