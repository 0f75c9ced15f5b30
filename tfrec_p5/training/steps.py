"""Keras traces a model's train, test and predict step once per ``fit``, not twice, and
without autograph.

Why: with ``steps_per_execution > 1`` Keras runs the steps as a ``tf.range`` loop, and
autograph traces the loop body twice (once to learn what the loop returns). The step is
most of the graph, so tracing, the largest cost of a short ``fit``, nearly doubled. Here
each step is a ``tf.function`` of its own: the second trace of the loop calls the graph
the first one made. The step is traced with ``autograph=False``: autograph rewrites the
source of every function and layer a step calls (29 of the 40 conversions in a short
``train --task all``), and the steps here branch on Python values only, never on tensors.

    model.compile(optimizer="adam", loss="mse", steps_per_execution=16)
    trace_steps_once(model)        # after every compile
    model.fit(dataset, epochs=3)   # each step traced once
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import tensorflow as tf

__all__ = ["trace_steps_once"]

_STEPS = {"train_step": "train_function", "test_step": "test_function",
          "predict_step": "predict_function"}


def trace_steps_once(model: tf.keras.Model) -> None:
    """Wrap ``model.train_step``, ``test_step`` and ``predict_step`` so each is traced
    once per Keras ``train_function`` / ``test_function`` / ``predict_function``, without
    autograph (a tensor-valued ``if`` in a step fails at tracing, loudly).

    The traced step belongs to the Keras function it was traced for: a new ``compile``
    (a new optimizer, loss or metrics) makes Keras build a new function, and so a new
    step. The step runs unwrapped when the model runs eagerly or under a distribution
    strategy, whose gradient all-reduce cannot sit in a nested ``tf.function``.
    """
    for step_name, function_name in _STEPS.items():
        # Bypass Keras' attribute tracking: checkpoints and SavedModels leave these out.
        object.__setattr__(model, step_name,
                           _traced_once(model, getattr(type(model), step_name),
                                        function_name))


def _traced_once(model: tf.keras.Model, step: Callable[[Any, Any], Any],
                 function_name: str) -> Callable[[Any], Any]:
    traced: dict[str, Any] = {}

    def run_step(data):
        if model.run_eagerly or tf.distribute.has_strategy():
            return step(model, data)
        owner = getattr(model, function_name)
        if "fn" not in traced or traced["owner"] is not owner:
            traced.update(owner=owner, fn=tf.function(lambda batch: step(model, batch),
                                                       autograph=False))
        return traced["fn"](data)

    return run_step
