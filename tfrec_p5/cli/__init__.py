"""``tfrec-p5``: train, export, evaluate and query recommenders from the shell.

Why a CLI: the path from a data file to a TF Serving folder should be one command that
anyone can rerun, with the split, seed and metrics recorded next to the export.

    tfrec-p5 train --task rating --data synthetic --epochs 8 --out saved_models/demo
    tfrec-p5 predict --model saved_models/demo --user u1 --item i1
    tfrec-p5 evaluate --model saved_models/demo --data synthetic --split random:0.8 --json

The command line is the top layer: nothing else in ``tfrec_p5`` imports it. Its modules:
``registry`` (``Task``, ``TrainRequest``, ``TrainResult``, ``CliError``), ``builtin`` (the
built-in ``--task`` values), ``common`` (splits, tables, config files), one module per
command group (``train``, ``query``: evaluate / predict / recommend / inspect,
``pretrain``: pretrain / finetune, ``catalog``: add-items) and ``app`` (parser and
``main``).
"""

from tfrec_p5.cli.app import build_parser, deterministic_ops, main
from tfrec_p5.cli.registry import (
    CliError,
    Task,
    TrainRequest,
    TrainResult,
    get_task,
    register_task,
    tasks,
)

__all__ = ["CliError", "Task", "TrainRequest", "TrainResult", "build_parser",
           "deterministic_ops", "get_task", "main", "register_task", "tasks"]
