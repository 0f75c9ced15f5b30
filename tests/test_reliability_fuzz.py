"""Hostile input: every reader is fed random and malformed lines (hypothesis).

Each generated file either parses to exactly the rows an independent, deliberately simple
oracle (written here from the rules in ``tfrec_p5/data/sources/_parsing.py``, not from the
readers' code) says it should, or raises ``DataError`` naming the file and the line the
oracle expects — never another exception, never a silently dropped or altered row.
``on_bad_lines=skip`` must drop exactly the bad lines and say how many.

What the generators mix in: wrong field counts, non-numeric / NaN / inf / float32-overflow
ratings, ``1_000`` and non-ASCII digits, huge numeric IDs, 1100-character IDs, control
characters and NUL, empty and whitespace-only lines, quoted fields with separators and
newlines, byte-order marks, ``\\n`` / ``\\r\\n`` / ``\\r`` line endings, latin-1 bytes in
UTF-8 files, duplicate user-item pairs, duplicate MovieLens / Amazon IDs, an unclosed
quote, nulls and NaN in parquet columns, and out-of-range ``synthetic`` arguments.

Deterministic for CI: ``derandomize=True`` (examples derived from the test), no example
database. ``CASES`` is the number of examples per reader; each test asserts that it ran
them all (the counts are quoted in ``benchmarks/RESULTS.md``).
"""

from __future__ import annotations

import itertools
import logging
import math
import re
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tfrec_p5.data import DataError, load
from tfrec_p5.data.sources.movielens import OCCUPATION_100K

CASES = {"csv": 400, "movielens": 200, "amazon": 300, "parquet": 150, "synthetic": 80}
FUZZ = settings(derandomize=True, database=None, deadline=None, print_blob=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.filter_too_much])
F32_MAX = 3.4028234663852886e38
INT64 = (-(2 ** 63), 2 ** 63 - 1)
_counter = itertools.count()


# ---------------------------------------------------------------------- oracle rules
class Bad(Exception):
    """The oracle's verdict: this line is bad."""


def o_id(token: str) -> str:
    value = token.strip()
    if not value or len(value) > 1024 or any(ord(c) < 32 or 127 <= ord(c) <= 159
                                             for c in value):
        raise Bad(token)
    return value


_O_NUM = re.compile(r"[+-]?([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][+-]?[0-9]+)?")


def o_rating(token: str, low_high=None) -> np.float32:
    text = token.strip()
    if not _O_NUM.fullmatch(text):
        raise Bad(token)
    value = float(text)
    if not math.isfinite(value) or abs(value) > F32_MAX:
        raise Bad(token)
    if low_high is not None and not low_high[0] <= value <= low_high[1]:
        raise Bad(token)
    return np.float32(value)


def o_timestamp(token: str) -> int:
    text = token.strip()
    if re.fullmatch(r"[+-]?[0-9]+", text):
        value = int(text)
    elif _O_NUM.fullmatch(text):
        frac = Fraction(text)
        if frac.denominator != 1:
            raise Bad(token)
        value = int(frac)
    else:
        raise Bad(token)
    if not INT64[0] <= value <= INT64[1]:
        raise Bad(token)
    return value


def o_lines(text: str) -> list[str]:
    """Physical lines as text-mode Python splits them (``\\r\\n``, ``\\r``, ``\\n``)."""
    return re.split(r"\r\n|\r|\n", text)


def n_breaks(text: str) -> int:
    return len(re.findall(r"\r\n|\r|\n", text))


# ---------------------------------------------------------------------- token strategies
@st.composite
def mostly(draw, good, hostile, p: float = 0.8):
    """``good`` with probability ``p``, else ``hostile`` (hypothesis' own branch choice
    leans heavily towards the hostile side, which leaves too few clean files)."""
    return draw(good if draw(st.integers(0, 99)) < 100 * p else hostile)


SMALL_IDS = st.sampled_from(["u1", "u2", "i1", "i2", "7", "42", "Ö", "中"])
GOOD_IDS = st.one_of(
    SMALL_IDS, SMALL_IDS,                                      # duplicates are likely
    st.from_regex(r"[a-z][a-z0-9]{0,5}", fullmatch=True),
    st.integers(0, 10 ** 30).map(str),                         # huge numeric IDs
    st.sampled_from(["é", "🙂", "a,b", 'say "hi"', " u1 ", "\ufeffu1", "1.0", "nan",
                     "x" * 1024, "a;b", "\u2028sep"]))
