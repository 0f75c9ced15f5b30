"""Towers: the shared user / item backbone every task head reuses.

Built from the training vocabularies and side-feature tables, so every head of a model
reads the same user and item vectors:

    from tfrec_p5.towers import SideFeatures, UserTower, ItemTower
    side = SideFeatures.build(train, vocabs)
    user_tower = UserTower.from_vocab(vocabs, side, embedding_dim=32)
    item_tower = ItemTower.from_vocab(vocabs, side, embedding_dim=32)
"""

from tfrec_p5.towers.side_features import FeatureTable, SideFeatures, tokenize
from tfrec_p5.towers.tower import (
    ItemTower,
    Tower,
    UserTower,
    embedding_memory_bytes,
    load_tower,
    save_tower,
)

__all__ = ["FeatureTable", "ItemTower", "SideFeatures", "Tower", "UserTower",
           "embedding_memory_bytes", "load_tower", "save_tower", "tokenize"]
