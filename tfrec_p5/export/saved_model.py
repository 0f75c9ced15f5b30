"""Write and find versioned SavedModel exports, the way TF Serving expects them.

Why this layout: TF Serving watches ``saved_models/NAME/`` and loads the highest
all-digit sub-folder (``1/``, ``2/``, ...). A half-written folder with a digit name would be
picked up mid-write, so we build the export in a hidden temporary folder inside
``saved_models/NAME`` (``.tmp-export-*``; TF Serving ignores non-digit names) and then
``os.rename`` it into place -- atomic on one file system. An existing version is never
overwritten: if another export takes the number first, we retry with the next one.

    path = export(model, "saved_models/demo", vocabs=vocabs, rating_range=(1.0, 5.0),
                  metadata={"data": "synthetic", "metrics": {"test_rmse": 0.9}})
    # -> "saved_models/demo/1"; metadata in saved_models/demo/1/assets.extra/metadata.json

``assets.extra/`` is TF Serving's place for files it should carry along but not read, so
the metadata (data source, split, seed, metrics, vocabulary sizes, rating range, package
version, tasks, config) travels with the version it describes.

Reliability rules (tested in ``tests/test_reliability_export.py``):

* **Killed mid-export**: only the hidden ``.tmp-export-<host>-<pid>-*`` folder is
  half-written; it never has an all-digit name, so neither TF Serving nor
  ``list_versions`` / ``load_export`` sees it. The next ``export`` into the same folder
  removes leftovers whose process is gone (same host) or that are older than a day.
* **Concurrent exports** to one name get distinct versions (``os.rename`` onto an
  existing, non-empty version fails, and we retry with the next number).
* **Tampering / truncation**: ``metadata.json`` records the size and SHA-256 of every
  file of the version; ``load_export`` checks them before loading and raises one
  ``ExportError`` naming the file (exports without that record are loaded unchecked).
* **Custom ops**: an export whose ``recommend`` uses a ScaNN index lists
  ``"custom_ops": ["scann"]``; ``load_export`` imports scann first, or raises one
  ``ExportError`` naming the package (stock TF Serving cannot load such an export).
* **Export paths** (``validate_export_dir``): used exactly as given, never joined to
  anything or expanded (``~``, ``$VAR``), so an absolute target only happens when the
  caller passes an absolute path; ``../x`` is the sibling folder the user typed. Rejected:
  an empty path, NUL or other control characters, and a folder that is itself a version
  (holds ``saved_model.pb``) or one of our temporary folders.
"""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf
from tf_keras.src.saving.legacy.saved_model.utils import keras_option_scope

from tfrec_p5._version import __version__
from tfrec_p5.data.fingerprint import contains, id_hashes, pair_hashes, table_fingerprint
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.export.scann_index import SCANN_OPS, scann_unavailable
from tfrec_p5.export.serving import ServingModule, add_rating_signatures

EXTRA_DIR = "assets.extra"
"""Folder of a version for our own files: TF Serving carries it along but never reads it."""
METADATA_FILE = "metadata.json"
"""In ``EXTRA_DIR``: data, split, seed, tasks, vocab sizes, rating range, config, versions
and every file's size and SHA-256, so ``evaluate`` can rebuild the test part and
``load_export`` can refuse a corrupt export."""
METRICS_FILE = "metrics.json"
"""In ``EXTRA_DIR``: the metrics table ``train`` printed."""
#: Hashes of the training rows (``TrainingRecord``), next to the metadata.
TRAINING_FILE = "training_data.npz"
TMP_PREFIX = ".tmp-export-"
#: A leftover temporary folder this old is removed even if its owner cannot be checked.
STALE_TMP_SECONDS = 24 * 3600
#: Bumped when the metadata layout changes incompatibly.
METADATA_FORMAT = "tfrec_p5.export/1"
#: ``metadata.json`` key holding ``{relative path: {"bytes": n, "sha256": hex}}``.
FILES_KEY = "files"
#: ``metadata.json`` key listing the custom op libraries the export needs to load
#: (``["scann"]``: ``import scann`` first; stock TF Serving cannot serve it). Absent: none.
CUSTOM_OPS_KEY = "custom_ops"
#: ``metadata.json`` key: ``{signature: head it is scored by}`` (``"recommend":
#: "retrieval"``); older exports lack it.
SIGNATURE_TASKS_KEY = "signature_tasks"


