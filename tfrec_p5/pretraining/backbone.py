"""The backbone checkpoint: towers + vocabularies + side features + a JSON manifest.

Why a checkpoint format of its own (and not a SavedModel): fine-tuning must *rebuild* the
towers as Python objects, attach a new head, possibly grow their embedding tables for new
users / items, and train. That needs the tower configs, the vocabularies (token → row) and
the side-feature vocabularies (to encode the features of new IDs exactly as pretraining
did). Everything is JSON, ``.npz`` without pickle, and TF checkpoints: loading a backbone
cannot execute code.

Layout of ``backbones/NAME/``::

    manifest.json              format + version, data, tasks, epochs, metrics, feature spec
    vocab/user_vocab.json      Vocabularies.save
    vocab/item_vocab.json
    side_features/side_features.{json,npz}   SideFeatures.save (raw tables + their vocabs)
    user_tower/tower.json + weights.*         towers.save_tower
    item_tower/tower.json + weights.*

    backbone = load_backbone("backbones/ml100k")        # BackboneError if anything is off
    backbone.user_tower(tf.constant([1, 2], tf.int64))  # pretrained vectors

The manifest's ``feature_spec`` (each tower's config: number of IDs, widths, side-feature
specs) is checked against the tower files, the vocabularies and the side features on
load, so a backbone assembled from mismatched parts fails with a ``BackboneError`` naming
the file and field instead of silently mis-aligning rows.

Broken files: the manifest records the size and SHA-256 of every file (``checksums``),
``load_backbone`` checks them first, and any other failure while reading a part is turned
into a ``BackboneError`` too, so a truncated, tampered or half-written backbone fails with
one message naming the file. ``save_backbone`` deletes an existing manifest before
writing and writes the new one last: a save killed half-way leaves a folder without a
manifest, which ``load_backbone`` refuses.

Vocabulary growth (``grow_vocabulary`` / ``grow_backbone``): old tokens keep their old
indices and new tokens are appended (most frequent first), so every pretrained row stays
where it was and is copied bit for bit.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tensorflow as tf

from tfrec_p5._version import __version__
from tfrec_p5.data.interactions import ITEM, USER, Interactions
from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.data.vocabulary import Vocabulary
from tfrec_p5.export.saved_model import file_digest
from tfrec_p5.tasks.next_item import NextItemTask, load_next_item_head, save_next_item_head
from tfrec_p5.towers import SideFeatures, Tower, load_tower, save_tower
from tfrec_p5.towers.side_features import (
    HISTORY_FEATURES,
    FeatureTable,
    multi_values,
    tokenize,
)

BACKBONE_FORMAT = "tfrec_p5.backbone"
"""The ``format`` field of a backbone's ``manifest.json``: ``load_backbone`` refuses a folder
that is not a backbone before it reads anything else."""
FORMAT_VERSION = 1
"""Bumped when the layout changes incompatibly; ``load_backbone`` refuses other versions."""
MANIFEST = "manifest.json"
FILES = {
    "user_vocab": "vocab/user_vocab.json",
    "item_vocab": "vocab/item_vocab.json",
    "side_features_json": "side_features/side_features.json",
    "side_features_npz": "side_features/side_features.npz",
    "user_tower_config": "user_tower/tower.json",
    "user_tower_weights": "user_tower/weights.index",
    "item_tower_config": "item_tower/tower.json",
    "item_tower_weights": "item_tower/weights.index",
}
_SPEC_KEYS = ("class", "num_ids", "embedding_dim", "output_dim", "feature_dim", "l2",
              "features")
#: The parts' sub-folders; every file in them is listed in the manifest's ``checksums``.
PART_DIRS = ("vocab", "side_features", "user_tower", "item_tower", "next_item")


class BackboneError(ValueError):
    """A backbone folder is missing, incomplete or inconsistent. The message names the
    file (and field) at fault."""

    def __init__(self, message: str, *, path: str | os.PathLike | None = None,
                 field: str | None = None) -> None:
        self.path = None if path is None else os.fspath(path)
        self.field = field
        if field is not None and f"'{field}'" not in message:
            message = f"{message} (field '{field}')"
        super().__init__(f"{self.path}: {message}" if self.path else message)


@dataclass
class Backbone:
    """Pretrained towers and everything needed to reuse them on new data."""

    user_tower: Tower
    item_tower: Tower
    vocabs: Vocabularies
    side_features: SideFeatures
    manifest: dict[str, Any] = field(default_factory=dict)
    #: The pretrained next-item head (its encoder reads ``item_tower``), if pretrained.
    next_item_head: NextItemTask | None = None

    def feature_spec(self) -> dict[str, dict]:
        """The towers' shape description stored in (and checked against) the manifest."""
        return feature_spec(self.user_tower, self.item_tower)

    def tower_weights(self) -> dict[str, list[np.ndarray]]:
        """``{"user": [...], "item": [...]}`` copies of all tower variables (for tests)."""
        return {"user": [w.numpy().copy() for w in self.user_tower.weights],
                "item": [w.numpy().copy() for w in self.item_tower.weights]}


