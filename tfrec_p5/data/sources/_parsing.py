"""Shared checks for the file sources: bad-line policy and strict field parsing.

Why: every file format must reject the same kinds of bad input (wrong field count, a
rating that is not a finite number in range, an empty ID, an unparsable timestamp) with a
``DataError`` that names file and line, or — only when the caller asks with
``on_bad_lines="skip"`` — drop them and say how many in one log line. Nothing is dropped
silently.

The rules (fuzzed with hypothesis in ``tests/test_reliability_fuzz.py``):

* **IDs**: surrounding whitespace is removed; empty, longer than ``MAX_ID_CHARS`` or
  containing a control character (U+0000–U+001F, U+007F–U+009F: NUL would be silently
  dropped by numpy's fixed-width strings, merging two IDs) is a bad line.
* **Ratings**: an ASCII decimal or exponent literal (``4``, ``4.5``, ``+.5``, ``45e-1``);
  ``1_000``, ``٣``, ``0x4``, NaN, infinity and anything beyond float32 are bad lines (the
  table stores float32, where ``1e39`` would become ``inf``).
* **Timestamps**: an ASCII integer, or a decimal literal with an integral value
  (``978300760.0``), within int64; parsed exactly (no float rounding).
* **Text**: ``iter_text_lines`` decodes line by line, so a byte sequence that is not
  valid in the file's encoding is a ``DataError`` naming *that* line (always, also with
  ``on_bad_lines=skip``: the whole file is probably in another encoding). A UTF-8
  byte-order mark is removed; ``\n``, ``\r\n`` and ``\r`` all end a line.
* Repeated (user, item) events are kept: they are a log, and the splits keep all events
  of a pair on one side.

    bad = BadLines("ratings.csv", "skip")
    rating = parse_rating("4.5", bad, line=7, rating_range=(1, 5))   # 4.5
    bad.report()          # logs "ratings.csv: skipped 0 bad lines" only if any were skipped
"""

from __future__ import annotations

import codecs
import logging
import math
import os
import re
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation

import numpy as np

from tfrec_p5.data.errors import DataError

log = logging.getLogger("tfrec_p5.data")

ON_BAD_LINES = ("error", "skip")
#: Longest accepted ID: numpy stores IDs as fixed-width strings, so one absurdly long ID
#: (a corrupt line) would multiply the memory of the whole column.
MAX_ID_CHARS = 1024
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_NUMBER = re.compile(r"[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|[+-]?(?:nan|inf|infinity)",
                     re.ASCII | re.IGNORECASE)
_INTEGER = re.compile(r"[+-]?\d+", re.ASCII)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64 = (-(2 ** 63), 2 ** 63 - 1)
UTF8_BOM = "\ufeff"


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


def check_id(value: str, bad: BadLines, line: int, field: str) -> str:
    """``value`` (already stripped) if it is an acceptable ID, else ``bad.bad(...)``."""
    if not value:
        bad.bad(f"empty {field}", line, field)
    if len(value) > MAX_ID_CHARS:
        bad.bad(f"{field} is {len(value)} characters long (at most {MAX_ID_CHARS})", line,
                field)
    if CONTROL_CHARS.search(value):
        bad.bad(f"{field} {value[:40]!r} contains a control character", line, field)
    return value


def parse_id(text: str, bad: BadLines, line: int, field: str) -> str:
    return check_id(text.strip(), bad, line, field)


def parse_rating(text: str, bad: BadLines, line: int,
                 rating_range: tuple[float, float] | None, field: str = "rating") -> float:
    stripped = text.strip()
    if not _NUMBER.fullmatch(stripped):
        bad.bad(f"{field} {text[:40]!r} is not a number", line, field)
    value = float(stripped)
    if not math.isfinite(value):
        bad.bad(f"{field} {text!r} is not finite", line, field)
    if abs(value) > _FLOAT32_MAX:
        bad.bad(f"{field} {text!r} is too large (ratings are stored as float32)", line,
                field)
    if rating_range is not None and not rating_range[0] <= value <= rating_range[1]:
        bad.bad(f"{field} {value:g} is outside the declared range "
                f"[{rating_range[0]:g}, {rating_range[1]:g}]", line, field)
    return value


def parse_timestamp(text: str, bad: BadLines, line: int, field: str = "timestamp") -> int:
    text = text.strip()
    too_big = _INT64[1] + 1
    value = None
    if _INTEGER.fullmatch(text):
        value = int(text) if len(text) <= 21 else too_big  # int() of 5000 digits raises
    elif _NUMBER.fullmatch(text):
        try:
            d = Decimal(text)
            if d.is_finite() and d == d.to_integral_value():
                value = int(d) if d.adjusted() <= 19 else too_big
        except InvalidOperation:
            value = None
    if value is None:
        bad.bad(f"{field} {text[:40]!r} is not an integer (seconds since the epoch)", line,
                field)
    if not _INT64[0] <= value <= _INT64[1]:
        bad.bad(f"{field} {text[:40]!r} is out of the int64 range", line, field)
    return value


def iter_text_lines(path: str | os.PathLike, encoding: str, *,
                    keepends: bool = False) -> Iterator[tuple[int, str]]:
    """``(line number, text)`` of a text file, decoded one line at a time.

    Why not ``open(path, encoding=...)``: Python decodes 8 KB chunks ahead of the line
    being parsed, so a bad byte sequence surfaces as a ``UnicodeDecodeError`` at an
    unrelated line (or before an earlier bad row). Here it is a ``DataError`` naming the
    line that holds it. Lines end at ``\n``, ``\r\n`` or ``\r`` (as in text mode); a
    leading UTF-8 byte-order mark is removed; ``keepends`` keeps the line endings (the
    ``csv`` module needs them).

        for lineno, text in iter_text_lines("u.data", "latin-1"):
            ...
    """
    probe = "a\r\n".encode(encoding)  # utf-8-sig prepends its BOM: compare the end
    if not probe.endswith(b"a\r\n"):  # not ASCII-compatible (UTF-16...): decode whole
        yield from _iter_text_lines_wide(path, encoding, keepends)
        return
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    lineno = 0
    with open(path, "rb") as f:
        for raw in f:
            for piece in raw.splitlines(keepends=True):
                lineno += 1
                try:
                    text = decoder.decode(piece)
                except UnicodeDecodeError as err:
                    raise _decode_error(path, lineno, encoding, err) from err
                if lineno == 1 and text.startswith(UTF8_BOM):
                    text = text[1:]
                yield lineno, text if keepends else text.rstrip("\r\n")
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError as err:
            raise _decode_error(path, max(lineno, 1), encoding, err) from err


def _iter_text_lines_wide(path, encoding: str, keepends: bool) -> Iterator[tuple[int, str]]:
    try:
        with open(path, encoding=encoding, newline="") as f:
            text = f.read()
    except UnicodeDecodeError as err:
        raise _decode_error(path, None, encoding, err) from err
    text = text[1:] if text.startswith(UTF8_BOM) else text
    for lineno, line in enumerate(re.split(r"(?<=\r\n)|(?<=\r)(?!\n)|(?<=\n)", text), 1):
        if line:
            yield lineno, line if keepends else line.rstrip("\r\n")


def _decode_error(path, line: int | None, encoding: str, err: UnicodeDecodeError) -> DataError:
    hint = "encoding=latin-1" if encoding.lower().replace("_", "-") != "latin-1" else \
        "the encoding option"
    return DataError(f"not valid {encoding} text ({err.reason}); pass {hint} (or the "
                     "file's encoding)", path=str(path), line=line)
