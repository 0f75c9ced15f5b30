"""Per-ID side-feature lookup tables: what a tower knows about a user or an item.

Why tables and not streamed columns: side features are constant per user / per item, so
they are stored once per ID (a numpy row per vocabulary index) and the tower gathers them
inside the model from the ID it already receives. The tf.data pipeline then stays as cheap
as for bare IDs, and a serving signature needs only IDs.

Built from the *training* split only, row ``i`` describes the ID with vocabulary index
``i``; row 0 (the OOV ID) holds the default "unknown" value, so an unseen user gets the
same representation at evaluation time as at serving time. With a hashed vocabulary
(``HashedVocabulary``) row ``i`` is a hash bucket and describes the first training ID
that hashed there.

    vocabs = Vocabularies.build(train)
    side = SideFeatures.build(train, vocabs)            # all declared side features
    side.user["user_gender"].values[:5]                  # int table, 0 = unknown
    side.save("out/side_features")                       # JSON + npz, never pickle
    side = SideFeatures.load("out/side_features")

Encodings (``FeatureTable.values``; 0 always means unknown / padding):

* ``categorical``: int32 ``[n_ids]``, values integerized with the feature's own vocabulary.
* ``multi_categorical``: int32 ``[n_ids, k]``, value indices padded with 0 (the source pads
  integer codes with -1 and strings with "" for "no value"; those and unseen values all
  become 0 and are skipped by pooling).
* ``text``: int32 ``[n_ids, max_tokens]``, lower-cased, punctuation-stripped whitespace
  tokens, padded with 0. With ``min_token_count=k`` a word must occur in the texts of at
  least ``k`` training IDs to get a value (rarer words read as unknown): a word only one
  title has is a second ID, which a new item never shares.
* ``numeric``: float32 ``[n_ids]``, standardized with the training mean / std (0 = mean).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, USER, Interactions
from tfrec_p5.data.pipeline import Vocabularies, user_histories
from tfrec_p5.data.vocabulary import Vocabulary

_PUNCT = re.compile(r"[^\w\s]")
DEFAULT_MAX_TOKENS = 16
HISTORY_FEATURES = ("rated_items", "rated_by")  # derived from IDs only (with_histories)


def tokenize(text: str) -> list[str]:
    """Lower-case, strip punctuation, split on whitespace (like TextVectorization's default)."""
    return _PUNCT.sub(" ", str(text).lower()).split()


@dataclass(frozen=True)
class FeatureTable:
    """One side feature as a per-ID table (the encodings: its module,
    ``tfrec_p5.towers.side_features``)."""

    name: str
    kind: str
    values: np.ndarray
    vocab: tuple[str, ...] = ()
    stats: tuple[float, float] = (0.0, 1.0)  # numeric: (mean, std) used to standardize
    size: int | None = None  # rows when the values index a hashed vocabulary (no tokens)

    @property
    def cardinality(self) -> int:
        """Embedding rows the feature needs: its values plus the 0 = unknown row."""
        return int(self.size) if self.size is not None else len(self.vocab) + 1

    @property
    def width(self) -> int:
        """Values per ID (1 for categorical / numeric)."""
        return int(self.values.shape[1]) if self.values.ndim == 2 else 1

    def spec(self) -> dict:
        """JSON-able shape description; enough to rebuild a tower without the table."""
        return {"name": self.name, "kind": self.kind, "cardinality": self.cardinality,
                "width": self.width}


def multi_values(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(present, tokens)`` of a multi-categorical column: which cells hold a value and
    each cell as the string the feature's vocabulary holds. Integer codes are padded with
    -1 (``"3"`` for 3), strings with ``""`` (kept as they are, so a client can send
    ``"Comedy|Drama"`` to ``score_new_items``)."""
    mat = np.asarray(values)
    mat = mat[:, None] if mat.ndim == 1 else mat
    if mat.dtype.kind in "US":
        return mat != "", mat.astype(str)
    return mat >= 0, mat.astype(np.int64).astype(str)


def _per_id_rows(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(vocabulary index, first training row) for every in-vocabulary ID seen in ``ids``."""
    uniq, first = np.unique(ids, return_index=True)
    keep = uniq > 0
    return uniq[keep], first[keep]


def _build_feature(name: str, kind: str, column: np.ndarray, id_index: np.ndarray,
                   rows: np.ndarray, n_ids: int, max_tokens: int,
                   extra: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
                   min_token_count: int = 1) -> FeatureTable:
    """The table of one feature: values of ``column[rows]`` at ``id_index``.

    ``extra``: ``(column, id_index, rows)`` of IDs that are encoded with what the training
    rows fitted (the value vocabulary, the numeric mean / std) but fit nothing themselves:
    a catalog's new items. A value only they have reads as unknown (0), so no untrained
    value embedding reaches the model.
    """
    col = column[rows]
    parts = [(id_index, col)]
    if extra is not None and len(extra[1]):
        parts.append((extra[1], extra[0][extra[2]]))
    if kind == "categorical":
        def as_str(values):
            values = np.asarray(values)
            if values.dtype.kind == "f" and np.all(values == np.round(values)):
                values = values.astype(np.int64)  # 25.0 -> "25", not "25.0"
            return values.astype(str)
        vocab = Vocabulary.build(as_str(col), name=name)
        table = np.zeros(n_ids, dtype=np.int32)
        for index, values in parts:
            table[index] = vocab.lookup(as_str(values))
        return FeatureTable(name, kind, table, tuple(vocab.tokens.tolist()))
    if kind == "multi_categorical":
        present, tokens = multi_values(col)
        vocab = Vocabulary.build(tokens[present], name=name)
        table = np.zeros((n_ids, tokens.shape[1]), dtype=np.int32)
        for index, values in parts:
            present, tokens = multi_values(values)
            table[index, :tokens.shape[1]] = np.where(present, vocab.lookup(tokens), 0)
        return FeatureTable(name, kind, table, tuple(vocab.tokens.tolist()))
    if kind == "text":
        token_lists = [[tokenize(t)[:max_tokens] for t in values] for _, values in parts]
        flat = [tok for toks in token_lists[0] for tok in toks]
        vocab = Vocabulary.build(np.asarray(flat, dtype=str), min_token_count, name=name)
        if min_token_count > 1:  # unknown words leave the lists (pooling skips 0 anyway)
            known = set(vocab.tokens.tolist())
            token_lists = [[[t for t in toks if t in known] for toks in tokens]
                           for tokens in token_lists]
        width = max(1, max((len(t) for tokens in token_lists for t in tokens), default=1))
        table = np.zeros((n_ids, width), dtype=np.int32)
        for (index, _), tokens in zip(parts, token_lists, strict=True):
            lengths = np.array([len(t) for t in tokens])
            words = [tok for toks in tokens for tok in toks]
            if words:
                r = np.repeat(index, lengths)
                c = np.concatenate([np.arange(n) for n in lengths])
                table[r, c] = vocab.lookup(np.asarray(words, dtype=str))
        return FeatureTable(name, kind, table, tuple(vocab.tokens.tolist()))
    if kind == "numeric":
        x = np.asarray(col, dtype=np.float64)
        mean, std = float(np.nanmean(x)), float(np.nanstd(x)) or 1.0
        table = np.zeros(n_ids, dtype=np.float32)
        for index, values in parts:
            table[index] = np.nan_to_num((np.asarray(values, np.float64) - mean) / std)
        return FeatureTable(name, kind, table, (), (mean, std))
    raise DataError(f"side feature '{name}' has unknown kind {kind!r}", field=name)


def _id_feature(name: str, table: np.ndarray, vocab) -> FeatureTable:
    """A multi-categorical feature whose values are rows of ``vocab``; a hashed
    vocabulary has no token list, so only its size is recorded."""
    if getattr(vocab, "hashed", False):
        return FeatureTable(name, "multi_categorical", table, (), size=len(vocab))
    return FeatureTable(name, "multi_categorical", table, tuple(vocab.tokens))


@dataclass(frozen=True)
class SideFeatures:
    """User and item side-feature tables of one training split (both may be empty)."""

    user: Mapping[str, FeatureTable] = field(default_factory=dict)
    item: Mapping[str, FeatureTable] = field(default_factory=dict)

    @classmethod
    def build(cls, train: Interactions, vocabs: Vocabularies,
              user_features: Iterable[str] | None = None,
              item_features: Iterable[str] | None = None,
              max_tokens: int = DEFAULT_MAX_TOKENS,
              catalog: Interactions | None = None,
              min_token_count: int = 1,
              users: Interactions | None = None) -> SideFeatures:
        """Tables for the chosen features (default: all the table declares).

        Each ID takes its feature values from its first training row (they are constant
        per ID by the ``Interactions`` contract). ``catalog``: a table describing items
        (``item_id`` + the item feature columns, e.g. one row per item of ``u.item``);
        an item of the vocabulary with no training row (``Vocabularies.build(train,
        catalog=...)``) takes its values from its first catalog row, encoded with what
        the training rows fitted (see ``_build_feature``). ``users``: the same for the
        user side (``user_id`` + the user feature columns, e.g. one row per user of
        ``u.user``): a user with no training row (``Vocabularies.build(train,
        users=...)``) takes their demographics from it. ``min_token_count``: text words
        of fewer training IDs read as unknown (the module's encodings).

            vocabs = Vocabularies.build(train, catalog=items)
            side = SideFeatures.build(train, vocabs, catalog=items)   # new items described
            vocabs = Vocabularies.build(train, users=people)
            side = SideFeatures.build(train, vocabs, users=people)    # new users described
        """
        user_names = tuple(train.user_features if user_features is None else user_features)
        item_names = tuple(train.item_features if item_features is None else item_features)
        out = {}
        for side, names, declared, vocab, id_col in (
                ("user", user_names, train.user_features, vocabs.user, USER),
                ("item", item_names, train.item_features, vocabs.item, ITEM)):
            for name in names:
                if name not in declared:
                    raise DataError(f"'{name}' is not a declared {side} feature of this data "
                                    f"(declared: {list(declared)})", field=name)
            ids = vocab.lookup(train.columns[id_col])
            id_index, rows = _per_id_rows(ids)
            listed = catalog if side == "item" else users
            extra = None
            if listed is not None:
                what = "catalog" if side == "item" else "user catalog"
                missing = [n for n in names if n not in listed.columns]
                if missing:
                    raise DataError(f"the {what} has no column for {side} feature(s) "
                                    f"{missing}", path=listed.source or None,
                                    field=missing[0])
                cat_index, cat_rows = _per_id_rows(vocab.lookup(listed.columns[id_col]))
                new = ~np.isin(cat_index, id_index)
                extra = (cat_index[new], cat_rows[new])
            out[side] = {name: _build_feature(
                name, train.feature_kinds[name], train.columns[name], id_index, rows,
                len(vocab), max_tokens,
                None if extra is None else (listed.columns[name], *extra), min_token_count)
                for name in names}
        return cls(out["user"], out["item"])

    def with_histories(self, train: Interactions, vocabs: Vocabularies,
                       max_len: int = 128) -> SideFeatures:
        """Add the implicit-feedback features ``rated_items`` (user side: the user's most
        recent ``max_len`` training items) and ``rated_by`` (item side: its most recent
        raters), as multi-categorical tables over the item / user vocabulary.

        Why: *which* items a user rated says much about taste even before the ratings
        (SVD++'s implicit term); it needs only IDs, so it works for bare CSV data too.
        """
        user_idx, hist = user_histories(train, vocabs, max_len)
        swapped = Interactions.from_columns(
            {USER: train.item_id, ITEM: train.user_id,
             **({"timestamp": train.timestamp} if train.timestamp is not None else {})})
        item_idx, raters = user_histories(swapped, Vocabularies(vocabs.item, vocabs.user),
                                          max_len)
        user_table = np.zeros((len(vocabs.user), max_len), dtype=np.int32)
        user_table[user_idx] = hist
        item_table = np.zeros((len(vocabs.item), max_len), dtype=np.int32)
        item_table[item_idx] = raters
        user_table[0] = item_table[0] = 0  # the OOV ID has no history
        user = {**self.user, "rated_items": _id_feature("rated_items", user_table, vocabs.item)}
        item = {**self.item, "rated_by": _id_feature("rated_by", item_table, vocabs.user)}
        return SideFeatures(user, item)

    def select(self, user: Sequence[str] | None = None,
               item: Sequence[str] | None = None) -> SideFeatures:
        """A subset (``None`` keeps a side as is); used to ablate one feature at a time."""
        return SideFeatures(
            self.user if user is None else {n: self.user[n] for n in user},
            self.item if item is None else {n: self.item[n] for n in item})

    def __repr__(self) -> str:
        return f"SideFeatures(user={list(self.user)}, item={list(self.item)})"

    # JSON + npz only: loading must not be able to execute code (no pickle).
    def save(self, directory: str | os.PathLike) -> None:
        os.makedirs(directory, exist_ok=True)
        meta, arrays = {}, {}
        for side, feats in (("user", self.user), ("item", self.item)):
            meta[side] = [{"name": f.name, "kind": f.kind, "vocab": list(f.vocab),
                           "stats": list(f.stats),
                           **({"size": f.size} if f.size is not None else {})}
                          for f in feats.values()]
            for f in feats.values():
                arrays[f"{side}/{f.name}"] = f.values
        with open(os.path.join(directory, "side_features.json"), "w", encoding="utf-8") as fh:
            json.dump(meta, fh)
        np.savez(os.path.join(directory, "side_features.npz"), **arrays)

    @classmethod
    def load(cls, directory: str | os.PathLike) -> SideFeatures:
        try:
            with open(os.path.join(directory, "side_features.json"), encoding="utf-8") as fh:
                meta = json.load(fh)
            with np.load(os.path.join(directory, "side_features.npz"),
                         allow_pickle=False) as npz:
                sides = {side: {m["name"]: FeatureTable(
                    m["name"], m["kind"], npz[f"{side}/{m['name']}"], tuple(m["vocab"]),
                    tuple(m.get("stats", (0.0, 1.0))), m.get("size"))
                    for m in meta.get(side, [])}
                    for side in ("user", "item")}
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise DataError(f"cannot read side features: {err}", path=str(directory)) from err
        return cls(sides["user"], sides["item"])


def side_features_for(config, train: Interactions, vocabs: Vocabularies,
                      fit_table: Interactions | None = None,
                      catalog: Interactions | None = None,
                      users: Interactions | None = None) -> SideFeatures | None:
    """The side features a tower config asks for, or ``None``.

    ``config`` is any config with ``use_side_features``, ``user_features``,
    ``item_features``, ``max_text_tokens`` and ``history_len`` (``RatingConfig``,
    ``UnifiedConfig``): the declared features of ``train`` when ``use_side_features``,
    plus the implicit ``rated_items`` / ``rated_by`` histories of ``fit_table`` (the rows
    the model fits on, default ``train``) when ``history_len > 0``. ``catalog`` /
    ``users``: items / users described beyond ``train`` (``SideFeatures.build``).
    """
    side = None
    if config.use_side_features and (train.user_features or train.item_features):
        side = SideFeatures.build(train, vocabs, config.user_features, config.item_features,
                                  max_tokens=config.max_text_tokens, catalog=catalog,
                                  min_token_count=getattr(config, "text_min_count", 1),
                                  users=users)
    if config.history_len > 0:
        side = (side or SideFeatures()).with_histories(
            fit_table if fit_table is not None else train, vocabs, config.history_len)
    return side
