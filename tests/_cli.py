"""Run ``tfrec-p5`` in-process for tests: one helper, shared by the CLI test files."""

from __future__ import annotations

import contextlib
import io

from tfrec_p5 import cli

SMALL = "synthetic?num_users=200&num_items=100&num_interactions=5000"


def run(argv: list[str]) -> tuple[int, str, str]:
    """``tfrec_p5.cli.main(argv)`` → (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = cli.main(argv)
    return status, out.getvalue(), err.getvalue()