def _tower_spec(tower: Tower) -> dict:
    config = tower.get_config()
    spec = {"class": type(tower).__name__, **{k: config[k] for k in _SPEC_KEYS[1:]}}
    return _plain(spec)


def feature_spec(user_tower: Tower, item_tower: Tower) -> dict[str, dict]:
    """``{"user": spec, "item": spec}``: class, ID count, widths and side-feature specs."""
    return {"user": _tower_spec(user_tower), "item": _tower_spec(item_tower)}


def _built(tower: Tower) -> Tower:
    if not tower.built:
        tower(tf.zeros((1,), tf.int64))
    return tower


# ---------------------------------------------------------------------- save / load
def save_backbone(backbone: Backbone, directory: str | os.PathLike, *,
                  manifest: Mapping[str, Any] | None = None) -> str:
    """Write ``backbone`` to ``directory`` (created); return the manifest path.

    ``manifest`` adds fields (data, tasks, epochs, metrics, config, ...); format, format
    version, package version, creation time, feature spec and file list are filled in.
    """
    directory = os.fspath(directory)
    os.makedirs(directory, exist_ok=True)
    # No manifest while the parts are half-written: a killed save is refused on load.
    with contextlib.suppress(FileNotFoundError):
        os.remove(os.path.join(directory, MANIFEST))
    backbone.vocabs.save(os.path.join(directory, "vocab"))
    backbone.side_features.save(os.path.join(directory, "side_features"))
    save_tower(_built(backbone.user_tower), os.path.join(directory, "user_tower"))
    save_tower(_built(backbone.item_tower), os.path.join(directory, "item_tower"))
    next_item = None
    if backbone.next_item_head is not None:
        saved = save_next_item_head(backbone.next_item_head,
                                    os.path.join(directory, "next_item"))
        next_item = {"config": saved["config"],
                     "files": ["next_item/head.json", "next_item/weights.npz"]}
    meta = {**dict(backbone.manifest), **dict(manifest or {})}
    meta.update({
        "format": BACKBONE_FORMAT, "format_version": FORMAT_VERSION,
        "package": "tfrec_p5", "package_version": __version__,
        "tensorflow_version": tf.__version__,
        "created_utc": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "vocab_sizes": {USER: len(backbone.vocabs.user), ITEM: len(backbone.vocabs.item)},
        "feature_spec": backbone.feature_spec(),
        "files": dict(FILES),
        "checksums": _part_digests(directory),
    })
    meta.pop("next_item", None)
    if next_item is not None:
        meta["next_item"] = next_item
    backbone.manifest = meta
    path = os.path.join(directory, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(_jsonable(meta), f, indent=2, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)  # the manifest appears complete or not at all
    return path


def _part_digests(directory: str) -> dict[str, dict[str, Any]]:
    """``{relative path: {"bytes", "sha256"}}`` of every file in the part folders."""
    out = {}
    for part in PART_DIRS:
        for root, _, files in os.walk(os.path.join(directory, part)):
            for name in files:
                full = os.path.join(root, name)
                rel = os.path.relpath(full, directory).replace(os.sep, "/")
                out[rel] = file_digest(full)
    return dict(sorted(out.items()))


def verify_checksums(directory: str | os.PathLike, meta: Mapping[str, Any]) -> None:
    """Compare the part files with the manifest's ``checksums`` (sizes and SHA-256).

    ``BackboneError`` naming the first missing, truncated or modified file; a manifest
    without ``checksums`` (written before they were recorded) passes unchecked.
    """
    directory = os.fspath(directory)
    sums = meta.get("checksums")
    if sums is None:
        return
    manifest_path = os.path.join(directory, MANIFEST)
    if not isinstance(sums, Mapping):
        raise BackboneError("manifest checksums must be an object", path=manifest_path,
                            field="checksums")
    for rel, want in sums.items():
        rel = str(rel)
        full = os.path.join(directory, *rel.split("/"))
        if ".." in rel.split("/") or not os.path.isfile(full):
            raise BackboneError(f"missing backbone file {rel!r}", path=full, field="checksums")
        try:
            got = file_digest(full)
            size, sha = int(want["bytes"]), str(want["sha256"])
        except (OSError, TypeError, KeyError, ValueError) as err:
            raise BackboneError(f"cannot check {rel!r}: {err}", path=full) from err
        if got["bytes"] != size:
            raise BackboneError(f"corrupt backbone file: {got['bytes']} bytes, {size} were "
                                "saved (truncated or modified)", path=full)
        if got["sha256"] != sha:
            raise BackboneError("corrupt backbone file: modified after it was saved "
                                "(SHA-256 mismatch)", path=full)


def _plain(obj: Any) -> Any:
    """Keras-tracked dicts / lists (``_DictWrapper``, ``ListWrapper``) → plain JSON types."""
    return json.loads(json.dumps(_jsonable(obj)))


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "ListWrapper":
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def read_manifest(directory: str | os.PathLike) -> dict[str, Any]:
    """The validated manifest of a backbone folder (format and version checked)."""
    directory = os.fspath(directory)
    path = os.path.join(directory, MANIFEST)
    if not os.path.isdir(directory):
        raise BackboneError("backbone folder does not exist", path=directory)
    if not os.path.isfile(path):
        raise BackboneError("missing manifest (is this a backbone saved by pretrain?)",
                            path=path)
    try:
        with open(path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as err:
        raise BackboneError(f"cannot read manifest: {err}", path=path) from err
    if not isinstance(meta, dict):
        raise BackboneError("manifest must hold a JSON object", path=path)
    if meta.get("format") != BACKBONE_FORMAT:
        raise BackboneError(f"not a backbone manifest: format {meta.get('format')!r}, "
                            f"expected {BACKBONE_FORMAT!r}", path=path, field="format")
    if meta.get("format_version") != FORMAT_VERSION:
        raise BackboneError(f"unknown format version {meta.get('format_version')!r}; this "
                            f"tfrec_p5 ({__version__}) reads version {FORMAT_VERSION}",
                            path=path, field="format_version")
    spec = meta.get("feature_spec")
    if not isinstance(spec, dict) or set(spec) != {"user", "item"} or any(
            not isinstance(spec[s], dict) or set(spec[s]) != set(_SPEC_KEYS) for s in spec):
        raise BackboneError("manifest feature spec is missing or malformed (needs user and "
                            f"item with keys {list(_SPEC_KEYS)})", path=path,
                            field="feature_spec")
    return meta


def load_backbone(directory: str | os.PathLike, *,
                  expect_feature_spec: Mapping[str, Any] | None = None) -> Backbone:
    """Load and validate a backbone saved by ``save_backbone`` / ``pretrain``.

    Checks: manifest format and version, every listed file present, each tower's config
    equal to the manifest's ``feature_spec``, vocabulary sizes equal to the towers' ID
    counts, side-feature specs equal to the towers' feature specs, and (optionally) the
    feature spec equal to ``expect_feature_spec``. Any failure is a ``BackboneError``.
    """
    directory = os.fspath(directory)
    meta = read_manifest(directory)
    verify_checksums(directory, meta)
    for key, rel in FILES.items():
        if not os.path.isfile(os.path.join(directory, rel)):
            raise BackboneError(f"missing backbone file {rel!r}",
                                path=os.path.join(directory, rel), field=key)
    spec = meta["feature_spec"]
    manifest_path = os.path.join(directory, MANIFEST)
    if expect_feature_spec is not None:
        for side in ("user", "item"):
            for key in _SPEC_KEYS:
                want = _plain(expect_feature_spec[side].get(key))
                if spec[side].get(key) != want:
                    raise BackboneError(
                        f"feature spec mismatch: {side} {key} is {spec[side].get(key)!r} "
                        f"in the backbone, expected {want!r}", path=manifest_path,
                        field=f"feature_spec.{side}.{key}")
    towers = {}
    for side in ("user", "item"):
        cfg_path = os.path.join(directory, f"{side}_tower", "tower.json")
        try:
            with open(cfg_path, encoding="utf-8") as f:
                obj = json.load(f)
            found = {"class": obj["class"], **{k: obj["config"][k] for k in _SPEC_KEYS[1:]}}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise BackboneError(f"cannot read tower config: {err}", path=cfg_path) from err
        for key in _SPEC_KEYS:
            if _plain(found[key]) != spec[side][key]:
                raise BackboneError(
                    f"{side} tower {key} is {found[key]!r} but the manifest says "
                    f"{spec[side][key]!r} (feature spec mismatch)", path=cfg_path,
                    field=f"feature_spec.{side}.{key}")
        try:
            towers[side] = load_tower(os.path.join(directory, f"{side}_tower"))
        except Exception as err:  # noqa: BLE001  TF / Keras raise many types here
            raise BackboneError(f"cannot restore {side} tower weights: {_first_line(err)}",
                                path=os.path.join(directory, f"{side}_tower", "weights"),
                                ) from err
    try:
        vocabs = Vocabularies.load(os.path.join(directory, "vocab"))
    except Exception as err:  # noqa: BLE001
        raise BackboneError(_first_line(err), path=os.path.join(directory, "vocab")) from err
    for side, vocab in (("user", vocabs.user), ("item", vocabs.item)):
        if len(vocab) != spec[side]["num_ids"]:
            raise BackboneError(
                f"{side} vocabulary has {len(vocab)} rows but the {side} tower has "
                f"{spec[side]['num_ids']}", path=os.path.join(directory, FILES[f"{side}_vocab"]),
                field=f"feature_spec.{side}.num_ids")
    try:
        side_features = SideFeatures.load(os.path.join(directory, "side_features"))
    except Exception as err:  # noqa: BLE001  e.g. zipfile.BadZipFile, EOFError
        raise BackboneError(_first_line(err),
                            path=os.path.join(directory, "side_features")) from err
    for side, tables in (("user", side_features.user), ("item", side_features.item)):
        found = [t.spec() for t in tables.values()]
        if _plain(found) != spec[side]["features"]:
            raise BackboneError(
                f"{side} side features {[f['name'] for f in found]} do not match the "
                f"tower's feature spec {[f['name'] for f in spec[side]['features']]}",
                path=os.path.join(directory, FILES["side_features_json"]),
                field=f"feature_spec.{side}.features")
    head = None
    if meta.get("next_item") is not None:
        folder = os.path.join(directory, "next_item")
        try:
            head = load_next_item_head(folder, towers["item"])
        except Exception as err:  # noqa: BLE001
            raise BackboneError(f"cannot restore the next-item encoder: {_first_line(err)}",
                                path=folder, field="next_item") from err
    return Backbone(towers["user"], towers["item"], vocabs, side_features, meta, head)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return f"{type(err).__name__}: {text.splitlines()[0]}" if text else type(err).__name__


# ---------------------------------------------------------------------- growth
def grow_vocabulary(vocab: Vocabulary, values: np.ndarray) -> Vocabulary:
    """``vocab`` + the tokens of ``values`` it lacks, appended most frequent first.

    Old tokens keep their indices (``grown.lookup(old_tokens) == vocab.lookup(old_tokens)``),
    which is what lets a grown embedding table keep its pretrained rows in place.

        grow_vocabulary(Vocabulary(["a", "b"]), np.array(["c", "a", "d", "d"])).tokens
        # -> ["a", "b", "d", "c"]
    """
    values = np.asarray(values, dtype=str)
    new = values[vocab.lookup(values) == 0]
    if len(new) == 0:
        return vocab
    added = Vocabulary.build(new, name=vocab.name).tokens
    return Vocabulary(np.concatenate([vocab.tokens, added]), name=vocab.name)


def _encode_rows(table: FeatureTable, column: np.ndarray) -> np.ndarray:
    """Encode raw feature values (one per new ID) with the *pretrained* feature vocabulary,
    as ``SideFeatures.build`` did at pretraining time; unseen values become 0 (unknown)."""
    n = len(column)
    if table.kind == "numeric":
        mean, std = table.stats
        x = np.asarray(column, dtype=np.float64)
        return np.nan_to_num((x - mean) / (std or 1.0)).astype(np.float32)
    vocab = Vocabulary(list(table.vocab), name=table.name)
    if table.kind == "categorical":
        values = np.asarray(column)
        if values.dtype.kind == "f" and np.all(values == np.round(values)):
            values = values.astype(np.int64)
        return vocab.lookup(values.astype(str)).astype(np.int32)
    width = table.width
    out = np.zeros((n, width), dtype=np.int32)
    if table.kind == "multi_categorical":
        present, tokens = multi_values(column)
        enc = np.where(present, vocab.lookup(tokens), 0)[:, :width]
        out[:, :enc.shape[1]] = enc
        return out
    if table.kind == "text":
        for r, text in enumerate(column):
            toks = tokenize(text)[:width]
            if toks:
                out[r, :len(toks)] = vocab.lookup(np.asarray(toks, dtype=str))
        return out
    raise BackboneError(f"side feature '{table.name}' has unknown kind {table.kind!r}",
                        field=table.name)


def _grow_tables(tables: Mapping[str, FeatureTable], n_old: int, n_new: int,
                 data: Interactions | None, vocab: Vocabulary, id_col: str
                 ) -> dict[str, FeatureTable]:
    """Per-ID tables with ``n_new`` rows: old rows copied, new IDs' rows encoded from
    ``data`` (their first row), history features left empty (no pretrained history)."""
    grown = {}
    first_rows = None
    if data is not None and n_new > n_old:
        ids = vocab.lookup(data.columns[id_col])
        uniq, first = np.unique(ids, return_index=True)
        keep = uniq >= n_old
        first_rows = (uniq[keep], first[keep])
    for name, t in tables.items():
        shape = (n_new,) + t.values.shape[1:]
        values = np.zeros(shape, dtype=t.values.dtype)
        values[:n_old] = t.values
        if (first_rows is not None and len(first_rows[0]) and name not in HISTORY_FEATURES
                and name in data.columns):
            declared = data.feature_kinds.get(name)
            if declared is not None and declared != t.kind:
                raise BackboneError(
                    f"side feature '{name}' is {declared!r} in the fine-tuning data but "
                    f"{t.kind!r} in the backbone", field=name)
            values[first_rows[0]] = _encode_rows(t, data.columns[name][first_rows[1]])
        grown[name] = FeatureTable(t.name, t.kind, values, t.vocab, t.stats)
    return grown


def _grow_tower(tower: Tower, n_new: int, tables: Mapping[str, FeatureTable],
                seed: int) -> Tower:
    """A copy of ``tower`` over ``n_new`` IDs: every pretrained weight copied exactly, the
    ID embedding's new rows initialised (see ``grow_backbone``)."""
    tower = _built(tower)
    n_old = tower.num_ids
    config = {**tower.get_config(), "num_ids": n_new}
    new = type(tower).from_config(config)
    _built(new)
    new.set_tables({n: t.values for n, t in tables.items()})
    old_emb = tower.id_embedding.embeddings.numpy()
    rng = np.random.default_rng(seed)
    extra = n_new - n_old
    if extra > 0:
        known = old_emb[1:] if n_old > 1 else old_emb
        std = float(known.std()) or 0.05
        if tower.features:
            # The new ID's vector comes from its side features through the pretrained
            # tower; its ID part starts at the average known ID (+ small noise), i.e. a
            # "typical" user/item, rather than at an arbitrary point.
            rows = known.mean(axis=0, keepdims=True) + rng.normal(
                0.0, 0.1 * std, (extra, old_emb.shape[1]))
        else:
            rows = rng.normal(0.0, 0.1 * std, (extra, old_emb.shape[1]))
        emb = np.concatenate([old_emb, rows.astype(old_emb.dtype)])
    else:
        emb = old_emb
    table_vars = {id(v) for v in tower.tables.values()}
    for old_w, new_w in zip(tower.weights, new.weights, strict=True):
        if old_w.name.split("/")[-1] != new_w.name.split("/")[-1]:
            raise BackboneError(f"tower weights out of order: {old_w.name} vs {new_w.name}")
        if id(old_w) in table_vars:
            continue  # set from the grown tables above
        if old_w is tower.id_embedding.embeddings:
            new_w.assign(emb)
        else:
            new_w.assign(old_w.numpy())
    return new


def grow_backbone(backbone: Backbone, data: Interactions, *, seed: int = 0) -> Backbone:
    """The backbone extended to the users / items of ``data`` it does not know yet.

    * Vocabularies grow by appending (``grow_vocabulary``): known IDs keep their index.
    * Known rows (ID embeddings, side-feature tables) are copied exactly; all other tower
      weights (feature embeddings, projection) are copied unchanged.
    * New IDs: side-feature table rows are encoded from ``data`` with the *pretrained*
      feature vocabularies, so the pretrained feature embeddings and projection map them
      (a new MovieLens user gets a vector from gender / age / occupation); their ID row
      starts at the mean known ID row plus small noise. Towers without side features
      start new rows at small random values (``N(0, (0.1·std)^2)`` of the known rows).
    * No new ID: the backbone is returned unchanged.
    """
    vocabs = Vocabularies(grow_vocabulary(backbone.vocabs.user, data.user_id),
                          grow_vocabulary(backbone.vocabs.item, data.item_id))
    if vocabs.user is backbone.vocabs.user and vocabs.item is backbone.vocabs.item:
        return backbone
    side = backbone.side_features
    n_old = {"user": len(backbone.vocabs.user), "item": len(backbone.vocabs.item)}
    n_new = {"user": len(vocabs.user), "item": len(vocabs.item)}
    user_tables = _grow_tables(side.user, n_old["user"], n_new["user"], data, vocabs.user,
                               USER)
    item_tables = _grow_tables(side.item, n_old["item"], n_new["item"], data, vocabs.item,
                               ITEM)
    user_tower = _grow_tower(backbone.user_tower, n_new["user"], user_tables, seed)
    item_tower = _grow_tower(backbone.item_tower, n_new["item"], item_tables, seed + 1)
    manifest = {**backbone.manifest, "grown": {
        "user": [n_old["user"], n_new["user"]], "item": [n_old["item"], n_new["item"]]}}
    head = backbone.next_item_head
    return Backbone(user_tower, item_tower, vocabs, SideFeatures(user_tables, item_tables),
                    manifest, None if head is None else head.clone(item_tower))
