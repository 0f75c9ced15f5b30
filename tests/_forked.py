"""Child processes for tests, forked from a server that imported TensorFlow once.

``popen(["-m", "tfrec_p5", "train", ...])`` and ``run(["-c", SCRIPT, arg])`` behave like
``subprocess.Popen`` / ``subprocess.run`` of ``sys.executable`` with those arguments, but
the child is forked from ``_fork_server.py`` (one per pytest process and ``kind``), so it
does not pay TensorFlow's import again. ``kind="tensorflow"``: the child has imported
TensorFlow only (the tests of a TensorFlow-only user's process); ``"tfrec_p5"``: tfrec_p5
and its CLI too. Tests of how a process starts (the console script, the README, the Keras
guard) start real interpreters instead.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

_SERVERS: dict[str, subprocess.Popen] = {}
_SERVER = Path(__file__).with_name("_fork_server.py")


def _server(kind: str) -> subprocess.Popen:
    server = _SERVERS.get(kind)
    if server is None or server.poll() is not None:
        # The server's own environment is a plain TensorFlow user's; each child gets the
        # one its test asks for.
        env = {k: v for k, v in os.environ.items()
               if k not in ("PYTHONPATH", "TF_USE_LEGACY_KERAS")}
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        server = subprocess.Popen([sys.executable, str(_SERVER), kind], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True, env=env, cwd="/")
        _SERVERS[kind] = server
    return server


@atexit.register
def _stop_servers() -> None:
    for server in _SERVERS.values():  # end of input: the server kills what still runs
        server.stdin.close()
        server.wait(timeout=30)


def _temp_file() -> Path:
    fd, path = tempfile.mkstemp()
    os.close(fd)
    return Path(path)


def _ask(kind: str, request: dict) -> dict:
    server = _server(kind)
    server.stdin.write(json.dumps(request) + "\n")
    server.stdin.flush()
    reply = server.stdout.readline()
    assert reply, f"the {kind} fork server died"
    return json.loads(reply)


class Forked:
    """A forked child with the parts of ``subprocess.Popen`` the tests use; its output
    goes to files (``stdout_path``, ``stderr_path``)."""

    def __init__(self, argv: list[str], *, kind: str, env: dict[str, str] | None,
                 cwd: str | os.PathLike | None, stdout: str | os.PathLike | None,
                 stderr: str | os.PathLike | None) -> None:
        self.kind = kind
        self.stdout_path = Path(stdout) if stdout else _temp_file()
        self.stderr_path = Path(stderr) if stderr else _temp_file()
        self.returncode: int | None = None
        self.pid = _ask(kind, {"op": "start", "argv": list(map(str, argv)),
                               "env": dict(os.environ if env is None else env),
                               "cwd": os.fspath(cwd or os.getcwd()),
                               "stdout": os.fspath(self.stdout_path),
                               "stderr": os.fspath(self.stderr_path)})["pid"]

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = _ask(self.kind, {"op": "poll", "pid": self.pid})["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                self.kill()
                raise subprocess.TimeoutExpired(f"forked pid {self.pid}", timeout)
            time.sleep(0.02)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        self.wait(timeout)
        return self.stdout_path.read_text(), self.stderr_path.read_text()


def tf_only_env() -> dict[str, str]:
    """A plain TensorFlow user's environment: this one without the legacy-Keras switch
    ``tfrec_p5`` set, TensorFlow's C++ log quiet."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    return env


def popen(argv: list[str], *, kind: str = "tfrec_p5", env: dict[str, str] | None = None,
          cwd: str | os.PathLike | None = None, stdout: str | os.PathLike | None = None,
          stderr: str | os.PathLike | None = None) -> Forked:
    """Start ``python ARGV`` (``-m MODULE ...``, ``-c CODE ...`` or ``SCRIPT ...``) as a
    forked child; ``stderr`` the same file as ``stdout``: one stream for both."""
    return Forked(argv, kind=kind, env=env, cwd=cwd, stdout=stdout, stderr=stderr)


def run(argv: list[str], *, kind: str = "tfrec_p5", env: dict[str, str] | None = None,
        cwd: str | os.PathLike | None = None,
        timeout: float = 600) -> subprocess.CompletedProcess:
    """``subprocess.run(..., capture_output=True, text=True)`` of a forked child."""
    child = popen(argv, kind=kind, env=env, cwd=cwd)
    try:
        out, err = child.communicate(timeout)
    finally:
        child.stdout_path.unlink(missing_ok=True)
        child.stderr_path.unlink(missing_ok=True)
    return subprocess.CompletedProcess(argv, child.returncode, out, err)
