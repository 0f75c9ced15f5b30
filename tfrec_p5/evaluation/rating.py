"""RMSE and MAE: the rating task's metrics, computed in one place.

The models' ``evaluate`` and the evaluation through an export's signatures both call it,
so the two report the same numbers for the same predictions:

    rating_metrics(predictions, table.rating)      # {"rmse": 0.91, "mae": 0.72}
"""

from __future__ import annotations

import numpy as np

from tfrec_p5.data.errors import DataError

__all__ = ["rating_metrics"]


def rating_metrics(predictions: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """``{"rmse", "mae"}`` of predictions against true ratings (float64 sums)."""
    if len(ratings) == 0:
        raise DataError("cannot compute rating metrics on an empty table")
    err = np.asarray(predictions, np.float64) - np.asarray(ratings, np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}
