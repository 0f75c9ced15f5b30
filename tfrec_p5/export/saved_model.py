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
"""

from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Mapping
from typing import Any

import tensorflow as tf

from tfrec_p5._version import __version__
from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.export.serving import ServingModule, add_rating_signatures

EXTRA_DIR = "assets.extra"
METADATA_FILE = "metadata.json"
METRICS_FILE = "metrics.json"
TMP_PREFIX = ".tmp-export-"
#: Bumped when the metadata layout changes incompatibly.
METADATA_FORMAT = "tfrec_p5.export/1"


class ExportError(ValueError):
    """A path is not an export (or holds none), or an export cannot be written."""


# ---------------------------------------------------------------------- versions
def list_versions(base_dir: str | os.PathLike) -> list[int]:
    """Sorted version numbers of the complete exports (``N/saved_model.pb``) in ``base_dir``."""
    try:
        names = os.listdir(base_dir)
    except FileNotFoundError:
        return []
    return sorted(int(n) for n in names
                  if n.isdigit() and os.path.isfile(os.path.join(base_dir, n, "saved_model.pb")))


def next_version(base_dir: str | os.PathLike) -> int:
    """One more than the highest all-digit entry in ``base_dir`` (complete or not), ≥ 1."""
    try:
        nums = [int(n) for n in os.listdir(base_dir) if n.isdigit()]
    except FileNotFoundError:
        nums = []
    return max(nums, default=0) + 1


def resolve_export(path: str | os.PathLike) -> str:
    """The version folder ``path`` names: itself if it is one, else its latest version.

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
            return json.load(f)
    except (OSError, ValueError) as err:
        raise ExportError(f"cannot read export metadata {path}: {err}") from err


def load_export(path: str | os.PathLike) -> tuple[Any, str, dict[str, Any]]:
    """``(loaded SavedModel, version folder, metadata)`` for a model folder or version folder.

        loaded, version_dir, meta = load_export("saved_models/demo")
        loaded.signatures["predict_rating"](user_id=tf.constant(["u1"]),
                                            item_id=tf.constant(["i2"]))["rating"]
    """
    version_dir = resolve_export(path)
    try:
        loaded = tf.saved_model.load(version_dir)
    except Exception as err:  # noqa: BLE001  TF raises many types for a corrupt SavedModel
        raise ExportError(f"cannot load SavedModel {version_dir!r}: "
                          f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                          ) from err
    return loaded, version_dir, load_metadata(version_dir)


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


def export(model: ServingModule | tf.keras.Model, base_dir: str | os.PathLike, *,
           vocabs: Vocabularies | None = None,
           rating_range: tuple[float, float] | None = None,
           metadata: Mapping[str, Any] | None = None,
           metrics: Mapping[str, Any] | None = None) -> str:
    """Save ``model`` as the next version under ``base_dir``; return the version folder.

    ``model`` is either a ready ``ServingModule`` (any tasks' signatures) or a trained
    rating ``tf.keras.Model`` on vocabulary indices, which is wrapped with ``vocabs`` and
    ``rating_range`` into a module with ``predict_rating``/``serving_default``.
    ``metadata`` (and ``metrics``, also written to ``assets.extra/metrics.json``) land in
    ``assets.extra/metadata.json``, completed with version, signatures, tasks, vocabulary
    sizes, rating range, package and TensorFlow versions.

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

    base_dir = os.fspath(base_dir)
    if os.path.exists(base_dir) and not os.path.isdir(base_dir):
        raise ExportError(f"export target {base_dir!r} exists and is not a folder")
    os.makedirs(base_dir, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=TMP_PREFIX, dir=base_dir)
    try:
        # mkdtemp makes the folder 0700; a server running as another user must read it.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
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
        if getattr(module, "rating_range", None) is not None:
            meta["rating_range"] = list(module.rating_range)
        if metrics is not None:
            meta["metrics"] = dict(metrics)
            _write_json(os.path.join(tmp, EXTRA_DIR, METRICS_FILE), metrics)
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
