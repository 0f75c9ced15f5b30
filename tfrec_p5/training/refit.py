"""Search, then refit: pick the epoch count on held-out data, retrain on everything.

Why: with a carved validation slice the best epoch count is known only after a run on
the rest (the *search*); the final model then retrains from scratch on all rows for that
many epochs (the *refit*), so no row is lost to validation. ``BackupAndRestore`` deletes
its backup when a ``fit`` ends, so the search's outcome is written next to the backups
(``search.json``) before the refit starts: a rerun after a kill during the refit skips the
search and resumes the refit from its own backup (``refit_backup_dir``).

    trained = search_then_refit(
        backup_dir, search=lambda: (trained, search_record(history, "val_rmse")),
        refit=lambda record, refit_dir: train(epochs=record["best_epochs"],
                                              backup_dir=refit_dir),
        rows=len(train), verbose=1)
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import tensorflow as tf

from tfrec_p5.data.splits import carve_validation
from tfrec_p5.training.loop import backup_epochs, lower_is_better
from tfrec_p5.training.progress import plural

__all__ = ["best_epochs", "carves_by_time", "load_search", "refit_backup_dir", "resume_message",
           "save_search", "search_record", "search_then_refit", "train_with_refit",
           "with_search_history"]

_RECORD = "search.json"
T = TypeVar("T")


def carves_by_time(config: Any) -> bool:
    """Whether ``config`` carves its validation slice by time (``validation_carve="time"``;
    configs without that field carve at random)."""
    return getattr(config, "validation_carve", "random") == "time"


def best_epochs(history: dict[str, list[float]], monitor: str,
                epochs: list[int] | None = None) -> int:
    """1 + the epoch with the best ``monitor`` (the first of equals); ``epochs``: the real
    epoch numbers (``FitHistory.epoch``: later ones after a resume).

        best_epochs({"val_rmse": [1.0, 0.8, 0.9]}, "val_rmse")   # -> 2
    """
    values = np.asarray(history[monitor], dtype=np.float64)
    best = int(np.argmin(values) if lower_is_better(monitor) else np.argmax(values))
    return int(epochs[best] if epochs is not None else best) + 1


def refit_backup_dir(backup_dir: str | os.PathLike | None) -> str | None:
    """Where the refit pass keeps its ``BackupAndRestore`` state (``None``: no backups)."""
    return None if backup_dir is None else os.path.join(os.fspath(backup_dir), "refit")


def search_record(history: tf.keras.callbacks.History, monitor: str | None) -> dict | None:
    """``best_epochs``, ``stopped_epoch`` and ``history`` of a finished search (``None``
    when ``monitor`` was never logged: nothing to refit for)."""
    if monitor is None or monitor not in history.history:
        return None
    return {"best_epochs": best_epochs(history.history, monitor, history.epoch),
            "stopped_epoch": int(getattr(history, "stopped_epoch", 0)),
            "history": {k: [float(x) for x in v] for k, v in history.history.items()}}


def save_search(backup_dir: str | os.PathLike | None, record: dict) -> dict:
    """Write ``record`` (when ``backup_dir`` is set, atomically) and return it."""
    if backup_dir is not None:
        os.makedirs(backup_dir, exist_ok=True)
        path = os.path.join(os.fspath(backup_dir), _RECORD)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)  # atomic: a kill leaves the old record or the new one
    return record


def load_search(backup_dir: str | os.PathLike | None) -> dict | None:
    """The record of a finished search under ``backup_dir``, or ``None``."""
    if backup_dir is None:
        return None
    path = os.path.join(os.fspath(backup_dir), _RECORD)
    try:
        with open(path, encoding="utf-8") as fh:
            record = json.load(fh)
        return record if int(record["best_epochs"]) > 0 else None
    except (OSError, ValueError, KeyError, TypeError):
        return None  # absent or unreadable: search again


def with_search_history(record: dict, history: dict[str, list[float]]) -> dict:
    """The refit's ``history`` preceded by the search's, keys prefixed ``search_``."""
    return {**{f"search_{k}": v for k, v in record["history"].items()}, **history}


def search_then_refit(backup_dir: str | os.PathLike | None,
                      search: Callable[[], tuple[T, dict | None]],
                      refit: Callable[[dict, str | None], T], *, rows: int, verbose: int,
                      what: str = "training rows") -> T:
    """``search()`` → ``(result, record)`` unless an interrupted run under ``backup_dir``
    saved the record; then ``refit(record, refit_backup_dir)``, announced (``rows``,
    ``what``). A ``None`` record (nothing validated) returns the search's result."""
    record = load_search(backup_dir)
    if record is None:
        result, record = search()
        if record is None:
            return result
        save_search(backup_dir, record)
    if verbose:  # the refit's progress starts again at "Epoch 1/N": not a restart
        print(f"refit: retraining on all {rows:,} {what} for "
              f"{plural(record['best_epochs'], 'epoch')} (the best epoch count of the "
              "search)", flush=True)
    return refit(record, refit_backup_dir(backup_dir))


