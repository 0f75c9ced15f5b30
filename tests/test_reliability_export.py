"""Exports and backbones under faults: killed writers, racing writers, broken files, paths.

* 20 exporting processes are SIGKILLed (``tests/_reliability_child.py``: half at a random
  moment of the export's writing, a quarter right after ``tf.saved_model.save``, a quarter
  after ``metadata.json`` with only the rename left). No all-digit (TF Serving) folder is ever
  incomplete; the leftovers are hidden temporary folders the next export removes.
* Two processes exporting to one name at the same moment get distinct versions.
* A truncated, tampered or partly deleted export or backbone fails ``load_export`` /
  ``load_backbone`` with one ``ExportError`` / ``BackboneError`` naming the file, and the
  CLI prints it as one line.
* Export paths: no control characters, never a version folder; ``..`` is a sibling as typed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from tfrec_p5 import cli
from tfrec_p5.data import Interactions, Vocabularies
from tfrec_p5.export import saved_model as sm
from tfrec_p5.export.serving import ITEM_ID_SPEC, USER_ID_SPEC, ServingModule
from tfrec_p5.pretraining.backbone import BackboneError, load_backbone, save_backbone
from tfrec_p5.pretraining.pretrainer import PretrainConfig, fresh_backbone

KILLS = 20
RACE_ROUNDS = 2
HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------- killed / racing
@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    base = tmp_path_factory.mktemp("faults")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, str(HERE / "_reliability_child.py"),
                           str(base / "killed"), str(base / "raced"), str(KILLS),
                           str(RACE_ROUNDS), "7"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**out, "base": base}


def test_killed_exports_never_leave_a_partial_version(faults):
    kill = faults["kill"]
    outcomes = kill["outcomes"]
    killed = [o for o in outcomes if o["killed"]]
    phases = [o["phase"] for o in killed]
    print("kills by phase:", {p: phases.count(p) for p in sorted(set(phases))})
    assert len(killed) >= KILLS
    # the kills hit every stage: mid-export, after the SavedModel files, before the rename
    assert phases.count("random: mid-export") >= 3
    assert phases.count("after tf.saved_model.save") >= 3
    assert phases.count("metadata written, before rename") >= 3
    # a killed export adds no version unless the kill came after its rename; a kill parked
    # before the rename left a complete SavedModel in its hidden folder, which TF Serving /
    # list_versions must ignore
    assert all(o["added_version"] == [] for o in killed
               if o["phase"] != "random: after the rename")
    left = kill["leftovers"]
    assert left["tmp"] and left["tmp_with_pb"] >= 1
    assert all(n.startswith(".") and not n.isdigit() for n in left["tmp"])
    added = sorted(v for o in outcomes for v in o["added_version"])
    assert left["versions"] == sorted([1, *added])  # the first, uninterrupted export + those


def _versions_before_final(faults) -> list[int]:
    return faults["kill"]["leftovers"]["versions"]


def test_next_export_cleans_up_and_every_version_is_complete(faults):
    fin = faults["finish"]
    before = _versions_before_final(faults)
    final = max(before) + 1
    assert fin["after_final"]["tmp"] == []             # dead exports' folders removed
    assert fin["final"] == str(final) and fin["list_versions"] == [*before, final]
    assert fin["complete"] == {str(v): True for v in [*before, final]}  # checksums ok
    assert fin["latest"] == str(final) and fin["latest_rating_finite"]


def test_two_exports_at_once_get_distinct_versions(faults):
    race = faults["race"]
    got = [v for pair in race["rounds"] for v in pair]
    assert None not in got and len(set(got)) == len(got) == 2 * RACE_ROUNDS
    assert race["versions"] == sorted(int(v) for v in got)
    base = faults["base"] / "raced"
    for v in race["versions"]:
        sm.verify_export(base / str(v))
        assert sm.load_metadata(base / str(v))["version"] == v
    assert race["state"]["tmp"] == []


# ---------------------------------------------------------------------- stale folders
def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_temporary_folders_are_removed_live_ones_kept(tmp_path):
    host = sm._host_tag()
    names = {
        "dead": f"{sm.TMP_PREFIX}{host}-{_dead_pid()}-abc",
        "alive": f"{sm.TMP_PREFIX}{host}-{os.getpid()}-abc",
        "other_host": f"{sm.TMP_PREFIX}elsewhere-{_dead_pid()}-abc",
        "old_other_host": f"{sm.TMP_PREFIX}elsewhere-1-abc",
    }
    for name in names.values():
        (tmp_path / name).mkdir()
    old = time.time() - sm.STALE_TMP_SECONDS - 60
    os.utime(tmp_path / names["old_other_host"], (old, old))
    removed = sm.clean_stale_tmp(tmp_path)
    assert sorted(removed) == sorted([names["dead"], names["old_other_host"]])
    assert sorted(os.listdir(tmp_path)) == sorted([names["alive"], names["other_host"]])


# ---------------------------------------------------------------------- paths
@pytest.mark.parametrize("bad", ["saved_models/a\x00b", "saved_models/a\nb", "", "   ",
                                 "saved_models/.tmp-export-x"])
def test_unsafe_export_paths_are_refused(bad):
    with pytest.raises(sm.ExportError):
        sm.validate_export_dir(bad)


@pytest.mark.parametrize("good", ["../x", "a/../b", "saved_models/../models/x"])
def test_sibling_export_paths_are_used_as_typed(good):
    assert sm.validate_export_dir(good) == good


def _tiny_module() -> ServingModule:
    vocabs = Vocabularies.build(Interactions.from_columns(
        {"user_id": ["u1", "u2", "u3"], "item_id": ["i1", "i2", "i1"]}))
    module = ServingModule(vocabs)
    module.track("w", tf.Variable(np.arange(len(vocabs.item) * 4, dtype=np.float32)))

    def predict_rating(user_id, item_id):
        idx = module.item_index(item_id) + 0 * module.user_index(user_id)
        return {"rating": tf.clip_by_value(tf.gather(module.w, idx), 1.0, 5.0)}

    module.add_signature("predict_rating", predict_rating, [USER_ID_SPEC, ITEM_ID_SPEC],
                         default=True, task="rating")
    return module


@pytest.fixture(scope="module")
def one_export(tmp_path_factory):
    base = tmp_path_factory.mktemp("exp")
    return Path(sm.export(_tiny_module(), base / "model", metadata={"data": "x"},
                          metrics={"test_rmse": 1.0}))


def test_relative_paths_stay_relative_absolute_only_when_given(one_export, tmp_path,
                                                               monkeypatch):
    monkeypatch.chdir(tmp_path)
    module = _tiny_module()
    path = sm.export(module, "saved_models/rel")
    assert path == os.path.join("saved_models", "rel", "1")  # not made absolute
    assert (tmp_path / "saved_models" / "rel" / "1" / "saved_model.pb").is_file()
    assert sm.validate_export_dir(str(tmp_path / "abs")) == str(tmp_path / "abs")
    # "~" is a folder name like any other: never expanded to the home folder
    assert sm.validate_export_dir("~/x") == "~/x"
    with pytest.raises(sm.ExportError, match="version folder"):
        sm.export(module, one_export)  # exporting *into* a version would nest versions
    assert sorted(os.listdir(tmp_path)) == ["saved_models"]


def test_cli_refuses_a_bad_out_before_training(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    status = cli.main(["train", "--data", "synthetic?num_users=5", "--out", "bad\nname"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and "control characters" in err[0]
    assert os.listdir(tmp_path) == []


# ---------------------------------------------------------------------- broken exports
def _flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: max(1, path.stat().st_size // 2)])


def _data_file(version: Path) -> Path:
    return next((version / "variables").glob("variables.data-*"))


EXPORT_DAMAGE = {
    "truncated saved_model.pb": (lambda v: _truncate(v / "saved_model.pb"), "saved_model.pb"),
    "flipped byte in saved_model.pb": (lambda v: _flip(v / "saved_model.pb"),
                                       "saved_model.pb"),
    "truncated variables data": (lambda v: _truncate(_data_file(v)), "variables.data"),
    "flipped byte in variables data": (lambda v: _flip(_data_file(v)), "variables.data"),
    "deleted variables.index": (lambda v: (v / "variables" / "variables.index").unlink(),
                                "variables.index"),
    "metadata not JSON": (lambda v: (v / "assets.extra" / "metadata.json").write_bytes(
        b"\xff{not json"), "metadata"),
    "metadata a list": (lambda v: (v / "assets.extra" / "metadata.json").write_text("[1]"),
                        "metadata"),
    "edited metrics.json": (lambda v: (v / "assets.extra" / "metrics.json").write_text(
        '{"test_rmse": 0.1}'), "metrics.json"),
}


@pytest.mark.parametrize("damage", sorted(EXPORT_DAMAGE))
def test_damaged_export_fails_with_one_clear_message(one_export, tmp_path, capsys, damage):
    copy = tmp_path / "m" / "1"
    shutil.copytree(one_export, copy)
    hurt, names = EXPORT_DAMAGE[damage]
    hurt(copy)
    with pytest.raises(sm.ExportError, match=names.replace(".", r"\.")):
        sm.load_export(tmp_path / "m")
    status = cli.main(["predict", "--model", str(tmp_path / "m"), "--user", "u1",
                       "--item", "i1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(err) == 1 and err[0].startswith("tfrec-p5: error: ")


def test_export_without_checksums_still_fails_cleanly_when_truncated(one_export, tmp_path):
    """Exports written before checksums existed: TF's own error, wrapped in one line."""
    copy = tmp_path / "m" / "1"
    shutil.copytree(one_export, copy)
    meta_path = copy / "assets.extra" / "metadata.json"
    meta = json.loads(meta_path.read_text())
    del meta[sm.FILES_KEY]
    meta_path.write_text(json.dumps(meta))
    _truncate(_data_file(copy))
    with pytest.raises(sm.ExportError, match="cannot load SavedModel") as err:
        sm.load_export(copy)
    assert "\n" not in str(err.value)


