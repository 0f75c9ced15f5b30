"""Score tables through a serving signature, in-memory or loaded from an export.

Why: ``tfrec-p5 train`` reports test metrics and ``tfrec-p5 evaluate`` recomputes them from
the export. Both go through the *same* ``predict_rating`` signature (string IDs in, clipped
rating out), so the two numbers agree and measure what TF Serving will actually serve.

    loaded, _, _ = load_export("saved_models/demo")
    preds = predict_ratings(loaded.signatures["predict_rating"], test)
    rating_metrics(preds, test.rating)      # {"rmse": 0.91, "mae": 0.72}
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import tensorflow as tf

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions


def predict_ratings(signature: Callable[..., dict], table: Interactions,
                    batch_size: int = 8192) -> np.ndarray:
    """``signature(user_id=, item_id=)["rating"]`` for every row of ``table``, as float32."""
    out = []
    for start in range(0, len(table), batch_size):
        result = signature(
            user_id=tf.constant(table.user_id[start:start + batch_size].astype(object)),
            item_id=tf.constant(table.item_id[start:start + batch_size].astype(object)))
        out.append(np.asarray(result["rating"], dtype=np.float32).reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def rating_metrics(predictions: np.ndarray, ratings: np.ndarray) -> dict[str, float]:
    """``{"rmse", "mae"}`` of predictions against true ratings (float64 sums)."""
    if len(ratings) == 0:
        raise DataError("cannot compute rating metrics on an empty table")
    err = np.asarray(predictions, np.float64) - np.asarray(ratings, np.float64)
    return {"rmse": float(np.sqrt(np.mean(err ** 2))), "mae": float(np.mean(np.abs(err)))}


def evaluate_signature(signature: Callable[..., dict], table: Interactions,
                       batch_size: int = 8192) -> dict[str, float]:
    """RMSE/MAE of a ``predict_rating`` signature on ``table`` (needs a rating column)."""
    if table.rating is None:
        raise DataError("evaluating ratings needs a 'rating' column", path=table.source or None,
                        field="rating")
    return rating_metrics(predict_ratings(signature, table, batch_size), table.rating)
