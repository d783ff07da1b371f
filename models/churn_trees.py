"""Gradient-boosted trees for churn risk, kept and scored as plain arrays.

The trees are fitted by scikit-learn's ``HistGradientBoostingClassifier`` with
``monotonic_cst`` set from how each feature moves while a customer is silent
(:data:`models.churn_features.SILENCE`): a tree's output can only rise with a feature that
grows in silence and only fall with one that shrinks in silence, so, summed, **risk never falls
while a customer stays silent** — the guarantee the sign bounds give the logistic regression.

The fitted estimator is not kept (no pickles: models are data). :func:`export_trees` copies
every tree's nodes into a :class:`TreeEnsemble` — per node: feature index, threshold, left and
right child, leaf value, and where a missing value goes — and :meth:`TreeEnsemble.raw` scores
with numpy exactly as scikit-learn does (``x <= threshold`` goes left, NaN follows the node's
missing direction, leaves summed tree by tree onto the baseline).

:meth:`TreeEnsemble.monotonic_violations` checks the guarantee on the arrays themselves, so a
document loaded from the store is refused if it could lower a silent customer's risk, whoever
wrote it: at every split on a constrained feature, every leaf on the "more silent" side must be
at least every leaf on the other side. That is how scikit-learn enforces the constraint (the
children's values are bounded by their midpoint, and the bounds pass down to every descendant),
so its trees always pass, and it is sufficient: each tree, hence the sum, is then monotone in
each constrained feature.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

FloatArray = NDArray[np.float64]
IntArray = NDArray[np.int64]
LEAF = -1
TREE_FIELDS = ("feature", "threshold", "left", "right", "value", "missing_left")

# Hyper-parameters of the boosted trees. Only the number of trees is chosen per training, by
# grouped cross-validated log loss (as C is for the logistic regression). These had the lowest
# such log loss of five settings on the training rows of all three simulator seeds (both
# modes), and were then checked on CDNOW (README, "Churn risk"); they are not searched per shop.
LEARNING_RATE = 0.05
MAX_DEPTH = 4
L2_REGULARIZATION = 1.0
MAX_TREES = 300
# A leaf holds at least 2% of the training rows, between these bounds (small shops still split).
MIN_LEAF_SHARE = 0.02
MIN_LEAF_BOUNDS = (20, 200)


class TreeModelError(ValueError):
    """Tree arrays that cannot be a valid ensemble (wrapped into ChurnModelError by callers)."""


@dataclass(frozen=True, slots=True)
class TreeEnsemble:
    """Every tree's nodes concatenated; children are absolute node indices, ``-1`` at leaves.

    ``value`` is only read at leaves (0 elsewhere). ``roots`` is the first node of each tree.
    """

    feature: IntArray
    threshold: FloatArray
    left: IntArray
    right: IntArray
    value: FloatArray
    missing_left: NDArray[np.bool_]
    roots: IntArray
    depth: int  # the most splits on a path from a root to a leaf

    @property
    def trees(self) -> int:
        return len(self.roots)

    @classmethod
    def empty(cls) -> TreeEnsemble:
        ints = np.zeros(0, dtype=np.int64)
        return cls(ints, np.zeros(0), ints, ints, np.zeros(0), np.zeros(0, dtype=np.bool_), ints, 0)

    @classmethod
    def from_trees(cls, trees: Sequence[Mapping[str, Any]], n_features: int) -> TreeEnsemble:
        """Validate per-tree node lists (children local to their tree) and concatenate them."""
        parts: dict[str, list[NDArray[Any]]] = {name: [] for name in TREE_FIELDS}
        roots: list[int] = []
        depth = 0
        offset = 0
        for number, tree in enumerate(trees):
            arrays = _tree_arrays(tree, number)
            depth = max(depth, _check_tree(arrays, n_features, number))
            for name in ("left", "right"):
                arrays[name] = np.where(arrays[name] >= 0, arrays[name] + offset, LEAF)
            for name in TREE_FIELDS:
                parts[name].append(arrays[name])
            roots.append(offset)
            offset += len(arrays["feature"])
        if not roots:
            return cls.empty()
        joined = {name: np.concatenate(parts[name]) for name in TREE_FIELDS}
        return cls(
            joined["feature"].astype(np.int64),
            joined["threshold"].astype(np.float64),
            joined["left"].astype(np.int64),
            joined["right"].astype(np.int64),
            joined["value"].astype(np.float64),
            joined["missing_left"].astype(np.bool_),
            np.asarray(roots, dtype=np.int64),
            depth,
        )

    def to_trees(self) -> list[dict[str, list[Any]]]:
        """Per-tree node lists with children local to their tree (:meth:`from_trees`' input)."""
        if not self.trees:
            return []
        ends = [*self.roots[1:].tolist(), len(self.feature)]
        trees = []
        for start, end in zip(self.roots.tolist(), ends, strict=True):
            nodes = slice(start, end)
            left, right = self.left[nodes], self.right[nodes]
            trees.append(
                {
                    "feature": self.feature[nodes].tolist(),
                    "threshold": self.threshold[nodes].tolist(),
                    "left": np.where(left >= 0, left - start, LEAF).tolist(),
                    "right": np.where(right >= 0, right - start, LEAF).tolist(),
                    "value": self.value[nodes].tolist(),
                    "missing_left": self.missing_left[nodes].tolist(),
                }
            )
        return trees

    def raw(self, x: FloatArray, start: FloatArray | float = 0.0) -> FloatArray:
        """``start`` plus the sum of every tree's leaf value for each row of ``x`` (raw
        features, in the model's feature order), tree by tree like scikit-learn."""
        rows = x.shape[0]
        total = np.zeros(rows, dtype=np.float64) + start
        if not self.trees or not rows:
            return total
        node = np.repeat(self.roots[None, :], rows, axis=0)
        row = np.arange(rows)[:, None]
        for _ in range(self.depth):
            feature = self.feature[node]
            split = feature >= 0
            if not split.any():
                break
            values = x[row, np.where(split, feature, 0)]
            go_left = np.where(
                np.isnan(values), self.missing_left[node], values <= self.threshold[node]
            )
            node = np.where(split, np.where(go_left, self.left[node], self.right[node]), node)
        leaves = self.value[node]
        for tree in range(self.trees):  # summed in tree order, as scikit-learn does
            total += leaves[:, tree]
        return total

    def monotonic_violations(self, directions: Sequence[int]) -> list[int]:
        """Features (indices) whose splits break their direction: for +1, some leaf left of a
        split on it is above some leaf on its right; for -1 the other way round."""
        low, high = self._leaf_ranges()
        wrong: set[int] = set()
        for node in np.flatnonzero(self.feature >= 0).tolist():
            feature = int(self.feature[node])
            direction = directions[feature]
            left, right = int(self.left[node]), int(self.right[node])
            rising, falling = direction > 0, direction < 0
            if (rising and high[left] > low[right]) or (falling and low[left] < high[right]):
                wrong.add(feature)
        return sorted(wrong)

    def _leaf_ranges(self) -> tuple[FloatArray, FloatArray]:
        """The lowest and highest leaf value under each node (children follow their parent)."""
        low = self.value.copy()
        high = self.value.copy()
        for node in range(len(self.feature) - 1, -1, -1):
            if self.feature[node] >= 0:
                left, right = self.left[node], self.right[node]
                low[node] = min(low[left], low[right])
                high[node] = max(high[left], high[right])
        return low, high


def _tree_arrays(tree: Mapping[str, Any], number: int) -> dict[str, NDArray[Any]]:
    try:
        lists = {name: tree[name] for name in TREE_FIELDS}
    except (KeyError, TypeError):
        raise TreeModelError(f"tree {number} needs {', '.join(TREE_FIELDS)}") from None
    for name, values in lists.items():
        if not isinstance(values, list | np.ndarray):
            raise TreeModelError(f"tree {number}: {name} must be a list")
    if not all(_is_int(v) for name in ("feature", "left", "right") for v in lists[name]):
        raise TreeModelError(f"tree {number}: features and children must be integers")
    if not all(_is_number(v) for name in ("threshold", "value") for v in lists[name]):
        raise TreeModelError(f"tree {number}: thresholds and values must be numbers")
    if not all(isinstance(v, bool | np.bool_) for v in lists["missing_left"]):
        raise TreeModelError(f"tree {number}: missing_left must hold booleans")
    return {
        "feature": np.asarray(lists["feature"], dtype=np.int64),
        "threshold": np.asarray(lists["threshold"], dtype=np.float64),
        "left": np.asarray(lists["left"], dtype=np.int64),
        "right": np.asarray(lists["right"], dtype=np.int64),
        "value": np.asarray(lists["value"], dtype=np.float64),
        "missing_left": np.asarray(lists["missing_left"], dtype=np.bool_),
    }


def _is_int(value: Any) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool | np.bool_)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float | np.integer | np.floating) and not isinstance(
        value, bool | np.bool_
    )


