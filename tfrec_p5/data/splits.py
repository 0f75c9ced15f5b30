"""Train / validation / test splits the way the field evaluates.

Why here, before the pipeline: vocabularies are built from the training split only, and
evaluation must never see a training pair. Every split here is deterministic for a seed and
keeps each (user, item) pair on one side only: repeated events of one pair go together.

    split = random_split(table, 0.8, seed=42)           # TFRS-tutorial style 80/20
    split = temporal_split(table, 0.8)                  # global time cut
    split = leave_one_out(table)                        # P5 / SASRec: last -> test
    train, test = split.train, split.test

``tfrs_split(table, path)`` reproduces the exact TFRS tutorial split of MovieLens-100K from
``tfrs_split_seed42.tsv``, so our numbers compare with the tutorials'.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import numpy as np

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import Interactions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """The parts of one split. ``validation`` is ``None`` when the method makes none."""

    train: Interactions
    test: Interactions
    validation: Interactions | None = None
    method: str = ""

    def parts(self) -> dict[str, Interactions]:
        out = {"train": self.train, "test": self.test}
        if self.validation is not None:
            out["validation"] = self.validation
        return out


def _pair_codes(table: Interactions) -> np.ndarray:
    """One integer per distinct (user, item) pair, in first-appearance-free order."""
    # Integer codes per column, then one int64 key per pair: same order as sorting the
    # (user, item) string pairs, without building millions of concatenated strings.
    if len(table) == 0:
        return np.zeros(0, dtype=np.int64)
    users = np.unique(table.user_id, return_inverse=True)[1].reshape(-1).astype(np.int64)
    items = np.unique(table.item_id, return_inverse=True)[1].reshape(-1).astype(np.int64)
    keys = users * (int(items.max()) + 1) + items
    return np.unique(keys, return_inverse=True)[1].reshape(-1)


def random_split(table: Interactions, fraction: float = 0.8, seed: int = 42,
                 validation_fraction: float = 0.0) -> Split:
    """Shuffle distinct (user, item) pairs with ``seed``; ``fraction`` of them → train.

    ``validation_fraction`` (of all pairs) is carved from the non-test part.
    """
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}", field="split")
    codes = _pair_codes(table)
    n_pairs = int(codes.max()) + 1 if len(codes) else 0
    perm = np.random.default_rng(seed).permutation(n_pairs)
    rank = np.empty(n_pairs, dtype=np.int64)
    rank[perm] = np.arange(n_pairs)
    r = rank[codes]
    n_train = int(round(fraction * n_pairs))
    n_val = int(round(validation_fraction * n_pairs))
    train_idx = np.flatnonzero(r < n_train - n_val)
    val_idx = np.flatnonzero((r >= n_train - n_val) & (r < n_train))
    test_idx = np.flatnonzero(r >= n_train)
    return Split(table.take(train_idx), table.take(test_idx),
                 table.take(val_idx) if n_val else None, method=f"random:{fraction}")


def carve_validation(train: Interactions, validation: Interactions | None, fraction: float,
                     seed: int = 42, by_time: bool = False
                     ) -> tuple[Interactions, Interactions | None]:
    """``(fit, validation)``: the given validation, or ``fraction`` of ``train``'s pairs
    carved off with ``random_split(seed)`` for early stopping (none when ``fraction`` is 0).
    ``by_time``: the latest ``fraction`` of the events instead (``temporal_split``), so a
    model tested on the future is also validated on it (new users and drift included).

    Every trainer uses this one rule, so two models given the same seed stop on the same
    rows and their numbers compare.
    """
    if validation is not None or fraction <= 0:
        return train, validation
    carved = (temporal_split(train, 1.0 - fraction) if by_time
              else random_split(train, 1.0 - fraction, seed=seed))
    log.info("carved %d validation rows from %d training rows", len(carved.test), len(train))
    return carved.train, carved.test


def temporal_split(table: Interactions, fraction: float = 0.8,
                   validation_fraction: float = 0.0) -> Split:
    """Global time cut: the earliest ``fraction`` of events → train, the rest → test.

    A pair is placed by its first event, so a later repeat stays with it.
    """
    if table.timestamp is None:
        raise DataError("temporal split needs a 'timestamp' column", path=table.source or None,
                        field="timestamp")
    if not 0.0 < fraction < 1.0:
        raise DataError(f"split fraction must be in (0, 1), got {fraction}", field="split")
    codes = _pair_codes(table)
    first = np.full(codes.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(first, codes, table.timestamp)
    t = first[codes]
    order = np.argsort(t, kind="stable")
    n = len(table)
    cut = int(round(fraction * n))
    vcut = int(round((fraction - validation_fraction) * n))
    t_cut = t[order[cut - 1]] if cut > 0 else t.min() - 1
    t_vcut = t[order[vcut - 1]] if vcut > 0 else t.min() - 1
    train_idx = np.flatnonzero(t <= (t_vcut if validation_fraction else t_cut))
    val_idx = np.flatnonzero((t > t_vcut) & (t <= t_cut)) if validation_fraction else None
    test_idx = np.flatnonzero(t > t_cut)
    return Split(table.take(train_idx), table.take(test_idx),
                 table.take(val_idx) if val_idx is not None else None,
                 method=f"temporal:{fraction}")


def leave_one_out(table: Interactions) -> Split:
    """Per user, in time order: last event → test, second last → validation, rest → train.

    The P5 / SASRec protocol. Users with fewer than 3 events stay wholly in train.
    Repeats of a (user, item) pair are collapsed to their first event (and counted in a
    log line) so that no pair can be both a training and a held-out item. Without a
    ``timestamp`` column the row order is the time order (right for files written in
    time order, such as the Amazon sequences; the CLI prints ``FILE_ORDER_NOTE``, see
    ``uses_file_order``).
    """
    n = len(table)
    ts = table.timestamp if table.timestamp is not None else np.arange(n)
    codes = _pair_codes(table)
    # Stable sort by (user, time, original row) and drop later repeats of a pair.
    order = np.lexsort((np.arange(n), ts, table.user_id))
    _, first_pos = np.unique(codes[order], return_index=True)
    keep = np.sort(first_pos)
    dropped = n - len(keep)
    if dropped:
        log.info("leave_one_out: collapsed %d repeated (user, item) events", dropped)
    order = order[keep]
    users = table.user_id[order]
    # Position from the end within each user's run.
    starts = np.r_[0, np.flatnonzero(users[1:] != users[:-1]) + 1]
    lengths = np.diff(np.r_[starts, len(users)])
    run_end = np.repeat(starts + lengths, lengths)
    from_end = run_end - np.arange(len(users))  # 1 = last event
    long_enough = np.repeat(lengths >= 3, lengths)
    test = order[long_enough & (from_end == 1)]
    val = order[long_enough & (from_end == 2)]
    train = order[~long_enough | (from_end > 2)]
    return Split(table.take(train), table.take(test), table.take(val), method="leave-one-out")


def hold_out_last(table: Interactions) -> tuple[Interactions, Interactions]:
    """``(rest, last)``: each user's last event by time (ties: file order) held out, the
    rest kept -- the next-item rule of validation, used by ``--task sequential`` and the
    joint model on splits that hold out no such event themselves.

    A user with a single event keeps it, and so does a user whose last item repeats an
    earlier event of theirs (it would be a training item, never ranked). On a
    ``leave_one_out`` split's training + validation parts it holds out that split's
    validation event of every user the split held one out for.

        fit, validation = hold_out_last(split.train)
    """
    n = len(table)
    ts = table.timestamp if table.timestamp is not None else np.arange(n)
    order = np.lexsort((np.arange(n), ts, table.user_id))
    users = table.user_id[order]
    change = users[1:] != users[:-1]
    hold = np.r_[change, True] & ~np.r_[True, change]  # last of two or more
    codes = _pair_codes(table)[order]
    hold &= np.bincount(codes, minlength=int(codes.max(initial=-1)) + 1)[codes] == 1
    return table.take(np.sort(order[~hold])), table.take(np.sort(order[hold]))


def first_events(table: Interactions) -> Interactions:
    """Each user's first event by time (ties: file order), in user order: the item that
    comes next after a user's history when ``table`` holds everything after a time cut.

        first_events(temporal_split(table, 0.8).test)   # one target per test user
    """
    order = (np.argsort(table.timestamp, kind="stable") if table.timestamp is not None
             else np.arange(len(table)))
    _, first = np.unique(table.user_id[order], return_index=True)
    return table.take(order[first])


def next_item_validation(table: Interactions, split: str
                         ) -> tuple[Interactions, Interactions]:
    """``(fit, validation)`` for next-item model selection, carved from the training part
    ``table`` by the rule of the ``split`` spec that made it, so validation asks what
    the test asks.

    ``temporal:F``: the same time cut again, inside ``table`` (``temporal_split(table,
    F)``): the model is validated on the first event after that cut of each user with
    events on both sides, as it is tested on the first event after the split's cut (new
    releases and drift included). Any other split: each user's last event
    (``hold_out_last``). ``fit + validation`` is always all of ``table`` (the refit's rows).

        fit, validation = next_item_validation(split.train, "temporal:0.8")
    """
    cut = _time_cut(split)
    if cut is not None and table.timestamp is not None:
        carved = temporal_split(table, cut)
        return carved.train, carved.test
    return hold_out_last(table)


def next_item_validation_rule(split: str) -> str:
    """What ``next_item_validation`` holds out under the ``split`` spec, as a phrase."""
    return ("the first event after the same time cut inside the training part"
            if _time_cut(split) is not None else "each user's last training event")


def _time_cut(split: str) -> float | None:
    """``F`` of a ``temporal:F`` split spec (default 0.8), else ``None``."""
    kind, _, arg = split.partition(":")
    return float(arg or 0.8) if kind == "temporal" else None


#: What the CLI prints when ``uses_file_order`` is true.
FILE_ORDER_NOTE = "leave-one-out: the data have no timestamps; using file order as time"
_LEAVE_ONE_OUT = ("leave-one-out", "leave_one_out", "loo")


def uses_file_order(spec: str, table: Interactions) -> bool:
    """Whether the split ``spec`` takes ``table``'s row order as time: ``leave-one-out``
    on data without timestamps (``temporal`` refuses such data instead).

    Why a question and not a refusal: sequence files (Amazon, S3-Rec) are written in
    time order and have no timestamps, and leave-one-out is their standard protocol; but
    a shuffled CSV would make "last item" arbitrary, so the user must be told.

        uses_file_order("leave-one-out", load("amazon:Beauty.txt"))   # True
    """
    return spec.partition(":")[0] in _LEAVE_ONE_OUT and table.timestamp is None


def tfrs_split(table: Interactions, path: str | os.PathLike) -> Split:
    """The exact TFRS-tutorial 80/20 split of MovieLens-100K, from ``tfrs_split_seed42.tsv``.

    ``table`` must be the MovieLens-100K table in ``u.data`` row order (as
    ``load("movielens:...")`` returns it); the file's ``udata_row`` column indexes it.
    """
    rows: dict[str, list[int]] = {"train": [], "test": []}
    with open(path, encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
        if header[:2] != ["split", "udata_row"]:
            raise DataError(f"unexpected header {header}", path=str(path), line=1)
        for lineno, line in enumerate(f, start=2):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 4 or parts[0] not in rows:
                raise DataError(f"malformed split line {line!r}", path=str(path), line=lineno)
            row = int(parts[1])
            if row >= len(table) or table.user_id[row] != parts[2] or \
                    table.item_id[row] != parts[3]:
                raise DataError("split row does not match the table (is it ML-100K in u.data "
                                "order?)", path=str(path), line=lineno)
            rows[parts[0]].append(row)
    return Split(table.take(np.array(rows["train"])), table.take(np.array(rows["test"])),
                 method="tfrs-seed42")


def parse_split(spec: str, table: Interactions, seed: int = 42) -> Split | None:
    """``random:0.8`` | ``temporal:0.8`` | ``leave-one-out`` | ``tfrs:PATH`` | ``none``."""
    kind, _, arg = spec.partition(":")
    try:
        if kind == "none":
            return None
        if kind == "random":
            return random_split(table, float(arg or 0.8), seed=seed)
        if kind == "temporal":
            return temporal_split(table, _time_cut(spec))
        if kind in _LEAVE_ONE_OUT:
            return leave_one_out(table)
        if kind == "tfrs":
            return tfrs_split(table, arg)
    except ValueError as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"bad split spec {spec!r}: {err}", field="split") from err
    raise DataError(f"unknown split {spec!r}; use random:F, temporal:F, leave-one-out, "
                    "tfrs:PATH or none", field="split")
