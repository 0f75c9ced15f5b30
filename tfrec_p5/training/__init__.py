"""Training: the one loop every trainer fits through, and the guards around a run.

Why a layer of its own: every trainer (``tfrec_p5.models``, ``tfrec_p5.pretraining``) runs
``model.fit`` the same way (``fit``: resume after a kill, early stopping, TensorBoard, the
weights' moving average) and picks its epoch count before a refit the same way
(``search_then_refit``); the CLI commands share the run guards (the ``--out`` lock, the
backup's settings record, notes about the data). Nothing here imports the trainers, the
export or the CLI (which passes its own error type in).

    history = fit(model, train_ds, epochs=40, validation_data=val_ds, monitor="val_rmse",
                  patience=3, backup_dir="saved_models/demo/.backup-rating")
    with RunGuard(refuse=lambda message: CliError(message, status=2)) as guard:
        guard.lock("saved_models/demo", "tfrec-p5 train --out saved_models/demo")
        guard.check_backup("saved_models/demo/.backup-rating", {"epochs": 6}, data=[table])
"""

from tfrec_p5.training.averaging import WeightAverage
from tfrec_p5.training.backup import (
    LOCK_FILE,
    RECORD_FILE,
    OutLock,
    RunGuard,
    RunRefused,
    command_line,
    data_fingerprint,
    has_progress,
)
from tfrec_p5.training.data_checks import check_training_data
from tfrec_p5.training.loop import (
    OPTIMIZER_NAMES,
    OPTIMIZERS,
    FitHistory,
    backup_epochs,
    build_variables,
    fit,
    lower_is_better,
    optimizer,
)
from tfrec_p5.training.optimizers import (
    AUTO,
    LAZY_ADAM_ROWS,
    LazyAdam,
    auto_optimizer,
    embedding_rows,
    optimizer_note,
)
from tfrec_p5.training.progress import plural, validation_plan
from tfrec_p5.training.refit import (
    best_epochs,
    carves_by_time,
    load_search,
    refit_backup_dir,
    refit_config,
    refitted,
    resume_message,
    save_search,
    search_record,
    search_then_refit,
    train_with_refit,
    with_search_history,
)
from tfrec_p5.training.steps import trace_steps_once

__all__ = [
    "AUTO", "LAZY_ADAM_ROWS", "LOCK_FILE", "OPTIMIZERS", "OPTIMIZER_NAMES", "RECORD_FILE",
    "FitHistory", "LazyAdam", "OutLock", "RunGuard", "RunRefused", "WeightAverage",
    "auto_optimizer", "backup_epochs", "best_epochs", "build_variables", "carves_by_time",
    "check_training_data", "command_line", "data_fingerprint", "embedding_rows", "fit",
    "has_progress", "load_search", "lower_is_better", "optimizer", "optimizer_note",
    "plural", "refit_backup_dir", "refit_config", "refitted", "resume_message",
    "save_search", "search_record", "search_then_refit", "trace_steps_once",
    "train_with_refit", "validation_plan", "with_search_history"]
