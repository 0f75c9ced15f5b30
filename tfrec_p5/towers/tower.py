"""User and item towers: ID index in, one fixed-size vector out.

Why one tower class for both sides: a user and an item are both "an ID plus whatever the
source knows about it". The tower embeds the ID, gathers the ID's side features from
non-trainable per-ID tables (``SideFeatures``, built from the training split), embeds them
(mean-pooling multi-valued features and title tokens over the valid entries), concatenates
and projects to ``output_dim``. Retrieval, ranking and sequential heads all reuse it.

    vocabs = Vocabularies.build(train)
    side = SideFeatures.build(train, vocabs)
    user_tower = UserTower.from_vocab(vocabs, side, embedding_dim=32)
    vectors = user_tower(tf.constant([1, 2, 0], tf.int64))      # [3, 32]; 0 = OOV user

Rebuild and reload (the tables are weights, so the config stays small and JSON-able):

    save_tower(user_tower, "out/user_tower")
    same = load_tower("out/user_tower")                          # identical outputs

With no side features and ``output_dim=None`` a tower is exactly ``Embedding(n, dim)``, the
TFRS tutorial tower; every feature is optional and can be dropped with
``SideFeatures.select``.

Large ID spaces: hashed IDs and frequency cut-offs
--------------------------------------------------
The ID embedding is the big tensor. Its training memory is

    rows × dim × bytes per value × (1 + optimizer slots)

with one slot per table for Adagrad, two for Adam (first and second moments), none for
SGD. 10M users × 32 dims × 4 bytes (float32) × 3 (Adam) = 3.84 GB; 1M items × 32 × 4 × 3 =
384 MB. ``embedding_memory_bytes`` computes it. Measured (``benchmarks/scale.py``, 2M users
× 1M items): with Adagrad the peak above the process's baseline is the formula + ~0.1 GB;
tf-keras's Adam decays both slots over *every* row each step (full-table temporaries), so
budget ~2.5× the formula with Adam. Two knobs bound ``rows``:

* ``hash_buckets`` (``RatingConfig`` / ``UnifiedConfig``: ``{"user_id": N, "item_id": M}``):
  the tower's rows are ``N + 1`` hash buckets (``tf.keras.layers.Hashing``, see
  ``HashedVocabulary``) instead of one row per distinct ID, so no per-ID vocabulary is
  built and memory is set by ``N``, not by the catalog. The tower also accepts the raw
  string IDs (it hashes them itself), and exports hash in-graph the same way.
* ``min_count`` (same configs): IDs seen fewer than ``min_count`` times in training get
  no row; they share the trained OOV row 0 (``Vocabulary.build``).

    tower = UserTower(2_000_001, embedding_dim=32, hash_buckets=2_000_000)
    tower(tf.constant(["u17", "someone-new"]))                 # [2, 32]
    embedding_memory_bytes(2_000_001, 32, optimizer="adam")   # 768_000_384
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow as tf

from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.towers.side_features import HISTORY_FEATURES, FeatureTable, SideFeatures

_PACKAGE = "tfrec_p5"
#: Per-table optimizer state (slot variables) of the optimizers the configs offer.
OPTIMIZER_SLOTS = {"sgd": 0, "adagrad": 1, "rmsprop": 1, "adam": 2, "adamw": 2}


def embedding_memory_bytes(rows: int, dim: int, optimizer: str = "adam",
                           bytes_per_value: int = 4) -> int:
    """Training memory of one ``rows × dim`` table: values + the optimizer's slots.

    ID tables dominate a model's memory; this tells before training whether a catalog
    fits (Adam keeps 2 slots a value, Adagrad and RMSprop 1, SGD 0):

        embedding_memory_bytes(1_000_001, 32, "adam")     # 384_000_384 (3 × 128 MB)
    """
    slots = OPTIMIZER_SLOTS[optimizer.lower()]
    return int(rows) * int(dim) * int(bytes_per_value) * (1 + slots)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class Tower(tf.keras.Model):
    """Embeds an ID index and its side features into one ``output_dim`` vector.

    Args:
      num_ids: rows of the ID embedding (``len(vocabulary)``, OOV row included).
      embedding_dim: ID embedding width.
      output_dim: width of the output; ``None`` means ``embedding_dim`` (and, without side
        features, no projection at all: the tower is a plain embedding).
      features: ``FeatureTable.spec()`` dicts (name, kind, cardinality, width).
      feature_dim: embedding width of each side feature (default ``embedding_dim``).
      l2: per-example L2 penalty on the gathered ID embedding rows (an activity
        regularizer, so rare IDs are not shrunk harder than frequent ones by a full-table
        penalty every step).
      tables: ``{name: np.ndarray}`` initial per-ID tables; omit when rebuilding from a
        config (weights loading fills them).
      hash_buckets: the ID rows are hash buckets (``num_ids == hash_buckets + 1``, row 0
        reserved); the tower then also takes string IDs and hashes them with
        ``tf.keras.layers.Hashing`` (same numbering as ``HashedVocabulary``).
      feature_only_from: ID rows from this index on are known only by their features (a
        catalog's new items, which ``Vocabularies.build(catalog=...)`` puts after the
        trained IDs): their ID embedding is left out (zeros), so their vector is what
        their side features say, the same for two IDs with the same features.
      id_dropout: while training, each example's ID embedding is left out with this
        probability (zeros, as for a feature-only ID), so the side features learn to
        stand in for the ID: what a new item will need (DropoutNet, Volkovs et al. 2017).
    """

    def __init__(self, num_ids: int, embedding_dim: int = 32, output_dim: int | None = None,
                 features: Sequence[Mapping] = (), feature_dim: int | None = None,
                 l2: float = 0.0, tables: Mapping[str, np.ndarray] | None = None,
                 hash_buckets: int | None = None, feature_only_from: int | None = None,
                 id_dropout: float = 0.0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.feature_only_from = None if feature_only_from is None \
            else int(feature_only_from)
        self.id_dropout = float(id_dropout)
        if not 0.0 <= self.id_dropout < 1.0:
            raise ValueError(f"id_dropout must be in [0, 1), got {id_dropout}")
        self.num_ids = int(num_ids)
        self.hash_buckets = None if hash_buckets is None else int(hash_buckets)
        if self.hash_buckets is not None and self.num_ids != self.hash_buckets + 1:
            raise ValueError(f"a hashed tower has hash_buckets + 1 rows; got num_ids="
                             f"{self.num_ids}, hash_buckets={self.hash_buckets}")
        self.hashing = None
        if self.hash_buckets is not None:
            self.hashing = tf.keras.layers.Hashing(num_bins=self.hash_buckets, name="hashing")
            self.hashing.build((None,))  # no weights; built so that SavedModels serialize it
        self.embedding_dim = int(embedding_dim)
        self.output_dim = None if output_dim is None else int(output_dim)
        self.features = [dict(f) for f in features]
        self.feature_dim = int(feature_dim or embedding_dim)
        self.l2 = float(l2)
        reg = tf.keras.regularizers.L2(self.l2) if self.l2 > 0 else None
        self.id_embedding = tf.keras.layers.Embedding(
            self.num_ids, self.embedding_dim, activity_regularizer=reg, name="id_embedding")
        self.tables: dict[str, tf.Variable] = {}
        self.feature_embeddings: dict[str, tf.keras.layers.Layer] = {}
        for spec in self.features:
            name, kind = spec["name"], spec["kind"]
            shape = (self.num_ids,) if spec["width"] == 1 and kind in ("categorical",
                                                                        "numeric") \
                else (self.num_ids, int(spec["width"]))
            dtype = tf.float32 if kind == "numeric" else tf.int32
            self.tables[name] = self.add_weight(
                name=f"{name}_table", shape=shape, dtype=dtype, initializer="zeros",
                trainable=False)
            if kind != "numeric":
                self.feature_embeddings[name] = tf.keras.layers.Embedding(
                    int(spec["cardinality"]), self.feature_dim, name=f"{name}_embedding")
        if tables is not None:
            self.set_tables(tables)
        needs_projection = bool(self.features) or self.output_dim not in (None,
                                                                          self.embedding_dim)
        self.projection = tf.keras.layers.Dense(
            self.output_dim or self.embedding_dim, name="projection") \
            if needs_projection else None

    def set_tables(self, tables: Mapping[str, np.ndarray]) -> None:
        """Load per-ID side-feature tables (shapes must match the feature specs)."""
        for name, var in self.tables.items():
            value = np.asarray(tables[name])
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(f"table '{name}' has shape {value.shape}, tower expects "
                                 f"{tuple(var.shape)} (built from another vocabulary?)")
            var.assign(value.astype(var.dtype.as_numpy_dtype))

    @property
    def dim(self) -> int:
        """Width of the output vector."""
        return self.output_dim or self.embedding_dim

    def call(self, ids: tf.Tensor, training: bool | None = None,
             known: tf.Tensor | None = None) -> tf.Tensor:
        """Vectors ``[B, dim]`` of ``ids``.

        ``known`` (bool ``[B]``, optional): examples marked False are read as new IDs --
        the ID embedding and the features derived from the ID's interactions
        (``rated_items`` / ``rated_by``) are left out, so the vector is what the
        descriptive features say. ``UnifiedModel`` draws it for ``user_id_dropout`` and
        hands the same mask to the heads, which leave out the user's history and bias.
        """
        if ids.dtype == tf.string:
            if self.hashing is None:
                raise TypeError(f"{self.name} takes vocabulary indices; map string IDs with "
                                "Vocabulary.lookup (or build the tower with hash_buckets)")
            ids = self.hashing(ids) + 1
        values = {name: tf.gather(table, ids) for name, table in self.tables.items()}
        if known is not None:  # no interactions: no features derived from them
            for name in HISTORY_FEATURES:
                if name in values:
                    values[name] = values[name] * tf.cast(tf.reshape(known, (-1, 1)),
                                                          values[name].dtype)
        return self._combine(self._id_part(ids, training, known), values)

    def feature_vectors(self, values: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """Output ``[n, dim]`` for ``n`` IDs known only by their encoded feature ``values``
        (``{name: [n]`` or ``[n, k]}``, encoded as ``SideFeatures`` encodes them).

        Why: a new item described by its features (``score_new_items``, ``tfrec-p5
        add-items``) must get exactly the vector a catalog item with those features gets
        from ``call`` beyond ``feature_only_from``: the same code with the ID embedding
        left out (zeros).

            tower.feature_vectors({"genres": tf.constant([[3, 5]]), "year": [0.4]})
        """
        if not self.features:
            raise ValueError(f"{self.name} has no side features: an ID-only tower cannot "
                             "describe an ID by its features")
        missing = [spec["name"] for spec in self.features if spec["name"] not in values]
        if missing:
            raise ValueError(f"{self.name}: no values for feature(s) {missing}")
        n = tf.shape(values[self.features[0]["name"]])[0]
        zeros = tf.zeros(tf.stack([n, self.embedding_dim]), self.id_embedding.embeddings.dtype)
        return self._combine(zeros, values)

    def _combine(self, id_part: tf.Tensor, values: Mapping[str, tf.Tensor]) -> tf.Tensor:
        """ID part + the embedded (pooled) feature ``values``, projected."""
        parts = [id_part]
        for spec in self.features:
            name, kind = spec["name"], spec["kind"]
            values_ = tf.cast(values[name], self.tables[name].dtype)
            if kind == "numeric":
                parts.append(tf.reshape(values_, (-1, 1)))
            elif kind == "categorical":
                parts.append(self.feature_embeddings[name](values_))
            else:  # multi_categorical / text: mean over valid (non-zero) entries
                emb = self.feature_embeddings[name](values_)
                mask = tf.cast(values_ > 0, emb.dtype)[..., None]
                total = tf.reduce_sum(emb * mask, axis=1)
                parts.append(total / tf.maximum(tf.reduce_sum(mask, axis=1), 1.0))
        out = parts[0] if len(parts) == 1 else tf.concat(parts, axis=-1)
        return self.projection(out) if self.projection is not None else out

    def _id_part(self, ids: tf.Tensor, training: bool | None,
                 known: tf.Tensor | None = None) -> tf.Tensor:
        """The ID embedding, zeroed for feature-only IDs, for examples ``known`` marks
        False and, while training, for the ``id_dropout`` share of examples."""
        vectors = self.id_embedding(ids)
        keep = None if known is None else tf.cast(known, tf.bool)
        if self.feature_only_from is not None:
            trained = ids < self.feature_only_from
            keep = trained if keep is None else keep & trained
        if training and self.id_dropout > 0:
            kept = tf.random.uniform(tf.shape(ids)) >= self.id_dropout
            keep = kept if keep is None else keep & kept
        if keep is None:
            return vectors
        return vectors * tf.cast(keep, vectors.dtype)[..., None]

    def get_config(self) -> dict:
        config = {"num_ids": self.num_ids, "embedding_dim": self.embedding_dim,
                  "output_dim": self.output_dim, "features": self.features,
                  "feature_dim": self.feature_dim, "l2": self.l2,
                  "hash_buckets": self.hash_buckets, "name": self.name}
        if self.feature_only_from is not None or self.id_dropout:  # new keys only if used
            config.update(feature_only_from=self.feature_only_from,
                          id_dropout=self.id_dropout)
        return config

    @classmethod
    def from_config(cls, config: dict) -> Tower:
        return cls(**config)

    def build_from_config(self, config: dict) -> None:
        """Build by a call on one ID, as ``tf.keras.models.load_model("m.keras")`` needs
        (Keras's default builds a subclassed model on float inputs, which an embedding
        lookup refuses)."""
        if not self.built:
            self(tf.zeros([1], tf.int64))

    @classmethod
    def from_tables(cls, num_ids: int, tables: Mapping[str, FeatureTable] | None = None,
                    **kwargs) -> Tower:
        """A tower over ``num_ids`` IDs with the given side-feature tables (may be empty)."""
        tables = dict(tables or {})
        return cls(num_ids, features=[t.spec() for t in tables.values()],
                   tables={n: t.values for n, t in tables.items()}, **kwargs)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class UserTower(Tower):
    """The user side: user ID + user side features (MovieLens: gender, age, occupation)."""

    @classmethod
    def from_vocab(cls, vocabs: Vocabularies, side_features: SideFeatures | None = None,
                   **kwargs) -> UserTower:
        kwargs.setdefault("name", "user_tower")
        kwargs.setdefault("hash_buckets", vocabs.hash_buckets.get("user_id"))
        return cls.from_tables(len(vocabs.user),
                               side_features.user if side_features else None, **kwargs)


@tf.keras.utils.register_keras_serializable(package=_PACKAGE)
class ItemTower(Tower):
    """The item side: item ID + item side features (MovieLens: genres, title tokens)."""

    @classmethod
    def from_vocab(cls, vocabs: Vocabularies, side_features: SideFeatures | None = None,
                   **kwargs) -> ItemTower:
        kwargs.setdefault("name", "item_tower")
        kwargs.setdefault("hash_buckets", vocabs.hash_buckets.get("item_id"))
        return cls.from_tables(len(vocabs.item),
                               side_features.item if side_features else None, **kwargs)


_CLASSES = {"Tower": Tower, "UserTower": UserTower, "ItemTower": ItemTower}


def save_tower(tower: Tower, directory: str | os.PathLike) -> None:
    """Write ``tower.json`` (class + config) and a TF checkpoint of its weights and tables."""
    os.makedirs(directory, exist_ok=True)
    if not tower.built:
        tower(tf.zeros((1,), tf.int64))
    with open(os.path.join(directory, "tower.json"), "w", encoding="utf-8") as f:
        json.dump({"class": type(tower).__name__, "config": tower.get_config()}, f)
    tower.save_weights(os.path.join(directory, "weights"))


def load_tower(directory: str | os.PathLike) -> Tower:
    """Rebuild a tower saved by ``save_tower`` and restore its weights and tables."""
    with open(os.path.join(directory, "tower.json"), encoding="utf-8") as f:
        obj = json.load(f)
    tower = _CLASSES[obj["class"]].from_config(obj["config"])
    tower(tf.zeros((1,), tf.int64))
    tower.load_weights(os.path.join(directory, "weights")).expect_partial()
    return tower
