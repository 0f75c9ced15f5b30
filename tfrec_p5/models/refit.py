"""Search, then refit: the record that lets an interrupted refit resume.

Why: ``train_rating`` and ``train_unified`` pick the epoch count on a carved validation
slice (the *search*) and then retrain from scratch on all rows for that many epochs (the
*refit*). ``BackupAndRestore`` resumes an interrupted ``fit``, but it deletes its backup
when a ``fit`` finishes, so after a kill during the refit, rerunning the same command would
redo the whole search. ``save_search`` writes the search's outcome next to the backups
before the refit starts; ``load_search`` finds it on the rerun, which then skips straight
to the refit (resumed from its own backup in ``refit_backup_dir``).

    record = load_search(backup_dir)               # None: no finished search to reuse
    if record is None:
        ...search...
        record = save_search(backup_dir, history, best_epochs(history, "val_rmse"))
    refit = train(..., epochs=record["best_epochs"], backup_dir=refit_backup_dir(backup_dir))

The record holds the search's history (so the result reports it as ``search_*`` either
way) and the early-stopping epoch. The CLI removes the whole backup folder after a
successful export, record included.
"""

from __future__ import annotations

import json
import os

import numpy as np

_RECORD = "search.json"


def best_epochs(history: dict[str, list[float]], monitor: str,
                epochs: list[int] | None = None) -> int:
    """Epochs to refit for: 1 + the epoch with the best ``monitor`` (``val_rmse`` and
    other ``*rmse`` / ``*loss`` are minimized, everything else maximized). ``epochs``: the
    real epoch numbers (``hist.epoch``; they start later after a ``BackupAndRestore``)."""
    values = np.asarray(history[monitor], dtype=np.float64)
    lower_is_better = monitor.endswith(("rmse", "loss", "mae"))
    best = int(np.argmin(values) if lower_is_better else np.argmax(values))
    return int(epochs[best] if epochs is not None else best) + 1


def refit_backup_dir(backup_dir: str | os.PathLike | None) -> str | None:
    """Where the refit pass keeps its ``BackupAndRestore`` state (``None``: no backups)."""
    return None if backup_dir is None else os.path.join(os.fspath(backup_dir), "refit")


def save_search(backup_dir: str | os.PathLike | None, history: dict[str, list[float]],
                epochs: int, stopped_epoch: int = 0) -> dict:
    """Write (when ``backup_dir`` is set) and return the search record."""
    record = {"best_epochs": int(epochs), "stopped_epoch": int(stopped_epoch),
              "history": {k: [float(x) for x in v] for k, v in history.items()}}
    if backup_dir is not None:
        os.makedirs(backup_dir, exist_ok=True)
        path = os.path.join(os.fspath(backup_dir), _RECORD)
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(record, fh)
        os.replace(tmp, path)  # atomic: a kill leaves the old record or the new one
    return record


def with_search_history(record: dict, history: dict[str, list[float]]) -> dict:
    """The refit's ``history`` preceded by the search's, keys prefixed ``search_``."""
    return {**{f"search_{k}": v for k, v in record["history"].items()}, **history}


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
