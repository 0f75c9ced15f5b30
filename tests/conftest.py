"""Shared fixtures. Importing tfrec_p5 first sets TF_USE_LEGACY_KERAS before TensorFlow."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import tfrec_p5  # noqa: F401  (must precede any TensorFlow import)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("TFREC_P5_SHARED_DATA", REPO.parent / "shared" / "data"))


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return path


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    return _shared("ml-100k")


@pytest.fixture(scope="session")
def beauty_file() -> Path:
    return _shared("amazon") / "Beauty.txt"


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    return _shared("ml-1m")


# The longest test files (a `--durations=0` run, summed per file), started first: with
# `make test`'s `--dist loadfile` each file runs whole on one worker, so a long file
# started last would leave the other workers idle at the end.
SLOWEST_FIRST = ("test_notebooks", "test_distribute", "test_references",
                 "test_no_silent_progress", "test_reliability_resume",
                 "test_pretraining_next_item", "test_sequential", "test_joint",
                 "test_rating_model", "test_export", "test_no_silent_serving",
                 "test_no_silent_errors", "test_register_tfds", "test_cost_curves")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        stem = item.path.stem
        return SLOWEST_FIRST.index(stem) if stem in SLOWEST_FIRST else len(SLOWEST_FIRST)

    items.sort(key=rank)  # stable: the order within a file, and of the rest, is kept
