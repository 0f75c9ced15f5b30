"""RMSE and MAE: the rating task's metrics, computed in one place.

The models' ``evaluate`` and the evaluation through an export's signatures both call it,
so the two report the same numbers for the same predictions:

    rating_metrics(predictions, table.rating)      # {"rmse": 0.91, "mae": 0.72}
"""

from __future__ import annotations

import numpy as np

from tfrec_p5.data.errors import DataError

__all__ = ["RatingErrors", "rating_metrics"]


def rating_metrics(predictions: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """``{"rmse", "mae"}`` of predictions against true ratings (float64 sums)."""
    errors = RatingErrors()
    errors.add(predictions, ratings)
    return errors.result()


class RatingErrors:
    """RMSE and MAE summed batch by batch, for rows that never sit in memory together.

    Why: a streamed test part (``tfrec_p5.data.stream``) arrives in batches; the sums are
    float64, so the result equals ``rating_metrics`` of all the rows at once.

        errors = RatingErrors()
        for predictions, ratings in batches:
            errors.add(predictions, ratings)
        errors.result()                        # {"rmse": ..., "mae": ...}
    """

    def __init__(self) -> None:
        self.rows, self.squared, self.absolute = 0, 0.0, 0.0

    def add(self, predictions: np.ndarray, ratings: np.ndarray) -> None:
        err = (np.asarray(predictions, np.float64).reshape(-1)
               - np.asarray(ratings, np.float64).reshape(-1))
        self.rows += len(err)
        self.squared += float(np.sum(err ** 2))
        self.absolute += float(np.sum(np.abs(err)))

    def result(self) -> dict[str, float]:
        if self.rows == 0:
            raise DataError("cannot compute rating metrics on an empty table")
        return {"rmse": float(np.sqrt(self.squared / self.rows)),
                "mae": float(self.absolute / self.rows)}
