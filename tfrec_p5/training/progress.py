"""What the trainers say about their own passes: the validation plan and the refit line.

Why: a trainer that picks its epoch count on validation data and then retrains (the
*refit*) prints two runs of Keras progress bars, and a command line that folds its
validation part into training would otherwise report "validation 0" while the trainer
carves its own slice. These helpers turn the trainer's real settings into one phrase
(``validation_plan``, for the command line's split line) and print one line before a
refit starts (``refit.search_then_refit``). They print plain lines to stdout, where Keras'
progress bars go too, and only when ``verbose > 0``: the training layer stays free of any
command-line import.

    validation_plan(epochs=40, validation_rows=247, carved_fraction=0.1,
                    monitor="val_rmse", patience=3, refit_rows=2470)
    # '10 % of train (247 rows) carved for early stopping on val_rmse (patience 3, up to
    #  40 epochs), then a refit on all 2,470 training rows for the best epoch count'
"""

from __future__ import annotations

__all__ = ["plural", "validation_plan"]


def plural(count: int, noun: str) -> str:
    """``"1 epoch"``, ``"3 epochs"``, ``"2,470 rows"``."""
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def validation_plan(*, epochs: int, validation_rows: int, carved_fraction: float | None,
                    monitor: str | None, patience: int, refit_rows: int | None,
                    refit_what: str = "training rows", by_time: bool = False) -> str:
    """What training does with validation data, as one phrase.

    Args:
      epochs: the configured epoch count (the maximum when early stopping is on).
      validation_rows: rows validated on (0: no validation at all).
      carved_fraction: the share of the training part the trainer carves off itself;
        ``None`` when the validation rows were handed in (e.g. the split's own part).
      monitor: the metric that picks the epoch (early stopping or the refit's epoch
        count); ``None`` when validation only reports metrics.
      patience: epochs without improvement before early stopping (0: no early stopping).
      refit_rows: rows of the refit pass that follows the search (``None``: no refit).
      refit_what: what those rows are, e.g. ``"training + validation rows"``.
      by_time: the carved share is the latest events, not a random one.
    """
    if validation_rows <= 0:
        return f"none (fixed {plural(epochs, 'epoch')})"
    if carved_fraction is not None:
        source = (f"{'the latest ' if by_time else ''}{carved_fraction * 100:g} % of train "
                  f"({plural(validation_rows, 'row')}) carved")
    else:
        source = f"{plural(validation_rows, 'row')}"
    if monitor is None:
        return f"{source} for validation metrics only (fixed {plural(epochs, 'epoch')})"
    if patience > 0:
        use = (f"for early stopping on {monitor} (patience {patience}, up to "
               f"{plural(epochs, 'epoch')})")
    else:
        use = f"to pick the epoch count by {monitor} (out of {plural(epochs, 'epoch')})"
    if refit_rows:
        return (f"{source} {use}, then a refit on all {refit_rows:,} {refit_what} for the "
                "best epoch count")
    return f"{source} {use}"