class ExportError(ValueError):
    """A path is not an export (or holds none), or an export cannot be written."""


# ---------------------------------------------------------------------- versions
def _is_version_name(name: str) -> bool:
    """All ASCII digits, as TF Serving requires (``str.isdigit`` alone accepts ``"²"``)."""
    return name.isascii() and name.isdigit()


def list_versions(base_dir: str | os.PathLike) -> list[int]:
    """Sorted version numbers of the complete exports (``N/saved_model.pb``) in ``base_dir``."""
    try:
        names = os.listdir(base_dir)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(int(n) for n in names if _is_version_name(n)
                  and os.path.isfile(os.path.join(base_dir, n, "saved_model.pb")))


def next_version(base_dir: str | os.PathLike) -> int:
    """One more than the highest all-digit entry in ``base_dir`` (complete or not), ≥ 1."""
    try:
        nums = [int(n) for n in os.listdir(base_dir) if _is_version_name(n)]
    except (FileNotFoundError, NotADirectoryError):
        nums = []
    return max(nums, default=0) + 1


def validate_export_dir(base_dir: str | os.PathLike) -> str:
    """``base_dir`` as a string, if it is an acceptable export target; else ``ExportError``.

    The rule (see the module docstring): the path is used as given -- relative paths stay
    relative to the working directory, nothing is expanded (``../models/x`` is a sibling
    folder, as the user typed it) -- and it may not be empty, contain NUL / control
    characters, or name a version folder or one of our temporary folders.

        validate_export_dir("saved_models/demo")      # -> "saved_models/demo"
        validate_export_dir("saved_models/demo/1")    # ExportError (a version folder)
    """
    if isinstance(base_dir, bytes):
        raise ExportError(f"export path must be text, got bytes {base_dir!r}")
    path = os.fspath(base_dir)
    if not path.strip():
        raise ExportError("export path is empty")
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        raise ExportError(f"export path {path!r} contains NUL or control characters")
    name = os.path.basename(os.path.normpath(path))
    if name.startswith(TMP_PREFIX):
        raise ExportError(f"export path {path!r} is a temporary export folder")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise ExportError(f"export path {path!r} is a version folder (it holds "
                          "saved_model.pb); export to its parent, the model folder")
    return path


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9.]", "_", socket.gethostname())[:64] or "host"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists, owned by someone else (or cannot tell: keep it)
    return True


def clean_stale_tmp(base_dir: str | os.PathLike) -> list[str]:
    """Remove temporary export folders left by killed exports; return their names.

    A folder ``.tmp-export-<host>-<pid>-*`` is stale when ``<host>`` is this machine and
    process ``<pid>`` no longer exists, or (any name with our prefix) when it is older than
    ``STALE_TMP_SECONDS``. A running export's folder is never touched. Errors are ignored:
    a leftover is harmless (TF Serving and ``list_versions`` skip non-digit names).
    """
    removed = []
    try:
        names = [n for n in os.listdir(base_dir) if n.startswith(TMP_PREFIX)]
    except OSError:
        return removed
    host = _host_tag()
    now = time.time()
    for name in names:
        path = os.path.join(base_dir, name)
        owner = name[len(TMP_PREFIX):].rsplit("-", 2)
        dead = (len(owner) == 3 and owner[0] == host and owner[1].isdigit()
                and not _pid_alive(int(owner[1])))
        try:
            old = now - os.path.getmtime(path) > STALE_TMP_SECONDS
        except OSError:
            continue
        if dead or old:
            shutil.rmtree(path, ignore_errors=True)
            if not os.path.exists(path):
                removed.append(name)
    return removed


