"""The object we export: string-ID lookups + trained models + named serving signatures.

Why a module of its own: a SavedModel served by TF Serving receives *raw string IDs*
(``"u1"``, ``"i2"``), while our Keras models take vocabulary indices. The lookup therefore
has to live inside the SavedModel, with exactly the numbering the training pipeline used
(``Vocabulary``: token ``i`` → ``i + 1``, unknown → 0, the OOV row). ``ServingModule`` holds
those lookups once, and every task (rating now; retrieval ``recommend``, ``rank``,
``next_items`` later) adds its own signatures to the *same* module, so one export serves all
tasks of one pretrained model.

    module = ServingModule(vocabs)
    add_rating_signatures(module, rating_model, rating_range=(1.0, 5.0))
    module.signature_names()           # ['predict_rating', 'serving_default']
    export(module, "saved_models/demo") # see tfrec_p5.export.saved_model

Extension point (how a later task adds a signature)::

    def add_retrieval_signatures(module: ServingModule, index, k: int = 10) -> None:
        module.track("retrieval_index", index)        # variables/tables it captures
        def recommend(user_id):
            scores, items = module.retrieval_index(module.user_index(user_id), k=k)
            return {"item_id": items, "score": scores}
        module.add_signature("recommend", recommend, [USER_ID_SPEC])

Rules a signature function follows: take string ``tf.Tensor`` inputs (``[batch]``; the
module checks every request against the specs' ranks and batch size), map them
with ``module.user_index`` / ``module.item_index``, return a dict of named tensors, and make
every trackable object it uses (models, tables, variables) reachable from the module via
``module.track`` -- ``tf.saved_model.save`` refuses functions that capture untracked state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.data.vocabulary import OOV_INDEX, HashedVocabulary, Vocabulary
from tfrec_p5.export.boundary import checked_signature, relaxed_spec

USER_ID_SPEC = tf.TensorSpec([None], tf.string, name="user_id")
"""Input spec shared by all signatures: a batch of raw string user IDs. Its shape is the
contract ``add_signature`` checks each request against (``boundary.check_shapes``)."""
ITEM_ID_SPEC = tf.TensorSpec([None], tf.string, name="item_id")
"""Input spec of a batch of raw string item IDs, checked like ``USER_ID_SPEC``."""
DEFAULT_SIGNATURE = "serving_default"
"""The signature TF Serving uses when a request names none."""


class IdLookup(tf.Module):
    """In-graph ``Vocabulary.lookup``: string → int64 index, unknown → ``OOV_INDEX`` (0).

    A ``tf.lookup.StaticHashTable`` with the numbering of ``Vocabulary`` (and of
    ``Vocabulary.string_lookup()``), but no Keras object, so the export loads with bare
    TensorFlow. For a ``HashedVocabulary`` there is no table: the lookup is the in-graph
    hash ``1 + tf.strings.to_hash_bucket_fast(id, buckets)`` (``tf.keras.layers.Hashing``'s
    op), so a 10M-user model exports without a 10M-entry table.

        lookup = IdLookup(Vocabulary(["u1", "u2"]))
        lookup(tf.constant(["u2", "nobody"]))   # -> [2, 0]
    """

    def __init__(self, vocab: Vocabulary | HashedVocabulary, name: str | None = None) -> None:
        super().__init__(name=name or f"{vocab.name or 'id'}_lookup")
        self.size = len(vocab)  # tokens + OOV row
        self.table = None
        # A hashed vocabulary: 1 + FarmHash64(id) mod buckets, the op behind
        # tf.keras.layers.Hashing, so the export needs no table and no Keras.
        self.hash_buckets = vocab.num_buckets if getattr(vocab, "hashed", False) else None
        if self.hash_buckets is None and len(vocab.tokens):
            init = tf.lookup.KeyValueTensorInitializer(
                tf.constant(vocab.tokens.astype(object), tf.string),
                tf.constant(np.arange(1, len(vocab.tokens) + 1, dtype=np.int64)))
            self.table = tf.lookup.StaticHashTable(init, default_value=np.int64(OOV_INDEX))
        # Saved with the export, so a loaded export maps IDs without tfrec_p5 (and
        # ``tfrec-p5 add-items`` reuses the user lookup of the version it extends).
        self.lookup = tf.function(self.__call__, autograph=False,
                                  input_signature=[tf.TensorSpec(None, tf.string)])

    def __call__(self, ids: tf.Tensor) -> tf.Tensor:
        ids = tf.convert_to_tensor(ids, tf.string)
        if self.hash_buckets is not None:
            return tf.strings.to_hash_bucket_fast(ids, self.hash_buckets) + 1
        if self.table is None:  # empty vocabulary: everything is OOV
            return tf.zeros_like(ids, dtype=tf.int64)
        return self.table.lookup(ids)


class ServingModule(tf.Module):
    """Lookups + models + signatures; ``export()`` saves it as one SavedModel.

    Signatures are added with ``add_signature``; ``signatures()`` returns the concrete
    functions ``tf.saved_model.save`` needs. The first signature added with
    ``default=True`` is also exported as ``serving_default``.
    """

    def __init__(self, vocabs: Vocabularies | None, name: str = "tfrec_p5_serving", *,
                 user_lookup: Callable[[tf.Tensor], tf.Tensor] | None = None,
                 item_lookup: Callable[[tf.Tensor], tf.Tensor] | None = None,
                 vocab_sizes: dict[str, int] | None = None) -> None:
        """``vocabs``: the training vocabularies the lookups are built from; or ``None``
        with ``user_lookup`` / ``item_lookup`` (trackable callables, string IDs → int64
        indices) and ``vocab_sizes``: a module over lookups that already exist, such as
        the version ``add-items`` extends."""
        super().__init__(name=name)
        if vocabs is None:
            if user_lookup is None or item_lookup is None or vocab_sizes is None:
                raise ValueError("without vocabs, pass user_lookup, item_lookup and "
                                 "vocab_sizes")
            self.user_lookup, self.item_lookup = user_lookup, item_lookup
            self.vocab_sizes = dict(vocab_sizes)
        else:
            self.user_lookup = IdLookup(vocabs.user, name="user_id_lookup")
            self.item_lookup = IdLookup(vocabs.item, name="item_id_lookup")
            self.vocab_sizes = {"user_id": len(vocabs.user), "item_id": len(vocabs.item)}
        self.tasks: list[str] = []
        #: ``{signature: head}`` it is scored by (written to the export's metadata).
        self.signature_tasks: dict[str, str] = {}
        #: More metadata entries the signatures' builders record (``export`` writes them).
        self.extra_metadata: dict[str, object] = {}
        self._signature_names: list[str] = []
        self._default: str | None = None

    # ------------------------------------------------------------------ lookups
    def user_index(self, user_id: tf.Tensor) -> tf.Tensor:
        """String user IDs → vocabulary indices (unknown → 0)."""
        return self.user_lookup(user_id)

    def item_index(self, item_id: tf.Tensor) -> tf.Tensor:
        """String item IDs → vocabulary indices (unknown → 0)."""
        return self.item_lookup(item_id)

    # ------------------------------------------------------------------ extension point
    def track(self, name: str, obj: object) -> object:
        """Attach ``obj`` (a model, table, variable...) so the SavedModel saves its state."""
        if not name.isidentifier() or hasattr(type(self), name):
            raise ValueError(f"cannot track an object as {name!r}")
        setattr(self, name, obj)
        return obj

    def add_signature(self, name: str, fn: Callable[..., dict[str, tf.Tensor]],
                      input_signature: Sequence[tf.TensorSpec], *, default: bool = False,
                      task: str | None = None,
                      batch_groups: Sequence[Sequence[int]] | None = None,
                      checked: bool = True) -> None:
        """Export ``fn`` as signature ``name``; ``default=True`` also makes it the default.

        ``fn`` takes tensors matching ``input_signature`` (their ``name`` is the request key)
        and returns a dict of output tensors. The specs' shapes are the contract: a request
        whose inputs have another rank, or different batch sizes, fails with an
        ``InvalidArgumentError`` naming the signature and inputs
        (``boundary.checked_signature``; ``batch_groups``: which inputs share the batch
        size, default all) before ``fn`` runs. ``checked=False`` only for ``fn`` that
        checks its inputs itself (a loaded export's signature, forwarded).
        """
        if not name.isidentifier() or name == DEFAULT_SIGNATURE:
            raise ValueError(f"bad signature name {name!r}")
        if name in self._signature_names:
            raise ValueError(f"signature {name!r} already exists")
        # Every request's shapes are checked here, before ``fn`` runs (see boundary.py).
        body = checked_signature(name, fn, input_signature, batch_groups) if checked else fn
        function = tf.function(body, autograph=False,
                               input_signature=[relaxed_spec(s) for s in input_signature])
        setattr(self, f"signature_{name}", function)  # tracked: restorable by name, too
        self._signature_names.append(name)
        if default and self._default is None:
            self._default = name
        if task and task not in self.tasks:
            self.tasks.append(task)
        if task:
            self.signature_tasks[name] = task

    def signature_names(self) -> list[str]:
        """Names the export will have, ``serving_default`` included when set."""
        names = list(self._signature_names)
        if self._default is not None:
            names.append(DEFAULT_SIGNATURE)
        return sorted(names)

    def signatures(self) -> dict[str, tf.types.experimental.ConcreteFunction]:
        """``{name: concrete function}`` for ``tf.saved_model.save(..., signatures=)``."""
        out = {name: getattr(self, f"signature_{name}").get_concrete_function()
               for name in self._signature_names}
        if self._default is not None:
            out[DEFAULT_SIGNATURE] = out[self._default]
        if not out:
            raise ValueError("the serving module has no signatures to export")
        return out

    def signature(self, name: str) -> Callable[..., dict[str, tf.Tensor]]:
        """The ``tf.function`` behind signature ``name`` (for in-memory use and tests)."""
        if name == DEFAULT_SIGNATURE and self._default is not None:
            name = self._default
        if name not in self._signature_names:
            raise KeyError(f"no signature {name!r}; have {self.signature_names()}")
        return getattr(self, f"signature_{name}")


def add_rating_signatures(module: ServingModule, model: tf.keras.Model,
                          rating_range: tuple[float, float]) -> ServingModule:
    """Add ``predict_rating`` (also ``serving_default``): string IDs → clipped rating.

    Returns ``module`` so calls chain: ``export(add_rating_signatures(ServingModule(v),
    model, (1, 5)), "saved_models/NAME")``.

    ``model`` takes ``{"user_id": int64 [B], "item_id": int64 [B]}`` (vocabulary indices)
    and returns ``[B]`` or ``[B, 1]`` ratings; the signature returns
    ``{"rating": float32 [B]}`` clipped to ``rating_range`` (the data's scale), so a
    client never sees a 5.3-star prediction. Unknown IDs use the OOV rows.
    """
    lo, hi = (float(v) for v in rating_range)
    if not lo <= hi:
        raise ValueError(f"bad rating range {rating_range}")
    module.track("rating_model", model)

    def predict_rating(user_id: tf.Tensor, item_id: tf.Tensor) -> dict[str, tf.Tensor]:
        features = {"user_id": module.user_index(user_id), "item_id": module.item_index(item_id)}
        raw = module.rating_model(features, training=False)
        rating = tf.reshape(tf.cast(raw, tf.float32), [-1])
        return {"rating": tf.clip_by_value(rating, lo, hi)}

    module.add_signature("predict_rating", predict_rating, [USER_ID_SPEC, ITEM_ID_SPEC],
                         default=True, task="rating")
    module.rating_range = (lo, hi)
    return module
