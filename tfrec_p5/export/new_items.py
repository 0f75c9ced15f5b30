"""Items known only by their features, scored in-graph: the ``score_new_items`` signature.

Why in the export: a catalog grows faster than models are retrained. A two-tower model
already scores an item it never trained on from its side features alone (the item tower
leaves the ID embedding out beyond ``feature_only_from``), so the export can do the same
for an item a client describes by raw feature values -- if the encoding of those values
(the training vocabularies, the numeric mean / std, the text tokenizer) lives in the
SavedModel too. ``ItemFeatureEncoder`` is that encoding as Keras ``StringLookup`` layers
and string ops, saved in the export (bare TensorFlow calls it: no Keras or tfrec_p5 is
imported to serve it), and ``add_feature_scoring`` adds

* ``score_new_items(user_id [B], <one input per item feature> [n])`` →
  ``{"scores": [B, n]}``: each user's retrieval score of each described item, exactly
  what ``rank`` gives a catalog item with these features (``train_unified(catalog=...)``),
  item prior included;
* ``new_item_vectors({feature: [n]})`` (a function of the module, not a signature): the
  items' retrieval candidate vectors ``[n, d]``, which ``tfrec-p5 add-items`` stores.

Inputs (raw values, one entry per item):

* ``categorical``: string, spelled as in the training data (a whole number without
  ``.0``: ``"25"``); unknown values read as unknown (0), as for a catalog item.
* ``multi_categorical``: string, the values joined with ``"|"`` (``"3|7"``; ``""``: none).
* ``text``: string, tokenized as ``side_features.tokenize`` does (lower-cased, runs of
  letters, digits and ``_``), first ``max_tokens`` words.
* ``numeric``: float64; NaN means missing (the training mean).

A next-item export has the same pieces with ``history`` (``[B, L]`` item IDs) in place of
``user_id`` and no prior (``export.sequential.add_next_item_feature_scoring``): the
query is the one ``next_items`` scores the catalog with.

Features an item tower derives from interactions (``rated_by``) take no input: a new
item has none, as a catalog item has none. A model without a retrieval head or without
item side features gets no such signature (never a filled-in answer).

    module = build_module(trained)                  # adds it when the model can back it
    module.signature("score_new_items")(
        user_id=tf.constant(["u1", "u2"]),
        item_genres=tf.constant(["0|3", "5"]), item_title=tf.constant(["Action Story", ""]))
    # {"scores": [2, 2]}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import tensorflow as tf

from tfrec_p5.export.boundary import with_parameters
from tfrec_p5.export.serving import USER_ID_SPEC, ServingModule
from tfrec_p5.towers.side_features import HISTORY_FEATURES, FeatureTable

__all__ = ["MULTI_VALUE_SEPARATOR", "NEW_ITEMS_KEY", "ItemFeatureEncoder",
           "add_feature_scoring", "add_new_item_vectors", "describable_item_features",
           "describe_inputs", "feature_scoring_inputs", "new_items_metadata"]

#: Separator of the values of one multi-categorical input (``"3|7"``).
MULTI_VALUE_SEPARATOR = "|"
#: Metadata key describing the export's item feature inputs (written by ``export``).
NEW_ITEMS_KEY = "new_items"
#: Runs of these characters are words (``side_features.tokenize``: Python's ``\\w+``).
_WORD_SEPARATORS = r"[^\p{L}\p{N}_]+"


def _string_table(tokens: tuple[str, ...]) -> tf.keras.layers.StringLookup | None:
    """A ``StringLookup``: token ``i`` → ``i + 1``, unknown → 0 (``Vocabulary``'s
    numbering; saved with the export, callable by bare TensorFlow); ``None``: empty."""
    if not tokens:
        return None
    return tf.keras.layers.StringLookup(vocabulary=list(tokens), num_oov_indices=1,
                                        mask_token=None, output_mode="int")


class ItemFeatureEncoder(tf.Module):
    """Raw item feature values → the values ``SideFeatures`` gives a catalog item, in-graph.

    Built from the training split's item ``FeatureTable``s (their vocabularies and
    numeric statistics) and the text width ``max_tokens``; ``specs`` are its inputs (the
    module docstring says how each kind is given).

        encoder = ItemFeatureEncoder(trained.side_features.item, max_tokens=16)
        encoder({"item_genres": tf.constant(["0|3"]), "item_title": tf.constant(["A b"])})
        # {"item_genres": int64 [1, k], "item_title": int64 [1, w]}
    """

    def __init__(self, tables: Mapping[str, FeatureTable], max_tokens: int,
                 name: str = "item_feature_encoder") -> None:
        super().__init__(name=name)
        self.kinds = {n: t.kind for n, t in tables.items()}
        self.max_tokens = int(max_tokens)
        self.stats = {n: tuple(float(v) for v in t.stats) for n, t in tables.items()
                      if t.kind == "numeric"}
        self.lookups = {n: _string_table(t.vocab) for n, t in tables.items()
                        if t.kind != "numeric" and n not in HISTORY_FEATURES}
        self.specs = [tf.TensorSpec([None], tf.float64 if kind == "numeric" else tf.string,
                                    name=n)
                      for n, kind in self.kinds.items() if n not in HISTORY_FEATURES]

    def describe(self) -> list[dict[str, str]]:
        """``[{"name", "kind", "dtype"}]`` of the inputs (written to the export metadata)."""
        return [{"name": s.name, "kind": self.kinds[s.name], "dtype": s.dtype.name}
                for s in self.specs]

    def _lookup(self, name: str, tokens: tf.RaggedTensor) -> tf.Tensor:
        """Ragged string tokens → ``[n, k >= 1]`` indices, 0-padded (pooling skips 0)."""
        table = self.lookups[name]
        ids = tf.ragged.map_flat_values(
            lambda t: table(t) if table is not None else tf.zeros_like(t, tf.int64),
            tokens)
        dense = ids.to_tensor(default_value=0)
        return tf.concat([dense, tf.zeros_like(dense[:, :1])], axis=1)

    def __call__(self, features: Mapping[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        n = tf.shape(features[self.specs[0].name])[0]
        out: dict[str, tf.Tensor] = {}
        for name, kind in self.kinds.items():
            if name in HISTORY_FEATURES:  # derived from interactions: a new item has none
                out[name] = tf.zeros(tf.stack([n, 1]), tf.int64)
                continue
            x = features[name]
            if kind == "numeric":
                mean, std = self.stats[name]
                z = (tf.cast(x, tf.float64) - mean) / std
                out[name] = tf.cast(tf.where(tf.math.is_nan(z), tf.zeros_like(z), z),
                                    tf.float32)
            elif kind == "categorical":
                table = self.lookups[name]
                out[name] = table(x) if table is not None \
                    else tf.zeros_like(x, tf.int64)
            elif kind == "multi_categorical":
                values = tf.strings.strip(tf.strings.split(x, MULTI_VALUE_SEPARATOR))
                out[name] = self._lookup(name, values)
            else:  # text: side_features.tokenize, then the first max_tokens words
                words = tf.strings.regex_replace(tf.strings.lower(x, encoding="utf-8"),
                                                 _WORD_SEPARATORS, " ")
                out[name] = self._lookup(name, tf.strings.split(words)[:, :self.max_tokens])
        return out


def describable_item_features(side_features, item_tower) -> dict[str, FeatureTable] | None:
    """The item ``FeatureTable``s (of ``side_features``, a ``SideFeatures``) that
    ``item_tower`` reads, or ``None`` when no new item can be described to it: no side
    features, only ``rated_by`` (derived from interactions, which a new item has none
    of), or a feature name that cannot be a signature input."""
    names = [spec["name"] for spec in getattr(item_tower, "features", ())]
    if side_features is None or not any(n not in HISTORY_FEATURES for n in names):
        return None
    if any(not n.isidentifier() for n in names):  # not a valid signature input name
        return None
    return {n: side_features.item[n] for n in names}


def feature_scoring_inputs(trained) -> dict[str, FeatureTable] | None:
    """The item ``FeatureTable``s a ``score_new_items`` signature of ``trained`` reads, or
    ``None`` when the model cannot back one: no retrieval head, or an item tower with no
    side feature a client can give (``describable_item_features``)."""
    if "retrieval" not in trained.tasks:
        return None
    return describable_item_features(getattr(trained, "side_features", None),
                                     trained.model.item_tower)


def add_new_item_vectors(module: ServingModule, tables: Mapping[str, FeatureTable],
                         max_tokens: int, item_tower,
                         to_candidates=None) -> list[tf.TensorSpec]:
    """Track an ``ItemFeatureEncoder`` of ``tables`` (``item_features``), ``item_tower``
    (``item_feature_tower``) and the function ``new_item_vectors({feature: [n]})`` →
    ``[n, d]`` on ``module``: the vectors items known only by their raw features get,
    the ones a catalog item with these features gets from ``item_tower`` (optionally
    mapped by ``to_candidates``, e.g. a retrieval head's ``feature_candidates``). Return
    the feature input specs, in the encoder's order.

    Why a saved function and not only a signature: ``add-items`` computes the added
    items' vectors with the very export it extends (no Python state beyond it).
    """
    encoder = module.track("item_features", ItemFeatureEncoder(tables, max_tokens))
    module.track("item_feature_tower", item_tower)
    specs = list(encoder.specs)

    def vectors(features: Mapping[str, tf.Tensor]) -> tf.Tensor:
        encoded = module.item_features(features)
        out = module.item_feature_tower.feature_vectors(encoded)
        return out if to_candidates is None else to_candidates(out)

    module.track("new_item_vectors", tf.function(
        vectors, input_signature=[{s.name: s for s in specs}], autograph=False))
    return specs


def new_items_metadata(encoder: ItemFeatureEncoder, hashed: bool,
                       query: str) -> dict[str, Any]:
    """The ``NEW_ITEMS_KEY`` metadata entry: the inputs (``describe_inputs`` reads them),
    their encodings, whether item IDs are hashed (then an added item has no row of its
    own) and the query input of ``score_new_items`` (``user_id`` or ``history``)."""
    return {"inputs": encoder.describe(), "separator": MULTI_VALUE_SEPARATOR,
            "max_tokens": encoder.max_tokens,
            "item_lookup": "hashed" if hashed else "table", "query": query}


def add_feature_scoring(module: ServingModule, trained) -> bool:
    """Add ``score_new_items`` and ``new_item_vectors`` to ``module`` when ``trained`` can
    back them (``feature_scoring_inputs``); return whether it did.

    The queries are the user vectors of the module's ``retrieval_index`` (tracked first
    by ``add_retrieval_signatures``). A new item's prior is a catalog new item's:
    ``popularity_weight`` × log of the smallest item probability (``item_frequencies``
    floors unseen items to it).
    """
    tables = feature_scoring_inputs(trained)
    if tables is None:
        return False
    head = trained.model.heads["retrieval"]
    specs = add_new_item_vectors(module, tables, trained.config.max_text_tokens,
                                 trained.model.item_tower, head.feature_candidates)
    prior = 0.0
    if trained.config.popularity_weight:
        probs = np.asarray(trained.item_probabilities, np.float32)
        prior = float((trained.config.popularity_weight * np.log(probs))[np.argmin(probs)])
    module.track("new_item_prior", tf.Variable(np.float32(prior), trainable=False,
                                               name="new_item_prior"))

    def score_new_items(user_id: tf.Tensor, *features: tf.Tensor) -> dict[str, tf.Tensor]:
        query = tf.gather(module.retrieval_index.user_vectors,
                          module.user_index(user_id))                          # [B, d]
        items = module.new_item_vectors({s.name: f for s, f in zip(specs, features,
                                                                   strict=True)})
        return {"scores": tf.matmul(query, items, transpose_b=True) + module.new_item_prior}

    # B users and n items: two groups of inputs, each with its own first dimension.
    names = [USER_ID_SPEC.name, *(s.name for s in specs)]
    module.add_signature("score_new_items", with_parameters(score_new_items, names),
                         [USER_ID_SPEC, *specs],
                         batch_groups=[[0], list(range(1, len(specs) + 1))])
    module.extra_metadata[NEW_ITEMS_KEY] = new_items_metadata(
        module.item_features, trained.vocabs.item.hashed, USER_ID_SPEC.name)
    return True


def describe_inputs(metadata: Mapping[str, Any]) -> list[dict[str, str]] | None:
    """The item feature inputs an export's metadata records (``None``: it has none)."""
    entry = metadata.get(NEW_ITEMS_KEY)
    if not isinstance(entry, Mapping) or not isinstance(entry.get("inputs"), list):
        return None
    return list(entry["inputs"])
