"""Fork server for the tests' child processes (not collected by pytest; see ``_forked.py``).

    python tests/_fork_server.py tensorflow   # children see TensorFlow only
    python tests/_fork_server.py tfrec_p5     # children see tfrec_p5 and its CLI

Why: importing TensorFlow costs a child about 4 CPU-seconds, more than most of what the
tests' children do, and the suite starts a few dozen of them. This process imports the
modules *without running a TensorFlow op* (no runtime threads yet, so forking is safe),
then forks one child per request. A child is a real process: its own pid, environment,
working directory and standard streams, ended by a real signal when a test kills it.

Requests on stdin, one JSON object per line; one JSON reply per line on stdout:

* ``{"op": "start", "argv": ["-m", "tfrec_p5", ...], ["-c", CODE, ...] or [SCRIPT, ...],
  "env": {...}, "cwd": DIR, "stdout": FILE, "stderr": FILE}`` → ``{"pid": PID}``
  (``stderr`` equal to ``stdout``: one stream, as ``stderr=subprocess.STDOUT``)
* ``{"op": "poll", "pid": PID}`` → ``{"returncode": None or as ``subprocess``'s}``
"""

from __future__ import annotations

import atexit
import json
import os
import runpy
import signal
import sys
import traceback

# isort: off
TFREC_P5 = sys.argv[1] == "tfrec_p5"
if TFREC_P5:
    import tfrec_p5  # noqa: F401  (before TensorFlow: it sets TF_USE_LEGACY_KERAS=1)
    import tensorflow
    import tensorflow_recommenders  # noqa: F401
    import tfrec_p5.cli.app  # noqa: F401  (every command's modules)

    tensorflow.keras.layers  # noqa: B018  binds tf.keras to tf-keras now, as a run would
else:
    import tensorflow  # noqa: F401
# isort: on


def _child(request: dict) -> None:
    """Become the requested process; never returns."""
    code = 1
    try:
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        if TFREC_P5:  # what importing tfrec_p5 did in this process
            os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
            if fd == 2 and path == request["stdout"]:
                os.dup2(1, 2)
            else:
                os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644), fd)
        argv = request["argv"]
        if argv[0] == "-m":
            sys.argv = argv[1:]
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        elif argv[0] == "-c":
            sys.argv = ["-c", *argv[2:]]
            exec(compile(argv[1], "<string>", "exec"), {"__name__": "__main__"})  # noqa: S102
        else:
            sys.argv = list(argv)
            sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))
            runpy.run_path(argv[0], run_name="__main__")
        code = 0
    except SystemExit as stop:
        if stop.code is None or isinstance(stop.code, int):
            code = stop.code or 0
        else:
            print(stop.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001  report like the interpreter, then exit 1
        traceback.print_exc()
    finally:
        try:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main() -> None:
    done: dict[int, int] = {}
    children: set[int] = set()
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "start":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                _child(request)
            children.add(pid)
            reply = {"pid": pid}
        else:
            pid = request["pid"]
            if pid not in done:
                waited, status = os.waitpid(pid, os.WNOHANG)
                if waited:
                    done[pid] = os.waitstatus_to_exitcode(status)
                    children.discard(pid)
            reply = {"returncode": done.get(pid)}
        print(json.dumps(reply), flush=True)
    for pid in children:  # the test process is gone: so are its children
        os.kill(pid, signal.SIGKILL)


if __name__ == "__main__":
    main()
