"""The task registry: what ``--task NAME`` means for ``train`` and ``evaluate``.

Why a registry instead of an if/else switchboard: a task is a ``Task`` with a ``train``
function (``TrainRequest`` → ``TrainResult``: a ``ServingModule`` carrying the task's
signatures, plus config and metadata) and an ``evaluate`` function (signatures, table →
metrics); adding a task is one ``register_task`` call, and every command finds it.

    register_task(Task("retrieval", "top-k items for a user",
                       train=train_retrieval, evaluate=evaluate_retrieval,
                       signature="recommend"))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # heavy imports (TensorFlow) stay out of `tfrec-p5 --help`
    from tfrec_p5.data.catalog import Catalog
    from tfrec_p5.data.interactions import Interactions
    from tfrec_p5.export.serving import ServingModule

__all__ = ["PROG", "CliError", "SignatureGetter", "Task", "TrainRequest", "TrainResult",
           "get_task", "register_task", "run_evaluate", "tasks"]

PROG = "tfrec-p5"

#: ``signatures(name)`` returns a callable ``f(user_id=..., item_id=...) -> dict``; it is
#: backed by an in-memory ``ServingModule`` or by a loaded SavedModel.
SignatureGetter = Callable[[str], Callable[..., Mapping[str, Any]]]


class CliError(Exception):
    """A user-facing error: printed as one line, exit status ``status``."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class TrainRequest:
    """Everything a task's ``train`` function needs, already loaded and split."""

    #: The data; ``None`` only while ``Task.config`` checks the options before loading.
    train: Interactions | None
    validation: Interactions | None
    seed: int = 42
    epochs: int | None = None
    batch_size: int | None = None
    config: Mapping[str, Any] = field(default_factory=dict)  # from --config FILE.json
    log_dir: str | None = None
    backup_dir: str | None = None
    verbose: int = 1
    options: Mapping[str, Any] = field(default_factory=dict)  # --weights, --top-k, ...
    #: Who exists beyond ``train`` (the data's own metadata, ``--items`` / ``--users``).
    catalog: Catalog | None = None
    #: The ``--split`` spec the parts came from (``--task all`` trains its next-item head
    #: on splits that hold out each user's last events: ``leave-one-out``, ``none``).
    split: str = "random:0.8"


@dataclass
class TrainResult:
    """A trained task: the module to export (signatures added) and what to record."""

    module: ServingModule
    config: Mapping[str, Any] = field(default_factory=dict)
    metadata: Mapping[str, Any] = field(default_factory=dict)
    #: Validation metrics measured before a final refit folded the validation part into
    #: training (sequential); reported instead of re-scoring what is now training data.
    validation_metrics: Mapping[str, float] | None = None
    #: ``(fit rows, validation rows)`` when the model carved its own validation slice
    #: (``validation_metrics`` were measured on it): ``train`` races the references on the
    #: same rows. ``None``: the split's validation part, if any.
    validation_split: tuple[Interactions, Interactions] | None = None
    #: What the defaults decided from the data (``max_len 50 (auto: ...)``): ``train``
    #: prints each as a ``note:`` line.
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Task:
    """One ``--task`` value. ``train=None`` means planned but not available yet."""

    name: str
    summary: str
    train: Callable[[TrainRequest], TrainResult] | None = None
    evaluate: Callable[..., dict[str, float]] | None = None
    signature: str | None = None  # the signature ``evaluate`` needs in an export
    planned: str = ""
    #: Train on train + validation and report no validation row: for tasks that pick their
    #: epochs themselves (rating: early stopping on a carved slice, then a refit on all of
    #: it) or whose defaults fix the epoch count and whose export excludes the training
    #: items (retrieval).
    fold_validation: bool = False
    #: ``evaluate`` ranks a held-out item *after a history* (sequential): it also gets the
    #: events before the evaluated part and ``--protocol``.
    wants_history: bool = False
    #: ``config(request)`` → the task's config from the request's options alone (never its
    #: data), so ``train`` refuses a bad ``--config`` / ``--epochs`` before loading data.
    config: Callable[[TrainRequest], Any] | None = None
    #: The ``TrainRequest.options`` this task uses (``weights``, ``top_k``,
    #: ``include_seen``, ``index``, ``items``, ``users``); giving another one is a usage
    #: error, not silently ignored.
    options: frozenset[str] = frozenset()
    #: What ``train`` will do with validation data under the request's config (carve a
    #: slice, early-stop, refit, or nothing), one phrase for ``train``'s split line.
    plan: Callable[[TrainRequest], str] | None = None
    #: ``references(fitted, k, seed)`` → simple references fitted on the rows the model
    #: was fit on (``tfrec_p5.evaluation.served``); ``train`` scores them with
    #: ``evaluate`` on the same held-out rows and prints them beside the model.
    references: Callable[[Interactions, int, int], list] | None = None
    #: ``((metric, higher_is_better), ...)``: where ``train`` says a reference beats the
    #: model.
    headline: tuple[tuple[str, bool], ...] = ()
    #: ``serve_reference(reference, request)`` → a ``ServingModule`` with the task's
    #: signatures backed by the reference (its ``model``), exported when the reference
    #: beats the model on validation; ``None``: the task always serves its model.
    serve_reference: Callable[[Any, TrainRequest], ServingModule] | None = None


_TASKS: dict[str, Task] = {}


def register_task(task: Task) -> None:
    """Make ``tfrec-p5 train --task NAME`` (and ``evaluate``) use ``task``."""
    _TASKS[task.name] = task


def tasks() -> dict[str, Task]:
    """The registered tasks by name (available and planned)."""
    return dict(_TASKS)


def get_task(name: str) -> Task:
    """The available task ``name``; a ``CliError`` (exit 2) names the alternatives."""
    task = _TASKS.get(name)
    available = sorted(n for n, t in _TASKS.items() if t.train is not None)
    if task is None:
        raise CliError(f"unknown task {name!r}; available: {', '.join(available)}", status=2)
    if task.train is None:
        raise CliError(f"task {name!r} is not available yet ({task.planned}); available: "
                       f"{', '.join(available)}", status=2)
    return task


def run_evaluate(task: Task, signatures: SignatureGetter, table: Interactions,
                 before: tuple[Interactions | None, ...] = (),
                 protocol: str | None = None) -> dict[str, float]:
    """``task.evaluate`` on ``table``; a ``wants_history`` task also gets the events
    ``before`` it (train, or train + validation) and ``--protocol``."""
    if task.evaluate is None:
        raise CliError(f"task {task.name!r} has no evaluation", status=2)
    if task.wants_history:
        parts = [p for p in before if p is not None]
        history = type(parts[0]).concat(*parts) if parts else None
        return task.evaluate(signatures, table, history=history, protocol=protocol)
    return task.evaluate(signatures, table)