HOSTILE_IDS = st.one_of(
    st.text(max_size=8),                                       # anything, incl. controls
    st.sampled_from(["", "   ", "a\x00b", "u1\x00", "\x85x", "x" * 1100, "two\nlines",
                     "cr\rx", "tab\tin", "\x7f"]))
ID_TOKENS = mostly(GOOD_IDS, HOSTILE_IDS)
GOOD_RATINGS = st.one_of(
    st.integers(1, 5).map(str),
    st.floats(1, 5).map(lambda x: f"{x:.2f}"),
    st.floats(1, 5).map(lambda x: f"{x:e}"),
    st.sampled_from([" 4 ", "+2", "45e-1", "3.", "5.000", "1E0"]))
HOSTILE_RATINGS = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(max_size=5),
    st.sampled_from(["abc", "", "nan", "NaN", "inf", "-inf", "Infinity", "1e400", "1e39",
                     "-1e39", "1_000", "٣", "0x4", "4,5", "4.5.1", "--1", "+", ".", "e5",
                     "4\t", "+.5", "６", "0", "5.5", "-3"]))
RATING_TOKENS = mostly(GOOD_RATINGS, HOSTILE_RATINGS)
GOOD_TS = st.one_of(
    st.integers(0, 2 * 10 ** 9).map(str),
    st.integers(0, 10 ** 9).map(lambda x: f"{x}.0"),
    st.sampled_from(["1e3", " 12 ", "-0", "+7", "12.000", "9223372036854775807", "1e18",
                     "-9223372036854775808"]))
HOSTILE_TS = st.one_of(
    st.integers(INT64[0] - 3, INT64[1] + 3).map(str),
    st.text(max_size=4),
    st.sampled_from(["1.5", "1e30", "abc", "", "٣", "1_000", "9" * 25, "0x10", "nan",
                     "9223372036854775808", "-9223372036854775809", "1e-3"]))
TS_TOKENS = mostly(GOOD_TS, HOSTILE_TS)


def _quote(field: str, sep: str) -> str:
    if any(c in field for c in (sep, '"', "\r", "\n")) or field != field.strip():
        return '"' + field.replace('"', '""') + '"'
    return field


def _unique_dir(factory) -> Path:
    return factory.getbasetemp() / f"fuzz{next(_counter)}"


