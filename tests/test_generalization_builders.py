"""The generalization suite's data set builders (``benchmarks/generalization.py``, #20)
make what their names say: the 0–10 rescale, the 5-core filter, users with ≤ 8 events,
the first half of the items, and files the package's loaders read back."""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest

from tfrec_p5.data import load

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TFREC_P5_SHARED_DATA", REPO.parent / "shared" / "data"))

_spec = importlib.util.spec_from_file_location("generalization",
                                               REPO / "benchmarks" / "generalization.py")
gen = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(gen)


def test_rescale_maps_stars_to_0_10():
    assert gen.rescale_0_10(np.array([1, 2, 3, 4, 5])).tolist() == [0, 2, 5, 8, 10]


def test_k_core_iterates_until_every_user_and_item_has_k_rows():
    # u1 and u2 rate a, b; u3 rates a and c only: c has 1 row -> gone, then u3 has 1 -> gone.
    users = np.array([1, 1, 2, 2, 3, 3])
    items = np.array([10, 11, 10, 11, 10, 12])
    keep = gen.k_core(users, items, k=2)
    assert keep.tolist() == [True, True, True, True, False, False]
    assert not gen.k_core(users, items, k=3).any()


def test_short_users_and_first_half_items(tmp_path):
    seqs = {"1": ["1", "2", "3"], "2": [str(i) for i in range(1, 10)], "3": ["10", "9"]}
    assert set(gen.short_users(seqs, 8)) == {"1", "3"}
    half = gen.first_half_items(seqs)  # items 1..10 -> 1..5 (numeric, not "10" < "2")
    assert half == {"1": ["1", "2", "3"], "2": ["1", "2", "3", "4", "5"]}
    attrs = tmp_path / "attrs.json"
    attrs.write_text(json.dumps({str(i): [i] for i in range(1, 11)}))
    spec = gen.write_sequences(half, tmp_path / "half.txt", attrs)
    cut = json.loads((tmp_path / "half_item2attributes.json").read_text())
    assert sorted(cut, key=int) == ["1", "2", "3", "4", "5"]
    table = load(spec)
    assert len(table) == 8 and "item_attributes" in table.columns
    pairs = load(gen.write_pairs(half, tmp_path / "pairs.csv"))
    assert len(pairs) == 8 and pairs.rating is None


def test_ml100k_sparse10_is_a_5_core_on_0_10(tmp_path):
    if not (SHARED_DATA / "ml-100k" / "u.data").exists():
        pytest.skip("ML-100K not available")
    tasks, _ = gen.build("ml100k-sparse10", SHARED_DATA, tmp_path)
    table = load(tasks["rating"][1])
    assert set(np.unique(table.rating).tolist()) == {0.0, 2.0, 5.0, 8.0, 10.0}
    assert len(table) <= 25_000
    for ids in (table.user_id, table.item_id):
        assert np.unique(ids, return_counts=True)[1].min() >= 5
