"""Run ``tfrec-p5`` in-process for tests: one helper, shared by the CLI test files."""

from __future__ import annotations

import contextlib
import io
import json
import os

import _forked as forked
import numpy as np

from tfrec_p5 import cli

SMALL = "synthetic?num_users=200&num_items=100&num_interactions=5000"


def run(argv: list[str]) -> tuple[int, str, str]:
    """``tfrec_p5.cli.main(argv)`` → (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return status, out.getvalue(), err.getvalue()


def run_tf_only(script: str, *args: str) -> dict:
    """Run ``script`` (which imports only TensorFlow) in a child process without our
    ``PYTHONPATH`` (forked from a TensorFlow-only server, ``_forked``); return the JSON
    object its last output line prints."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = forked.run(["-c", script, *map(str, args)], kind="tensorflow", env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def two_world_log(tmp_path) -> tuple[str, str]:
    """A log where users 0-29 like genre x (8 of items i0-i19 each) and 30-59 genre y
    (i20-i39): popularity says nothing about a user, the genre almost everything; plus a
    catalog (``item_id,genre``) with two items nobody interacted with, one of each genre.
    Returns the two CSV paths."""
    rng = np.random.default_rng(0)
    rows = ["user_id,item_id"]
    for u in range(60):
        pool = range(0, 20) if u < 30 else range(20, 40)
        rows += [f"u{u},i{i}" for i in rng.choice(list(pool), 8, replace=False)]
    log = tmp_path / "log.csv"
    log.write_text("\n".join(rows) + "\n")
    items = tmp_path / "items.csv"
    items.write_text("item_id,genre\n" + "".join(
        f"i{i},{'x' if i < 20 else 'y'}\n" for i in range(40)) + "new_x,x\nnew_y,y\n")
    return str(log), str(items)