class _Skipped(logging.Handler):
    """Collects the "skipped N bad line(s)" warnings of ``BadLines.report``."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: list[int] = []

    def emit(self, record: logging.LogRecord) -> None:
        m = re.search(r"skipped (\d+) bad line", record.getMessage())
        if m:
            self.counts.append(int(m.group(1)))


@pytest.fixture()
def skipped():
    handler = _Skipped()
    logger = logging.getLogger("tfrec_p5.data")
    logger.addHandler(handler)
    yield handler
    logger.removeHandler(handler)


def _expect(spec: str, expected, path: Path, handler: _Skipped, n_skipped: int) -> None:
    """Compare ``load(spec)`` with the oracle's verdict.

    ``expected`` is ``("error", line or None, path)`` or ``("rows", {column: list})``.
    """
    handler.counts.clear()
    if expected[0] == "error":
        _, line, where = expected
        with pytest.raises(DataError) as err:
            load(spec)
        assert err.value.path is not None and Path(err.value.path) == Path(where), str(err.value)
        assert err.value.line == line, (str(err.value), line)
        return
    table = load(spec)  # anything but a DataError or a table fails the test
    for column, values in expected[1].items():
        got = table.columns[column].tolist()
        assert got == list(values), (column, got[:5], list(values)[:5])
    assert handler.counts == ([n_skipped] if n_skipped else []), handler.counts


def _run(prop, name: str) -> None:
    """Run a hypothesis property and check that it saw ``CASES[name]`` examples."""
    seen = []
    prop(seen)
    print(f"{name}: {len(seen)} generated inputs")
    assert len(seen) >= CASES[name]


# ---------------------------------------------------------------------- CSV
@st.composite
def csv_files(draw):
    sep = draw(st.sampled_from([",", "\t", ";"]))
    term = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    columns = ["user_id", "item_id", "rating", "timestamp"]
    if draw(st.booleans()):
        columns.append("extra")
    columns = draw(st.permutations(columns))
    clean = draw(st.integers(0, 3)) == 0  # a quarter of the files: no bad line at all
    kinds = ["good", "good", "blank", "dup"] if clean else \
        ["row", "row", "row", "good", "good", "count", "blank", "badbytes", "dup"]
    good = st.fixed_dictionaries({"user_id": GOOD_IDS, "item_id": GOOD_IDS,
                                  "rating": GOOD_RATINGS, "timestamp": GOOD_TS,
                                  "extra": st.text(max_size=4)})
    hostile = st.fixed_dictionaries({"user_id": ID_TOKENS, "item_id": ID_TOKENS,
                                     "rating": RATING_TOKENS, "timestamp": TS_TOKENS,
                                     "extra": st.text(max_size=4)})
    records = draw(st.lists(st.tuples(
        st.sampled_from(kinds), good, hostile,
        st.integers(-2, 2), st.sampled_from(["", " ", "\t", "   "])), max_size=12))
    records = [(k, g if k in ("good", "dup") else h, d, b) for k, g, h, d, b in records]
    return {"sep": sep, "term": term, "columns": columns, "records": records,
            "bom": draw(st.booleans()),
            "unclosed": not clean and draw(st.integers(0, 9)) == 0,
            "final_newline": draw(st.booleans()),
            "policy": draw(st.sampled_from(["error", "skip"])),
            "range": draw(st.sampled_from([None, (1.0, 5.0)]))}


def _csv_case(case):
    """(file bytes, oracle verdict, number of lines skip drops)."""
    sep, term, columns = case["sep"], case["term"], case["columns"]
    n = len(columns)
    chunks = [sep.join(columns).encode() + term.encode()]
    line = 2
    good: list[dict] = []
    rows = {"user_id": [], "item_id": [], "rating": [], "timestamp": []}
    fatal = None
    n_bad = 0
    for kind, fields, delta, blank in case["records"]:
        if kind == "dup" and good:
            fields = good[-1]
        values = [fields[c] for c in columns]
        if kind == "count":
            values = values[:max(0, n + delta)] if delta < 0 else values + ["x"] * (delta + 1)
        if kind == "blank":
            text = blank
        else:
            text = sep.join(_quote(v, sep) for v in values)
            if values == [""]:
                text = '""'
        raw = (text + term).encode("utf-8")
        if kind == "badbytes":
            raw = b"\xe9" + raw  # latin-1 "é" in a UTF-8 file
        chunks.append(raw)
        start = line
        line += n_breaks(text + term)
        if fatal is not None:
            continue
        if kind == "badbytes":
            fatal = start
            continue
        fields_read = text.split(sep) if kind == "blank" else values
        if not fields_read or (len(fields_read) == 1 and not fields_read[0].strip()):
            continue  # blank line
        try:
            if len(fields_read) != n:
                raise Bad("count")
            pos = {c: i for i, c in enumerate(columns)}
            row = {"user_id": o_id(fields_read[pos["user_id"]]),
                   "item_id": o_id(fields_read[pos["item_id"]]),
                   "rating": o_rating(fields_read[pos["rating"]], case["range"]),
                   "timestamp": o_timestamp(fields_read[pos["timestamp"]])}
        except Bad:
            if case["policy"] == "error":
                fatal = start
            n_bad += 1
            continue
        good.append(fields)
        for k, v in row.items():
            rows[k].append(v)
    if case["unclosed"]:
        chunks.append(b'"u9' + sep.encode() + b"i9")
        if fatal is None:
            fatal = line
    data = b"".join(chunks)
    if not case["final_newline"] and not case["unclosed"] and data.endswith(term.encode()):
        data = data[:-len(term.encode())]
    if case["bom"]:
        data = b"\xef\xbb\xbf" + data
    if fatal is not None:
        return data, ("error", fatal), n_bad
    if not rows["user_id"]:
        return data, ("error", None), n_bad
    return data, ("rows", rows), n_bad


def test_csv_reader_fuzz(tmp_path_factory, skipped):
    @settings(FUZZ, max_examples=CASES["csv"])
    @given(case=csv_files())
    def prop(seen, case):
        seen.append(1)
        data, verdict, n_bad = _csv_case(case)
        folder = _unique_dir(tmp_path_factory)
        folder.mkdir()
        path = folder / "log.csv"
        path.write_bytes(data)
        sep = {"\t": "tab", ",": ",", ";": ";"}[case["sep"]]
        spec = f"csv:{path}?sep={sep}&on_bad_lines={case['policy']}"
        if case["range"]:
            spec += "&rating_range=1,5"
        expected = ("error", verdict[1], path) if verdict[0] == "error" else verdict
        _expect(spec, expected, path, skipped, n_bad)

    _run(prop, "csv")


def test_csv_latin1_option_reads_bytes_utf8_rejects(tmp_path):
    path = tmp_path / "l.csv"
    path.write_bytes("user_id,item_id\nu1,i1\nCafé,i2\n".encode("latin-1"))
    with pytest.raises(DataError, match="encoding=latin-1") as err:
        load(f"csv:{path}")
    assert err.value.line == 3  # the line holding the byte, not a read-ahead chunk
    assert load(f"csv:{path}?encoding=latin-1").user_id.tolist() == ["u1", "Café"]
    with pytest.raises(DataError, match="unknown encoding"):
        load(f"csv:{path}?encoding=klingon")


# ---------------------------------------------------------------------- MovieLens 100K
OCCUPATIONS = sorted(OCCUPATION_100K)


@st.composite
def movielens_folders(draw):
    def lines(kind_weights, make, min_size):
        return draw(st.lists(st.tuples(st.sampled_from(kind_weights), make),
                             min_size=min_size, max_size=8))

    flags = st.integers(0, 2 ** 19 - 1).map(lambda b: [str(b >> i & 1) for i in range(19)])
    bad_flags = st.tuples(flags, st.integers(0, 18), st.sampled_from([" 1", "2", "", "x"])
                          ).map(lambda t: t[0][:t[1]] + [t[2]] + t[0][t[1] + 1:])
    ids = st.sampled_from(["1", "2", "3"])
    movie = st.fixed_dictionaries({
        "id": mostly(ids, ID_TOKENS),
        "title": mostly(st.sampled_from(["Toy Story (1995)", "Café (1999)", "", "Ø"]),
                        st.text(max_size=8)),
        "flags": mostly(flags, bad_flags)})
    user = st.fixed_dictionaries({
        "id": mostly(ids, ID_TOKENS),
        "age": mostly(st.integers(0, 120).map(str),
                      st.sampled_from(["", "x", "²", "-1", "1234", " 30", "9" * 5000])),
        "gender": mostly(st.sampled_from(["M", "F"]), st.sampled_from(["x", "m", ""])),
        "occupation": mostly(st.sampled_from(OCCUPATIONS),
                             st.sampled_from(["doctor ", "astronaut", ""])),
        "zip": mostly(st.sampled_from(["55105", "T8H1N", "é"]), st.text(max_size=5))})
    rating = st.fixed_dictionaries({
        "user": mostly(ids, ID_TOKENS), "movie": mostly(ids, ID_TOKENS),
        "rating": RATING_TOKENS, "ts": TS_TOKENS})
    if draw(st.integers(0, 2)) == 0:  # a third of the folders: clean files
        good_ids = st.sampled_from(["1", "2", "3", "4", " 5 ", "é", "10000000000000000000"])
        movie = st.fixed_dictionaries({
            "id": good_ids, "flags": flags,
            "title": st.sampled_from(["Toy Story (1995)", "Café (1999)", "", "Ø"])})
        user = st.fixed_dictionaries({
            "id": good_ids, "age": st.integers(0, 120).map(str),
            "gender": st.sampled_from(["M", "F"]), "occupation": st.sampled_from(OCCUPATIONS),
            "zip": st.sampled_from(["55105", "T8H1N", "é"])})
        unique = {"unique_by": lambda e: e[1]["id"].strip()}
        movies = draw(st.lists(st.tuples(st.just("ok"), movie), min_size=3, max_size=7,
                               **unique))
        users = draw(st.lists(st.tuples(st.just("ok"), user), min_size=3, max_size=7,
                              **unique))
        rating = st.fixed_dictionaries({
            "user": st.sampled_from([u["id"] for _, u in users]),
            "movie": st.sampled_from([m["id"] for _, m in movies]),
            "rating": GOOD_RATINGS, "ts": GOOD_TS})
        return {
            "movies": movies, "users": users,
            "ratings": lines(["ok"] * 8 + ["blank"], rating, 1),
            "term": draw(st.sampled_from(["\n", "\r\n"])),
            "bom": draw(st.sampled_from([None, "movies", "users", "ratings"])),
            "policy": draw(st.sampled_from(["error", "skip"])), "extra": ""}
    return {
        "movies": lines(["ok"] * 8 + ["count", "blank"], movie, 2),
        "users": lines(["ok"] * 8 + ["count", "blank"], user, 2),
        "ratings": lines(["ok"] * 8 + ["count", "blank"], rating, 1),
        "term": draw(st.sampled_from(["\n", "\r\n"])),
        "bom": draw(st.sampled_from([None, "movies", "users", "ratings"])),
        "policy": draw(st.sampled_from(["error", "skip"])),
        "extra": draw(st.text(max_size=3)),
    }


def _ml_text(kind: str, fields: list[str], sep: str, extra: str) -> str:
    if kind == "blank":
        return " " if extra.strip() else ""
    if kind == "count":
        fields = fields + [extra or "x"]
    return sep.join(fields)


def _ml_line(text: str, sep: str) -> list[str]:
    """The oracle's view of one line: no control characters besides a tab separator."""
    check = text.replace("\t", "") if sep == "\t" else text
    if any(ord(c) < 32 or 127 <= ord(c) <= 159 for c in check):
        raise Bad("control")
    return text.split(sep)


