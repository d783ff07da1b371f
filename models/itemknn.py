"""Offline item-item models on a users x items CSR matrix, scored for batches of users.

**Shrunk cosine k-NN** — the definition the stream keeps incrementally in
:mod:`models.similarity`, computed here in one pass over a whole matrix. With ``r[u, i]`` the
interaction weight of user ``u`` on item ``i``:

* ``C[i, j] = sum_u r[u, i] * r[u, j]`` (co-occurrence) and ``N[i] = C[i, i]`` (squared norm);
* ``sim(i, j) = min(C[i, j] / sqrt(N[i] * N[j]), 1) * C[i, j] / (C[i, j] + shrinkage)``;
* only each item's ``neighbours`` most similar other items are kept (ties: lower index).

Scoring a user's candidate item ``j``, :func:`itemknn_scores` offers the two classic readings of
"neighbours" (the similarity is symmetric; only the top-K pruning differs):

* ``"history"``: ``sum_i r[u, i] * sim(i, j)`` over the user's items ``i`` that keep ``j`` among
  their neighbours — what :func:`models.recommend.itemknn_scores` does online (without its
  recency decay);
* ``"candidate"``: the same sum over the user's items among ``j``'s own neighbours (Sarwar et
  al.; Deshpande & Karypis), which ranks better offline on MovieLens.

:func:`cosine_item_similarity` is tested to agree with
:func:`models.similarity.cosine_similarities`, the per-item version.

**EASE** (Steck 2019, "Embarrassingly Shallow Autoencoders") — the item-item weight matrix
``B`` that best reconstructs ``X`` from ``X B`` under an L2 penalty with ``diag(B) = 0``, in
closed form: ``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)`` column-wise, ``diag(B) = 0``. One
``items x items`` inverse: right for catalogs up to a few tens of thousands of items.
"""

from __future__ import annotations

from typing import Any, Literal, cast

import numpy as np
import scipy.sparse as sp
from numpy.typing import NDArray


def cosine_item_similarity(matrix: Any, shrinkage: float = 10.0, neighbours: int = 100) -> Any:
    """Shrunk cosine between items, top ``neighbours`` per item, as an items x items CSR.

    Row ``i`` holds item ``i``'s neighbours; the diagonal is empty.
    """
    if neighbours <= 0:
        raise ValueError("neighbours must be positive")
    x = sp.csr_matrix(matrix, dtype=np.float64)
    co = sp.coo_matrix(x.T @ x)
    norms = co.diagonal()
    keep = (co.row != co.col) & (co.data > 0.0)
    rows, cols, counts = co.row[keep], co.col[keep], co.data[keep]
    denominator = np.sqrt(norms[rows] * norms[cols])
    cosine = np.minimum(counts / np.where(denominator > 0.0, denominator, np.inf), 1.0)
    similarity = cosine * counts / (counts + shrinkage)
    return _top_per_row(rows, cols, similarity, x.shape[1], neighbours)


def _top_per_row(
    rows: NDArray[np.integer],
    cols: NDArray[np.integer],
    values: NDArray[np.float64],
    size: int,
    per_row: int,
) -> Any:
    """Keep the ``per_row`` largest positive values of each row (ties: lower column)."""
    positive = values > 0.0
    rows, cols, values = rows[positive], cols[positive], values[positive]
    order = np.lexsort((cols, -values, rows))
    rows, cols, values = rows[order], cols[order], values[order]
    starts = np.searchsorted(rows, np.arange(size))
    rank = np.arange(len(rows)) - starts[rows]
    top = rank < per_row
    result = sp.csr_matrix(
        (values[top].astype(np.float32), (rows[top], cols[top])), shape=(size, size)
    )
    return cast(Any, result)


def itemknn_scores(
    user_items: Any,
    similarity: Any,
    neighbourhood: Literal["history", "candidate"] = "history",
) -> NDArray[np.float32]:
    """Dense ``[users, items]`` k-NN scores for the given user rows (see the module docstring).

    ``similarity`` is :func:`cosine_item_similarity`'s matrix: row ``i`` = ``i``'s neighbours.
    """
    if neighbourhood not in ("history", "candidate"):
        raise ValueError("neighbourhood must be 'history' or 'candidate'")
    x = sp.csr_matrix(user_items, dtype=np.float32)
    sim = sp.csr_matrix(similarity, dtype=np.float32)
    product = x @ (sim if neighbourhood == "history" else sim.T.tocsr())
    return np.asarray(product.toarray(), dtype=np.float32)


def ease_item_weights(matrix: Any, l2: float = 500.0) -> NDArray[np.float32]:
    """EASE's dense items x items weights ``B`` (zero diagonal) for a users x items matrix."""
    if l2 <= 0.0:
        raise ValueError("l2 must be positive")
    x = sp.csr_matrix(matrix, dtype=np.float64)
    gram = np.asarray((x.T @ x).toarray(), dtype=np.float64)
    gram[np.diag_indices_from(gram)] += l2
    precision = np.linalg.inv(gram)
    weights = precision / -np.diag(precision)[None, :]
    weights[np.diag_indices_from(weights)] = 0.0
    return weights.astype(np.float32)


def ease_scores(user_items: Any, weights: NDArray[np.floating]) -> NDArray[np.float32]:
    """Dense ``[users, items]`` EASE scores ``X B`` for the given user rows."""
    x = sp.csr_matrix(user_items, dtype=np.float32)
    return np.asarray(x @ np.asarray(weights, dtype=np.float32), dtype=np.float32)
