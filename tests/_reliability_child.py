"""Helper process for ``tests/test_reliability_export.py`` (not collected by pytest).

    python tests/_reliability_child.py KILL_DIR RACE_DIR KILLS RACE_ROUNDS SEED

Why a fork server: importing TensorFlow costs seconds, an export of a tiny model well under
one. This process imports TensorFlow and tfrec_p5 *without running a TensorFlow op* (no
runtime threads yet), then ``os.fork()``s one fresh child per try. Each child builds a
tiny model and exports it with ``tfrec_p5.export.saved_model.export``; this process
SIGKILLs it (see ``kill_exports`` for where), reaps it and records what the folder holds.
Every kill is a separate process killed by a real SIGKILL, as a job scheduler would do.
``race_exports`` releases two children at once into one folder. Only after the last fork
does this process run TensorFlow itself (``finish``).

Prints one JSON object on stdout.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import tempfile
import time

# isort: off
import tfrec_p5  # noqa: F401  (before TensorFlow)
import tensorflow as tf  # imported, no op run: safe to fork
# isort: on

from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.export import saved_model as sm
from tfrec_p5.export.serving import ITEM_ID_SPEC, USER_ID_SPEC, ServingModule

VOCABS = Vocabularies.build(Interactions.from_columns(
    {"user_id": [f"u{i}" for i in range(20)], "item_id": [f"i{i % 7}" for i in range(20)]}))


def _tiny_model():
    """A tiny ``ServingModule``: per-ID embeddings, rating = 3 + dot (no Keras: cheap)."""
    module = ServingModule(VOCABS)
    module.track("user_emb", tf.Variable(tf.random.normal([len(VOCABS.user), 4])))
    module.track("item_emb", tf.Variable(tf.random.normal([len(VOCABS.item), 4])))

    def predict_rating(user_id, item_id):
        u = tf.gather(module.user_emb, module.user_index(user_id))
        i = tf.gather(module.item_emb, module.item_index(item_id))
        return {"rating": tf.clip_by_value(3.0 + tf.reduce_sum(u * i, 1), 1.0, 5.0)}

    module.add_signature("predict_rating", predict_rating, [USER_ID_SPEC, ITEM_ID_SPEC],
                         default=True, task="rating")
    return module


def _child(base: str, ready_fd: int, go_fd: int | None = None, pause: bytes = b"",
           hold_fd: int | None = None) -> None:
    """Build a model, say so on ``ready_fd`` (and wait for a byte on ``go_fd``), export.

    Progress bytes: ``s`` export starts, ``t`` its temporary folder exists, ``p`` SavedModel
    written, ``m`` metadata written, ``d<version>`` done. ``pause`` (``p`` or ``m``) parks
    the child at that point (reading ``hold_fd``, which never gets a byte) so the parent's
    kill lands exactly there.
    """
    try:
        model = _tiny_model()
        real_save, real_write = tf.saved_model.save, sm._write_json
        real_mkdtemp = tempfile.mkdtemp

        def mkdtemp(*args, **kwargs):  # the export's temporary folder exists
            path = real_mkdtemp(*args, **kwargs)
            _checkpoint(b"t")
            return path

        def save(*args, **kwargs):  # SavedModel files written; checksums, metadata next
            real_save(*args, **kwargs)
            _checkpoint(b"p")

        def write_json(path, obj):  # metadata.json written; the rename is next
            real_write(path, obj)
            if path.endswith(sm.METADATA_FILE):
                _checkpoint(b"m")

        def _checkpoint(tag: bytes) -> None:
            os.write(ready_fd, tag)
            if pause == tag:
                os.read(hold_fd, 1)  # parked here until the parent's SIGKILL

        tf.saved_model.save = save  # this forked process only
        tempfile.mkdtemp = mkdtemp
        sm._write_json = write_json
        if go_fd is not None:
            os.write(ready_fd, b"r")
            os.read(go_fd, 1)
        os.write(ready_fd, b"s")
        path = sm.export(model, base)
        os.write(ready_fd, b"d" + os.path.basename(path).encode())
        os._exit(0)
    except BaseException:  # noqa: BLE001  never return into the parent's code
        import traceback

        traceback.print_exc()
        os._exit(3)


def _spawn(base: str, go: bool = False, pause: bytes = b""):
    r, w = os.pipe()
    hold_r, hold_w = os.pipe()
    go_r = go_w = None
    if go:
        go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        os.close(hold_w)
        if go_w is not None:
            os.close(go_w)
        _child(base, w, go_r, pause, hold_r)
    os.close(w)
    os.close(hold_r)
    _HOLD[pid] = hold_w  # kept open (never written) until the child is reaped
    if go_r is not None:
        os.close(go_r)
    return pid, r, go_w


_HOLD: dict[int, int] = {}


def _reap(pid: int) -> int:
    _, status = os.waitpid(pid, 0)
    os.close(_HOLD.pop(pid))
    return status


def _read(fd: int, n: int = 64) -> bytes:
    return os.read(fd, n)


def _state(base: str) -> dict:
    names = os.listdir(base) if os.path.isdir(base) else []
    tmp = [n for n in names if n.startswith(sm.TMP_PREFIX)]
    return {"versions": sorted(int(n) for n in names if n.isdigit()), "tmp": sorted(tmp),
            "tmp_with_pb": sum(os.path.isfile(os.path.join(base, n, "saved_model.pb"))
                               for n in tmp)}


def _pending(r: int) -> bytes:
    """Whatever a (dead) child managed to write on its pipe."""
    os.set_blocking(r, False)
    try:
        return os.read(r, 64)
    except BlockingIOError:
        return b""


MODES = ("random", "after tf.saved_model.save", "random", "metadata written, before rename")


def _read_until(r: int, tag: bytes) -> None:
    seen = b""
    while tag not in seen:
        chunk = _read(r, 1)
        if not chunk:
            raise RuntimeError(f"child died before {tag!r}")
        seen += chunk


def kill_exports(base: str, tries: int, seed: int, parallel: int = 2) -> dict:
    """SIGKILL ``tries`` exporting processes: half at a uniformly random moment of the
    export's writing (from its temporary folder on), a quarter parked right after
    ``tf.saved_model.save`` returned (checksums, metadata and rename still to do), a
    quarter parked after ``metadata.json`` was written (only the rename left).

    Why from the temporary folder: before it, the export traces its signatures, whose
    share of the time varies with the machine's load, and a kill there has nothing on
    disk to leave behind."""
    rng = random.Random(seed)
    # One export run to the end, to learn how long its writing takes on this machine.
    pid, r, _ = _spawn(base)
    _read_until(r, b"t")
    started = time.perf_counter()
    done = b""
    while not done.endswith(b"\n") and b"d" not in done:
        chunk = _read(r)
        if not chunk:
            break
        done += chunk
    duration = time.perf_counter() - started
    _reap(pid)
    os.close(r)
    assert b"d" in done, done
    outcomes = []
    rounds = 0
    mode = MODES[0]
    # Until ``tries`` kills, ending on a parked round: each export removes the dead ones'
    # temporary folders, so the leftovers are the last round's, and a parked kill leaves
    # a complete SavedModel there (what TF Serving must ignore).
    while (sum(o["killed"] for o in outcomes) < tries or mode.startswith("random")) \
            and rounds < 3 * tries:
        mode = MODES[rounds % len(MODES)]
        rounds += 1
        before = _state(base)
        n = min(parallel, max(1, tries - sum(o["killed"] for o in outcomes)))
        pause = {"after tf.saved_model.save": b"p",
                 "metadata written, before rename": b"m"}.get(mode, b"")
        kids = [_spawn(base, pause=pause) for _ in range(n)]
        plan = []
        for _pid, r, _ in kids:
            if _read(r, 1) != b"s":
                raise RuntimeError("child failed before exporting")
        if pause:
            for pid, r, _ in kids:  # wait until each child is parked at its point
                _read_until(r, pause)
                plan.append((0.0, pid, r))
            for _, pid, _ in plan:
                os.kill(pid, signal.SIGKILL)
        else:
            # A random point of the writing: uniform over [0, 0.9 x the measured writing],
            # from the moment each child's temporary folder exists.
            deadlines = []
            for pid, r, _ in kids:
                _read_until(r, b"t")
                delay = rng.uniform(0.0, 0.9 * duration)
                deadlines.append((time.perf_counter() + delay, delay, pid, r))
            for deadline, delay, pid, r in sorted(deadlines):
                time.sleep(max(0.0, deadline - time.perf_counter()))
                os.kill(pid, signal.SIGKILL)
                plan.append((delay, pid, r))
        reaped = {}
        for delay, pid, r in plan:
            status = _reap(pid)
            reaped[pid] = (delay, status, _pending(r).lstrip(b"tpm"))
            os.close(r)
        after = _state(base)
        claimed = {int(m[1:]) for _, _, m in reaped.values() if m.startswith(b"d")}
        orphans = sorted(set(after["versions"]) - set(before["versions"]) - claimed)
        for pid, (delay, status, msg) in reaped.items():
            killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL \
                and not msg.startswith(b"d")
            own_tmp = [n for n in after["tmp"] if f"-{pid}-" in n]
            if not killed:
                phase = "finished before the kill"
                duration = min(duration, delay)  # exports got faster: aim earlier
            elif pause:
                phase = mode
            elif own_tmp:
                phase = "random: mid-export"
            elif orphans:  # renamed into place, killed before it could report
                phase = "random: after the rename"
            else:
                phase = "random: before the temporary folder existed"
            added = [int(msg[1:])] if msg.startswith(b"d") else \
                [orphans.pop()] if phase == "random: after the rename" else []
            outcomes.append({"mode": mode, "delay": round(delay, 3), "killed": killed,
                             "phase": phase, "own_tmp_left": bool(own_tmp),
                             "added_version": added})
    return {"export_seconds": round(duration, 3), "outcomes": outcomes,
            "leftovers": _state(base)}


def finish(base: str) -> dict:
    """After the last fork (this process may now run TensorFlow): the next export must
    succeed, take the next number and remove the dead exports' temporary folders; every
    version folder must be complete (checksums) and the latest must serve."""
    final = sm.export(_tiny_model(), base)
    end = _state(base)
    complete = {}
    for v in end["versions"]:
        vdir = os.path.join(base, str(v))
        try:
            meta = sm.load_metadata(vdir)
            sm.verify_export(vdir, meta)
            ok = meta.get("version") == v and os.path.isfile(
                os.path.join(vdir, "variables", "variables.index"))
        except sm.ExportError as err:
            ok = str(err)
        complete[str(v)] = ok
    loaded, version_dir, _ = sm.load_export(base)
    rating = loaded.signatures["predict_rating"](user_id=tf.constant(["u1"]),
                                                 item_id=tf.constant(["i1"]))["rating"]
    return {"final": os.path.basename(final), "after_final": end, "complete": complete,
            "list_versions": sm.list_versions(base),
            "latest": os.path.basename(version_dir),
            "latest_rating_finite": bool(tf.math.is_finite(rating[0]))}


def race_exports(base: str, rounds: int) -> dict:
    results = []
    for _ in range(rounds):
        kids = [_spawn(base, go=True) for _ in range(2)]
        for _, r, _ in kids:
            assert _read(r, 1) == b"r"
        for _, _, go in kids:  # release both at once
            os.write(go, b"g")
        paths = []
        for pid, r, go in kids:
            msg = b""
            while True:
                chunk = _read(r)
                if not chunk:
                    break
                msg += chunk
            _reap(pid)
            os.close(r)
            os.close(go)
            paths.append(msg.split(b"d", 1)[1].decode() if b"d" in msg else None)
        results.append(paths)
    return {"rounds": results, "versions": sm.list_versions(base), "state": _state(base)}


if __name__ == "__main__":
    kill_base, race_base, tries, rounds, seed = sys.argv[1:6]
    out = {"kill": kill_exports(kill_base, int(tries), int(seed)),
           "race": race_exports(race_base, int(rounds))}  # forks: before any TF op here
    out["finish"] = finish(kill_base)
    print(json.dumps(out))