def _ml_case(case):
    """(files {name: bytes}, verdict, skipped per file)."""
    term, policy = case["term"], case["policy"]
    texts = {
        "u.item": [(k, _ml_text(k, [m["id"], m["title"], "01-Jan-1995", "", "http://x",
                                    *m["flags"]], "|", case["extra"]), m)
                   for k, m in case["movies"]],
        "u.user": [(k, _ml_text(k, [u["id"], u["age"], u["gender"], u["occupation"],
                                    u["zip"]], "|", case["extra"]), u)
                   for k, u in case["users"]],
        "u.data": [(k, _ml_text(k, [r["user"], r["movie"], r["rating"], r["ts"]], "\t",
                                case["extra"]), r) for k, r in case["ratings"]],
    }
    files: dict[str, bytes] = {}
    for name, entries in texts.items():
        body = "".join(t + term for _, t, _ in entries)
        raw = body.encode("latin-1", errors="replace")
        bom = {"movies": "u.item", "users": "u.user", "ratings": "u.data"}.get(case["bom"])
        files[name] = (b"\xef\xbb\xbf" if bom == name else b"") + raw

    def physical(name):
        """Each entry's (line number, oracle text) as the reader will see it."""
        decoded = files[name].decode("latin-1")
        out = []
        for i, line in enumerate(o_lines(decoded), start=1):
            if i == 1 and line.startswith("ï»¿"):
                line = line[3:]
            out.append((i, line.strip()))
        return [x for x in out if x[1]]

    skipped = {}
    movies, users = {}, {}
    for name in ("u.item", "u.user", "u.data"):
        skipped[name] = 0
        rows = []
        for lineno, text in physical(name):
            try:
                sep = "\t" if name == "u.data" else "|"
                parts = _ml_line(text, sep)
                if name == "u.item":
                    if len(parts) != 24 or any(f not in ("0", "1") for f in parts[5:]):
                        raise Bad("item")
                    mid = o_id(parts[0])
                    if mid in movies:
                        raise Bad("dup")
                    movies[mid] = parts[1]
                elif name == "u.user":
                    if len(parts) != 5:
                        raise Bad("user")
                    uid, age, gender, occ, zipc = parts
                    if not re.fullmatch(r"[0-9]{1,3}", age) or occ not in OCCUPATION_100K \
                            or gender not in ("M", "F"):
                        raise Bad("user")
                    uid = o_id(uid)
                    if uid in users:
                        raise Bad("dup")
                    users[uid] = zipc
                else:
                    if len(parts) != 4:
                        raise Bad("rating")
                    uid, mid = o_id(parts[0]), o_id(parts[1])
                    if uid not in users or mid not in movies:
                        raise Bad("unknown")
                    rows.append((uid, mid, o_rating(parts[2], (1.0, 5.0)),
                                 o_timestamp(parts[3])))
            except Bad:
                if policy == "error":
                    return files, ("error", lineno, name), skipped
                skipped[name] += 1
        if name == "u.data":
            if not rows:
                return files, ("error", None, name), skipped
            return files, ("rows", {
                "user_id": [r[0] for r in rows], "item_id": [r[1] for r in rows],
                "rating": [r[2] for r in rows], "timestamp": [r[3] for r in rows],
                "movie_title": [movies[r[1]] for r in rows],
                "user_zip_code": [users[r[0]] for r in rows]}), skipped
    raise AssertionError("unreachable")