def _check_tree(arrays: Mapping[str, NDArray[Any]], n_features: int, number: int) -> int:
    """Refuse anything but a proper binary tree rooted at node 0; return its depth."""
    feature, left, right = arrays["feature"], arrays["left"], arrays["right"]
    size = len(feature)
    if size == 0 or any(len(arrays[name]) != size for name in TREE_FIELDS):
        raise TreeModelError(f"tree {number}: node arrays must be non-empty and of equal length")
    if not (np.isfinite(arrays["threshold"]).all() and np.isfinite(arrays["value"]).all()):
        raise TreeModelError(f"tree {number}: thresholds and values must be finite")
    split = feature >= 0
    if (feature[split] >= n_features).any() or (feature[~split] != LEAF).any():
        raise TreeModelError(f"tree {number}: a feature index is out of range")
    if ((left[~split] != LEAF) | (right[~split] != LEAF)).any():
        raise TreeModelError(f"tree {number}: a leaf has children")
    nodes = np.arange(size)
    children = np.concatenate([left[split], right[split]])
    # Children after their parent (no cycles), inside the tree, and each node but the root
    # the child of exactly one split: a tree, every node reachable from node 0.
    if (left[split] <= nodes[split]).any() or (right[split] <= nodes[split]).any():
        raise TreeModelError(f"tree {number}: a child must come after its parent")
    if (children >= size).any() or sorted(children.tolist()) != list(range(1, size)):
        raise TreeModelError(f"tree {number}: nodes do not form one tree")
    depth = np.zeros(size, dtype=np.int64)
    for node in nodes[split].tolist():
        depth[left[node]] = depth[right[node]] = depth[node] + 1
    return int(depth.max())


