"""Run ``tfrec-p5`` in-process for tests: one helper, shared by the CLI test files."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys

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
    ``PYTHONPATH``; return the JSON object its last output line prints."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script, *map(str, args)],
                         capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])
