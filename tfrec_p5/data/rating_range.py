"""The rating range of data that do not declare one: inferred, and checked for outliers.

Why: the rating range clips every served prediction. MovieLens and ``synthetic`` declare
theirs (1–5); a CSV or parquet file may declare it (``rating_range=1,5``: ratings outside
are bad lines), but when it does not, the range is the data's minimum and maximum. One
typo (``1000`` for ``1``, ``-50`` for ``5``) then silently widens the clip to
``[-50, 1000]`` and trains on the typo. ``infer_rating_range`` returns the inferred range
*and* the ratings that lie far outside the bulk of the data, so the caller can say both.

The outlier rule (robust: the outliers themselves barely move it):

* the *bulk* is ``[P0.1, P99.9]``: the 0.1th and 99.9th percentiles, taken as observed
  values inside the data (numpy ``method="higher"`` / ``"lower"``), so with fewer than
  1,000 ratings the single lowest and highest values are outside it;
* a rating is an outlier when it lies more than ``OUTLIER_WIDTHS × W`` outside the bulk,
  where ``W = max(P99.9 − P0.1, 1)``: the bulk's own width (at least one rating step).

Not the interquartile range: on a 1–5 scale most data have an IQR of 1 or 0 (nine in ten
ratings 4 or 5), which would flag every legitimate 1. With the rule above, 1–5 data may
hold anything in ``[-3, 9]``; 0–10 data anything in ``[-10, 20]``.

    check = infer_rating_range(table.rating)
    check.low, check.high          # (-50.0, 1000.0): the data's min and max
    check.bulk                     # (1.0, 5.0)
    check.outliers                 # row indices of -50 and 1000
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The percentiles that bound the bulk of the ratings.
BULK_PERCENTILES = (0.1, 99.9)
#: How far outside the bulk (in bulk widths) a rating must lie to be an outlier.
OUTLIER_WIDTHS = 1.0


@dataclass(frozen=True)
class InferredRange:
    """What ``infer_rating_range`` found: the range, the bulk, the outlier rows."""

    low: float
    high: float
    bulk: tuple[float, float]
    outliers: np.ndarray  # int64 row indices, in row order

    @property
    def range(self) -> tuple[float, float]:
        return self.low, self.high


def infer_rating_range(ratings: np.ndarray) -> InferredRange:
    """The range ``[min, max]`` of ``ratings`` and the rows far outside their bulk (see
    the module docstring for the rule).

        infer_rating_range(np.array([1, 2, 5, 4, 1000.0])).outliers   # array([4])
    """
    values = np.asarray(ratings, dtype=np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError("no ratings to infer a range from")
    lo = float(np.percentile(values, BULK_PERCENTILES[0], method="higher"))
    hi = float(np.percentile(values, BULK_PERCENTILES[1], method="lower"))
    margin = OUTLIER_WIDTHS * max(hi - lo, 1.0)
    outliers = np.flatnonzero((values < lo - margin) | (values > hi + margin))
    return InferredRange(float(values.min()), float(values.max()), (lo, hi),
                         outliers.astype(np.int64))


__all__ = ["BULK_PERCENTILES", "OUTLIER_WIDTHS", "InferredRange", "infer_rating_range"]