def test_intact_export_loads(one_export):
    loaded, version_dir, meta = sm.load_export(one_export.parent)
    assert version_dir == str(one_export) and meta["metrics"] == {"test_rmse": 1.0}
    assert set(meta[sm.FILES_KEY]) >= {"saved_model.pb", "variables/variables.index",
                                       "assets.extra/metrics.json"}


# ---------------------------------------------------------------------- broken backbones
@pytest.fixture(scope="module")
def one_backbone(tmp_path_factory):
    from tfrec_p5.data import load

    table = load("synthetic", num_users=30, num_items=20, num_interactions=200)
    backbone = fresh_backbone(table, PretrainConfig(embedding_dim=4))
    out = tmp_path_factory.mktemp("bb") / "backbone"
    save_backbone(backbone, out, manifest={"data": "synthetic"})
    return out


BACKBONE_DAMAGE = {
    "truncated tower weights": lambda b: _truncate(next((b / "user_tower").glob(
        "weights.data-*"))),
    "flipped byte in tower weights": lambda b: _flip(next((b / "item_tower").glob(
        "weights.data-*"))),
    "truncated vocabulary": lambda b: _truncate(b / "vocab" / "user_vocab.json"),
    "vocabulary swapped for garbage": lambda b: (b / "vocab" / "item_vocab.json")
    .write_bytes(b"\x80\x04\x95 pickle?"),
    "truncated side-feature npz": lambda b: _truncate(b / "side_features" /
                                                      "side_features.npz"),
    "tower config edited": lambda b: (b / "user_tower" / "tower.json").write_text(
        json.dumps({"class": "UserTower", "config": {"num_ids": 3}})),
    "deleted tower index": lambda b: (b / "item_tower" / "weights.index").unlink(),
    "manifest truncated": lambda b: _truncate(b / "manifest.json"),
    "manifest deleted (save killed half-way)": lambda b: (b / "manifest.json").unlink(),
}


