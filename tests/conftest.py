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
