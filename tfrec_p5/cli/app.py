"""``tfrec-p5``'s parser and ``main``: one-line errors and exit codes for every command.

Every failure prints one line ``tfrec-p5: error: ...`` to stderr and exits non-zero
(2 for usage errors and unavailable tasks, 1 otherwise); set ``TFREC_P5_DEBUG=1`` to get
the traceback instead. TensorFlow is imported once a command runs, with its C++ start-up
banners silenced, so ``--help`` and usage errors answer at once; while a command runs, the
TensorFlow warnings known to be harmless (``HARMLESS_TF_MESSAGES``) are dropped, unless
``TFREC_P5_DEBUG=1``. ``--help`` of every command shows the options' defaults.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Iterator, Sequence

from tfrec_p5 import __version__
from tfrec_p5.cli import builtin as _builtin_tasks  # noqa: F401  registers the built-in tasks
from tfrec_p5.cli import catalog, pretrain, query, train
from tfrec_p5.cli.registry import PROG, CliError, tasks

__all__ = ["HARMLESS_TF_MESSAGES", "HarmlessTensorFlowWarnings", "HelpFormatter",
           "build_parser", "deterministic_ops", "main", "quiet_harmless_warnings"]


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line on stderr (exit 2), like other errors."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{PROG}: error: {message} (see '{self.prog} --help')\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """``--help`` shows every real default as ``(default: X)``, once.

    Why not plain ``ArgumentDefaultsHelpFormatter``: it would print ``(default: None)``
    for options whose default is "the config's value" and ``(default: False)`` for every
    flag; such help strings say their default in words instead. A help string that
    already mentions its default is left as it is, so no option says it twice.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default in (None, False, argparse.SUPPRESS) or action.required
                or "default" in text.lower()):
            return text
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    """The ``tfrec-p5`` argument parser (train / evaluate / predict / recommend /
    inspect / pretrain / finetune / add-items)."""
    parser = _Parser(prog=PROG, description="Train, export, evaluate and query tfrec_p5 "
                     "recommenders (SavedModels for TF Serving).")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    task_names = sorted(tasks())
    train.add_parser(sub, task_names)
    query.add_parsers(sub, task_names)
    pretrain.add_parsers(sub)
    catalog.add_parsers(sub)
    for command in sub.choices.values():  # one formatter for every command's --help
        command.formatter_class = HelpFormatter
    return parser


#: Log messages of TensorFlow / Keras / absl that are harmless for ``tfrec-p5``, each with
#: the reason. Only WARNING and below are dropped, and only these: other warnings and
#: every error still reach the user.
HARMLESS_TF_MESSAGES = (
    # BackupAndRestore checks ``model.built``, which a subclassed model only sets when
    # called; the trainers create every variable first (training.build_variables).
    "model must be built before you call `fit()`",
    # Keras' own (re-loadable Keras object) metadata of subclassed layers in a SavedModel;
    # exports are served and loaded through their signatures, which are complete.
    "Skipping full serialization of",
    "arguments contain non-serializable objects",
    # tf.function traced again for a new input shape (e.g. the last, smaller batch).
    "triggered tf.function retracing",
    # SavedModel export: Keras-internal functions that no signature calls.
    "Found untraced functions such as",
)


class HarmlessTensorFlowWarnings(logging.Filter):
    """Drops the ``HARMLESS_TF_MESSAGES`` warnings (lower-level records too), keeps the
    rest."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            return True
        message = record.getMessage()
        return not any(text in message for text in HARMLESS_TF_MESSAGES)


@contextlib.contextmanager
def quiet_harmless_warnings() -> Iterator[None]:
    """Silence ``HARMLESS_TF_MESSAGES`` on the ``tensorflow`` and ``absl`` loggers while a
    command runs (restored afterwards, so ``main`` called in-process leaves no trace)."""
    loggers = [logging.getLogger(name) for name in ("tensorflow", "absl")]
    quiet = HarmlessTensorFlowWarnings()
    for logger in loggers:
        logger.addFilter(quiet)
    try:
        yield
    finally:
        for logger in loggers:
            logger.removeFilter(quiet)


def _import_tensorflow_quietly(warm_up: bool = True) -> None:
    """Import TensorFlow and run one op with file descriptor 2 pointed at /dev/null.

    Why: TF's C++ runtime logs oneDNN/CUDA banners to stderr before its logging is
    configured (``TF_CPP_MIN_LOG_LEVEL`` cannot silence them), which would bury our one-line
    errors. Python exceptions still surface (fd 2 is restored first); ``TFREC_P5_DEBUG=1``
    skips this. ``warm_up=False`` imports without running the op: ``--strategy
    multi_worker`` must configure collective ops before the first op runs.
    """
    if "tensorflow" in sys.modules:
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError):  # no real fd 2 (embedded interpreter): import loudly
        import tensorflow  # noqa: F401
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow as tf

        if warm_up:
            tf.constant(0) + 0  # device initialisation logs once, here
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def deterministic_ops(before_import: bool) -> None:
    """``--deterministic``: bit-identical runs for the same seed, data and machine.

    Why two steps: oneDNN's CPU kernels (on by default in TensorFlow) may sum in a different
    order from run to run (metrics then differ in the 8th digit), and they can only be
    switched off *before* TensorFlow is imported (``TF_ENABLE_ONEDNN_OPTS=0``); op
    determinism (``tf.config.experimental.enable_op_determinism``) is set after the
    import. Costs some CPU speed, hence opt-in.
    """
    if before_import:
        if "tensorflow" in sys.modules:
            print(f"{PROG}: note: --deterministic: TensorFlow was imported already, so "
                  "oneDNN stays on (set TF_ENABLE_ONEDNN_OPTS=0 before importing it)",
                  file=sys.stderr)
        else:
            os.environ["TF_ENABLE_ONEDNN_OPTS"] = "0"
        return
    import tensorflow as tf

    tf.config.experimental.enable_op_determinism()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``tfrec-p5`` with ``argv`` (default ``sys.argv[1:]``); return the exit status.

    It returns instead of exiting, so tests and other programs can run a command in-process:

        main(["predict", "--model", "saved_models/demo", "--user", "u1", "--item", "i1"])
    """
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exit_:  # usage error (already printed), --help, --version
        return exit_.code if isinstance(exit_.code, int) else 0 if exit_.code is None else 2
    debug = os.environ.get("TFREC_P5_DEBUG", "") not in ("", "0")
    try:
        deterministic = getattr(args, "deterministic", False)
        if deterministic:
            deterministic_ops(before_import=True)
        if not debug:
            _import_tensorflow_quietly(
                warm_up=getattr(args, "strategy", None) != "multi_worker")
        if deterministic:
            deterministic_ops(before_import=False)
        with contextlib.nullcontext() if debug else quiet_harmless_warnings():
            return args.func(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted (rerun the same train command to resume from its "
              "backup)", file=sys.stderr)
        return 130
    except CliError as err:
        if debug:
            raise
        print(f"{PROG}: error: {err}", file=sys.stderr)
        return err.status
    except Exception as err:  # noqa: BLE001  one line, never a raw traceback
        if debug:
            raise
        from tfrec_p5.data.errors import DataError  # TensorFlow is loaded by now

        kind = "" if isinstance(err, (DataError, OSError)) or type(err).__name__ == \
            "ExportError" else f"{type(err).__name__}: "
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        print(f"{PROG}: error: {kind}{message}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
