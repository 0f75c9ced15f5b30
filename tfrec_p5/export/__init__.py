"""Export trained models as versioned SavedModels for TF Serving, and read them back.

    from tfrec_p5.export import export, load_export
    path = export(trained.model, "saved_models/demo", vocabs=trained.vocabs,
                  rating_range=(1.0, 5.0))            # -> saved_models/demo/1
    loaded, version_dir, meta = load_export("saved_models/demo")
    loaded.signatures["predict_rating"](user_id=tf.constant(["u1"]),
                                        item_id=tf.constant(["i2"]))

Later tasks add signatures to the same export through ``ServingModule`` (see
``tfrec_p5.export.serving``). Items known only by their features are scored by an
export's ``score_new_items`` (``export.new_items``) and added to its next version,
without retraining, by ``add_items`` (``export.add_items``; ``tfrec-p5 add-items``).
``item_item_module`` serves an item-item model (EASE, item-KNN, most popular:
``models.item_item``) under a retrieval model's ``recommend`` / ``rank``;
``item_item_next_module`` one (item-KNN, most popular) under a next-item model's
``next_items`` / ``score_items``.
"""

from tfrec_p5.export.add_items import AddItemsRefused, NewItems, add_items, read_new_items
from tfrec_p5.export.boundary import PAD_ITEM_ID, PAD_SCORE, drop_padding
from tfrec_p5.export.new_items import ItemFeatureEncoder
from tfrec_p5.export.retrieval import item_item_module
from tfrec_p5.export.saved_model import (
    EXTRA_DIR,
    METADATA_FILE,
    METRICS_FILE,
    ExportError,
    TrainingRecord,
    export,
    list_versions,
    load_export,
    load_metadata,
    next_version,
    resolve_export,
)
from tfrec_p5.export.scann_index import ScannOptions
from tfrec_p5.export.sequential import item_item_next_module
from tfrec_p5.export.serving import (
    DEFAULT_SIGNATURE,
    ITEM_ID_SPEC,
    USER_ID_SPEC,
    IdLookup,
    ServingModule,
    add_rating_signatures,
)
from tfrec_p5.export.unified import build_module, item_titles, serving_module

__all__ = [
    "AddItemsRefused", "DEFAULT_SIGNATURE", "EXTRA_DIR", "ExportError", "ITEM_ID_SPEC",
    "IdLookup", "ItemFeatureEncoder", "METADATA_FILE", "METRICS_FILE", "NewItems",
    "PAD_ITEM_ID", "PAD_SCORE", "ScannOptions", "ServingModule", "TrainingRecord",
    "USER_ID_SPEC", "add_items", "add_rating_signatures", "build_module", "drop_padding",
    "export", "item_item_module", "item_item_next_module", "item_titles", "list_versions",
    "load_export", "load_metadata", "next_version", "read_new_items", "resolve_export",
    "serving_module",
]
