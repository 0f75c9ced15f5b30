"""What a trainer asks of the training loop, read without training.

``fit_calls(monkeypatch, module)`` replaces ``module.fit`` (a trainer module's name for
``tfrec_p5.training.fit``) by a spy that records its keyword arguments and raises
``FitCalled``, so a test sees what the trainer would train with in the time it takes to
build the model:

    asked = fit_calls(monkeypatch, sequential_module)
    with pytest.raises(FitCalled):
        train_sequential(train, validation, config)
    assert asked[0]["ema_momentum"] == config.ema_momentum
"""

from __future__ import annotations

from types import ModuleType
from typing import Any

import pytest


class FitCalled(Exception):
    """Raised by the spy in place of training."""


def fit_calls(monkeypatch: pytest.MonkeyPatch, module: ModuleType) -> list[dict[str, Any]]:
    asked: list[dict[str, Any]] = []

    def spy(*args, **kwargs):
        asked.append(kwargs)
        raise FitCalled
    monkeypatch.setattr(module, "fit", spy)
    return asked
