"""Nothing executes from data: no pickle, no eval, no YAML, npz only without pickle.

Everything tfrec_p5 reads back (vocabularies, backbone manifests, side-feature tables,
export metadata, ``--config`` files) is JSON, plain text, ``.npz`` loaded with
``allow_pickle=False`` or a TensorFlow checkpoint / SavedModel. These tests read the
package source, so a later change that adds a code-executing loader fails here.
"""

from __future__ import annotations

import ast
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tfrec_p5"
SOURCES = sorted(PACKAGE.rglob("*.py"))
FORBIDDEN_MODULES = {"pickle", "cPickle", "dill", "cloudpickle", "joblib", "shelve",
                     "marshal", "yaml", "ruamel"}
FORBIDDEN_CALLS = {"eval", "exec", "compile", "__import__"}


def _trees():
    for path in SOURCES:
        yield path, ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


def test_sources_were_found():
    assert len(SOURCES) > 30 and any(p.name == "backbone.py" for p in SOURCES)


def test_no_code_executing_loader_is_imported_or_called():
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [(node.module or "").split(".")[0]]
            else:
                names = []
            found += [f"{path.name}:{node.lineno} imports {n}" for n in names
                      if n in FORBIDDEN_MODULES]
            if isinstance(node, ast.Call):
                fn = node.func
                name = fn.id if isinstance(fn, ast.Name) else fn.attr \
                    if isinstance(fn, ast.Attribute) else ""
                builtin = isinstance(fn, ast.Name) or (
                    isinstance(fn, ast.Attribute) and isinstance(fn.value, ast.Name)
                    and fn.value.id == "builtins")  # not re.compile / tf.function.compile
                if name in FORBIDDEN_CALLS and builtin:
                    found.append(f"{path.name}:{node.lineno} calls {name}()")
                if name in ("load_model", "from_json", "model_from_json", "model_from_config",
                            "deserialize_keras_object"):
                    found.append(f"{path.name}:{node.lineno} calls {name}()")
    assert found == []


def test_every_np_load_disallows_pickle():
    calls = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                    and node.func.attr == "load" and isinstance(node.func.value, ast.Name) \
                    and node.func.value.id in ("np", "numpy"):
                kw = {k.arg: k.value for k in node.keywords}
                ok = isinstance(kw.get("allow_pickle"), ast.Constant) and \
                    kw["allow_pickle"].value is False
                calls.append((f"{path.name}:{node.lineno}", ok))
    assert calls, "expected the side-feature npz loader"
    assert [c for c, ok in calls if not ok] == []


def test_the_text_pickle_and_allow_pickle_true_appear_nowhere():
    hits = []
    for path in SOURCES:
        for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#")[0]
            if "allow_pickle=True" in code.replace(" ", "") or "yaml.load" in code or \
                    "pickle.load" in code or "pickle.loads" in code:
                hits.append(f"{path.name}:{i}")
    assert hits == []


def test_a_saved_backbone_holds_only_json_npz_and_checkpoints(tmp_path):
    from tfrec_p5.data import load
    from tfrec_p5.pretraining.backbone import save_backbone
    from tfrec_p5.pretraining.pretrainer import PretrainConfig, fresh_backbone

    table = load("synthetic", num_users=20, num_items=10, num_interactions=100)
    save_backbone(fresh_backbone(table, PretrainConfig(embedding_dim=4)), tmp_path / "b")
    kinds = {}
    for f in sorted((tmp_path / "b").rglob("*")):
        if f.is_dir():
            continue
        if f.suffix == ".json":
            json.loads(f.read_text(encoding="utf-8"))
            kinds[f.name] = "json"
        elif f.suffix == ".npz":
            with zipfile.ZipFile(f) as z:  # every member a plain .npy, no object arrays
                assert all(n.endswith(".npy") for n in z.namelist())
            with np.load(f, allow_pickle=False) as npz:
                for key in npz.files:
                    assert npz[key].dtype != object
            kinds[f.name] = "npz"
        elif f.name == "checkpoint" or ".index" in f.name or ".data-" in f.name:
            kinds[f.name] = "tf checkpoint"
        else:
            pytest.fail(f"unexpected file in a backbone: {f}")
    assert set(kinds.values()) == {"json", "npz", "tf checkpoint"}


def test_config_files_are_json_objects_only(tmp_path):
    from tfrec_p5.cli import CliError
    from tfrec_p5.cli.common import read_config

    bad = tmp_path / "c.json"
    bad.write_bytes(b"\x80\x04\x95\x00")  # a pickle header is not a config
    with pytest.raises(CliError):
        read_config(str(bad))
    bad.write_text("!!python/object:os.system ['echo hi']")
    with pytest.raises(CliError):
        read_config(str(bad))
    bad.write_text('{"epochs": 2}')
    assert read_config(str(bad)) == {"epochs": 2}
