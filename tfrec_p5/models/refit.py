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
import tensorflow as tf

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


def backup_epochs(backup_dir: str | os.PathLike) -> int | None:
    """Epochs completed in a ``BackupAndRestore`` backup (``None``: nothing to resume).

    Why read the checkpoint: the folder alone does not say whether an epoch was saved
    (Keras removes only ``chief/`` after a finished fit); the checkpoint's
    ``ckpt_saved_epoch`` is the 0-based epoch it was written at, so the number of
    finished epochs is one more.

        backup_epochs("saved_models/demo/.backup-rating")   # -> 2 after 2 epochs, or None
    """
    latest = tf.train.latest_checkpoint(os.path.join(os.fspath(backup_dir), "chief"))
    if latest is None:
        return None
    try:
        epoch = int(tf.train.load_checkpoint(latest).get_tensor(
            "ckpt_saved_epoch/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError):
        return None  # unreadable backup: Keras starts over
    return epoch + 1 if epoch >= 0 else None


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
