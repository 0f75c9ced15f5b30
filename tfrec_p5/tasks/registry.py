"""One registry that builds every task head from its options and the training data.

Why: the multi-task model, pretraining and fine-tuning all build heads. With one builder
per task, registered here, a head is constructed the same way wherever it trains, and a
new task is one ``register_head`` call, not an ``elif`` in each trainer.

A builder takes the head's *options* (what the user configured: a ``RetrievalOptions``,
the rating model's ``RatingConfig``, a ``RankingOptions``, the sequential config) and a
``HeadContext`` (what the data gives: vocabulary sizes, training histories, item
frequencies, rating statistics) and returns a ``Head``:

    context = HeadContext.from_table(train, vocabs, user_dim=user_tower.dim)
    heads = build_heads({"retrieval": RetrievalOptions(loss="squared"),
                         "rating": RatingConfig()}, context)
    model = UnifiedModel(user_tower, item_tower, heads)

    @register_head("click")                  # a task of your own
    def _click(options, context):
        return ClickHead(**options)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from tfrec_p5.data.interactions import Interactions
from tfrec_p5.data.pipeline import Vocabularies
from tfrec_p5.tasks.base import Head
from tfrec_p5.tasks.next_item import NextItemTask
from tfrec_p5.tasks.ranking import RankingHead
from tfrec_p5.tasks.rating import RatingHead
from tfrec_p5.tasks.retrieval import HistoryEncoder, RetrievalHead, history_csr, item_frequencies

__all__ = ["HeadContext", "RankingOptions", "RetrievalOptions", "build_heads", "head_builders",
           "register_head"]

#: ``(options, context) -> Head``: how one task's head is built.
HeadBuilder = Callable[[Any, "HeadContext"], Head]
_BUILDERS: dict[str, HeadBuilder] = {}


@dataclass(frozen=True)
class HeadContext:
    """What a head may take from the training data (not from the user's options).

    Attributes:
      num_users, num_items: vocabulary sizes (row 0 = OOV).
      user_dim: width of the user tower's output (a history encoder matches it).
      seen_splits, seen_values: each user's training items (CSR, ``history_csr``).
      item_probabilities: training frequency of each item index (``item_frequencies``).
      global_mean: mean training rating (0 without ratings).
      rating_range: ``(low, high)`` for clipping predicted ratings, or ``None``.
      untrained_items: item indices no training pair mentions (a catalog's new items,
        ``catalog_items``); losses over the whole catalog leave them out.
      new_users_from: first user index with no training pair (a user catalog's new users,
        ``catalog_users``), or ``None``.
    """

    num_users: int
    num_items: int
    user_dim: int
    seen_splits: np.ndarray
    seen_values: np.ndarray
    item_probabilities: np.ndarray
    global_mean: float = 0.0
    rating_range: tuple[float, float] | None = None
    untrained_items: np.ndarray | None = None
    new_users_from: int | None = None

    @classmethod
    def from_table(cls, table: Interactions, vocabs: Vocabularies, *, user_dim: int,
                   global_mean: float | None = None,
                   rating_range: tuple[float, float] | None = None,
                   untrained_items: np.ndarray | None = None) -> HeadContext:
        """Histories, frequencies and (unless given) the mean rating of ``table``;
        ``untrained_items`` as the attribute."""
        splits, values = history_csr(table, vocabs)
        if global_mean is None:
            global_mean = float(np.mean(table.rating)) if table.rating is not None else 0.0
        return cls(len(vocabs.user), len(vocabs.item), int(user_dim), splits, values,
                   item_frequencies(table, vocabs), global_mean, rating_range,
                   untrained_items)


@dataclass(frozen=True)
class RetrievalOptions:
    """A retrieval head's options (``RetrievalHead`` documents each one).

    ``loss="squared"`` reads ``unobserved_weight``, ``l2`` and ``catalog_sample``;
    ``loss="softmax"`` reads ``temperature``, ``log_q``, ``remove_accidental_hits``,
    ``num_hard_negatives`` and ``full_softmax``. ``history`` adds the history encoder
    (``history_dropout``, ``leave_target_out``) to the query; ``cold_user_tower`` makes the
    user tower the query of new users only.
    """

    loss: str = "softmax"
    temperature: float | None = None
    log_q: bool = True
    remove_accidental_hits: bool = True
    num_hard_negatives: int | None = None
    full_softmax: bool = False
    unobserved_weight: float = 1.0
    l2: float = 0.0
    catalog_sample: int | None = None
    history: bool = False
    history_dropout: float = 0.5
    leave_target_out: bool = True
    use_user_tower: bool = True
    item_bias: bool = False
    cold_user_tower: bool = False


@dataclass(frozen=True)
class RankingOptions:
    """A ranking head's options: MLP widths and an optional listwise loss."""

    hidden_units: tuple[int, ...] = (256, 64)
    listwise: str | None = None


def register_head(task: str) -> Callable[[HeadBuilder], HeadBuilder]:
    """Decorator: ``builder(options, context) -> Head`` builds the heads of ``task``."""
    def add(builder: HeadBuilder) -> HeadBuilder:
        _BUILDERS[task] = builder
        return builder
    return add


def head_builders() -> dict[str, HeadBuilder]:
    """The registered builders, by task name."""
    return dict(_BUILDERS)


def build_heads(options: Mapping[str, Any], context: HeadContext) -> dict[str, Head]:
    """``{task: Head}`` for ``{task: options}``, built in the mapping's order."""
    unknown = sorted(set(options) - set(_BUILDERS))
    if unknown:
        raise ValueError(f"no head is registered for task(s) {unknown}; known: "
                         f"{sorted(_BUILDERS)}")
    return {task: _BUILDERS[task](opts, context) for task, opts in options.items()}


@register_head("rating")
def _rating(config: Any, context: HeadContext) -> RatingHead:
    """``config``: a ``RatingConfig`` (its head fields)."""
    return RatingHead.from_rating_config(config, context.num_users, context.num_items,
                                         global_mean=context.global_mean,
                                         rating_range=context.rating_range)


@register_head("retrieval")
def _retrieval(options: RetrievalOptions, context: HeadContext) -> RetrievalHead:
    history = HistoryEncoder(context.seen_splits, context.seen_values, context.num_items,
                             context.user_dim, dropout=options.history_dropout,
                             leave_target_out=options.leave_target_out) \
        if options.history else None
    return RetrievalHead(
        context.num_items, temperature=options.temperature,
        remove_accidental_hits=options.remove_accidental_hits,
        item_probabilities=context.item_probabilities if options.log_q else None,
        num_hard_negatives=options.num_hard_negatives, full_softmax=options.full_softmax,
        history=history, use_user_tower=options.use_user_tower,
        use_item_bias=options.item_bias, loss=options.loss,
        unobserved_weight=options.unobserved_weight, l2=options.l2,
        catalog_sample=options.catalog_sample,
        user_counts=np.diff(context.seen_splits) if options.loss == "squared" else None,
        untrained_items=context.untrained_items, cold_user_tower=options.cold_user_tower,
        new_users_from=context.new_users_from)


@register_head("ranking")
def _ranking(options: RankingOptions, context: HeadContext) -> RankingHead:
    return RankingHead(options.hidden_units, listwise=options.listwise)


@register_head("next_item")
def _next_item(config: Any, context: HeadContext) -> NextItemTask:
    """``config``: a ``SequentialConfig`` (its head fields)."""
    return NextItemTask(
        config.max_len, kind=config.encoder, num_blocks=config.num_blocks,
        num_heads=config.num_heads, ffn_dim=config.ffn_dim, dropout=config.dropout,
        loss=config.loss, num_negatives=config.num_negatives,
        item_probabilities=context.item_probabilities if config.loss == "sampled" else None,
        untrained_items=context.untrained_items)
