"""Opt-in ScaNN index behind ``recommend``: approximate top-k for large catalogs.

Why opt-in: brute force (``retrieval.py``) is exact and loads in any TensorFlow, stock
TF Serving included. A ScaNN export calls ScaNN's custom ops (``Scann>ScannSearchBatched``,
``Scann>TensorsToScann``), which **stock TF Serving does not have**: it fails to load
with ``Op type not registered``. Serving one needs TF Serving built with the ScaNN ops
(``scann/tf_serving`` in google-research/google-research has the Dockerfile; the
``google/tf-serving-scann`` images on Docker Hub stop at 2.11.0, Dec 2022, and we have
not tested them with exports of scann 1.4.2 / TensorFlow 2.20), or a Python process that
runs ``import scann`` before ``tf.saved_model.load`` (``load_export`` does that when the
export's metadata lists ``"custom_ops": ["scann"]``).

    module = build_module(trained, k=100, index="scann")     # needs `pip install .[scann]`
    export(module, "saved_models/big")                       # metadata: custom_ops ["scann"]
    loaded, _, _ = load_export("saved_models/big")           # imports scann first

What ``recommend`` does with the index (same answers as brute force, up to ScaNN's recall):

* ScaNN returns the ``C = k + s`` best items by dot product (``s``: the most seen items of
  any user of the request, 0 without ``exclude_seen``), so ``k`` unseen items remain after
  the user's training items are masked -- exclusion stays exact, a seen item is never
  served. Candidates are re-scored exactly (the brute-force score of that item).
* Items brute force never serves (empty hash buckets) are not in the index; an item prior
  (``popularity_weight``) is one more index dimension (query 1, item prior), so ScaNN
  ranks by the same score brute force does.
* Unknown users get the popularity list, as with brute force (precomputed, exact).
* Padding follows brute force: if ScaNN returned fewer than ``min(k, unseen servable
  items)`` usable items for some user of a request (too few items in the searched
  leaves), the whole request is answered by brute force (``tf.cond``), so padding only
  ever means "the user has fewer than ``k`` unseen items".

Requires ``scann`` (1.4.2 is built for TensorFlow 2.20; under 2.21 its ops do not load and
even ``import tensorflow_recommenders`` fails once it is installed): ``pip install
'tfrec_p5[scann]'`` resolves TensorFlow 2.20.
"""

from __future__ import annotations

import dataclasses
import math
import uuid
from typing import Any

import numpy as np
import tensorflow as tf

from tfrec_p5.export.boundary import PAD_ITEM_ID, PAD_SCORE

__all__ = ["INDEX_KINDS", "SCANN_OPS", "ScannIndex", "ScannOptions", "scann_unavailable",
           "scann_version"]

#: ``build_module(index=...)`` / ``tfrec-p5 train --index`` values.
INDEX_KINDS = ("brute_force", "scann")
#: The ``custom_ops`` entry of an export's metadata that needs ``import scann`` to load.
SCANN_OPS = "scann"
#: Largest int64 key: pads the sorted seen-pair keys, so a search never sees an empty list.
_KEY_PAD = np.iinfo(np.int64).max


def scann_unavailable() -> str | None:
    """``None`` if ScaNN's TensorFlow ops load here, else one line saying why not.

    Importing scann loads its ops into TensorFlow; under another TensorFlow than the one
    it was built for that raises (``NotFoundError: undefined symbol``), not ImportError.
    """
    try:
        from scann.scann_ops.py import scann_ops  # noqa: F401
    except Exception as err:  # noqa: BLE001  ImportError, or TF's NotFoundError
        first = str(err).splitlines()[0] if str(err) else ""
        return (f"ScaNN is not usable with TensorFlow {tf.__version__} "
                f"({type(err).__name__}: {first[:200]}); install it with "
                "pip install 'tfrec_p5[scann]' (scann 1.4.2, TensorFlow 2.20)")
    return None


def scann_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("scann")
    except Exception:  # noqa: BLE001
        return None


def _ops():
    from scann.scann_ops.py import scann_ops

    return scann_ops


