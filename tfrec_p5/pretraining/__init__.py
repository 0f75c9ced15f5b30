"""Pretrain once, fine-tune anywhere: backbone checkpoints and transfer.

Why: P5's promise is one pretrained recommender reused by many tasks. Here the
*backbone* is the pair of shared towers of a ``UnifiedModel`` (ID embeddings, side-feature
embeddings, projections) plus their vocabularies and side-feature tables. ``pretrain``
trains it on self-supervised (retrieval on who-interacted-with-what) and supervised
(rating, where labels exist) tasks and saves it with a JSON manifest; ``finetune`` loads
it, grows the vocabularies for new users / items, attaches a fresh head and trains it
(towers frozen, embeddings frozen, or everything with a lower backbone learning rate).

    from tfrec_p5.pretraining import pretrain, finetune, load_backbone
    pre = pretrain("synthetic", tasks=["retrieval", "rating"], out="backbones/demo")
    tuned = finetune("backbones/demo", "synthetic", task="rating", freeze="towers")
    tuned.evaluate(test)                        # {"rating_rmse": ..., ...}

Names are imported lazily so that ``tfrec-p5 --help`` does not import TensorFlow.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "BACKBONE_FORMAT": "backbone", "FORMAT_VERSION": "backbone", "Backbone": "backbone",
    "BackboneError": "backbone", "grow_backbone": "backbone", "grow_vocabulary": "backbone",
    "load_backbone": "backbone", "save_backbone": "backbone",
    "PretrainConfig": "pretrainer", "Pretrained": "pretrainer",
    "fresh_backbone": "pretrainer", "pretrain": "pretrainer",
    "FREEZE_MODES": "finetuner", "FinetuneConfig": "finetuner", "FinetuneModel": "finetuner",
    "Finetuned": "finetuner", "finetune": "finetuner",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"tfrec_p5.pretraining.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'tfrec_p5.pretraining' has no attribute {name!r}")
