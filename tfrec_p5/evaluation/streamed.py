"""The rating reference for a streamed log: the bias baseline, fitted in passes.

Why: a model trained on a log read from files (``tfrec_p5.data.stream``) must still be
shown beside the simplest thing that works, and ``bias_baseline`` needs the rows in
memory. Here the biases are sums over batches, so memory holds one number per user and
item and a fit costs two passes over the rows:

* pass 1: the mean rating and each item's residual sum → ``b_i = Σ(r − μ) / (λ + n_i)``;
* pass 2: each user's residual sum given ``b_i`` → ``b_u = Σ(r − μ − b_i) / (λ + n_u)``,

for every λ of the grid at once: one alternating sweep (Koren's "baseline estimates"),
where ``BiasFit.fit`` iterates to convergence. λ is the one with the lowest RMSE on the
validation part (clipped to the training ratings' range); the biases are then fitted again
on fit + validation, the rows the model's refit trains on.

    ref = streamed_bias_baseline(log, scan)
    ref.validation[ref.fit.l2], ref.evaluate(log, scan, ("test",))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, RATING, USER, Interactions
from tfrec_p5.data.stream import LogScan, LogSplit, ParquetLog
from tfrec_p5.evaluation.rating import RatingErrors
from tfrec_p5.evaluation.signatures import predict_ratings
from tfrec_p5.models.bias import BIAS_GRID, BiasFit

__all__ = ["StreamedBiasBaseline", "evaluate_signature_stream", "streamed_bias_baseline"]

_BATCH = 1 << 20


def _sweep(log: ParquetLog, scan: LogScan, parts: Sequence[str],
           grid: Sequence[float]) -> dict[float, BiasFit]:
    """One ``BiasFit`` per λ of ``grid`` on the rows of ``parts`` (two passes)."""
    num_users, num_items = len(scan.vocabs.user), len(scan.vocabs.item)
    total, rows = 0.0, 0
    item_sum, item_n = np.zeros(num_items), np.zeros(num_items)
    user_n = np.zeros(num_users)
    for users, items, ratings in log.batches(scan, parts, _BATCH):
        total += float(np.sum(ratings, dtype=np.float64))
        rows += len(ratings)
        item_sum += np.bincount(items, ratings, num_items)
        item_n += np.bincount(items, minlength=num_items)
        user_n += np.bincount(users, minlength=num_users)
    mean = total / rows
    item_bias = {l2: (item_sum - mean * item_n) / (l2 + item_n) for l2 in grid}
    user_sum = {l2: np.zeros(num_users) for l2 in grid}
    for users, items, ratings in log.batches(scan, parts, _BATCH):
        ratings = ratings.astype(np.float64)  # float32 - float stays float32 in numpy 2
        for l2 in grid:
            user_sum[l2] += np.bincount(users, ratings - mean - item_bias[l2][items],
                                        num_users)
    fits = {}
    for l2 in grid:
        bu, bi = user_sum[l2] / (l2 + user_n), item_bias[l2]
        bu[0] = bi[0] = 0.0  # unknown IDs: the mean, as BiasFit.fit
        fits[l2] = BiasFit(mean, bu, bi, float(l2))
    return fits


def _errors(fits: Sequence[BiasFit], log: ParquetLog, scan: LogScan,
            parts: Sequence[str]) -> list[dict[str, float]]:
    """RMSE / MAE of each fit on the rows of ``parts``, clipped to the rating range."""
    low, high = scan.rating_range
    errors = [RatingErrors() for _ in fits]
    for users, items, ratings in log.batches(scan, parts, _BATCH):
        for fit, acc in zip(fits, errors, strict=True):
            acc.add(np.clip(fit.predict(users, items), low, high), ratings)
    return [acc.result() for acc in errors]


@dataclass(frozen=True)
class StreamedBiasBaseline:
    """The chosen biases and what chose them.

    ``fit``: fitted on fit + validation with the chosen λ (what is served or tested);
    ``search_fit``: the same λ on the fit rows only (what the validation race compares,
    like the model's search); ``validation``: λ → RMSE / MAE on the validation part.
    """

    fit: BiasFit
    search_fit: BiasFit
    validation: dict[float, dict[str, float]]

    def evaluate(self, log: ParquetLog, scan: LogScan,
                 parts: Sequence[str] = ("test",)) -> dict[str, float]:
        """RMSE / MAE of ``fit`` on the rows of ``parts`` (clipped)."""
        return _errors([self.fit], log, scan, parts)[0]

    @property
    def choice(self) -> str:
        best = self.fit.l2
        return (f"l2={best:g} (RMSE {self.validation[best]['rmse']:.4f} on the validation "
                "part; one alternating sweep)")


def streamed_bias_baseline(log: ParquetLog, scan: LogScan,
                           grid: Sequence[float] = BIAS_GRID) -> StreamedBiasBaseline:
    """The bias baseline of a streamed log (see the module): λ by the validation part
    (``grid`` fitted on the fit rows), refitted on fit + validation."""
    if scan.rows["validation"] == 0:
        raise ValueError("the streamed bias baseline chooses λ on the validation part, "
                         "which is empty")
    fits = _sweep(log, scan, ("fit",), grid)
    errors = _errors(list(fits.values()), log, scan, ("validation",))
    scores = dict(zip(fits, errors, strict=True))
    best = min(scores, key=lambda l2: scores[l2]["rmse"])
    final = _sweep(log, scan, ("fit", "validation"), (best,))[best]
    return StreamedBiasBaseline(final, fits[best], scores)


def evaluate_signature_stream(signature: Callable[..., dict], log: ParquetLog,
                              split: LogSplit, parts: Sequence[str] = ("test",),
                              batch_size: int = 65536) -> tuple[dict[str, float], int]:
    """RMSE / MAE of a ``predict_rating`` signature on the streamed rows of ``parts``, and
    the number of rows.

    Why: ``tfrec-p5 evaluate`` of a model trained on a streamed log scores its test part
    through the export, one row group at a time, with no vocabulary in Python.
    """
    if not log.rating:
        raise DataError("evaluating ratings needs a rating column", path=log.files[0])
    errors = RatingErrors()
    for users, items, ratings in log.raw_batches(split, parts):
        table = Interactions.from_columns({USER: users, ITEM: items, RATING: ratings})
        errors.add(predict_ratings(signature, table, batch_size), ratings)
    return errors.result(), errors.rows
