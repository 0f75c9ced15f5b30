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

from tfrec_p5._version import __version__  # noqa: E402

__all__ = ["__version__"]
