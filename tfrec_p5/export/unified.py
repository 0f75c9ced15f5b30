"""The serving module of a trained ``UnifiedModel``: every signature its heads back.

Why one builder: ``tfrec-p5 train``, ``finetune`` and Python users export the same
signatures from the same trained object, so a model exported from a notebook answers
exactly like one exported from the command line.

    module = build_module(trained, k=10, titles=item_titles(train, trained.vocabs))
    export(module, "saved_models/ml100k")
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from tfrec_p5.export.retrieval import RetrievalIndex, add_retrieval_signatures
from tfrec_p5.export.sequential import sequential_module
from tfrec_p5.export.serving import ServingModule, add_rating_signatures
from tfrec_p5.models.sequential import TrainedSequential

__all__ = ["TITLE_COLUMNS", "build_module", "item_titles", "serving_module"]

TITLE_COLUMNS = ("movie_title", "title", "item_title")


def item_titles(table, vocabs) -> list[str] | None:
    """Titles of item rows ``1..I-1`` if the data has a title column, else ``None``."""
    column = next((c for c in TITLE_COLUMNS if c in table.columns), None)
    if column is None:
        return None
    title = dict(zip(table.item_id.tolist(), table.columns[column].astype(str).tolist(),
                     strict=True))
    return [title.get(t, "") for t in vocabs.item.tokens.tolist()]


class _RatingScorer:
    """``model.score(features, "rating")`` with the ``rating_model(features, training)``
    call shape that ``add_rating_signatures`` expects."""

    def __init__(self, model) -> None:
        class Scorer(tf.Module):
            def __init__(self, m):
                super().__init__(name="rating_scorer")
                self.model = m

            def __call__(self, features, training=False):
                return self.model.score(features, task="rating")
        self.module = Scorer(model)


def build_module(trained, *, k: int = 100, exclude_seen: bool = True,
                 titles: list[str] | None = None):
    """A ``ServingModule`` with every signature the trained heads support."""
    module = ServingModule(trained.vocabs)
    heads = trained.tasks
    scorer = None
    if "ranking" in heads:
        model = trained.model
        module.track("ranking_model", model)

        def scorer(user_index, item_index):
            feats = {"user_id": user_index, "item_id": item_index}
            return model.score(feats, task="ranking")
    if "retrieval" in heads:
        index = RetrievalIndex.from_trained(trained)
    else:  # no retrieval head: recommend = the most popular items the user has not seen
        n_items = len(trained.vocabs.item)
        counts = np.bincount(trained.seen_values, minlength=n_items).astype(np.float32)
        index = RetrievalIndex(np.zeros((len(trained.vocabs.user), 1), np.float32),
                               np.zeros((n_items, 1), np.float32), trained.vocabs.item.tokens,
                               counts, trained.seen_splits, trained.seen_values,
                               item_prior=counts)
    if titles is not None:
        index.item_titles = tf.Variable(np.asarray(titles, dtype=object), trainable=False,
                                        dtype=tf.string, name="item_titles")
    add_retrieval_signatures(module, index, k=k, exclude_seen=exclude_seen,
                             pair_scorer=scorer, default="retrieval" in heads
                             or "rating" not in heads)
    if "retrieval" not in heads:
        module.tasks = [t for t in module.tasks if t != "retrieval"]
    if "rating" in heads:  # added last: serving_default stays recommend when it exists
        add_rating_signatures(module, _RatingScorer(trained.model).module,
                              trained.rating_range)
    return module


def serving_module(trained, *, k: int = 100, exclude_seen: bool = True) -> ServingModule:
    """The ``ServingModule`` for a trained or fine-tuned model: ``next_items`` /
    ``score_items`` for a next-item model, else
    ``build_module``'s signatures, so ``export(...)`` and ``tfrec-p5 predict`` work
    unchanged.

        export(serving_module(finetune(backbone, train)), "saved_models/ft")
    """
    if isinstance(trained, TrainedSequential):
        return sequential_module(trained.vocabs, trained.head, top_k=k)
    return build_module(trained, k=k, exclude_seen=exclude_seen)
