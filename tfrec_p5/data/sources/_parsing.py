"""Shared checks for the file sources: bad-line policy and strict field parsing.

Why: every file format must reject the same kinds of bad input (wrong field count, a
rating that is not a finite number in range, an empty ID, an unparsable timestamp) with a
``DataError`` that names file and line, or — only when the caller asks with
``on_bad_lines="skip"`` — drop them and say how many in one log line. Nothing is dropped
silently.

    bad = BadLines("ratings.csv", "skip")
    rating = parse_rating("4.5", bad, line=7, rating_range=(1, 5))   # 4.5
    bad.report()          # logs "ratings.csv: skipped 0 bad lines" only if any were skipped
"""

from __future__ import annotations

import logging
import math
import os

from tfrec_p5.data.errors import DataError

log = logging.getLogger("tfrec_p5.data")

ON_BAD_LINES = ("error", "skip")


class SkipLine(Exception):
    """Raised by the parse helpers when a bad line is to be skipped (policy "skip")."""


class BadLines:
    """Applies the ``on_bad_lines`` policy: raise a ``DataError``, or count and skip."""

    def __init__(self, path: str | os.PathLike, policy: str = "error") -> None:
        if policy not in ON_BAD_LINES:
            raise DataError(f"on_bad_lines must be one of {ON_BAD_LINES}, got {policy!r}",
                            field="on_bad_lines")
        self.path = str(path)
        self.policy = policy
        self.skipped = 0
        self.first: str | None = None

    def bad(self, message: str, line: int | None = None, field: str | None = None):
        """Report a bad line: raises ``DataError`` ("error") or ``SkipLine`` ("skip")."""
        err = DataError(message, path=self.path, line=line, field=field)
        if self.policy == "error":
            raise err
        self.skipped += 1
        if self.first is None:
            self.first = str(err)
        raise SkipLine(str(err))

    def report(self) -> None:
        if self.skipped:
            log.warning("%s: skipped %d bad line(s) (on_bad_lines='skip'); first: %s",
                        self.path, self.skipped, self.first)


def parse_rating_range(value) -> tuple[float, float] | None:
    """``"1,5"`` / ``(1, 5)`` / ``None`` / ``"none"`` → ``(1.0, 5.0)`` or ``None``."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")):
        return None
    try:
        if isinstance(value, str):
            lo, hi = (float(v) for v in value.split(","))
        else:
            lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise DataError(f"rating_range must be 'LOW,HIGH', got {value!r}",
                        field="rating_range") from err
    if not (math.isfinite(lo) and math.isfinite(hi) and lo <= hi):
        raise DataError(f"rating_range must be finite with LOW <= HIGH, got {value!r}",
                        field="rating_range")
    return lo, hi


def parse_id(text: str, bad: BadLines, line: int, field: str) -> str:
    value = text.strip()
    if not value:
        bad.bad(f"empty {field}", line, field)
    return value


def parse_rating(text: str, bad: BadLines, line: int,
                 rating_range: tuple[float, float] | None, field: str = "rating") -> float:
    try:
        value = float(text)
    except ValueError:
        bad.bad(f"{field} {text!r} is not a number", line, field)
    if not math.isfinite(value):
        bad.bad(f"{field} {text!r} is not finite", line, field)
    if rating_range is not None and not rating_range[0] <= value <= rating_range[1]:
        bad.bad(f"{field} {value:g} is outside the declared range "
                f"[{rating_range[0]:g}, {rating_range[1]:g}]", line, field)
    return value


def parse_timestamp(text: str, bad: BadLines, line: int, field: str = "timestamp") -> int:
    text = text.strip()
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        bad.bad(f"{field} {text!r} is not an integer (seconds since the epoch)", line, field)
    return int(value)