def file_digest(path: str | os.PathLike) -> dict[str, Any]:
    """``{"bytes": size, "sha256": hex}`` of one file (read in 1 MiB blocks)."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
            size += len(block)
    return {"bytes": size, "sha256": h.hexdigest()}


def _file_digests(version_dir: str) -> dict[str, dict[str, Any]]:
    """``{relative path: digest}`` of every file of a version except ``metadata.json``."""
    out = {}
    skip = os.path.join(EXTRA_DIR, METADATA_FILE)
    for root, _, files in os.walk(version_dir):
        for name in files:
            full = os.path.join(root, name)
            rel = os.path.relpath(full, version_dir)
            if rel != skip:
                out[rel.replace(os.sep, "/")] = file_digest(full)
    return dict(sorted(out.items()))


def verify_export(version_dir: str | os.PathLike,
                  metadata: Mapping[str, Any] | None = None) -> None:
    """Check the files of a version against the sizes and SHA-256 in its metadata.

    Raises one ``ExportError`` naming the first missing, truncated or modified file.
    Exports written before checksums were recorded (no ``files`` key) pass unchecked.
    """
    version_dir = os.fspath(version_dir)
    meta = load_metadata(version_dir) if metadata is None else metadata
    files = meta.get(FILES_KEY) if isinstance(meta, Mapping) else None
    if not files:
        return
    if not isinstance(files, Mapping):
        raise ExportError(f"export {version_dir!r}: metadata '{FILES_KEY}' is not an object")
    for rel, want in files.items():
        full = os.path.join(version_dir, *str(rel).split("/"))
        if not os.path.isfile(full):
            raise ExportError(f"export {version_dir!r} is incomplete: {rel} is missing")
        try:
            got = file_digest(full)
            size, sha = int(want["bytes"]), str(want["sha256"])
        except (OSError, TypeError, KeyError, ValueError) as err:
            raise ExportError(f"export {version_dir!r}: cannot check {rel}: {err}") from err
        if got["bytes"] != size:
            raise ExportError(f"export {version_dir!r} is corrupt: {rel} has {got['bytes']} "
                              f"bytes, {size} were written (truncated or modified)")
        if got["sha256"] != sha:
            raise ExportError(f"export {version_dir!r} is corrupt: {rel} was modified after "
                              "export (SHA-256 mismatch)")


def resolve_export(path: str | os.PathLike) -> str:
    """The version folder ``path`` names: itself if it is one, else its latest version.

    A model folder holds versions 1, 2, ... as TF Serving expects; commands take either:

        resolve_export("saved_models/demo")     # -> "saved_models/demo/3" (latest)
        resolve_export("saved_models/demo/2")   # -> "saved_models/demo/2"
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise ExportError(f"model path {path!r} does not exist")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path
    if not os.path.isdir(path):
        raise ExportError(f"model path {path!r} is not a folder")
    versions = list_versions(path)
    if not versions:
        raise ExportError(f"{path!r} is not a SavedModel export: no saved_model.pb in it and no "
                          "version folder (1/, 2/, ...) with one")
    return os.path.join(path, str(versions[-1]))


def load_metadata(version_dir: str | os.PathLike) -> dict[str, Any]:
    """The export's ``assets.extra/metadata.json`` (``{}`` if it has none)."""
    path = os.path.join(version_dir, EXTRA_DIR, METADATA_FILE)
    if not os.path.exists(path):
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:  # UnicodeDecodeError is a ValueError
        raise ExportError(f"cannot read export metadata {path}: "
                          f"{str(err).splitlines()[0] if str(err) else type(err).__name__}"
                          ) from err
    if not isinstance(meta, dict):
        raise ExportError(f"export metadata {path} must hold a JSON object")
    return meta


def load_custom_ops(version_dir: str, metadata: Mapping[str, Any]) -> None:
    """Load the op libraries the export's metadata lists (``custom_ops``), or raise one
    ``ExportError`` saying what to install. ``"scann"``: ``import scann`` registers the
    ScaNN ops a ScaNN ``recommend`` index calls."""
    needed = metadata.get(CUSTOM_OPS_KEY) or []
    if not isinstance(needed, list):
        raise ExportError(f"export {version_dir!r}: metadata '{CUSTOM_OPS_KEY}' is not a list")
    for name in needed:
        if name != SCANN_OPS:
            raise ExportError(f"export {version_dir!r} needs custom ops {name!r}, which this "
                              f"version of tfrec_p5 ({__version__}) cannot load")
        reason = scann_unavailable()
        if reason is not None:
            raise ExportError(f"export {version_dir!r} needs the ScaNN ops (its recommend "
                              f"uses a ScaNN index): {reason}")


