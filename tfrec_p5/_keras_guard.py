"""Make sure TensorFlow binds `tf.keras` to tf-keras (Keras 2), as TFRS 0.7.7 requires.

TensorFlow >= 2.16 binds `tf.keras` to Keras 3 unless ``TF_USE_LEGACY_KERAS=1`` is set
*before* TensorFlow is first imported; TFRS 0.7.7 does not work with Keras 3. We set the
variable when we are imported first, and refuse clearly when we are imported too late
(the usual Colab situation: ``import tensorflow`` ran in an earlier cell and used
``tf.keras``). TensorFlow resolves ``tf.keras`` lazily, on first attribute access, so
``import tensorflow`` alone followed by ``import tfrec_p5`` is still fine.
"""

from __future__ import annotations

import os
import sys

KERAS3_MESSAGE = (
    "tfrec_p5 needs tf.keras to be tf-keras (Keras 2), but TensorFlow was already imported "
    "with Keras 3 bound to tf.keras. Restart the runtime (in Colab: Runtime > Restart "
    "session) and `import tfrec_p5` before `import tensorflow`, or set the environment "
    "variable TF_USE_LEGACY_KERAS=1 before TensorFlow is imported."
)


def ensure_legacy_keras() -> None:
    """Set ``TF_USE_LEGACY_KERAS=1``, or raise ImportError if it is already too late."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
        return
    keras = vars(tf).get("keras")
    if type(keras).__name__ == "KerasLazyLoader" and not vars(keras).get("_tfll_initialized"):
        # TensorFlow is imported but tf.keras not yet resolved: the loader reads the
        # variable on first use, so it is not too late. (Touching ``keras.__name__`` here
        # would resolve it to Keras 3.)
        os.environ["TF_USE_LEGACY_KERAS"] = "1"
        return
    keras_name = getattr(keras, "__name__", "")
    if not keras_name.startswith("tf_keras"):
        raise ImportError(KERAS3_MESSAGE)
