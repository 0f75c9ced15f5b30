"""Task heads that plug into ``UnifiedModel``'s shared towers (see ``tasks.base``).

    from tfrec_p5.tasks import RatingHead, RetrievalHead, RankingHead
    model = UnifiedModel(user_tower, item_tower, {"retrieval": RetrievalHead(n_items)})

Every trainer builds its heads through one registry (``tasks.registry``: ``build_heads``
from each head's options and a ``HeadContext`` of the training data; ``register_head``
adds a task).

Names are imported lazily so that ``tfrec-p5 --help`` does not import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "Head": "base", "KNOWN_USER": "base", "ListMLELoss": "losses", "ListwiseSoftmaxLoss": "losses",
    "RankingHead": "ranking", "listwise_dataset": "ranking", "listwise_examples": "ranking",
    "RatingHead": "rating", "HistoryEncoder": "retrieval", "RetrievalHead": "retrieval",
    "history_csr": "retrieval", "item_frequencies": "retrieval",
    "SquaredRetrieval": "squared", "NextItemTask": "next_item", "RATING_MASK": "rating",
    "HeadContext": "registry", "RankingOptions": "registry", "RetrievalOptions": "registry",
    "build_heads": "registry", "head_builders": "registry", "register_head": "registry",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tfrec_p5.tasks.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tfrec_p5.tasks' has no attribute {name!r}")


