"""The data layer: source → interactions → vocabulary → split → tf.data pipeline.

Every source becomes the same ``Interactions`` table, so everything after ``load`` works
the same on any data:

    from tfrec_p5 import data
    table = data.load("movielens:../shared/data/ml-100k")
    split = data.random_split(table, 0.8, seed=42)
    vocabs = data.Vocabularies.build(split.train)   # catalog=table.item_rows(): new items,
                                                    # users=table.user_rows(): new users
    train_ds = data.pointwise_dataset(split.train, vocabs, batch_size=8192, shuffle=True)

``register_tfds("movielens/100k-ratings", "../shared/data/ml-100k")`` makes the TFRS
tutorials' own ``tfds.load("movielens/100k-ratings")`` work offline (``tfds_register``).
"""

from tfrec_p5.data.catalog import Catalog, attach_features, load_catalog, read_entities
from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import (
    Vocabularies,
    batched_dataset,
    catalog_items,
    catalog_users,
    history_dataset,
    pointwise_dataset,
    retrieval_dataset,
    user_histories,
)
from tfrec_p5.data.sources import load, parse_spec, register, synthetic
from tfrec_p5.data.splits import (
    Split,
    first_events,
    hold_out_last,
    leave_one_out,
    next_item_validation,
    next_item_validation_rule,
    parse_split,
    random_split,
    temporal_split,
    tfrs_split,
)
from tfrec_p5.data.stream import LogScan, LogSplit, ParquetLog, open_log
from tfrec_p5.data.tfds_register import register_tfds
from tfrec_p5.data.vocabulary import OOV_INDEX, Vocabulary

__all__ = [
    "OOV_INDEX", "Catalog", "DataError", "Interactions", "LogScan", "LogSplit", "ParquetLog",
    "Split", "Vocabularies", "Vocabulary", "attach_features", "batched_dataset",
    "catalog_items", "catalog_users", "first_events", "history_dataset", "hold_out_last",
    "leave_one_out", "load", "load_catalog", "next_item_validation",
    "next_item_validation_rule", "open_log", "parse_spec",
    "parse_split", "pointwise_dataset", "random_split", "read_entities", "register",
    "register_tfds", "retrieval_dataset", "synthetic", "temporal_split", "tfrs_split",
    "user_histories",
]
