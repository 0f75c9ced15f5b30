"""tfrec_p5: one pretrained recommender, many tasks, in TensorFlow/Keras.

Import this package *before* TensorFlow: it sets ``TF_USE_LEGACY_KERAS=1`` so that
``tf.keras`` is tf-keras, which TensorFlow Recommenders 0.7.7 needs.

    import tfrec_p5                      # first
    import tensorflow as tf
    from tfrec_p5 import data
    table = data.load("synthetic")
"""

from tfrec_p5._keras_guard import ensure_legacy_keras as _ensure_legacy_keras

_ensure_legacy_keras()

import importlib  # noqa: E402

from tfrec_p5._version import __version__  # noqa: E402

SUBPACKAGES = ("data", "towers", "tasks", "training", "models", "pretraining", "evaluation",
               "export", "distribute", "cli")
"""The subpackages, in the order data flows through them; each has its own ``__all__``.

``tfrec_p5.data`` and the others are imported on first use (``tfrec_p5.data.load``), so
``import tfrec_p5`` stays light: it must run before TensorFlow is imported."""
__all__ = ["SUBPACKAGES", "__version__", *SUBPACKAGES]


def __getattr__(name: str):
    """``tfrec_p5.data`` etc. on first use, so ``import tfrec_p5`` stays light (it must
    run before TensorFlow is imported)."""
    if name in SUBPACKAGES:
        return importlib.import_module(f"tfrec_p5.{name}")
    raise AttributeError(f"module 'tfrec_p5' has no attribute {name!r}")
