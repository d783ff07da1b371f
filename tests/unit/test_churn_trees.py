"""The churn model's boosted trees as arrays: the same scores as scikit-learn, monotone in
silence by construction and by check, and a JSON round trip that needs no pickle."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.ensemble import HistGradientBoostingClassifier

from models.churn import (
    FORMAT,
    MODEL_FEATURES,
    ChurnModel,
    ChurnModelError,
    decode_churn_model,
    encode_churn_model,
)
from models.churn_features import DOWN, SILENCE, STEADY, UP
from models.churn_trees import LEAF, TreeEnsemble, TreeModelError, export_trees

DIRECTIONS = [SILENCE[name] for name in MODEL_FEATURES]
N = len(MODEL_FEATURES)


def random_rows(seed: int, rows: int) -> np.ndarray[Any, np.dtype[np.float64]]:
    """Non-negative features on very different scales, like the real ones."""
    rng = np.random.default_rng(seed)
    return rng.lognormal(0.0, 1.5, size=(rows, N)) * rng.uniform(0.1, 300.0, size=N)


def labels_for(x: np.ndarray[Any, np.dtype[np.float64]], seed: int) -> np.ndarray[Any, Any]:
    """Churn made more likely by features that grow in silence, less by those that shrink."""
    rng = np.random.default_rng(seed)
    z = np.log1p(x)
    logit = z @ (np.asarray(DIRECTIONS, dtype=np.float64) * 0.4) + rng.normal(0, 1, len(x))
    return logit > np.median(logit)


@pytest.fixture(scope="module")
def fitted() -> HistGradientBoostingClassifier:
    x = random_rows(1, 3000)
    return HistGradientBoostingClassifier(
        max_iter=40, max_depth=4, min_samples_leaf=20, monotonic_cst=DIRECTIONS, random_state=0
    ).fit(x, labels_for(x, 2))


def tree_model(estimator: HistGradientBoostingClassifier, **overrides: Any) -> ChurnModel:
    baseline, trees = export_trees(estimator)
    fields: dict[str, Any] = {
        "version": "trees-1",
        "features": MODEL_FEATURES,
        "mean": np.zeros(N),
        "scale": np.ones(N),
        "coef": np.zeros(N),
        "intercept": baseline,
        "horizon_days": 90.0,
        "reference": np.full(N, 0.5),
        "params": {"kind": "trees"},
        "trees": trees,
    }
    fields.update(overrides)
    return ChurnModel(**fields)


# -- the same scores as scikit-learn ------------------------------------------------------------


def test_exported_arrays_score_like_predict_proba_on_random_data(
    fitted: HistGradientBoostingClassifier,
) -> None:
    model = tree_model(fitted)
    x = random_rows(3, 2000)
    expected = fitted.predict_proba(x)[:, 1]
    assert np.allclose(model.score_matrix(x), expected, rtol=0.0, atol=1e-12)
    # Raw scores too, with missing values following each node's missing direction.
    x[::7, 3] = np.nan
    x[::5, 11] = np.nan
    baseline, trees = export_trees(fitted)
    assert np.allclose(trees.raw(x, baseline), fitted._raw_predict(x)[:, 0], rtol=0.0, atol=1e-12)


def test_every_tree_and_node_is_exported(fitted: HistGradientBoostingClassifier) -> None:
    _, trees = export_trees(fitted)
    assert trees.trees == fitted.n_iter_ == 40
    assert len(trees.feature) == sum(len(p[0].nodes) for p in fitted._predictors)
    assert 1 <= trees.depth <= 4
    leaves = trees.feature == LEAF
    assert (trees.left[leaves] == LEAF).all() and (trees.left[~leaves] > 0).all()


# -- monotone in silence ------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(
    st.integers(0, 10_000),
    st.lists(st.floats(0.0, 5.0), min_size=N, max_size=N),
)
def test_risk_never_falls_as_a_user_stays_silent(
    fitted: HistGradientBoostingClassifier, pick: int, steps: list[float]
) -> None:
    """Silence moves every feature its own way (up, down or not at all) at once: the risk of
    the trees exported from a fit with those constraints can only rise."""
    model = tree_model(fitted)
    x = random_rows(4, 1)[0] * (1.0 + pick % 17)
    later = x.copy()
    for n, (direction, step) in enumerate(zip(DIRECTIONS, steps, strict=True)):
        if direction == UP:
            later[n] = x[n] * (1.0 + step) + step
        elif direction == DOWN:
            later[n] = x[n] / (1.0 + step)
    risks = model.score_matrix(np.vstack([x, later]))
    assert risks[1] >= risks[0]


def test_the_check_finds_every_split_against_silence(
    fitted: HistGradientBoostingClassifier,
) -> None:
    _, trees = export_trees(fitted)
    assert trees.monotonic_violations(DIRECTIONS) == []
    # Unconstrained trees on the same data break the directions somewhere.
    x = random_rows(1, 3000)
    free = HistGradientBoostingClassifier(max_iter=40, max_depth=4, random_state=0)
    _, loose = export_trees(free.fit(x, labels_for(x, 2)))
    wrong = loose.monotonic_violations(DIRECTIONS)
    assert wrong and all(DIRECTIONS[n] != STEADY for n in wrong)
    with pytest.raises(ChurnModelError, match="against how silence moves them"):
        tree_model(free)


def test_a_hand_made_tree_against_silence_is_refused() -> None:
    # One split on recency (grows in silence): the longer-silent side must not be lower.
    recency = MODEL_FEATURES.index("recency_days")
    tree = {
        "feature": [recency, LEAF, LEAF],
        "threshold": [30.0, 0.0, 0.0],
        "left": [1, LEAF, LEAF],
        "right": [2, LEAF, LEAF],
        "value": [0.0, 0.5, -0.5],
        "missing_left": [True, False, False],
    }
    trees = TreeEnsemble.from_trees([tree], N)
    assert trees.monotonic_violations(DIRECTIONS) == [recency]
    risen = TreeEnsemble.from_trees([{**tree, "value": [0.0, -0.5, 0.5]}], N)
    assert risen.monotonic_violations(DIRECTIONS) == []
    assert risen.raw(np.full((2, N), 10.0)).tolist() == [-0.5, -0.5]
    with pytest.raises(ChurnModelError):
        ChurnModel(
            "bad",
            MODEL_FEATURES,
            np.zeros(N),
            np.ones(N),
            np.zeros(N),
            0.0,
            90.0,
            np.zeros(N),
            trees=trees,
        )


# -- published as JSON, loaded without pickle ---------------------------------------------------


def test_publish_and_load_round_trip_is_plain_json(
    fitted: HistGradientBoostingClassifier,
) -> None:
    model = tree_model(
        fitted, calibration_x=np.array([0.0, 0.5, 1.0]), calibration_y=np.array([0.0, 0.4, 1.0])
    )
    raw = encode_churn_model(model)
    document = json.loads(raw)  # the standard library reads it: nothing but JSON
    assert document["format"] == FORMAT and len(document["trees"]) == 40
    assert set(document["trees"][0]) == {
        "feature",
        "threshold",
        "left",
        "right",
        "value",
        "missing_left",
    }
    again = decode_churn_model(raw)
    assert again.kind == "trees"
    for name in ("feature", "threshold", "left", "right", "value", "missing_left", "roots"):
        assert np.array_equal(getattr(again.trees, name), getattr(model.trees, name))
    x = random_rows(5, 500)
    assert np.array_equal(again.score_matrix(x), model.score_matrix(x))


def tampered(estimator: HistGradientBoostingClassifier, change: Any) -> bytes:
    document = orjson.loads(encode_churn_model(tree_model(estimator)))
    change(document["trees"][0])
    return orjson.dumps(document)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.update(left=[*t["left"][:-1], 0]),  # a leaf pointing back at the root
        lambda t: t.update(left=[len(t["left"]) + 5, *t["left"][1:]]),  # out of the tree
        lambda t: t.update(feature=[N + 3, *t["feature"][1:]]),  # no such feature
        lambda t: t.update(feature=[*t["feature"][:-1], 0]),  # a "leaf" that splits
        lambda t: t.update(value=[None, *t["value"][1:]]),  # orjson writes NaN as null
        lambda t: t.update(threshold=[*t["threshold"][:-1], "1"]),
        lambda t: t.update(missing_left=[1, *t["missing_left"][1:]]),
        lambda t: t.pop("right"),
        lambda t: t.update(value=t["value"][:-1]),  # arrays of different lengths
        lambda t: t.update(value=[v * -1.0 for v in t["value"]]),  # against silence
    ],
)
def test_decode_refuses_broken_trees(fitted: HistGradientBoostingClassifier, change: Any) -> None:
    with pytest.raises(ChurnModelError):
        decode_churn_model(tampered(fitted, change))


def test_a_logistic_model_of_the_previous_format_still_loads() -> None:
    document = {
        "format": "shoppulse-churn-1",
        "features_version": 1,
        "version": "old",
        "features": ["overdue"],
        "mean": [0.0],
        "scale": [1.0],
        "coef": [1.0],
        "intercept": -1.0,
        "horizon_days": 90.0,
        "reference": [0.0],
        "calibration": {"x": [], "y": []},
        "params": {},
    }
    model = decode_churn_model(orjson.dumps(document))
    assert model.kind == "logistic" and model.trees.trees == 0
    features = dict.fromkeys(MODEL_FEATURES, 0.0) | {"overdue": math.e - 1}
    assert model.score(features) == pytest.approx(0.5)


def test_the_export_refuses_what_it_cannot_hold() -> None:
    x = random_rows(6, 300)
    three = np.arange(300) % 3
    multi = HistGradientBoostingClassifier(max_iter=3, random_state=0).fit(x, three)
    with pytest.raises(TreeModelError, match="binary"):
        export_trees(multi)
