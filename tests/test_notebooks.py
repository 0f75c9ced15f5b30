"""The example notebooks: committed clean, and every one runs top to bottom in quick mode.

Why: a notebook nobody executes rots silently as the API moves. This runs each
``examples/*.ipynb`` with ``nbclient`` through ``examples/run_notebooks.py`` (the runner
``make notebooks`` uses), two at a time, each in a ``python3`` kernel of this interpreter
(ipykernel from the ``dev`` extra), with ``TFREC_P5_SMALL=1`` (tiny data, few epochs) and
without ``TF_USE_LEGACY_KERAS`` in the kernel's environment, so every notebook must set
up Keras itself by importing ``tfrec_p5`` first, as a Colab user's would. Any error in
any cell fails the notebook's test; the notebooks also assert their own key facts (the
SavedModel agrees with the model in memory, a gRPC request decodes to the REST answer).

``TFREC_P5_DATA=movielens:../shared/data/ml-100k pytest tests/test_notebooks.py`` runs
them on real data instead of the synthetic default.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"
NOTEBOOKS = sorted(EXAMPLES.glob("[0-9][0-9]_*.ipynb"))
EXPECTED = ["01_quickstart", "02_basic_retrieval", "03_basic_ranking", "04_multitask",
            "05_pretrain_finetune", "06_sequential_p5", "07_serving"]
# The longest first, so that the two lanes finish together.
LONGEST_FIRST = ["05_pretrain_finetune", "07_serving", "03_basic_ranking", "04_multitask",
                 "06_sequential_p5", "02_basic_retrieval", "01_quickstart"]


def _runner():
    spec = importlib.util.spec_from_file_location("run_notebooks",
                                                  EXAMPLES / "run_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look themselves up there
    spec.loader.exec_module(module)
    return module


def _code(nb) -> list[str]:
    return [c.source for c in nb.cells if c.cell_type == "code"]


def test_the_seven_notebooks_exist():
    assert [p.stem for p in NOTEBOOKS] == EXPECTED


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: outputs in a committed notebook " \
                                       "(run examples/strip_outputs.py)"
            assert cell.execution_count is None, f"{path.name}: execution count committed"
        assert "execution" not in cell.metadata, f"{path.name}: timing metadata committed"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_first_cell_installs_in_colab_and_imports_tfrec_p5_before_tensorflow(path):
    cells = _code(nbformat.read(path, as_version=4))
    first = cells[0]
    assert 'if "google.colab" in sys.modules:' in first and "%pip install" in first
    tfrec = first.index("import tfrec_p5")
    assert tfrec < first.index("import tensorflow as tf")
    assert not re.search(r"^\s*(import|from) (tensorflow|tf_keras|keras)\b",
                         first[:tfrec], re.MULTILINE)
    assert not any(re.search(r"^\s*import keras\b", c, re.MULTILINE) for c in cells)
    # Data through tfrec_p5.data, from a DATA spec the environment can override.
    second = cells[1]
    assert 'DATA = os.environ.get("TFREC_P5_DATA"' in second
    assert "data.load(" in second and 'spec.startswith("tfds:")' in second


@pytest.fixture(scope="module")
def executed(tmp_path_factory):
    runner = _runner()
    order = sorted(NOTEBOOKS, key=lambda p: (LONGEST_FIRST + [p.stem]).index(p.stem))
    results = runner.run(order, tmp_path_factory.mktemp("notebooks"), jobs=2, small=True,
                         data=os.environ.get("TFREC_P5_DATA"),
                         drop_env=("TF_USE_LEGACY_KERAS", "TFREC_P5_SERVER"))
    return {r.name: r for r in results}


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(executed, path):
    result = executed[path.name]
    assert result.error is None, f"{path.name} failed:\n{result.error[-4000:]}"
    nb = nbformat.read(result.output, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count is not None for c in code), "a cell did not run"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    # The setup cell ran in a kernel whose tf.keras is tf-keras (Keras 2), as TFRS needs.
    first = "".join(o.get("text", "") for o in code[0].outputs)
    assert "tf.keras is tf_keras" in first
