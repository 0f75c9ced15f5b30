"""Who may train into ``--out``, and whether its backup belongs to this run.

Why: ``train`` and ``pretrain`` keep a ``BackupAndRestore`` folder (``OUT/.backup-TASK``)
so that the same command, rerun after a kill, resumes. Two things would make that
folder lie:

* **Changed settings.** Resuming a rerun with another ``--epochs``, ``--data``, split,
  seed, batch size or config continues the *other* run's checkpoint (exporting a
  half-trained model) or crashes on mismatched shapes. So the folder holds
  ``settings.json``: the run's settings and a fingerprint of its training data. A rerun
  whose settings or data differ is refused with one message naming every difference;
  ``--restart`` discards the backup instead.
* **Two runs at once.** Two trainings into the same ``--out`` would share the folder:
  one crashes, or "resumes" from the other's live checkpoint. So a run holds
  ``OUT/.lock`` (PID, host, command; created with ``O_CREAT | O_EXCL``, so exactly one
  process gets it) until it ends, however it ends; a second run is refused with a
  message naming the holder. A lock whose process is gone (killed: ``SIGKILL`` runs no
  cleanup) is taken over with a note.

``RunGuard`` does both for one command and undoes what it set up when the command ends:

    with RunGuard(refuse=lambda message: CliError(message, status=2)) as guard:
        guard.lock("saved_models/demo", "tfrec-p5 train --epochs 6 --out saved_models/demo")
        ...load and split the data...
        guard.check_backup("saved_models/demo/.backup-rating",
                           {"task": "rating", "epochs": 6, "seed": 42},
                           data=[train], restart=args.restart)
        ...train (resuming if the backup is ours), export...

Nothing here imports ``tfrec_p5.cli`` (the CLI passes its own error type in ``refuse``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import shlex
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from types import TracebackType
from typing import Any, TextIO

from tfrec_p5.data.fingerprint import table_fingerprint
from tfrec_p5.training.refit import resume_message

LOCK_FILE = ".lock"
"""The lock file in ``--out`` (one per folder, whatever the task): two runs writing one
folder would mix their backups and exports."""
RECORD_FILE = "settings.json"
"""The settings record inside a backup folder: a rerun resumes only the run that wrote it."""
_FORMAT = 1
#: Settings shown in a refusal but not compared: the data are compared by fingerprint
#: (the same rows under another spelling of ``--data`` resume fine).
_INFORMATIONAL = ("data",)
#: How a setting is named in messages (the CLI option that sets it).
_FLAGS = {"task": "--task", "tasks": "--tasks", "split": "--split", "seed": "--seed",
          "epochs": "--epochs", "batch_size": "--batch-size", "config": "--config",
          "weights": "--weights", "label_fraction": "--label-fraction",
          "backbone": "--backbone", "freeze": "--freeze",
          "backbone_lr_scale": "--backbone-lr-scale", "command": "the command"}
#: A lock file without readable content for this long is treated as abandoned (a writer
#: fills it right after creating it).
_UNREADABLE_LOCK_SECONDS = 10.0


class RunRefused(Exception):
    """A run that must not start (``--out`` in use, or a backup of other settings)."""


# ---------------------------------------------------------------------- fingerprint
def data_fingerprint(tables: Iterable[Any]) -> dict[str, Any]:
    """``{"fingerprint": hex digest, "rows": n}`` of the tables' rows, in order
    (``tfrec_p5.data.fingerprint.table_fingerprint``).

    Why: the settings alone cannot tell that a CSV was edited between two runs, and a
    backup resumed on other rows either crashes on shapes or silently trains a mixture.

        data_fingerprint([train, validation])  # {"fingerprint": "9c1e...", "rows": 12000}
    """
    tables = list(tables)
    return {"fingerprint": table_fingerprint(*tables),
            "rows": sum(len(t) for t in tables if t is not None)}


# ---------------------------------------------------------------------- backup record
def has_progress(backup_dir: str | os.PathLike) -> bool:
    """Whether ``backup_dir`` holds anything to resume: any file but the settings record
    (a ``BackupAndRestore`` checkpoint, a finished epoch search's ``search.json``, ...).

        has_progress("saved_models/demo/.backup-rating")   # False: nothing saved yet
    """
    top = os.fspath(backup_dir)
    for root, _, files in os.walk(top):
        if any(not (root == top and name == RECORD_FILE) for name in files):
            return True
    return False


def read_record(backup_dir: str | os.PathLike) -> dict | None:
    """The settings record of ``backup_dir`` (``None``: absent or unreadable)."""
    try:
        with open(os.path.join(os.fspath(backup_dir), RECORD_FILE), encoding="utf-8") as fh:
            record = json.load(fh)
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("settings"),
                                                             dict) else None


def _write_record(backup_dir: str, record: Mapping[str, Any]) -> None:
    os.makedirs(backup_dir, exist_ok=True)
    path = os.path.join(backup_dir, RECORD_FILE)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(record, fh, sort_keys=True, indent=1)
    os.replace(tmp, path)  # a kill leaves the old record or the new one


def _normalise(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``settings`` as they read back from JSON (tuples → lists, keys → str)."""
    return json.loads(json.dumps(dict(settings), sort_keys=True, default=str))


def _show(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, str):
        return repr(value)
    return json.dumps(value, sort_keys=True)


def differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    """What differs between two records, one phrase per setting, in a stable order.

    The refusal of a rerun whose settings differ from its backup's names each of them:

        differences({"settings": {"epochs": 6}, "data": {...}},
                    {"settings": {"epochs": 2}, "data": {...}})   # ["--epochs was 6, now 2"]
    """
    old, new = dict(recorded.get("settings", {})), dict(current.get("settings", {}))
    out = []
    for key in sorted(set(old) | set(new), key=lambda k: (k not in _FLAGS, k)):
        if key in _INFORMATIONAL or old.get(key) == new.get(key):
            continue
        flag = _FLAGS.get(key, key)
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):  # --config: name the keys
            changed = [f"{k} was {_show(a.get(k))}, now {_show(b.get(k))}"
                       for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
            out.append(f"{flag} ({'; '.join(changed)})")
        else:
            out.append(f"{flag} was {_show(a)}, now {_show(b)}")
    a, b = dict(recorded.get("data", {})), dict(current.get("data", {}))
    if a.get("fingerprint") != b.get("fingerprint"):
        def data(record: Mapping[str, Any], settings: Mapping[str, Any]) -> str:
            rows = record.get("rows")
            rows = f"{rows:,} rows" if isinstance(rows, int) else "? rows"
            return (f"{rows} of {_show(settings.get('data'))} (fingerprint "
                    f"{str(record.get('fingerprint'))[:12]})")
        out.append(f"the training data differ: was {data(a, old)}, now {data(b, new)}")
    return out


# ---------------------------------------------------------------------- the lock
def _pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists on this machine and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass  # exists, owned by another user
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            state = fh.read().rpartition(")")[2].split()[:1]
        return state != ["Z"]  # a killed, not yet reaped process is gone for our purpose
    except OSError:
        return True  # no /proc (macOS): os.kill said it exists


def _start_ticks(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (``/proc``; ``None`` if not
    available). With the PID it identifies a process even after the PID was reused."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8", errors="replace") as fh:
            return int(fh.read().rpartition(")")[2].split()[19])
    except (OSError, ValueError, IndexError):
        return None


def command_line(prog: str, args: argparse.Namespace) -> str:
    """A readable command line for a parsed ``argparse`` namespace (for the lock file, so
    a refused second run can name what holds the folder).

        command_line("tfrec-p5", args)   # "tfrec-p5 train --task rating --epochs 6 ..."
    """
    parts = [prog, str(getattr(args, "command", "") or "")]
    for key, value in vars(args).items():
        if key in ("command", "func") or value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        parts += [flag] if value is True else [flag, str(value)]
    return shlex.join(p for p in parts if p)


class OutLock:
    """``OUT/.lock``: at most one training run per output folder.

    Why a lock file and not ``flock``: its content (PID, host, command, start time) lets
    the refused run name the holder, and it works the same on network file systems. It
    is created with ``O_CREAT | O_EXCL`` (atomic: of two runs, exactly one creates it);
    a lock whose process is gone on this host (``SIGKILL``, a crash; a reused PID is told
    apart by the process start time) is taken over with a note; one from another host
    is never taken over (delete it by hand if that machine's run is gone).

        with OutLock("saved_models/demo", "tfrec-p5 train ...", info=sys.stdout):
            ...train, export...            # the lock is gone afterwards, also on errors
    """

    def __init__(self, out: str | os.PathLike, command: str = "", *,
                 info: TextIO | None = None,
                 refuse: Callable[[str], Exception] = RunRefused) -> None:
        self.out = os.fspath(out)
        self.path = os.path.join(self.out, LOCK_FILE)
        self.command = command
        self.info = info
        self.refuse = refuse
        self.held = False
        self._created: list[str] = []  # folders the lock created (removed if left empty)
        self._content: dict[str, Any] = {}

    def acquire(self) -> None:
        """Take the lock, or raise ``refuse(message naming the holder)``."""
        self._created = _missing_dirs(self.out)
        os.makedirs(self.out, exist_ok=True)
        self._content = {"pid": os.getpid(), "start": _start_ticks(os.getpid()),
                         "host": socket.gethostname(), "command": self.command,
                         "since": datetime.datetime.now().astimezone().isoformat(
                             timespec="seconds")}
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                raw, holder = self._read_holder()
                if self._holder_alive(holder):
                    self._remove_created_dirs()
                    raise self.refuse(self._in_use(holder)) from None
                if self._remove_if_unchanged(raw):
                    self._say_taken_over(holder)
                continue  # create it again (another run may have been quicker)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(self._content, fh)
                fh.flush()
                os.fsync(fh.fileno())
            self.held = True
            return
        raise self.refuse(f"could not take the lock {self.path}: other runs keep taking it")

    def release(self) -> None:
        """Remove the lock if it is still ours; remove folders it created, if empty."""
        if self.held:
            self.held = False
            try:
                with open(self.path, encoding="utf-8") as fh:
                    mine = json.load(fh).get("pid") == os.getpid()
            except (OSError, ValueError, AttributeError):
                mine = False
            if mine:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass
        self._remove_created_dirs()

    def __enter__(self) -> OutLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # ------------------------------------------------------------------ internals
    def _read_holder(self) -> tuple[str | None, dict | None]:
        """The lock's raw text and parsed content; waits briefly while it is being
        written (``None`` content: unreadable; ``None`` text: vanished meanwhile)."""
        deadline = time.monotonic() + 1.0
        while True:
            try:
                with open(self.path, encoding="utf-8", errors="replace") as fh:
                    raw = fh.read()
            except FileNotFoundError:
                return None, None
            except OSError:
                raw = ""
            try:
                holder = json.loads(raw)
                if isinstance(holder, dict) and isinstance(holder.get("pid"), int) \
                        and holder["pid"] > 0:
                    return raw, holder
            except ValueError:
                pass
            if time.monotonic() > deadline:
                return raw, None
            time.sleep(0.05)

    def _holder_alive(self, holder: dict | None) -> bool:
        if holder is None:  # unreadable: being written, unless it stayed so for long
            try:
                age = time.time() - os.path.getmtime(self.path)
            except OSError:
                return False  # vanished: try to create it again
            return age < _UNREADABLE_LOCK_SECONDS
        if holder.get("host") != socket.gethostname():
            return True  # another machine's process: cannot tell, so it holds
        pid = holder["pid"]
        if not _pid_alive(pid):
            return False
        start = holder.get("start")
        return start is None or _start_ticks(pid) in (None, start)

    def _remove_if_unchanged(self, raw: str | None) -> bool:
        """Delete a stale lock, unless another run replaced it since we read it."""
        if raw is None:
            return False
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                if fh.read() != raw:
                    return False
            os.unlink(self.path)
        except OSError:
            return False
        return True

    def _say_taken_over(self, holder: dict | None) -> None:
        if self.info is None:
            return
        who = "an unreadable lock" if holder is None else \
            f"the lock of PID {holder['pid']} ({holder.get('command') or 'unknown command'})"
        print(f"note: took over {who} in {self.out}: that process is no longer running",
              file=self.info)

    def _in_use(self, holder: dict | None) -> str:
        if holder is None:
            return (f"{self.out} is in use by another training run (its lock {self.path} "
                    "is being written); wait for it to finish or use another --out")
        command = str(holder.get("command") or "unknown command")
        if len(command) > 300:
            command = command[:297] + "..."
        return (f"{self.out} is in use by another training run: PID {holder['pid']} on "
                f"{holder.get('host', '?')} since {holder.get('since', '?')} ({command}); "
                f"wait for it to finish or use another --out (if that process is gone, "
                f"delete {self.path})")

    def _remove_created_dirs(self) -> None:
        for folder in self._created:  # deepest first; stops at the first non-empty one
            try:
                os.rmdir(folder)
            except OSError:
                break
        self._created = []


def _missing_dirs(path: str) -> list[str]:
    """The folders ``os.makedirs(path)`` would create, deepest first."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


# ---------------------------------------------------------------------- the guard
class RunGuard:
    """The ``--out`` lock and the backup checks of one training command.

    A context manager: on exit (success, error or ``KeyboardInterrupt``) it removes
    backup folders that hold nothing to resume (only the settings record), releases the
    lock and removes folders the lock created if they stayed empty. Each step is a
    separate call because the command reaches them at different points: the lock before
    the data are loaded, the backup check once the training part (and so its
    fingerprint) is known.

        with RunGuard(refuse=RunRefused, info=sys.stdout) as guard:
            guard.lock(out, command)
            guard.check_backup(backup_dir, settings, data=[train], restart=False)
    """

    def __init__(self, *, refuse: Callable[[str], Exception] = RunRefused,
                 info: TextIO | None = None) -> None:
        self.refuse = refuse
        self.info = info
        self._lock: OutLock | None = None
        self._backups: list[str] = []

    def lock(self, out: str | os.PathLike, command: str = "", *, enabled: bool = True,
             info: TextIO | None = None) -> None:
        """Hold ``OUT/.lock`` until the guard exits. ``enabled=False`` (a non-chief
        worker of a multi-worker cluster, which shares ``--out`` with its chief) skips."""
        if not enabled:
            return
        self._lock = OutLock(out, command, info=info or self.info, refuse=self.refuse)
        self._lock.acquire()

    def check_backup(self, backup_dir: str | os.PathLike, settings: Mapping[str, Any], *,
                     data: Sequence[Any], restart: bool = False, write: bool = True,
                     info: TextIO | None = None) -> None:
        """Make ``backup_dir`` safe to resume from, or refuse.

        * Something to resume, and the recorded settings and data fingerprint equal
          ``settings`` / ``data``: kept (the caller resumes; ``resume_message`` says
          from where, on ``info``).
        * Something to resume, but they differ (or no record: written by an older
          version): ``refuse(one line naming every difference)``; with ``restart`` the
          folder is discarded instead, said in one line.
        * Nothing to resume: nothing to say; an older record is replaced.

        Then the record of this run is written, before training creates any checkpoint.
        ``write=False`` (non-chief workers) only checks, and not at all with ``restart``.
        """
        backup_dir = os.fspath(backup_dir)
        info = info or self.info
        current = {"format": _FORMAT, "settings": _normalise(settings),
                   "data": data_fingerprint(data)}
        progress = os.path.isdir(backup_dir) and has_progress(backup_dir)
        if progress and restart:
            if write:
                shutil.rmtree(backup_dir)
                if info is not None:
                    print(f"--restart: discarded the backup of an interrupted run "
                          f"({backup_dir})", file=info)
        elif progress:
            recorded = read_record(backup_dir)
            if recorded is None:
                raise self.refuse(
                    f"{backup_dir} holds an interrupted run but no record of its settings "
                    "(written by an older version?), so resuming it could mix two runs; "
                    "pass --restart to discard it and start over")
            changed = differences(recorded, current)
            if changed:
                raise self.refuse(
                    f"{backup_dir} holds an interrupted run with other settings: "
                    f"{'; '.join(changed)}. Rerun with that run's settings to resume it, "
                    "or pass --restart to discard the backup and start over")
            message = resume_message(backup_dir)
            if message and info is not None:
                print(message, file=info)
            return
        # Nothing to resume: the record below replaces any older one. Empty folders stay
        # (a multi-worker peer may already have made its own below this one).
        if write:
            _write_record(backup_dir, {**current, "written": datetime.datetime.now()
                                       .astimezone().isoformat(timespec="seconds")})
            self._backups.append(backup_dir)

    def close(self) -> None:
        """Remove backups with nothing to resume, then release the lock (idempotent)."""
        for backup_dir in self._backups:
            if os.path.isdir(backup_dir) and not has_progress(backup_dir):
                shutil.rmtree(backup_dir, ignore_errors=True)
        self._backups = []
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def __enter__(self) -> RunGuard:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["LOCK_FILE", "RECORD_FILE", "OutLock", "RunGuard", "RunRefused", "command_line",
           "data_fingerprint", "differences", "has_progress", "read_record"]
