"""The Keras guard, in fresh interpreters (import order is the whole point)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


def _run(code: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=180)


@pytest.mark.parametrize("code", [
    # (1) the documented order
    "import tfrec_p5\nimport os, tensorflow as tf\n"
    "print(tf.keras.__name__, os.environ['TF_USE_LEGACY_KERAS'])",
    # (3) TensorFlow imported first but tf.keras not touched yet: still rescued
    "import os, tensorflow as tf\nimport tfrec_p5\n"
    "print(tf.keras.__name__, os.environ['TF_USE_LEGACY_KERAS'])",
])
def test_import_first_binds_tf_keras(code):
    proc = _run(code)
    assert proc.returncode == 0, proc.stderr[-2000:]
    name, flag = proc.stdout.split()[-2:]
    assert name.startswith("tf_keras") and flag == "1"


def test_import_after_keras3_is_bound_raises_clear_error():
    proc = _run("import tensorflow as tf\ntf.keras.layers\nimport tfrec_p5")
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:")
    assert "Restart" in last and "import tfrec_p5` before `import tensorflow`" in last
    assert "TF_USE_LEGACY_KERAS=1" in last