def test_movielens_reader_fuzz(tmp_path_factory):
    logger = logging.getLogger("tfrec_p5.data")

    @settings(FUZZ, max_examples=CASES["movielens"])
    @given(case=movielens_folders())
    def prop(seen, case):
        seen.append(1)
        files, verdict, skipped_lines = _ml_case(case)
        folder = _unique_dir(tmp_path_factory)
        folder.mkdir()
        for name, data in files.items():
            (folder / name).write_bytes(data)
        handler = _Skipped()
        logger.addHandler(handler)
        try:
            spec = f"movielens:{folder}?on_bad_lines={case['policy']}"
            if verdict[0] == "error":
                with pytest.raises(DataError) as err:
                    load(spec)
                assert Path(err.value.path) == folder / verdict[2], str(err.value)
                assert err.value.line == verdict[1], (str(err.value), verdict)
            else:
                table = load(spec)
                for column, values in verdict[1].items():
                    assert table.columns[column].tolist() == values, column
                want = [skipped_lines[n] for n in ("u.item", "u.user", "u.data")
                        if skipped_lines[n]]
                assert handler.counts == want, (handler.counts, skipped_lines)
        finally:
            logger.removeHandler(handler)

    _run(prop, "movielens")


# ---------------------------------------------------------------------- Amazon
@st.composite
def amazon_files(draw):
    entries = draw(st.lists(st.tuples(
        st.sampled_from(["seq", "seq", "seq", "lonely", "blank", "dupuser", "badbytes"]),
        st.one_of(SMALL_IDS, ID_TOKENS),
        st.lists(st.one_of(SMALL_IDS, ID_TOKENS), min_size=1, max_size=5),
        st.sampled_from([" ", "  ", "\t", " \t "])), max_size=10))
    return {"entries": entries, "term": draw(st.sampled_from(["\n", "\r\n", "\r"])),
            "bom": draw(st.booleans()), "policy": draw(st.sampled_from(["error", "skip"]))}


