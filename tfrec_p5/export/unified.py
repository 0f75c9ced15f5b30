"""The serving module of a ``UnifiedModel``: every signature backed by one of its heads.

Why a rule instead of per-task code: a client cannot tell how a signature's answer was
made, so every signature of an export must come from the trained model -- a signature
the model cannot back is left out, never filled in with something else (item popularity,
say). Each signature is scored by the best head the model has for it:

* ``recommend``: retrieval (precomputed index), else ranking, else rating (these two
  score every item of the catalog for the user; seen items excluded either way);
* ``rank``: ranking, else retrieval, else rating;
* ``predict_rating``: rating (absent without a rating head);
* ``score_new_items``: retrieval, for items described by their features (absent without
  a retrieval head or item side features; ``export.new_items``); else next-item;
* ``next_items`` / ``score_items``: the next-item head of a joint model
  (``tfrec_p5.models.joint``; ``export.sequential``).

(An unknown user still gets the most popular items from ``recommend``: the model has
nothing to say about an ID it never saw, and the fallback is documented.)

The export's ``tasks`` (what ``tfrec-p5 evaluate`` measures) are the heads behind its
signatures, i.e. the heads the model was trained with, so ``evaluate`` never reports a
metric of a head the model does not have.

    trained = train_unified(train, None, UnifiedConfig(weights={"rating": 1.0}))
    module = build_module(trained, k=100, titles=item_titles(train, trained.vocabs))
    module.signature_names()  # ['predict_rating', 'rank', 'recommend', 'serving_default']
    module.tasks              # ['rating']

``index="scann"`` (opt-in, for large catalogs; needs ``pip install 'tfrec_p5[scann]'``)
answers ``recommend`` of a model with a retrieval head from a ScaNN index instead of brute
force (``export.scann_index``). Brute force stays the default: it loads in stock TF
Serving, a ScaNN export needs TF Serving built with the ScaNN ops (or ``import scann``
before loading it in Python; ``load_export`` does that).

``tfrec-p5 train``, ``finetune`` and Python users export through ``build_module`` /
``serving_module``, so a model exported from a notebook answers exactly like one exported
from the command line.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_p5.export.new_items import add_feature_scoring
from tfrec_p5.export.retrieval import PairScorer, RetrievalIndex, add_retrieval_signatures
from tfrec_p5.export.scann_index import INDEX_KINDS, ScannOptions, scann_unavailable
from tfrec_p5.export.sequential import (
    add_next_item_feature_scoring,
    add_next_item_signatures,
    sequential_module,
)
from tfrec_p5.export.serving import ServingModule, add_rating_signatures
from tfrec_p5.models.sequential import TrainedSequential

__all__ = ["RANK_HEADS", "RECOMMEND_HEADS", "TITLE_COLUMNS", "build_module", "check_index",
           "item_titles", "serving_module"]

#: Preference order of the heads that can score each signature.
RECOMMEND_HEADS = ("retrieval", "ranking", "rating")
RANK_HEADS = ("ranking", "retrieval", "rating")
#: Columns ``item_titles`` reads titles from, first match wins.
TITLE_COLUMNS = ("movie_title", "title", "item_title")


class _HeadScorer(tf.Module):
    """``model.score(features, head)`` as the ``rating_model(features, training)`` call
    ``add_rating_signatures`` expects, and as a ``PairScorer`` (indices in, ``[N]`` out)."""

    def __init__(self, model: tf.keras.Model, head: str) -> None:
        super().__init__(name=f"{head}_scorer")
        self.model = model
        self.head = head

    def __call__(self, features, training: bool = False) -> tf.Tensor:
        return self.model.score(features, task=self.head)

    def pairs(self, user_index: tf.Tensor, item_index: tf.Tensor) -> tf.Tensor:
        return self({"user_id": user_index, "item_id": item_index})


def _first(preferred: tuple[str, ...], heads: list[str]) -> str | None:
    return next((h for h in preferred if h in heads), None)


def check_index(index: str, heads: list[str]) -> None:
    """Refuse ``index`` for a model with ``heads`` before anything is built: ``ValueError``
    for an unknown kind or ``"scann"`` without a retrieval head (``recommend`` is then
    scored by another head, there are no vectors to index), ``ImportError`` when ScaNN's
    ops do not load here."""
    if index not in INDEX_KINDS:
        raise ValueError(f"unknown recommend index {index!r}; use one of {INDEX_KINDS}")
    if index != "scann":
        return
    head = _first(RECOMMEND_HEADS, heads)
    if head != "retrieval":
        raise ValueError("a ScaNN index needs a retrieval head (item and user vectors); "
                         f"recommend of this model is scored by its {head} head")
    reason = scann_unavailable()
    if reason is not None:
        raise ImportError(reason)


def build_module(trained, *, k: int = 100, exclude_seen: bool = True,
                 titles: list[str] | None = None, index: str = "brute_force",
                 scann_options: ScannOptions | None = None) -> ServingModule:
    """A ``ServingModule`` with every signature ``trained``'s heads can back.

    ``trained`` is a ``TrainedUnified`` (or a fine-tuned one). ``k``: the ``recommend``
    list size; ``exclude_seen``: leave each user's training items out of ``recommend``;
    ``titles``: item titles of rows ``1..I-1`` (stored for ``tfrec-p5 recommend``).
    ``index``: ``"brute_force"`` (default, exact, loads in stock TF Serving) or
    ``"scann"`` (approximate, for large catalogs; needs a retrieval head and the ScaNN
    ops wherever the export is loaded), built with ``scann_options``.
    """
    heads = list(trained.tasks)
    check_index(index, heads)
    module = ServingModule(trained.vocabs)
    scorers: dict[str, _HeadScorer] = {}

    def scorer(head: str) -> PairScorer:
        if head not in scorers:
            scorers[head] = module.track(f"{head}_scorer", _HeadScorer(trained.model, head))
        return scorers[head].pairs

    recommend_head = getattr(trained, "recommend_head", None) or _first(RECOMMEND_HEADS,
                                                                        heads)
    rank_head = _first(RANK_HEADS, heads)
    if recommend_head is not None:
        counts = np.bincount(trained.seen_values,
                             minlength=len(trained.vocabs.item)).astype(np.float32)
        tables = (trained.vocabs.item.tokens, counts, trained.seen_splits,
                  trained.seen_values)  # tokens, popularity, seen items
        if recommend_head == "retrieval":
            catalog = RetrievalIndex.from_trained(trained)
        elif recommend_head == "next_item":  # joint model: the query after each history
            catalog = RetrievalIndex(*trained.next_item_vectors(), *tables)
            rank_head = "ranking" if "ranking" in heads else "retrieval"  # i.e. the index
            module.extra_metadata["recommend_head"] = "next_item"
        else:  # no vectors to precompute: the head scores the catalog per request
            catalog = RetrievalIndex(None, None, *tables)
        if titles is not None:
            catalog.item_titles = tf.Variable(np.asarray(titles, dtype=object), trainable=False,
                                            dtype=tf.string, name="item_titles")
        add_retrieval_signatures(
            module, catalog, k=k, exclude_seen=exclude_seen,
            pair_scorer=None if rank_head == "retrieval" else scorer(rank_head),
            recommend_scorer=None if catalog.has_vectors else scorer(recommend_head),
            default="retrieval" in heads or "rating" not in heads,
            # evaluated as recommend is, whichever head's vectors answer it
            recommend_task="retrieval" if catalog.has_vectors else recommend_head,
            rank_task=rank_head,
            ann=(scann_options or ScannOptions()) if index == "scann" else None)
        if recommend_head == "retrieval":  # items described by features: when it can
            add_feature_scoring(module, trained)
    if "rating" in heads:  # added last: serving_default stays recommend when it exists
        add_rating_signatures(module, scorers.get("rating") or module.track(
            "rating_scorer", _HeadScorer(trained.model, "rating")), trained.rating_range)
    if "next_item" in heads:  # the joint model (tfrec_p5.models.joint)
        head = trained.model.heads["next_item"]
        add_next_item_signatures(module, head, trained.vocabs.item.tokens, top_k=k)
        if "score_new_items" not in module.signature_names():  # retrieval's comes first
            add_next_item_feature_scoring(module, head, trained.side_features)
    return module


def item_titles(table, vocabs) -> list[str] | None:
    """Titles of item rows ``1..I-1`` if the data has a title column, else ``None``."""
    column = next((c for c in TITLE_COLUMNS if c in table.columns), None)
    if column is None:
        return None
    title = dict(zip(table.item_id.tolist(), table.columns[column].astype(str).tolist(),
                     strict=True))
    return [title.get(t, "") for t in vocabs.item.tokens.tolist()]


def serving_module(trained, *, k: int = 100, exclude_seen: bool = True,
                   titles: list[str] | None = None, index: str = "brute_force",
                   scann_options: ScannOptions | None = None) -> ServingModule:
    """The ``ServingModule`` for a trained or fine-tuned model: ``next_items`` /
    ``score_items`` for a next-item model, else ``build_module``'s signatures (every one
    scored by the model's own heads), so ``export(...)`` and ``tfrec-p5 predict`` work
    unchanged. ``index`` / ``scann_options``: see ``build_module`` (next-item models have
    brute force only).

        export(serving_module(finetune(backbone, train)), "saved_models/ft")
    """
    if isinstance(trained, TrainedSequential):
        if index != "brute_force":
            raise ValueError("a next-item model's export has no ScaNN index (brute force)")
        return sequential_module(trained.vocabs, trained.head, top_k=k,
                                 side_features=trained.side_features)
    return build_module(trained, k=k, exclude_seen=exclude_seen, titles=titles, index=index,
                        scann_options=scann_options)
