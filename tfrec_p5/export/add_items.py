"""New items in an existing export, without retraining: the next version serves them.

Why: a shop lists new products every day, and retraining for each is slow; a two-tower
model already scores an item from its features alone (``export.new_items``). ``add_items``
loads a version with TensorFlow, computes the new items' candidate vectors with that
version's own item tower and feature encodings (its ``new_item_vectors`` function: the
towers are not retrained, nothing is refit), and writes the next version of the model
folder (atomic, digested: ``saved_model.export``) whose ``recommend`` and ``rank`` serve
them next to the trained items; titles too when the export has titles.

    items = read_new_items("new_items.csv", load_metadata("saved_models/demo/1"))
    add_items("saved_models/demo", items)          # -> "saved_models/demo/2"

How the new version is built (no Python state beyond the export is needed): its
``RetrievalIndex`` is the parent's with the new items' rows appended (user vectors and
seen items shared with the parent, not copied); the item ID lookup is rebuilt from the
stored item IDs; the user ID lookup and every other signature (``predict_rating``,
``score_new_items``) are the original version's, which the new one tracks as ``extends``.
Adding to a version that was itself extended appends to its index and still extends the
original, so chains of additions stay one level deep.

A next-item export (``next_items``, ``export.sequential``) is extended the same way: the
added items' vectors come from its ``new_item_vectors`` (the item tower without the ID
embedding), and the new version's ``next_items`` merges the original's top ``k`` with
the added items scored ``query(history) · vector`` (the original's ``next_item_query``):
exactly what the trained head gives a catalog item of the same features that no
training sequence holds. ``score_items`` scores added candidates the same way. An added
item *in a history* stays unknown to the query (the original's item lookup: a position
that carries no information; as the newest item it leaves the query no state, as any
unknown ID does), though it is never returned for that history.

Rules (each refusal is one ``AddItemsRefused`` line):

* the export needs ``score_new_items`` (a retrieval head and item side features, or a
  next-item model whose item tower has item side features) and, unless it is a
  next-item export, a brute-force ``recommend`` and ``rank`` scored by its retrieval
  head (a ScaNN index or a ranking-head ``rank`` cannot take items known only by
  features);
* IDs the export already has are refused, not skipped (a retrained item must come from
  retraining), and so are repeated IDs and missing feature columns;
* ``predict_rating`` (a rating head) is carried over unchanged: an added item is unknown
  to it, as before (the out-of-vocabulary row).

The new version's metadata keeps the parent's (data, split, seed, config) without its
metrics (measured on the parent's catalog) and records ``added_items``: the count, the
source file's path, size and SHA-256, the parent version, the total added since
training and the signatures serving them (``served_by``).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import tensorflow as tf

from tfrec_p5.data.interactions import ITEM
from tfrec_p5.data.sources.tabular import load_csv, load_parquet
from tfrec_p5.data.vocabulary import Vocabulary
from tfrec_p5.export.boundary import PAD_ITEM_ID, top_k_or_pad, with_parameters
from tfrec_p5.export.new_items import NEW_ITEMS_KEY, describe_inputs
from tfrec_p5.export.retrieval import RECOMMEND_KEY, RetrievalIndex, add_retrieval_signatures
from tfrec_p5.export.saved_model import (
    CUSTOM_OPS_KEY,
    SIGNATURE_TASKS_KEY,
    ExportError,
    TrainingRecord,
    export,
    file_digest,
    load_export,
    load_metadata,
    resolve_export,
)
from tfrec_p5.export.sequential import CANDIDATES_SPEC, HISTORY_SPEC, NEXT_ITEMS_KEY
from tfrec_p5.export.serving import DEFAULT_SIGNATURE, IdLookup, ServingModule
from tfrec_p5.export.unified import TITLE_COLUMNS

__all__ = ["ADDED_ITEMS_KEY", "EXTENDS", "AddItemsRefused", "NewItems",
           "add_items", "check_extendable", "extend_module", "is_next_item_export",
           "read_new_items"]

#: Attribute of an extended version: the loaded original version it builds on.
EXTENDS = "extends"
#: Metadata key of an extended version: what was added, from where, onto which version.
ADDED_ITEMS_KEY = "added_items"
#: Parent metadata a new version does not inherit: ``export`` recomputes these, and the
#: metrics were measured on the parent's catalog.
_NOT_INHERITED = ("format", "package", "package_version", "tensorflow_version",
                  "created_utc", "tasks", "signatures", "vocab_sizes", "files", "version",
                  "metrics", "training_data", SIGNATURE_TASKS_KEY, RECOMMEND_KEY,
                  NEW_ITEMS_KEY, NEXT_ITEMS_KEY, ADDED_ITEMS_KEY)
#: Signatures the new version answers itself; the others are the original's.
_REBUILT = ("recommend", "rank", DEFAULT_SIGNATURE)
#: The same for a next-item export.
_REBUILT_NEXT = ("next_items", "score_items")


class AddItemsRefused(ExportError):
    """An export or an item file ``add_items`` cannot take (a usage error: one line)."""


@dataclass(frozen=True)
class NewItems:
    """Items to add: IDs, raw feature values by input name (as ``score_new_items`` takes
    them: ``numeric`` float64, the rest strings) and optional titles."""

    ids: np.ndarray
    features: Mapping[str, np.ndarray]
    titles: np.ndarray | None = None
    source: str | None = None

    def __len__(self) -> int:
        return len(self.ids)


def _decode(values: np.ndarray) -> np.ndarray:
    return np.array([v.decode("utf-8") if isinstance(v, bytes) else str(v)
                     for v in np.asarray(values).reshape(-1)], dtype=str)


def is_next_item_export(metadata: Mapping[str, Any]) -> bool:
    """Whether an export answers ``next_items`` (a next-item model) rather than
    ``recommend`` / ``rank``: the two kinds ``add_items`` extends."""
    tasks = metadata.get(SIGNATURE_TASKS_KEY) or {}
    return tasks.get("next_items") == "sequential" or \
        "next_items" in (metadata.get("signatures") or ())


def check_extendable(loaded, metadata: Mapping[str, Any], version_dir: str
                     ) -> list[dict[str, str]]:
    """The item feature inputs of an export ``add_items`` can extend; else one
    ``AddItemsRefused`` saying why not. ``loaded=None`` checks the metadata alone (before
    loading: a ScaNN export would need the ScaNN ops just to be refused)."""
    where = f"export {version_dir}"
    if metadata.get(CUSTOM_OPS_KEY):
        raise AddItemsRefused(f"{where} answers recommend from a ScaNN index, which cannot "
                              "take new items; export it with the brute-force index")
    inputs = describe_inputs(metadata)
    base = getattr(loaded, EXTENDS, loaded)
    if is_next_item_export(metadata):
        if inputs is None or (loaded is not None and not (
                hasattr(base, "new_item_vectors") and hasattr(base, "next_item_query"))):
            raise AddItemsRefused(f"{where} is a next-item model that cannot score items "
                                  "by their features (no score_new_items: that needs an "
                                  "item tower with item side features, e.g. Amazon "
                                  "item_attributes with use_item_features)")
        if NEXT_ITEMS_KEY not in metadata:
            raise AddItemsRefused(f"{where} does not record its next_items list size")
    else:
        if inputs is None or (loaded is not None and not hasattr(base, "new_item_vectors")):
            raise AddItemsRefused(f"{where} cannot score items by their features (no "
                                  "score_new_items: that needs a retrieval head and item "
                                  "side features, e.g. UnifiedConfig(use_side_features="
                                  "True))")
        tasks = metadata.get(SIGNATURE_TASKS_KEY) or {}
        for name in ("recommend", "rank"):
            if tasks.get(name) != "retrieval":
                raise AddItemsRefused(f"{where}: its {name} is scored by its "
                                      f"{tasks.get(name)} head, which cannot score items "
                                      "known only by their features (add-items needs a "
                                      f"retrieval-scored {name})")
        if RECOMMEND_KEY not in metadata:
            raise AddItemsRefused(f"{where} does not record its recommend list size")
    if (metadata.get(NEW_ITEMS_KEY) or {}).get("item_lookup") != "table":
        raise AddItemsRefused(f"{where} hashes item IDs, so an added item has no row of "
                              "its own to be served from")
    return inputs


def read_new_items(path: str | os.PathLike, metadata: Mapping[str, Any],
                   id_column: str = ITEM) -> NewItems:
    """The items of a CSV (``.tsv``: tab-separated) or Parquet file: ``id_column`` plus
    one column per item feature of the export (``metadata``'s ``new_items`` inputs),
    read strictly by ``tfrec_p5.data.sources.tabular`` (a bad row names file and line).
    Multi-categorical values are ``|``-joined in one column; a numeric value may be empty
    (missing). A title column (``TITLE_COLUMNS``) is read when present.

        read_new_items("new.csv", meta)   # NewItems(ids=["n1", "n2"], features={...})
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise AddItemsRefused(f"item file {path!r} does not exist")
    inputs = describe_inputs(metadata) or []
    names = [i["name"] for i in inputs]
    suffix = os.path.splitext(path)[1].lower()
    reader = load_parquet if suffix in (".parquet", ".pq") else load_csv
    options = {"sep": "\t"} if suffix == ".tsv" else {}
    header = _columns(path, reader, options)  # None: the reader below names the problem
    if header is not None:
        missing = [n for n in [id_column, *names] if n not in header]
        if missing:
            raise AddItemsRefused(f"{path} has no column {missing[0]!r} (needed: "
                                  f"{[id_column, *names]}; it has {header})")
    title = next((c for c in TITLE_COLUMNS if header is not None and c in header), None)
    wanted = list(dict.fromkeys([*names, *([title] if title else [])]))
    table = reader(path, user=id_column, item=id_column, rating="none", timestamp="none",
                   item_features=",".join(wanted), **options)
    ids = np.asarray(table.item_id, dtype=str)
    uniq, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise AddItemsRefused(f"{path}: item {uniq[counts > 1][0]!r} is listed "
                              f"{counts.max()} times; list each new item once")
    features = {}
    for spec in inputs:
        raw = np.asarray(table.columns[spec["name"]], dtype=str)
        if spec["dtype"] == "float64":
            features[spec["name"]] = _numbers(raw, path, spec["name"])
        else:
            features[spec["name"]] = raw
    titles = np.asarray(table.columns[title], dtype=str) if title else None
    return NewItems(ids, features, titles, path)


def _columns(path: str, reader, options) -> list[str] | None:
    """The header of a CSV / TSV file or the column names of a Parquet file."""
    if reader is load_parquet:
        try:
            import pyarrow.parquet as pq
        except ImportError:
            return None
        try:
            return list(pq.read_schema(path).names)
        except Exception:  # noqa: BLE001  pyarrow's errors: the reader reports them
            return None
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            for row in csv.reader(fh, delimiter=options.get("sep", ",")):
                if any(c.strip() for c in row):
                    return [c.strip() for c in row]
    except (OSError, UnicodeDecodeError, csv.Error):
        return None  # the strict reader reports it, with the line
    return None


def _numbers(raw: np.ndarray, path: str, name: str) -> np.ndarray:
    """Numeric column values (``""`` / ``nan``: missing, the training mean); anything
    else that is not a finite number is refused with its row."""
    out = np.full(len(raw), np.nan)
    for row, text in enumerate(raw):
        text = text.strip()
        if text.lower() in ("", "nan"):
            continue
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not np.isfinite(value):
            raise AddItemsRefused(f"{path}: row {row + 1}: {name} is {text!r}, not a "
                                  "finite number")
        out[row] = value
    return out


class _LoadedLookup(tf.Module):
    """A loaded export's ``IdLookup`` (its saved ``lookup`` function), callable again."""

    def __init__(self, loaded_lookup) -> None:
        super().__init__(name="loaded_lookup")
        self.loaded = loaded_lookup

    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        # The loaded function's output shape is unknown; it is the shape of ``ids``.
        return tf.ensure_shape(self.loaded.lookup(ids), ids.shape)


def _forward(module: ServingModule, name: str, function) -> None:
    """Add signature ``name`` answering with the loaded signature ``function`` (which
    checks its inputs itself), with its inputs in its own order."""
    specs = function.concrete_functions[0].structured_input_signature[0]

    def forwarded(*tensors: tf.Tensor) -> dict[str, tf.Tensor]:
        return function(*tensors)

    module.add_signature(name, with_parameters(forwarded, [s.name for s in specs]),
                         [tf.TensorSpec(s.shape, s.dtype, name=s.name) for s in specs],
                         checked=False)


def _new_item_vectors(base, metadata: Mapping[str, Any], version_dir: str,
                      items: NewItems, tokens: np.ndarray) -> np.ndarray:
    """``[n, d]`` vectors of ``items`` from the original version ``base``'s own
    ``new_item_vectors``, after refusing an empty list, IDs already in ``tokens`` and
    missing or short feature values."""
    if not len(items):
        raise AddItemsRefused(f"{items.source or 'the item file'} lists no items")
    known = items.ids[np.isin(items.ids, tokens)]
    if len(known):
        raise AddItemsRefused(f"{len(known)} item(s) are already in export {version_dir} "
                              f"({', '.join(map(repr, known[:3].tolist()))}"
                              f"{', ...' if len(known) > 3 else ''}); add-items adds new "
                              "items only")
    inputs = describe_inputs(metadata) or []
    for spec in inputs:
        values = items.features.get(spec["name"])
        if values is None or len(values) != len(items):
            raise AddItemsRefused(f"the new items need {len(items)} values of item feature "
                                  f"{spec['name']!r}, got "
                                  f"{'none' if values is None else len(values)}")
    return base.new_item_vectors({i["name"]: tf.constant(
        items.features[i["name"]], tf.float64 if i["dtype"] == "float64" else tf.string)
        for i in inputs}).numpy().astype(np.float32)


def _carry_over(module: ServingModule, loaded, base, metadata: Mapping[str, Any],
                rebuilt: tuple[str, ...]) -> None:
    """Track ``base`` as ``EXTENDS``, forward its signatures but ``rebuilt`` and keep its
    tasks, signature heads, feature inputs and rating range."""
    module.track(EXTENDS, base)
    for name in sorted(loaded.signatures):
        if name not in rebuilt:
            _forward(module, name, getattr(base, f"signature_{name}"))
    module.tasks = list(metadata.get("tasks") or module.tasks)
    module.signature_tasks = dict(metadata.get(SIGNATURE_TASKS_KEY) or {})
    module.extra_metadata[NEW_ITEMS_KEY] = dict(metadata[NEW_ITEMS_KEY])
    if metadata.get("rating_range") is not None:
        module.rating_range = tuple(metadata["rating_range"])


def extend_module(loaded, metadata: Mapping[str, Any], version_dir: str,
                  items: NewItems) -> ServingModule:
    """The serving module of the next version: ``loaded`` (a version of an export, with
    its ``metadata``) plus ``items`` in ``recommend`` and ``rank``, or in ``next_items``
    and ``score_items`` for a next-item export (the module docstring says how it is
    built)."""
    check_extendable(loaded, metadata, version_dir)
    if is_next_item_export(metadata):
        return _extend_next_items(loaded, metadata, version_dir, items)
    base = getattr(loaded, EXTENDS, loaded)
    old = loaded.retrieval_index
    tokens = _decode(old.item_tokens.numpy())
    vectors = _new_item_vectors(base, metadata, version_dir, items, tokens)
    n, prior = len(items), float(base.new_item_prior.numpy())
    old_vectors = old.item_vectors_t.numpy().T
    item_vectors = np.concatenate([np.zeros((1, old_vectors.shape[1]), np.float32),
                                   old_vectors, vectors])
    titles = None
    if hasattr(old, "item_titles"):
        new_titles = items.titles if items.titles is not None else np.full(n, "")
        titles = np.concatenate([_decode(old.item_titles.numpy()), new_titles])
    all_tokens = np.concatenate([tokens, items.ids])
    index = RetrievalIndex(
        old.user_vectors, item_vectors, all_tokens,
        np.concatenate([[0.0], old.popularity.numpy(), np.zeros(n)]),   # no training count
        old.seen_splits, old.seen_values,
        np.concatenate([[0.0], old.item_prior.numpy(), np.full(n, prior)]),
        item_titles=titles)
    module = ServingModule(
        None, user_lookup=_LoadedLookup(base.user_lookup),
        item_lookup=IdLookup(Vocabulary(all_tokens, name="item_id"), name="item_id_lookup"),
        vocab_sizes={"user_id": int(metadata["vocab_sizes"]["user_id"]),
                     "item_id": len(all_tokens) + 1})
    recommend = metadata[RECOMMEND_KEY]
    add_retrieval_signatures(module, index, k=int(recommend["k"]),
                             exclude_seen=bool(recommend["exclude_seen"]), default=True,
                             recommend_task="retrieval", rank_task="retrieval")
    _carry_over(module, loaded, base, metadata, _REBUILT)
    return module


class _AddedItems(tf.Module):
    """The items a next-item version adds: their IDs ``[m]`` and vectors ``[m, d]``."""

    def __init__(self, tokens: np.ndarray, vectors: np.ndarray) -> None:
        super().__init__(name="added_items")
        self.tokens = tf.Variable(np.asarray(tokens, dtype=object), dtype=tf.string,
                                  trainable=False, name="tokens")
        self.vectors = tf.Variable(np.asarray(vectors, np.float32), trainable=False,
                                   name="vectors")


def _extend_next_items(loaded, metadata: Mapping[str, Any], version_dir: str,
                       items: NewItems) -> ServingModule:
    """The next version of a next-item export: the original's ``next_items`` and
    ``score_items`` with the added items merged in (``_add_next_item_extension``)."""
    base = getattr(loaded, EXTENDS, loaded)
    trained_tokens = _decode(base.next_item_tokens.numpy())[1:]   # row 0: OOV
    earlier = getattr(loaded, "added_items", None)
    old_tokens = _decode(earlier.tokens.numpy()) if earlier is not None else np.zeros(0, str)
    vectors = _new_item_vectors(base, metadata, version_dir, items,
                                np.concatenate([trained_tokens, old_tokens]))
    if earlier is not None:
        vectors = np.concatenate([earlier.vectors.numpy(), vectors])
    added = np.concatenate([old_tokens, items.ids])
    all_tokens = np.concatenate([trained_tokens, added])
    module = ServingModule(
        None, user_lookup=_LoadedLookup(base.user_lookup),
        item_lookup=IdLookup(Vocabulary(all_tokens, name="item_id"), name="item_id_lookup"),
        vocab_sizes={"user_id": int(metadata["vocab_sizes"]["user_id"]),
                     "item_id": len(all_tokens) + 1})
    top_k = int(metadata[NEXT_ITEMS_KEY]["top_k"])
    _add_next_item_extension(module, base, _AddedItems(added, vectors),
                            trained_rows=len(trained_tokens) + 1, top_k=top_k)
    _carry_over(module, loaded, base, metadata, _REBUILT_NEXT)
    return module


def _add_next_item_extension(module: ServingModule, base, added: _AddedItems,
                            trained_rows: int, top_k: int) -> None:
    """``next_items`` and ``score_items`` of a next-item version with ``added`` items.

    ``base`` is the loaded original version; ``module``'s item lookup numbers its
    ``trained_rows - 1`` items first (row 0: OOV), then the added ones. The query is the
    original's (``base.next_item_query``: an added item in a history is unknown to it, a
    position carrying no information, as any unknown ID), and an added item scores
    ``query · vector``: what the original's head gives a catalog item with its features.

    * ``next_items``: the original's top ``k`` (its servable catalog items, history
      excluded) merged with every added item not in the history, top ``k`` of those --
      the top ``k`` of the whole extended catalog, since no catalog item outside the
      original's top ``k`` can enter it. Padding as ``boundary.top_k_or_pad``.
    * ``score_items``: the original's scores, an added candidate's own score instead of
      the OOV row's.
    """
    module.track("added_items", added)
    m = int(added.tokens.shape[0])
    k = int(min(top_k, trained_rows + m))
    parent_next = base.signature_next_items
    parent_score = base.signature_score_items

    def added_index(ids: tf.Tensor) -> tf.Tensor:
        """Position of each ID among the added items, -1 for any other."""
        j = module.item_index(ids) - trained_rows
        return tf.where(j >= 0, j, tf.constant(-1, j.dtype))

    def next_items(history: tf.Tensor) -> dict[str, tf.Tensor]:
        parent = parent_next(history)
        q = base.next_item_query(history)                                # [B, d]
        j = added_index(history)                                         # [B, L]
        b = tf.shape(j, out_type=tf.int64)[0]
        rows = tf.repeat(tf.range(b), tf.shape(j, out_type=tf.int64)[1])
        seen = tf.scatter_nd(tf.stack([rows, tf.reshape(j, [-1]) + 1], 1),
                             tf.ones_like(rows, tf.int32), tf.stack([b, m + 1]))[:, 1:]
        scores = tf.matmul(q, module.added_items.vectors, transpose_b=True)   # [B, m]
        scores = tf.where(seen > 0, tf.constant(-np.inf, scores.dtype), scores)
        kept = tf.where(tf.equal(parent["item_ids"], PAD_ITEM_ID),
                        tf.constant(-np.inf, scores.dtype), parent["scores"])
        ids = tf.concat([parent["item_ids"],
                         tf.tile(module.added_items.tokens[None], tf.stack([b, 1]))], 1)
        return top_k_or_pad(tf.concat([kept, scores], 1), k, ids)

    def score_items(history: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        parent = parent_score(history, item_id)["scores"]
        q = base.next_item_query(history)                                # [B, d]
        j = added_index(item_id)                                         # [B, C]
        vectors = tf.gather(module.added_items.vectors, tf.maximum(j, 0))
        own = tf.einsum("bd,bcd->bc", q, vectors)
        return {"scores": tf.where(j >= 0, own, parent)}

    module.add_signature("next_items", next_items, [HISTORY_SPEC], task="sequential")
    module.add_signature("score_items", score_items, [HISTORY_SPEC, CANDIDATES_SPEC])
    module.extra_metadata[NEXT_ITEMS_KEY] = {"k": k, "top_k": int(top_k)}


def add_items(model: str | os.PathLike, items: NewItems | str | os.PathLike, *,
              id_column: str = ITEM) -> str:
    """Write the next version of ``model`` (a model folder: its latest version, or a
    version folder) with ``items`` (``NewItems``, or a file for ``read_new_items``)
    served by ``recommend`` and ``rank`` (a next-item export: ``next_items`` and
    ``score_items``); return the new version's folder.

        add_items("saved_models/demo", "new_items.csv")     # -> "saved_models/demo/2"
    """
    resolved = resolve_export(model)
    check_extendable(None, load_metadata(resolved), resolved)
    loaded, version_dir, metadata = load_export(model)
    check_extendable(loaded, metadata, version_dir)
    if not isinstance(items, NewItems):
        items = read_new_items(items, metadata, id_column)
    module = extend_module(loaded, metadata, version_dir, items)
    parent = metadata.get(ADDED_ITEMS_KEY) or {}
    added: dict[str, Any] = {"count": len(items),
                             "total": int(parent.get("total", 0)) + len(items),
                             "parent_version": metadata.get("version",
                                                            os.path.basename(version_dir)),
                             "served_by": list(_REBUILT_NEXT if is_next_item_export(metadata)
                                               else _REBUILT[:2])}
    if items.source is not None:
        digest = file_digest(items.source)
        added.update(source=items.source, source_bytes=digest["bytes"],
                     source_sha256=digest["sha256"])
    meta = {k: v for k, v in metadata.items() if k not in _NOT_INHERITED}
    meta[ADDED_ITEMS_KEY] = added
    record = TrainingRecord.load(version_dir)
    if record is not None:  # evaluate keeps refusing the rows the towers trained on
        summary = {k: v for k, v in (metadata.get("training_data") or {}).items()
                   if k != "file"}
        record = TrainingRecord(record.pairs, record.users, record.items, summary)
    return export(module, os.path.dirname(os.path.normpath(version_dir)), metadata=meta,
                  training_record=record)
