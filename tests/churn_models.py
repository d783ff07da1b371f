"""A hand-made churn model with a known answer, for tests that need one published or scored:
risk = sigmoid(log1p(overdue) - 1), one feature, rising with silence."""

from __future__ import annotations

from typing import Any

import numpy as np

from models.churn import ChurnModel


def overdue_model(version: str = "m1", params: dict[str, Any] | None = None) -> ChurnModel:
    return ChurnModel(
        version=version,
        features=("overdue",),
        mean=np.zeros(1),
        scale=np.ones(1),
        coef=np.ones(1),
        intercept=-1.0,
        horizon_days=90.0,
        reference=np.zeros(1),
        params=params or {},
    )