@dataclasses.dataclass(frozen=True)
class ScannOptions:
    """How the ScaNN index is built; ``None`` = chosen from the catalog size.

    * ``num_leaves``: k-means partitions (0 = no partitioning: every item is scored with
      asymmetric hashing). Default: 0 below 20,000 items, else ``round(sqrt(N))``.
    * ``num_leaves_to_search``: partitions searched per query; default ``num_leaves // 5``
      (at least 10), i.e. about 20 % of the catalog is scored (10 % gave recall@100 0.82
      at 100k clustered items in ``benchmarks/scann_recall.py``, 20 % 0.90).
    * ``reorder``: candidates re-scored exactly before ScaNN's top ``C``; ``C`` times this
      (at least ``min_reorder``), so larger ``k`` re-scores more.
    * ``scoring``: ``"ah"`` (asymmetric hashing, 4-bit codes of ``dimensions_per_block``
      dims) or ``"brute_force"`` (exact float scoring of the searched leaves).
    * ``kmeans_plus_plus``: seed the partitions with k-means++ (ScaNN's default seed), so
      the same vectors give the same index; ``False``: ScaNN's random initialization
      (what ``tfrs.layers.factorized_top_k.ScaNN`` uses), whose recall varied from 0.5 to
      1.0 between builds of one small catalog here.
    """

    num_leaves: int | None = None
    num_leaves_to_search: int | None = None
    reorder: int = 4
    min_reorder: int = 200
    scoring: str = "ah"
    dimensions_per_block: int = 2
    anisotropic_quantization_threshold: float = 0.2
    training_iterations: int = 12
    training_sample_size: int = 100_000
    kmeans_plus_plus: bool = True

    def resolved(self, num_items: int) -> ScannOptions:
        """These options with every ``None`` replaced by the size rule; checked."""
        leaves = self.num_leaves
        if leaves is None:
            leaves = 0 if num_items < 20_000 else int(round(math.sqrt(num_items)))
        leaves = int(min(leaves, max(num_items // 2, 0)))  # k-means needs points per leaf
        search = self.num_leaves_to_search
        if search is None:
            search = max(10, leaves // 5)
        search = int(min(search, leaves)) if leaves else 0
        if self.scoring not in ("ah", "brute_force"):
            raise ValueError(f"ScaNN scoring must be 'ah' or 'brute_force', got "
                             f"{self.scoring!r}")
        if leaves < 0 or (leaves and search < 1) or self.reorder < 1 or self.min_reorder < 1:
            raise ValueError(f"bad ScaNN options {self}")
        return dataclasses.replace(self, num_leaves=leaves, num_leaves_to_search=search)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _seen_keys(seen_splits: np.ndarray, seen_values: np.ndarray, num_items: int) -> np.ndarray:
    """Sorted ``user * (num_items + 1) + item`` keys of every (user, seen item) pair, plus
    one ``_KEY_PAD`` at the end."""
    splits = np.asarray(seen_splits, np.int64)
    users = np.repeat(np.arange(len(splits) - 1, dtype=np.int64), np.diff(splits))
    keys = users * np.int64(num_items + 1) + np.asarray(seen_values, np.int64)
    return np.r_[np.sort(keys), _KEY_PAD].astype(np.int64)


class ScannIndex(tf.Module):
    """A ScaNN searcher over a ``RetrievalIndex``'s servable items, saved in the export.

    Built from the index's numpy tables (``user_vectors``, ``item_vectors`` without the
    OOV row, ``item_prior``, ``popularity``, seen CSR); the searcher's state is a
    ``ScannState`` of variables, so ``tf.saved_model.save`` stores it and a process with
    the ScaNN ops restores it.
    """

    def __init__(self, item_vectors: np.ndarray, item_prior: np.ndarray,
                 popularity: np.ndarray, seen_splits: np.ndarray, seen_values: np.ndarray,
                 k: int, exclude_seen: bool, options: ScannOptions | None = None,
                 name: str = "scann_index") -> None:
        super().__init__(name=name)
        item_vectors = np.asarray(item_vectors, np.float32)      # [I-1, d], column j
        prior = np.asarray(item_prior, np.float32)               # [I-1], -inf: never serve
        servable = np.flatnonzero(np.isfinite(prior))
        if len(servable) == 0:
            raise ValueError("a ScaNN index needs at least one servable item")
        self.num_servable = len(servable)
        self.options = (options or ScannOptions()).resolved(self.num_servable)
        db = item_vectors[servable]
        # Score fusion: one more dimension carries the prior (queries get a 1 there).
        self.augmented = bool(np.any(prior[servable] != 0))
        if self.augmented:
            db = np.concatenate([db, prior[servable, None]], axis=1)
        self.columns = tf.Variable(servable.astype(np.int64), trainable=False,
                                   name="columns")  # ScaNN row -> item column
        self.num_items_plus_one = len(prior) + 1  # the stride of a seen-pair key
        splits = np.asarray(seen_splits, np.int64)
        counts = np.diff(splits)
        self.max_seen = int(counts.max(initial=0)) if exclude_seen else 0
        self.seen_keys = tf.Variable(
            _seen_keys(splits, seen_values, len(prior)) if exclude_seen
            else np.array([_KEY_PAD], np.int64), trainable=False, name="seen_keys")
        # Unknown users (row 0): the popularity list brute force serves them, exact.
        pop = np.where(np.isfinite(prior), np.asarray(popularity, np.float32), -np.inf)
        order = np.argsort(-pop, kind="stable")[:self.num_servable]
        extra = int(counts[0]) if exclude_seen and len(counts) else 0
        self.popular_columns = tf.Variable(order[:min(k + extra, self.num_servable)]
                                           .astype(np.int64), trainable=False,
                                           name="popular_columns")
        self.state = self._build(db)

    def _build(self, db: np.ndarray):
        o = self.options
        builder = _ops().builder(db, 10, "dot_product")
        if o.num_leaves:
            builder = builder.tree(num_leaves=o.num_leaves,
                                   num_leaves_to_search=o.num_leaves_to_search,
                                   training_iterations=o.training_iterations,
                                   training_sample_size=o.training_sample_size,
                                   random_init=not o.kmeans_plus_plus)
        if o.scoring == "ah":
            builder = builder.score_ah(
                o.dimensions_per_block,
                anisotropic_quantization_threshold=o.anisotropic_quantization_threshold,
                training_sample_size=o.training_sample_size)
            builder = builder.reorder(o.min_reorder)
        else:
            builder = builder.score_brute_force()
        searcher = builder.build(shared_name=f"tfrec_p5_scann/{uuid.uuid4()}")
        return searcher.serialize_to_module()

    def describe(self) -> dict[str, Any]:
        """What the export's metadata records about this index."""
        return {"kind": "scann", "scann_version": scann_version(),
                "servable_items": self.num_servable, "prior_dimension": self.augmented,
                **self.options.to_dict()}

    # ------------------------------------------------------------------ serving graph
    def search(self, queries: tf.Tensor, count: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        """``(columns [B, c], valid [B, c])`` of ScaNN's best ``count`` items (c <= count)."""
        ops = _ops()
        if self.augmented:
            queries = tf.concat([queries, tf.ones_like(queries[:, :1])], axis=1)
        count = tf.cast(count, tf.int32)
        pre = tf.maximum(count * self.options.reorder, self.options.min_reorder) \
            if self.options.scoring == "ah" else count
        handle = self.state.recreate_handle()  # the kernel caches the searcher
        rows, distances = ops.scann_search_batched(handle, queries, count, pre, -1, True)
        rows = tf.cast(rows, tf.int64)
        valid = tf.logical_and(tf.math.is_finite(distances),
                               tf.logical_and(rows >= 0, rows < self.num_servable))
        rows = tf.where(valid, rows, tf.zeros_like(rows))
        return tf.gather(self.columns, rows), valid

    def seen(self, user_index: tf.Tensor, columns: tf.Tensor) -> tf.Tensor:
        """``[B, c]`` True where item column ``columns[b, j]`` is a training item of user b."""
        stride = tf.constant(self.num_items_plus_one, tf.int64)
        keys = user_index[:, None] * stride + columns + 1
        flat = tf.reshape(keys, [1, -1])
        pos = tf.searchsorted(self.seen_keys[None, :], flat, side="left")
        found = tf.gather(self.seen_keys, tf.reshape(pos, [-1]))
        return tf.reshape(tf.equal(found, tf.reshape(flat, [-1])), tf.shape(keys))


def scann_recommend(index, ann: ScannIndex, user_index: tf.Tensor, k: int,
                    exclude_seen: bool, brute_force) -> dict[str, tf.Tensor]:
    """``recommend``'s ``{"item_ids", "scores"}`` ``[B, k]`` through ``ann``.

    ``index``: the ``RetrievalIndex`` (exact scores, tokens, seen CSR); ``brute_force()``:
    the brute-force answer for the same request, used when ScaNN found too few items.
    """
    user_index = tf.cast(user_index, tf.int64)
    starts = tf.gather(index.seen_splits, user_index)
    seen_counts = tf.gather(index.seen_splits, user_index + 1) - starts   # [B]
    if not exclude_seen:
        seen_counts = tf.zeros_like(seen_counts)
    known = user_index > 0
    most_seen = tf.reduce_max(tf.concat(
        [tf.where(known, seen_counts, tf.zeros_like(seen_counts)),
         tf.zeros([1], tf.int64)], 0))
    count = tf.minimum(tf.constant(k, tf.int64) + most_seen, ann.num_servable)
    queries = tf.gather(index.user_vectors, user_index)                   # [B, d]
    cols, valid = ann.search(queries, count)                              # [B, c]
    vectors = tf.gather(index.item_vectors_t, cols, axis=1)               # [d, B, c]
    exact = tf.einsum("bd,dbc->bc", queries, vectors) + tf.gather(index.item_prior, cols)
    minus_inf = tf.constant(-np.inf, tf.float32)
    scores = tf.where(valid, exact, minus_inf)
    # Unknown users: the precomputed popularity list (popularity scores), as brute force.
    pop_cols = ann.popular_columns
    width = tf.maximum(tf.shape(cols, out_type=tf.int64)[1], tf.size(pop_cols, tf.int64))
    batch = tf.shape(cols, out_type=tf.int64)[0]

    def pad(t, value):
        return tf.pad(t, [[0, 0], [0, width - tf.shape(t, out_type=tf.int64)[1]]],
                      constant_values=value)

    pop_row = tf.broadcast_to(pop_cols[None, :], tf.stack([batch, tf.size(pop_cols,
                                                                        tf.int64)]))
    pop_scores = tf.gather(index.popularity, pop_row)
    cols = tf.where(known[:, None], pad(cols, 0), pad(pop_row, 0))
    scores = tf.where(known[:, None], pad(scores, minus_inf), pad(pop_scores, minus_inf))
    if exclude_seen:
        scores = tf.where(ann.seen(user_index, cols), minus_inf, scores)
    # At least k columns, so top_k's output is [B, k] like brute force's.
    short = tf.maximum(tf.constant(k, tf.int64) - width, 0)
    cols = tf.pad(cols, [[0, 0], [0, short]])
    scores = tf.pad(scores, [[0, 0], [0, short]], constant_values=-np.inf)
    top = tf.math.top_k(scores, k=k)
    found = tf.reduce_sum(tf.cast(tf.math.is_finite(top.values), tf.int64), axis=1)
    # Servable unseen items each known user has: ScaNN must have found min(k, that) of them.
    available = tf.minimum(tf.constant(k, tf.int64), ann.num_servable - seen_counts)
    short_rows = tf.logical_and(known, found < available)

    def approximate():
        padding = tf.equal(top.values, minus_inf)
        ids = tf.gather(index.item_tokens, tf.gather(cols, top.indices, batch_dims=1))
        return {"item_ids": tf.where(padding, tf.constant(PAD_ITEM_ID), ids),
                "scores": tf.where(padding, tf.constant(PAD_SCORE, tf.float32),
                                   top.values)}

    return tf.cond(tf.reduce_any(short_rows), brute_force, approximate)