def load_export(path: str | os.PathLike) -> tuple[Any, str, dict[str, Any]]:
    """``(loaded SavedModel, version folder, metadata)`` for a model folder or version folder.

    Every file is checked against the size and SHA-256 that ``metadata.json`` records
    first, so a truncated or tampered export fails with one ``ExportError``:

        loaded, version_dir, meta = load_export("saved_models/demo")
        loaded.signatures["predict_rating"](user_id=tf.constant(["u1"]),
                                            item_id=tf.constant(["i2"]))["rating"]

    An export whose metadata lists ``custom_ops`` (``["scann"]``) gets them loaded first
    (``load_custom_ops``); without the package, one ``ExportError`` says what to install.
    """
    version_dir = resolve_export(path)
    metadata = load_metadata(version_dir)
    verify_export(version_dir, metadata)  # truncated / tampered files: one clear error
    load_custom_ops(version_dir, metadata)
    try:
        loaded = tf.saved_model.load(version_dir)
    except Exception as err:  # noqa: BLE001  TF raises many types for a corrupt SavedModel
        raise ExportError(f"cannot load SavedModel {version_dir!r}: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                          ) from err
    return loaded, version_dir, metadata


# ---------------------------------------------------------------------- writing
def _jsonable(obj: Any) -> Any:
    """Numpy scalars/arrays and tuples → plain JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    return obj


def _write_json(path: str, obj: Any) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(obj), f, indent=2, sort_keys=True)
        f.write("\n")


class TrainingRecord:
    """What an export knows of its training rows: hashes of its (user, item) pairs, users
    and items (``tfrec_p5.data.fingerprint``), stored in ``assets.extra/training_data.npz``.

        record = TrainingRecord.from_table(train)
        record.trained_share(test)                      # 0.0 on a held-out part
        export(module, "saved_models/x", training_record=record)
        TrainingRecord.load("saved_models/x/1").unknown_shares(test)  # {"users": 0.01, ...}
    """

    def __init__(self, pairs: np.ndarray, users: np.ndarray, items: np.ndarray,
                 summary: Mapping[str, Any] | None = None) -> None:
        self.pairs, self.users, self.items = pairs, users, items
        self.summary = dict(summary or {})

    @classmethod
    def from_table(cls, table: Interactions) -> TrainingRecord:
        return cls(pair_hashes(table.user_id, table.item_id), id_hashes(table.user_id),
                   id_hashes(table.item_id),
                   {"rows": len(table), "fingerprint": table_fingerprint(table)})

    def write(self, version_dir: str) -> dict[str, Any]:
        """Save the hashes into ``version_dir``; return the metadata summary."""
        np.savez_compressed(os.path.join(version_dir, EXTRA_DIR, TRAINING_FILE),
                            pairs=self.pairs, users=self.users, items=self.items)
        return {**self.summary, "file": f"{EXTRA_DIR}/{TRAINING_FILE}"}

    @classmethod
    def load(cls, version_dir: str | os.PathLike) -> TrainingRecord | None:
        """The record of an export version (``None``: the export has none)."""
        path = os.path.join(os.fspath(version_dir), EXTRA_DIR, TRAINING_FILE)
        if not os.path.exists(path):
            return None
        with np.load(path, allow_pickle=False) as data:
            return cls(data["pairs"], data["users"], data["items"])

    def trained_share(self, table: Interactions) -> float:
        """Share of ``table``'s rows whose (user, item) pair the model trained on."""
        if len(table) == 0:
            return 0.0
        return float(contains(self.pairs, pair_hashes(table.user_id, table.item_id,
                                                      unique=False)).mean())

    def unknown_shares(self, table: Interactions) -> dict[str, float]:
        """Share of ``table``'s rows whose user / item has no training row."""
        if len(table) == 0:
            return {"users": 0.0, "items": 0.0}
        known_users = contains(self.users, id_hashes(table.user_id, unique=False))
        known_items = contains(self.items, id_hashes(table.item_id, unique=False))
        return {"users": float(1 - known_users.mean()), "items": float(1 - known_items.mean())}


def export(model: ServingModule | tf.keras.Model, base_dir: str | os.PathLike, *,
           vocabs: Vocabularies | None = None,
           rating_range: tuple[float, float] | None = None,
           metadata: Mapping[str, Any] | None = None,
           metrics: Mapping[str, Any] | None = None,
           training_record: TrainingRecord | None = None) -> str:
    """Save ``model`` as the next version under ``base_dir``; return the version folder.

    ``model`` is either a ready ``ServingModule`` (any tasks' signatures) or a trained
    rating ``tf.keras.Model`` on vocabulary indices, which is wrapped with ``vocabs`` and
    ``rating_range`` into a module with ``predict_rating``/``serving_default``.
    ``metadata`` (and ``metrics``, also written to ``assets.extra/metrics.json``) land in
    ``assets.extra/metadata.json``, completed with version, signatures, tasks, vocabulary
    sizes, rating range, package and TensorFlow versions, and the size and SHA-256 of every
    file (checked by ``load_export``). ``training_record`` (hashes of the rows the model
    was fit on) goes to ``assets.extra/training_data.npz``, so evaluating the export later
    can refuse rows it trained on and count unknown IDs.
    ``base_dir`` must pass ``validate_export_dir`` (no control characters, not a version
    folder; used as given, never made absolute by us).

        export(trained.model, "saved_models/ml100k", vocabs=trained.vocabs,
               rating_range=(1.0, 5.0))                 # -> "saved_models/ml100k/1"
    """
    if isinstance(model, ServingModule):
        module = model
    else:
        if vocabs is None or rating_range is None:
            raise ExportError("exporting a bare Keras model needs vocabs= and rating_range=")
        module = ServingModule(vocabs)
        add_rating_signatures(module, model, rating_range)
    signatures = module.signatures()

    base_dir = validate_export_dir(base_dir)
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise ExportError(f"export target {base_dir!r} exists and is not a folder")
    os.makedirs(base_dir, exist_ok=True)
    clean_stale_tmp(base_dir)
    # Owner in the name, so a later export can tell a dead leftover from a running one.
    tmp = tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{_host_tag()}-{os.getpid()}-", dir=base_dir)
    try:
        # mkdtemp makes the folder 0700; a server running as another user must read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        # Signatures only: Keras would also trace and store every layer's call function
        # (a Keras reload path nobody takes here): about half of a small export's time.
        # The scope is what tf-keras's own model.save(save_traces=False) enters; it has no
        # public name (same module in tf-keras 2.20 and 2.21).
        with keras_option_scope(save_traces=False):
            tf.saved_model.save(module, tmp, signatures=signatures)
        os.makedirs(os.path.join(tmp, EXTRA_DIR), exist_ok=True)
        meta: dict[str, Any] = dict(metadata or {})
        meta.update({
            "format": METADATA_FORMAT,
            "package": "tfrec_p5",
            "package_version": __version__,
            "tensorflow_version": tf.__version__,
            "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "tasks": list(module.tasks),
            "signatures": module.signature_names(),
            "vocab_sizes": dict(module.vocab_sizes),
        })
        if getattr(module, "signature_tasks", None):
            meta[SIGNATURE_TASKS_KEY] = dict(module.signature_tasks)
        meta.update(getattr(module, "extra_metadata", None) or {})
        if getattr(module, "rating_range", None) is not None:
            meta["rating_range"] = list(module.rating_range)
        if getattr(module, "custom_ops", None):  # e.g. a ScaNN index: not stock TF Serving
            meta[CUSTOM_OPS_KEY] = list(module.custom_ops)
            meta["recommend_index"] = dict(module.recommend_index)
        if metrics is not None:
            meta["metrics"] = dict(metrics)
            _write_json(os.path.join(tmp, EXTRA_DIR, METRICS_FILE), metrics)
        if training_record is not None:
            meta["training_data"] = training_record.write(tmp)
        meta[FILES_KEY] = _file_digests(tmp)
        version = next_version(base_dir)
        while True:
            target = os.path.join(base_dir, str(version))
            meta["version"] = version
            _write_json(os.path.join(tmp, EXTRA_DIR, METADATA_FILE), meta)
            if not os.path.exists(target):  # rename would replace an *empty* folder
                try:
                    os.rename(tmp, target)
                    return target
                except OSError as err:  # taken concurrently (non-empty target)
                    if err.errno not in (errno.EEXIST, errno.ENOTEMPTY):
                        raise
            version = max(version + 1, next_version(base_dir))
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
