"""What every serving signature promises at its boundary: checked inputs, explicit padding.

Why: a SavedModel is called by clients we never see (TF Serving over REST or gRPC,
``saved_model_cli``, a notebook). Neither TF Serving nor a loaded signature checks a
request's shapes against the signature, so a ``[2]`` user list with a ``[3]`` item list
used to fail deep inside the towers (``ConcatOp : Dimension 0 in both shapes must be
equal``), and a top-k list with fewer servable items than ``k`` was filled with whatever
``tf.math.top_k`` found next -- for ``recommend``, the user's own training items at score
``-inf``. Both rules live here, once, for every signature:

* **Inputs** (``checked_signature``, applied by ``ServingModule.add_signature``): every
  input has the rank of its declared spec (``user_id [B]``, ``item_ids [B, n]``, ...) and
  all inputs of one request share the batch size ``B``. Otherwise the call fails at once
  with ``InvalidArgumentError`` naming the signature and its inputs::

      predict_rating(user_id=["u1", "u2"], item_id=["i1", "i2", "i3"])
      # assertion failed: [predict_rating: user_id and item_id must be 1-D of the same
      #                    length, got [2] and [3]]

* **Top-k outputs** (``top_k_or_pad``): items that must not be served (seen, OOV, empty
  hash buckets) are scored ``-inf`` before ``top_k``; if fewer than ``k`` servable items
  remain, the tail is padding: item ID ``PAD_ITEM_ID`` (``""``, never a real ID) with
  score ``PAD_SCORE`` (the lowest float32: sorts last and, unlike ``-inf``, is valid
  JSON). ``drop_padding`` turns such a row into the real items only::

      top_k_or_pad(tf.constant([[0.5, -np.inf, 0.2]]), 3, tf.constant(["a", "b", "c"]))
      # {"item_ids": [[b"a", b"c", b""]], "scores": [[0.5, 0.2, -3.4e38]]}
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import numpy as np
import tensorflow as tf

PAD_ITEM_ID = ""
"""Item ID of a padding entry in a fixed-size top-k output: "no item here"."""
PAD_SCORE = float(np.finfo(np.float32).min)
"""Score of a padding entry: below every real score, finite (strict JSON can carry it)."""


# ---------------------------------------------------------------------- inputs
def relaxed_spec(spec: tf.TensorSpec) -> tf.TensorSpec:
    """``spec`` with an unknown shape: what the exported function actually declares.

    Why: with a declared ``[None]`` input, TensorFlow treats the rank as known, folds
    ``tf.rank`` to a constant, and a scalar or 2-D request slips past any check. An
    unknown-rank placeholder keeps the check real; ``check_shapes`` then restores the
    declared rank for the code behind it.
    """
    return tf.TensorSpec(None, spec.dtype, name=spec.name)


def shape_rule(signature: str, specs: Sequence[tf.TensorSpec]) -> str:
    """The sentence an input-shape error starts with, e.g. for ``predict_rating``:
    ``"predict_rating: user_id and item_id must be 1-D of the same length"``."""
    names = [s.name for s in specs]
    ranks = [s.shape.rank for s in specs]
    if len(specs) == 1:
        return f"{signature}: {names[0]} must be {ranks[0]}-D"
    joined = " and ".join(names)
    if len(set(ranks)) == 1 and ranks[0] == 1:
        return f"{signature}: {joined} must be 1-D of the same length"
    if len(set(ranks)) == 1:
        return (f"{signature}: {joined} must be {ranks[0]}-D with the same first "
                "(batch) dimension")
    parts = [f"{names[0]} must be {ranks[0]}-D"] + [f"{n} {r}-D" for n, r in
                                                     zip(names[1:], ranks[1:], strict=True)]
    return f"{signature}: {', '.join(parts)}, with the same first (batch) dimension"


def _shape_text(tensor: tf.Tensor) -> tf.Tensor:
    """``"[2, 3]"`` for a ``[2, 3]`` tensor, ``"[]"`` for a scalar (a string tensor)."""
    dims = tf.strings.as_string(tf.shape(tensor))
    return tf.strings.join(["[", tf.strings.reduce_join(dims, separator=", "), "]"])


def check_shapes(signature: str, specs: Sequence[tf.TensorSpec],
                 tensors: Sequence[tf.Tensor]) -> list[tf.Tensor]:
    """``tensors`` after an in-graph check against ``specs`` (rank each, one batch size).

    Returns the tensors with their declared rank set statically, so the code behind the
    boundary sees ``[None]`` / ``[None, None]`` again. Use inside a ``tf.function``
    traced with ``relaxed_spec`` inputs; ``checked_signature`` does both.
    """
    ok = tf.constant(True)
    first_dims = []
    for spec, tensor in zip(specs, tensors, strict=True):
        ok = tf.logical_and(ok, tf.equal(tf.rank(tensor), spec.shape.rank))
        # The first dimension without indexing a scalar's empty shape (-1 for a scalar).
        first_dims.append(tf.concat([tf.shape(tensor), [-1]], axis=0)[0])
    for dim in first_dims[1:]:
        ok = tf.logical_and(ok, tf.equal(dim, first_dims[0]))
    message = tf.strings.join(
        [shape_rule(signature, specs) + ", got ",
         tf.strings.reduce_join(tf.stack([_shape_text(t) for t in tensors]),
                                separator=" and ")])
    check = tf.debugging.Assert(ok, [message])
    out = []
    with tf.control_dependencies([check]):
        for spec, tensor in zip(specs, tensors, strict=True):
            checked = tf.identity(tensor)
            checked.set_shape(spec.shape)  # static only: nothing runs before the check
            out.append(checked)
    return out


def with_parameters(fn: Callable[..., dict[str, tf.Tensor]],
                    names: Sequence[str]) -> Callable[..., dict[str, tf.Tensor]]:
    """``fn(*tensors)`` as a function of named parameters ``names`` (in that order).

    Why: a signature's request arrives by input name; ``tf.function`` maps names to
    positions through the Python parameters, and a ``*args`` function has none (its
    inputs would be matched in another order). ``score_new_items`` has one input per item
    feature, known only when the model is exported:

        with_parameters(lambda user_id, *features: ..., ["user_id", "genres", "year"])
    """
    def named(*args: tf.Tensor, **kwargs: tf.Tensor) -> dict[str, tf.Tensor]:
        bound = named.__signature__.bind(*args, **kwargs)
        return fn(*bound.arguments.values())

    named.__signature__ = inspect.Signature(
        [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in names])
    named.__name__ = getattr(fn, "__name__", "signature")
    return named


def checked_signature(signature: str, fn: Callable[..., dict[str, tf.Tensor]],
                      specs: Sequence[tf.TensorSpec],
                      batch_groups: Sequence[Sequence[int]] | None = None,
                      ) -> Callable[..., dict[str, tf.Tensor]]:
    """``fn`` behind ``check_shapes``: same parameters (by position or name), same result.

    A malformed request then fails at the signature boundary with an error naming the
    signature and its inputs, not deep inside the towers:

        tf.function(checked_signature("recommend", recommend, [USER_ID_SPEC]),
                    input_signature=[relaxed_spec(USER_ID_SPEC)])

    ``batch_groups``: positions of the inputs that share a first dimension, one list per
    group (default: all of them). ``score_new_items`` takes ``B`` users and ``n`` items:
    ``[[0], [1, 2, ...]]``.
    """
    groups = [list(range(len(specs)))] if batch_groups is None else \
        [list(g) for g in batch_groups]
    if sorted(i for g in groups for i in g) != list(range(len(specs))):
        raise ValueError(f"{signature}: batch_groups must name every input once")
    parameters = inspect.signature(fn)

    @functools.wraps(fn)
    def checked(*args: tf.Tensor, **kwargs: tf.Tensor) -> dict[str, tf.Tensor]:
        given = list(parameters.bind(*args, **kwargs).arguments.values())
        tensors = list(given)
        for group in groups:
            checked_group = check_shapes(signature, [specs[i] for i in group],
                                         [given[i] for i in group])
            for i, tensor in zip(group, checked_group, strict=True):
                tensors[i] = tensor
        return fn(*tensors)

    return checked


# ---------------------------------------------------------------------- top-k outputs
def top_k_or_pad(scores: tf.Tensor, k: int, item_tokens: tf.Tensor) -> dict[str, tf.Tensor]:
    """``{"item_ids", "scores"}`` ``[B, k]``: the best ``k`` columns of ``scores``, best first.

    ``scores`` ``[B, N]`` is ``-inf`` for every item that must not be served; column ``j``
    is item ``item_tokens[j]`` (``item_tokens`` ``[N]``), or ``item_tokens[b, j]`` in row
    ``b`` (``[B, N]``: candidates that differ per row, e.g. a merged list). Entries
    ``top_k`` can only fill with such items are padding (``PAD_ITEM_ID``, ``PAD_SCORE``),
    so a served list never holds them.
    """
    top = tf.math.top_k(scores, k=k)
    padding = tf.equal(top.values, tf.constant(-np.inf, top.values.dtype))
    ids = tf.gather(item_tokens, top.indices, batch_dims=1) \
        if item_tokens.shape.rank == 2 else tf.gather(item_tokens, top.indices)
    return {"item_ids": tf.where(padding, tf.constant(PAD_ITEM_ID), ids),
            "scores": tf.where(padding, tf.constant(PAD_SCORE, top.values.dtype),
                               top.values)}


def drop_padding(item_ids: np.ndarray, scores: np.ndarray,
                 k: int | None = None) -> list[list[tuple[str, float]]]:
    """Each row of a top-k output as ``[(item_id, score), ...]`` without padding.

    ``item_ids`` are decoded strings ``[B, k]``; at most ``k`` items per row are kept.

        drop_padding(np.array([["i3", "i9", ""]]), np.array([[2.5, 1.0, PAD_SCORE]]))
        # [[("i3", 2.5), ("i9", 1.0)]]
    """
    rows = []
    for ids, values in zip(item_ids, scores, strict=True):
        row = [(str(i), float(s)) for i, s in zip(ids, values, strict=True)
               if i != PAD_ITEM_ID]
        rows.append(row if k is None else row[:k])
    return rows