# -- fitting --------------------------------------------------------------------------------------


def export_trees(estimator: Any) -> tuple[float, TreeEnsemble]:
    """The baseline (raw score before any tree) and the trees of a fitted binary
    ``HistGradientBoostingClassifier`` on numeric features."""
    predictors = estimator._predictors  # one list of per-class trees per iteration
    if any(len(per_class) != 1 for per_class in predictors):
        raise TreeModelError("only binary classifiers can be exported")
    trees = []
    for (predictor,) in predictors:
        nodes = predictor.nodes
        if nodes["is_categorical"].any():
            raise TreeModelError("categorical splits cannot be exported")
        leaf = nodes["is_leaf"].astype(np.bool_)

        def ints(name: str, nodes: Any = nodes, leaf: Any = leaf) -> IntArray:
            # scikit-learn keeps children as uint32: widen before -1 can mean "none".
            return np.where(leaf, LEAF, nodes[name].astype(np.int64))

        trees.append(
            {
                "feature": ints("feature_idx"),
                "threshold": np.where(leaf, 0.0, nodes["num_threshold"].astype(np.float64)),
                "left": ints("left"),
                "right": ints("right"),
                "value": np.where(leaf, nodes["value"].astype(np.float64), 0.0),
                "missing_left": nodes["missing_go_to_left"].astype(np.bool_),
            }
        )
    baseline = float(np.asarray(estimator._baseline_prediction).ravel()[0])
    n_features = int(estimator.n_features_in_)
    return baseline, TreeEnsemble.from_trees(trees, n_features)


def min_leaf(rows: int) -> int:
    low, high = MIN_LEAF_BOUNDS
    return int(min(high, max(low, math.floor(rows * MIN_LEAF_SHARE))))


def new_classifier(directions: Sequence[int], trees: int, rows: int) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        learning_rate=LEARNING_RATE,
        max_iter=trees,
        max_depth=MAX_DEPTH,
        min_samples_leaf=min_leaf(rows),
        l2_regularization=L2_REGULARIZATION,
        monotonic_cst=list(directions),
        early_stopping=False,  # the number of trees is chosen by grouped CV instead
        random_state=0,
    )


def choose_trees(
    x: FloatArray,
    y: FloatArray,
    fold: IntArray,
    directions: Sequence[int],
    max_trees: int = MAX_TREES,
) -> tuple[int, FloatArray]:
    """The number of trees with the lowest grouped out-of-fold log loss, and the out-of-fold
    probabilities with that many trees. One fit per fold: staged predictions give every count."""
    losses = np.zeros(max_trees)
    fitted = []
    for k in np.unique(fold):
        train, valid = fold != k, fold == k
        if len(np.unique(y[train])) < 2:
            fitted.append((k, None))
            constant = np.full((max_trees, int(valid.sum())), y[train].mean())
            losses += _stage_losses(constant, y[valid])
            continue
        model = new_classifier(directions, max_trees, int(train.sum())).fit(x[train], y[train])
        stages = np.asarray([p[:, 1] for p in model.staged_predict_proba(x[valid])])
        # Fewer stages than asked only if boosting stopped early: the last one then holds on.
        if len(stages) < max_trees:
            stages = np.concatenate([stages, np.repeat(stages[-1:], max_trees - len(stages), 0)])
        losses += _stage_losses(stages, y[valid])
        fitted.append((k, model))
    best = int(np.argmin(losses)) + 1
    oof = np.zeros(len(y))
    for k, model in fitted:
        valid = fold == k
        if model is None:
            oof[valid] = y[fold != k].mean()
            continue
        stages = model.staged_predict_proba(x[valid])
        oof[valid] = next(itertools.islice(stages, best - 1, None))[:, 1]
    return best, oof


def _stage_losses(stages: FloatArray, y: FloatArray) -> FloatArray:
    """Summed log loss of each stage's probabilities (rows: stages)."""
    p = np.clip(stages, 1e-12, 1.0 - 1e-12)
    return np.asarray(-(y * np.log(p) + (1.0 - y) * np.log(1.0 - p)).sum(axis=1))
