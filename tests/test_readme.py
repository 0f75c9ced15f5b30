"""The README's Python example runs as printed (on a smaller synthetic table, one epoch).

Why: the first code a reader copies must work. The block after ``<!-- readme-example -->``
is run in a fresh interpreter in an empty folder; only the data size and the epoch count
are shrunk, by replacing two exact strings (the test fails if they are no longer there,
so a changed example is noticed here rather than by a reader).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = "<!-- readme-example -->"
SHRINK = {
    'data.load("synthetic")':
        'data.load("synthetic?num_users=200&num_items=100&num_interactions=3000")',
    "RatingConfig(epochs=10)": "RatingConfig(epochs=1)",
}


def readme_example() -> str:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert text.count(MARKER) == 1, f"README.md needs exactly one {MARKER}"
    match = re.search(r"```python\n(.*?)```", text[text.index(MARKER):], re.DOTALL)
    assert match, f"no ```python block after {MARKER}"
    return match.group(1)


def test_readme_example_runs(tmp_path):
    code = readme_example()
    assert code.lstrip().startswith("import tfrec_p5"), "the example must import tfrec_p5 first"
    assert len(code.strip().splitlines()) <= 12
    for old, new in SHRINK.items():
        assert old in code, f"README example no longer contains {old!r}; update SHRINK"
        code = code.replace(old, new)
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "2"
    res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics, served = res.stdout.strip().splitlines()[-2:]
    assert "'rmse'" in metrics and "'mae'" in metrics
    assert served.startswith("tf.Tensor([") and "float32" in served
    assert (tmp_path / "saved_models" / "my_model" / "1" / "saved_model.pb").is_file()