@pytest.mark.parametrize("damage", sorted(BACKBONE_DAMAGE))
def test_damaged_backbone_fails_with_one_clear_message(one_backbone, tmp_path, capsys,
                                                       damage):
    copy = tmp_path / "bb"
    shutil.copytree(one_backbone, copy)
    BACKBONE_DAMAGE[damage](copy)
    with pytest.raises(BackboneError) as err:
        load_backbone(copy)
    assert str(copy) in str(err.value)
    status = cli.main(["finetune", "--backbone", str(copy), "--data",
                       "synthetic?num_users=30&num_items=20&num_interactions=200",
                       "--out", str(tmp_path / "ft")])
    out = capsys.readouterr().err.strip().splitlines()
    assert status == 1 and len(out) == 1 and out[0].startswith("tfrec-p5: error: ")
    assert not (tmp_path / "ft").exists()


def test_backbone_without_checksums_still_fails_cleanly(one_backbone, tmp_path):
    copy = tmp_path / "bb"
    shutil.copytree(one_backbone, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    del manifest["checksums"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert load_backbone(copy).manifest["data"] == "synthetic"  # intact: still loads
    _truncate(copy / "side_features" / "side_features.npz")     # zipfile.BadZipFile inside
    with pytest.raises(BackboneError, match="side_features"):
        load_backbone(copy)
    (copy / "user_tower" / "tower.json").write_text(json.dumps(
        {"class": "UserTower", "config": {**json.loads(json.dumps({"num_ids": 31}))}}))
    with pytest.raises(BackboneError):
        load_backbone(copy)