def refit_config(config: Any, record: dict) -> Any:
    """``config`` for the refit of a search ``record``: no carve, no second refit, the
    search's best epoch count."""
    return config.replace(refit=False, validation_fraction=0.0,
                          epochs=record["best_epochs"])


def refitted(out: T, record: dict) -> T:
    """The refit's result ``out`` with the search's history in front of its own and the
    search's early stop (not the refit's) as ``stopped_epoch``."""
    out.history = with_search_history(record, out.history)
    if hasattr(out, "stopped_epoch"):
        out.stopped_epoch = record["stopped_epoch"]
    return out


def train_with_refit(trainer: Callable[..., T], run: Callable[..., tuple[T, dict | None]],
                     train: Any, validation: Any, config: Any, *, seed: int,
                     backup_dir: str | os.PathLike | None, verbose: int, **kwargs: Any) -> T:
    """A trainer's whole schedule: seed, carve the validation slice by the config's rule,
    fit, and (``config.refit``, carved slice only) refit on all of ``train``.

    Why one function: ``train_rating`` and ``train_unified`` follow the same schedule;
    each supplies ``run(train, fit_table, validation, config, seed=, backup_dir=,
    verbose=, **kwargs)`` (one fit and its ``search_record``) and itself as ``trainer``,
    which the refit calls with the search switched off and the best epoch count.

        return train_with_refit(train_rating, _fit_rating, train, None, config, seed=42,
                                backup_dir=None, verbose=1, vocabs=vocabs)
    """
    tf.keras.utils.set_random_seed(seed)
    fit_table, validation = carve_validation(train, validation, config.validation_fraction,
                                             seed, by_time=carves_by_time(config))
    kwargs.update(seed=seed, verbose=verbose)

    def search() -> tuple[T, dict | None]:
        return run(train, fit_table, validation, config, backup_dir=backup_dir, **kwargs)

    def refit(record: dict, refit_dir: str | None) -> T:
        return refitted(trainer(train, None, refit_config(config, record),
                                backup_dir=refit_dir, **kwargs), record)

    if not (config.refit and fit_table is not train):
        return search()[0]
    return search_then_refit(backup_dir, search, refit, rows=len(train), verbose=verbose)


def resume_message(backup_dir: str | os.PathLike) -> str | None:
    """What an interrupted run left to resume, as one line for the user (``None``:
    nothing): the epoch of a ``BackupAndRestore`` backup, or a finished epoch search
    whose refit goes on.

        resume_message("saved_models/demo/.backup-rating")
        # 'resuming from epoch 2 (the last epoch an interrupted run completed; ...)'
    """
    backup_dir = os.fspath(backup_dir)
    if not os.path.isdir(backup_dir):
        return None
    done = backup_epochs(backup_dir)
    if done is not None:
        return (f"resuming from epoch {done} (the last epoch an interrupted run completed; "
                f"backup {backup_dir})")
    record = load_search(backup_dir)
    if record is None:
        return None
    refit_dir = refit_backup_dir(backup_dir)
    refit_done = backup_epochs(refit_dir) if os.path.isdir(refit_dir) else None
    return (f"resuming: the epoch search of an interrupted run finished "
            f"({record['best_epochs']} epochs); refit "
            + (f"from epoch {refit_done}" if refit_done else "from its start")
            + f" (backup {backup_dir})")
