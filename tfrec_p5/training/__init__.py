"""Guards around a training run: the ``--out`` lock, the backup's settings record, and the
one-line notes about the training data that a user must not miss.

Why a layer of its own: the CLI commands (``train``, ``pretrain``, ``finetune``) share
these checks, and the models and data layers must not know about the CLI. Nothing here
imports ``tfrec_p5.cli`` (the CLI passes its own error type in).

    from tfrec_p5.training import RunGuard, check_training_data

    with RunGuard(refuse=lambda message: CliError(message, status=2)) as guard:
        guard.lock("saved_models/demo", "tfrec-p5 train --out saved_models/demo")
        table = check_training_data(load("csv:ratings.csv"), "leave-one-out", sys.stdout)
        guard.check_backup("saved_models/demo/.backup-rating", {"epochs": 6}, data=[table],
                           restart=False)
        ...train...
"""

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

__all__ = [
    "LOCK_FILE", "RECORD_FILE", "OutLock", "RunGuard", "RunRefused", "check_training_data",
    "command_line", "data_fingerprint", "has_progress",
]