def _amazon_case(case):
    """(file bytes, verdict, lines skip drops). The oracle splits the *bytes* into lines
    (``\r\n``, ``\r``, ``\n``) and decodes each one, so IDs holding line breaks or bad
    bytes are judged where they land."""
    term, policy = case["term"], case["policy"]
    chunks = []
    previous_user = None
    for kind, user, items, gap in case["entries"]:
        if kind == "dupuser" and previous_user is not None:
            user = previous_user
        previous_user = user
        if kind == "lonely":
            items = []
        text = "" if kind == "blank" else gap.join([user, *items])
        raw = (text + term).encode("utf-8")
        chunks.append(b"\xff" + raw if kind == "badbytes" else raw)
    data = (b"\xef\xbb\xbf" if case["bom"] else b"") + b"".join(chunks)

    rows = {"user_id": [], "item_id": [], "timestamp": []}
    users_seen: set[str] = set()
    n_bad = 0
    raw_lines = re.split(rb"\r\n|\r|\n", data)
    for lineno, raw in enumerate(raw_lines, start=1):
        if lineno == 1 and raw.startswith(b"\xef\xbb\xbf"):
            raw = raw[3:]
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return data, ("error", lineno), n_bad
        parts = text.split()
        if not parts:
            continue
        try:
            for p in parts:
                o_id(p)
            if len(parts) < 2 or parts[0] in users_seen:
                raise Bad("line")
        except Bad:
            if policy == "error":
                return data, ("error", lineno), n_bad
            n_bad += 1
            continue
        users_seen.add(parts[0])
        rows["user_id"] += [parts[0]] * (len(parts) - 1)
        rows["item_id"] += parts[1:]
        rows["timestamp"] += list(range(len(parts) - 1))
    if not rows["user_id"]:
        return data, ("error", None), n_bad
    return data, ("rows", rows), n_bad


def test_amazon_reader_fuzz(tmp_path_factory, skipped):
    @settings(FUZZ, max_examples=CASES["amazon"])
    @given(case=amazon_files())
    def prop(seen, case):
        seen.append(1)
        data, verdict, n_bad = _amazon_case(case)
        folder = _unique_dir(tmp_path_factory)
        folder.mkdir()
        path = folder / "Toy.txt"
        path.write_bytes(data)
        expected = ("error", verdict[1], path) if verdict[0] == "error" else verdict
        _expect(f"amazon:{path}?on_bad_lines={case['policy']}", expected, path, skipped,
                n_bad)

    _run(prop, "amazon")


# ---------------------------------------------------------------------- parquet
@st.composite
def parquet_tables(draw):
    n = draw(st.integers(1, 8))
    id_kind = draw(st.sampled_from(["str", "int", "float"]))

    def ids():
        if id_kind == "int":
            return draw(st.lists(st.one_of(st.integers(-5, 10 ** 15), st.none()),
                                 min_size=n, max_size=n))
        if id_kind == "float":
            return draw(st.lists(st.one_of(st.sampled_from([1.0, 2.0, 3.5, 1e20]),
                                           st.floats(allow_infinity=False), st.none()),
                                 min_size=n, max_size=n))
        return draw(st.lists(st.one_of(ID_TOKENS, st.none()), min_size=n, max_size=n))

    ratings = draw(st.lists(st.one_of(st.floats(), st.sampled_from([1.0, 4.5, 1e39, 6.0]),
                                      st.none()), min_size=n, max_size=n))
    stamps = draw(st.lists(st.one_of(st.integers(INT64[0], INT64[1]), st.none()),
                           min_size=n, max_size=n))
    return {"user_id": ids(), "item_id": ids(), "rating": ratings, "timestamp": stamps,
            "policy": draw(st.sampled_from(["error", "skip"])),
            "range": draw(st.sampled_from([None, (1.0, 5.0)]))}


def _o_parquet_id(value) -> str:
    if value is None:
        raise Bad("null")
    if isinstance(value, float):
        if math.isnan(value):
            raise Bad("nan")
        raise AssertionError("float IDs are mapped before the oracle")
    return o_id(str(value))


def test_parquet_reader_fuzz(tmp_path_factory, skipped):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    @settings(FUZZ, max_examples=CASES["parquet"])
    @given(case=parquet_tables())
    def prop(seen, case):
        seen.append(1)
        cols = {k: case[k] for k in ("user_id", "item_id", "rating", "timestamp")}
        spellings = {}
        for k in ("user_id", "item_id"):
            values = cols[k]
            floats = [v for v in values if isinstance(v, float)]
            if floats and all(v is None or isinstance(v, float) for v in values):
                whole = all(math.isnan(v) or (v == math.floor(v) and abs(v) < 2 ** 63)
                            for v in floats)
                spellings[k] = [None if v is None else v if math.isnan(v) else
                                (str(int(v)) if whole else pa.array([v]).cast(
                                    pa.string())[0].as_py()) for v in values]
            else:
                spellings[k] = values
        table = pa.table({"user_id": pa.array(cols["user_id"]),
                          "item_id": pa.array(cols["item_id"]),
                          "rating": pa.array(cols["rating"], pa.float64()),
                          "timestamp": pa.array(cols["timestamp"], pa.int64())})
        folder = _unique_dir(tmp_path_factory)
        folder.mkdir()
        path = folder / "e.parquet"
        pq.write_table(table, path)
        good, bad_rows = [], []
        for r in range(len(cols["rating"])):
            try:
                u = _o_parquet_id(spellings["user_id"][r])
                i = _o_parquet_id(spellings["item_id"][r])
                if cols["rating"][r] is None or cols["timestamp"][r] is None:
                    raise Bad("null")
                rating = o_rating(repr(float(cols["rating"][r])), case["range"])
                good.append((u, i, rating, cols["timestamp"][r]))
            except Bad:
                bad_rows.append(r + 1)
        spec = f"parquet:{path}?on_bad_lines={case['policy']}"
        if case["range"]:
            spec += "&rating_range=1,5"
        skipped.counts.clear()
        if bad_rows and case["policy"] == "error" or not good:
            with pytest.raises(DataError) as err:
                load(spec)
            assert Path(err.value.path) == path
            if bad_rows and case["policy"] == "error":
                m = re.search(r"row (\d+):", str(err.value))
                assert m and int(m.group(1)) in bad_rows, (str(err.value), bad_rows)
            return
        got = load(spec)
        assert got.user_id.tolist() == [g[0] for g in good]
        assert got.item_id.tolist() == [g[1] for g in good]
        assert got.rating.tolist() == [g[2] for g in good]
        assert got.timestamp.tolist() == [g[3] for g in good]
        assert skipped.counts == ([len(bad_rows)] if bad_rows else [])

    _run(prop, "parquet")


# ---------------------------------------------------------------------- synthetic
ARG_VALUES = mostly(st.integers(1, 60), st.one_of(
    st.integers(-3, 400), st.sampled_from([0, 1, 2, 10 ** 12, -1, 2 ** 63]),
    st.floats(allow_nan=True), st.text(max_size=3), st.booleans()), p=0.6)


def test_synthetic_arguments_fuzz():
    @settings(FUZZ, max_examples=CASES["synthetic"])
    @given(args=st.dictionaries(
        st.sampled_from(["num_users", "num_items", "num_interactions", "dim", "seed",
                         "noise", "bogus"]), ARG_VALUES, max_size=4))
    def prop(seen, args):
        seen.append(1)
        limits = {"num_users": (1, 10 ** 8), "num_items": (1, 10 ** 8),
                  "num_interactions": (1, 10 ** 9), "dim": (2, 1024),
                  "seed": (0, 2 ** 63 - 1)}
        full = {"num_users": 30, "num_items": 20, "num_interactions": 200, **args}
        ok = "bogus" not in full
        for k, v in full.items():
            if k == "noise":
                ok &= isinstance(v, (int, float)) and not isinstance(v, bool) and \
                    math.isfinite(v) and 0 <= v <= 100
            elif k in limits:
                ok &= isinstance(v, int) and not isinstance(v, bool) and \
                    limits[k][0] <= v <= limits[k][1]
        if ok and (full["num_users"] * full["num_items"] > 10 ** 5
                   or full["num_interactions"] > 5000):
            return  # valid but too big to generate here; the limits are what we test
        if not ok:
            with pytest.raises(DataError):
                load("synthetic", **full)
            return
        table = load("synthetic", **full)
        assert 1 <= len(table) <= full["num_interactions"]
        pairs = set(zip(table.user_id.tolist(), table.item_id.tolist(), strict=True))
        assert len(pairs) == len(table)  # no repeated pair
        assert set(np.unique(table.rating)) <= {1.0, 2.0, 3.0, 4.0, 5.0}
        users = {f"u{i}" for i in range(full["num_users"])}
        items = {f"i{i}" for i in range(full["num_items"])}
        assert set(table.user_id.tolist()) <= users and set(table.item_id.tolist()) <= items
        again = load("synthetic", **full)
        assert again.item_id.tolist() == table.item_id.tolist()  # seeded

    _run(prop, "synthetic")
    with pytest.raises(DataError, match="num_users must be an integer"):
        load("synthetic?num_users=abc")
