"""``movielens:PATH`` — the GroupLens MovieLens-100K / -1M folders, as TFDS names them.

Why: the TFRS tutorials read ``tfds.load("movielens/100k-ratings")``, which needs a download.
This source reads the same original files offline and produces the same features with the
same names, dtypes and encodings as TFDS ``movielens/100k-ratings`` / ``1m-ratings``
(genre and occupation label orders, age buckets, gender as bool), so
``table.to_tfds_like_dataset()`` is a drop-in for the TFDS dataset.

    table = load("movielens:../shared/data/ml-100k")      # or an ml-1m folder
    ratings = table.to_tfds_like_dataset()                 # TFDS-style dicts

The folder type is detected from its files: ``u.data``/``u.item``/``u.user`` (100K, tab
and ``|`` separated) or ``ratings.dat``/``movies.dat``/``users.dat`` (1M, ``::``
separated). All files are latin-1. Rows keep ``u.data`` / ``ratings.dat`` order (the TFRS
split file ``tfrs_split_seed42.tsv`` indexes ``u.data`` rows). Bad lines (``DataError``
with file and line, or skipped and counted with ``on_bad_lines=skip``): a wrong field
count, a control character other than the separator, a second line for a movie or user
ID, a rating or user/movie unknown to the other files; see ``_parsing`` for the ID,
rating and timestamp rules. A UTF-8 byte-order mark at the start of a file is removed.

In the table the core columns are canonical (``item_id`` = TFDS ``movie_id``, ``rating`` =
TFDS ``user_rating``; ``tfds_names`` maps them back); side features keep TFDS names:

============================  ===========  ================  ==========================
column                        dtype        side              kind
============================  ===========  ================  ==========================
``movie_title``               str          item              text
``movie_genres``              int64 [n,k]  item              multi_categorical (pad -1)
``user_gender``               bool         user              categorical (True = male)
``bucketized_user_age``       float32      user              categorical
``user_occupation_label``     int64        user              categorical
``raw_user_age`` (100K only)  float32      user              numeric
``user_occupation_text``      str          (column only)     same information as label
``user_zip_code``             str          (column only)     ~1 value per user
============================  ===========  ================  ==========================

``user_zip_code`` is kept as a column (TFDS has it) but not declared a user feature: with
795 distinct codes for 943 users it is nearly a second user ID, adds no generalisation
and would overfit; declare it yourself if you want it.

``movielens:PATH?derived=1`` adds three declared features TFDS does not have, read from
what it does have: ``movie_release_year`` (numeric, from the ``(1995)`` that ends a
title; NaN when absent), ``movie_year`` (the same year as a category, so each year can
matter on its own) and ``user_zip_region`` (the zip code's first character, the US
postal region). They carry what a new movie or a new user brings with them.
"""

from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path

import numpy as np

from tfrec_p5.data.catalog import Catalog
from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, RATING, TIMESTAMP, USER, Interactions
from tfrec_p5.data.sources import register
from tfrec_p5.data.sources._parsing import (
    CONTROL_CHARS,
    BadLines,
    SkipLine,
    iter_text_lines,
    parse_id,
    parse_rating,
    parse_timestamp,
)

# --- TFDS encodings (tensorflow_datasets/structured/movielens.py, movielens_parsing.py) ---
GENRE_LABELS = (
    "Action", "Adventure", "Animation", "Children", "Comedy", "Crime", "Documentary", "Drama",
    "Fantasy", "Film-Noir", "Horror", "IMAX", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "Unknown", "War", "Western", "(no genres listed)",
)
OCCUPATION_LABELS = (
    "academic/educator", "artist", "clerical/admin", "customer service",
    "doctor/health care", "entertainment", "executive/managerial", "farmer", "homemaker",
    "lawyer", "librarian", "other/not specified", "programmer", "retired", "sales/marketing",
    "scientist", "self-employed", "student", "technician/engineer", "tradesman/craftsman",
    "unemployed", "writer",
)
# u.item's 19 genre flags, in file order ("Children's" renamed as TFDS does).
GENRES_100K = ("Unknown", "Action", "Adventure", "Animation", "Children", "Comedy", "Crime",
               "Documentary", "Drama", "Fantasy", "Film-Noir", "Horror", "Musical",
               "Mystery", "Romance", "Sci-Fi", "Thriller", "War", "Western")
OCCUPATION_100K = {
    "administrator": "clerical/admin", "artist": "artist", "doctor": "doctor/health care",
    "educator": "academic/educator", "engineer": "technician/engineer",
    "entertainment": "entertainment", "executive": "executive/managerial",
    "healthcare": "doctor/health care", "homemaker": "homemaker", "lawyer": "lawyer",
    "librarian": "librarian", "marketing": "sales/marketing", "none": "other/not specified",
    "other": "other/not specified", "programmer": "programmer", "retired": "retired",
    "salesman": "sales/marketing", "scientist": "scientist", "student": "student",
    "technician": "technician/engineer", "writer": "writer",
}
OCCUPATION_1M = (  # users.dat occupation index -> text
    "other/not specified", "academic/educator", "artist", "clerical/admin",
    "college/grad student", "customer service", "doctor/health care", "executive/managerial",
    "farmer", "homemaker", "K-12 student", "lawyer", "programmer", "retired",
    "sales/marketing", "scientist", "self-employed", "technician/engineer",
    "tradesman/craftsman", "unemployed", "writer",
)
AGE_THRESHOLDS = (18, 25, 35, 45, 50, 56)
TFDS_NAMES = {USER: "user_id", ITEM: "movie_id", RATING: "user_rating",
              TIMESTAMP: "timestamp"}
USER_FEATURES = ("user_gender", "bucketized_user_age", "user_occupation_label")
ITEM_FEATURES = ("movie_title", "movie_genres")
#: ``derived=1`` features (not in TFDS): read from the title's ``(1995)`` and the zip code.
DERIVED_ITEM_FEATURES = ("movie_release_year", "movie_year")
DERIVED_USER_FEATURES = ("user_zip_region",)
FEATURE_KINDS = {"user_gender": "categorical", "bucketized_user_age": "categorical",
                 "user_occupation_label": "categorical", "raw_user_age": "numeric",
                 "movie_title": "text", "movie_genres": "multi_categorical",
                 "user_occupation_text": "categorical", "user_zip_code": "categorical",
                 "movie_release_year": "numeric", "movie_year": "categorical",
                 "user_zip_region": "categorical"}
RATING_RANGE = (1.0, 5.0)
_GENRE_INDEX = {g: i for i, g in enumerate(GENRE_LABELS)}
_OCC_INDEX = {o: i for i, o in enumerate(OCCUPATION_LABELS)}


def bucketize_age(age: int) -> float:
    """TFDS's 100K age bucket: the largest threshold <= age, else 1 (under 18)."""
    bucket = 1
    for threshold in AGE_THRESHOLDS:
        if age >= threshold:
            bucket = threshold
    return float(bucket)


def movielens_table(columns: dict[str, np.ndarray], source: str = "") -> Interactions:
    """Wrap columns with TFDS feature names into the canonical MovieLens table.

    Accepts either the canonical core names or the TFDS ones (``movie_id``,
    ``user_rating``) and sets ``tfds_names``, the side-feature declarations and the 1–5
    rating range. Used by this source and by ``tfds:movielens/...``.
    """
    inverse = {v: k for k, v in TFDS_NAMES.items()}
    cols = {inverse.get(k, k): v for k, v in columns.items()}
    user_features = tuple(f for f in (*USER_FEATURES, "raw_user_age",
                                      *DERIVED_USER_FEATURES) if f in cols)
    item_features = tuple(f for f in (*ITEM_FEATURES, *DERIVED_ITEM_FEATURES) if f in cols)
    return Interactions.from_columns(
        cols, source=source, user_features=user_features, item_features=item_features,
        rating_range=RATING_RANGE, tfds_names=dict(TFDS_NAMES),
        feature_kinds={k: v for k, v in FEATURE_KINDS.items() if k in cols})


# ----------------------------------------------------------------------------- parsing
_YEAR = re.compile(r"\((\d{4})\)\s*$")
_UTF8_BOM_AS_LATIN1 = "\ufeff".encode().decode("latin-1")  # "ï»¿"


def _lines(path: Path):
    """(line number, stripped text) of a latin-1 file; blank lines are skipped, and a UTF-8
    byte-order mark (which latin-1 reads as ``ï»¿``) is removed from the first line."""
    if not path.is_file():
        raise DataError("file not found", path=str(path))
    for lineno, line in iter_text_lines(path, "latin-1"):
        text = line.strip()
        if lineno == 1 and text.startswith(_UTF8_BOM_AS_LATIN1):
            text = text[len(_UTF8_BOM_AS_LATIN1):].strip()
        if text:
            yield lineno, text


def _digits(text: str, max_len: int = 3) -> bool:
    """1 to ``max_len`` ASCII digits (``str.isdigit`` also accepts ``"²"``, which ``int``
    rejects, and ages / codes have a few digits)."""
    return text.isascii() and text.isdigit() and len(text) <= max_len


def _once(ids: dict[str, int], key: str, bad: BadLines, lineno: int, field: str) -> None:
    """A second line for the same ID would silently replace the first: a bad line."""
    if key in ids:
        bad.bad(f"{field} {key!r} is already defined at line {ids[key]}", lineno, field)
    ids[key] = lineno


def _split(text: str, sep: str, n: int, bad: BadLines, lineno: int,
           at_least: bool = False) -> list[str]:
    # MovieLens files hold no control characters besides the separator: one is damage
    # (and numpy would silently drop a trailing NUL from a title or zip code).
    if CONTROL_CHARS.search(text.replace(sep, "") if sep == "\t" else text):
        bad.bad(f"line contains a control character: {text[:80]!r}", lineno)
    parts = text.split(sep)
    if len(parts) != n and not (at_least and len(parts) > n):
        bad.bad(f"expected {n}{'+' if at_least else ''} {sep!r}-separated fields, got "
                f"{len(parts)}: {text[:80]!r}", lineno)
    return parts


def _genre_row(names: list[str], bad: BadLines, lineno: int) -> list[int]:
    out = []
    for g in names:
        if g not in _GENRE_INDEX:
            bad.bad(f"unknown genre {g!r}", lineno, "movie_genres")
        out.append(_GENRE_INDEX[g])
    return out


def _parse_movies(path: Path, version: str, bad: BadLines) -> dict[str, tuple[str, list[int]]]:
    movies: dict[str, tuple[str, list[int]]] = {}
    seen: dict[str, int] = {}
    for lineno, text in _lines(path):
        try:
            if version == "100k":
                parts = _split(text, "|", 24, bad, lineno)
                flags = parts[5:]
                if any(f not in ("0", "1") for f in flags):
                    bad.bad("genre flags must be 0 or 1", lineno, "movie_genres")
                names = [GENRES_100K[i] for i, f in enumerate(flags) if f == "1"]
            else:
                parts = _split(text, "::", 3, bad, lineno)
                names = ["Children" if g == "Children's" else g for g in parts[2].split("|")]
            movie_id = parse_id(parts[0], bad, lineno, "movie_id")
            genres = _genre_row(names, bad, lineno)
            _once(seen, movie_id, bad, lineno, "movie_id")
            movies[movie_id] = (parts[1], genres)
        except SkipLine:
            continue
    bad.report()
    return movies


def _parse_users(path: Path, version: str, bad: BadLines) -> dict[str, tuple]:
    users: dict[str, tuple] = {}
    seen: dict[str, int] = {}
    for lineno, text in _lines(path):
        try:
            if version == "100k":
                uid, age, gender, occ, zipc = _split(text, "|", 5, bad, lineno)
                if not _digits(age):
                    bad.bad(f"age {age!r} is not an integer", lineno, "raw_user_age")
                if occ not in OCCUPATION_100K:
                    bad.bad(f"unknown occupation {occ!r}", lineno, "user_occupation_text")
                label = OCCUPATION_100K[occ]
                raw_age = float(age)
                bucket = bucketize_age(int(age))
            else:
                uid, gender, age, occ_idx, zipc = _split(text, "::", 5, bad, lineno)
                if not _digits(occ_idx) or int(occ_idx) >= len(OCCUPATION_1M):
                    bad.bad(f"unknown occupation index {occ_idx!r}", lineno,
                            "user_occupation_label")
                occ = OCCUPATION_1M[int(occ_idx)]
                label = "student" if occ in ("K-12 student", "college/grad student") else occ
                if not _digits(age):
                    bad.bad(f"age {age!r} is not an integer", lineno, "bucketized_user_age")
                raw_age = None
                bucket = float(age)
            if gender not in ("M", "F"):
                bad.bad(f"gender {gender!r} is not M or F", lineno, "user_gender")
            uid = parse_id(uid, bad, lineno, "user_id")
            _once(seen, uid, bad, lineno, "user_id")
            users[uid] = (gender == "M", bucket, _OCC_INDEX[label], occ, zipc, raw_age)
        except SkipLine:
            continue
    bad.report()
    return users


def _folder(path: str) -> tuple[Path, str, str, tuple[str, str, str]]:
    """(folder, version, ratings separator, file names) of a MovieLens folder."""
    folder = Path(path or ".")
    if folder.is_file():
        folder = folder.parent
    if (folder / "u.data").exists():
        return folder, "100k", "\t", ("u.data", "u.item", "u.user")
    if (folder / "ratings.dat").exists():
        return folder, "1m", "::", ("ratings.dat", "movies.dat", "users.dat")
    raise DataError("not a MovieLens folder: expected u.data, u.item, u.user (100K) or "
                    "ratings.dat, movies.dat, users.dat (1M)", path=str(folder))


def _release_years(titles: np.ndarray) -> np.ndarray:
    """The year in the ``(1995)`` that ends a title, NaN without one."""
    return np.array([float(m.group(1)) if (m := _YEAR.search(t)) else np.nan
                     for t in titles.tolist()], dtype=np.float32)


def _entity_columns(movies: dict, users: dict, version: str, derived: bool = False
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """One row per movie (file order) and per user (file order), TFDS-named columns
    (``derived``: also ``DERIVED_ITEM_FEATURES`` / ``DERIVED_USER_FEATURES``)."""
    keys = list(movies)
    width = max(1, max((len(g) for _, g in movies.values()), default=1))
    genres = np.full((len(keys), width), -1, dtype=np.int64)
    for i, m in enumerate(keys):
        g = movies[m][1]
        genres[i, :len(g)] = g
    item_cols = {ITEM: np.array(keys, dtype=str),
                 "movie_title": np.array([movies[m][0] for m in keys], dtype=str),
                 "movie_genres": genres}
    ufeat = [users[u] for u in users]
    user_cols = {
        USER: np.array(list(users), dtype=str),
        "user_gender": np.array([f[0] for f in ufeat], dtype=bool),
        "bucketized_user_age": np.array([f[1] for f in ufeat], dtype=np.float32),
        "user_occupation_label": np.array([f[2] for f in ufeat], dtype=np.int64),
        "user_occupation_text": np.array([f[3] for f in ufeat], dtype=str),
        "user_zip_code": np.array([f[4] for f in ufeat], dtype=str),
    }
    if version == "100k":
        user_cols["raw_user_age"] = np.array([f[5] for f in ufeat], dtype=np.float32)
    if derived:
        year = _release_years(item_cols["movie_title"])
        item_cols["movie_release_year"] = year
        item_cols["movie_year"] = np.where(np.isnan(year), "",
                                           np.nan_to_num(year).astype(int).astype(str))
        user_cols["user_zip_region"] = np.array([z[:1] for z in user_cols["user_zip_code"]],
                                                dtype=str)
    return item_cols, user_cols


def _parse_entities(folder: Path, version: str, files: tuple[str, str, str],
                    on_bad_lines: str) -> tuple[dict, dict]:
    movies_path, users_path = folder / files[1], folder / files[2]
    return (_parse_movies(movies_path, version, BadLines(movies_path, on_bad_lines)),
            _parse_users(users_path, version, BadLines(users_path, on_bad_lines)))


def _check_options(path: str, options: dict) -> bool:
    """``derived`` as a bool; any other option is a ``DataError``."""
    unknown = sorted(set(options) - {"derived"})
    if unknown:
        raise DataError(f"unknown movielens option(s) {unknown}; known: on_bad_lines, "
                        "derived", path=path)
    derived = options.get("derived", 0)
    if derived not in (0, 1, "0", "1", True, False):
        raise DataError(f"derived={derived!r}: use 0 or 1", path=path, field="derived")
    return bool(int(derived))


def movielens_catalog(path: str, on_bad_lines: str = "error", **options) -> Catalog:
    """Every movie of ``u.item`` / ``movies.dat`` and every user of ``u.user`` /
    ``users.dat``, rated or not, with the features ``load_movielens`` gives their rows.

        catalog = movielens_catalog("../shared/data/ml-100k")
        len(catalog.items), len(catalog.users)     # 1682, 943
    """
    derived = _check_options(path, options)
    folder, version, _, files = _folder(path)
    movies, users = _parse_entities(folder, version, files, on_bad_lines)
    item_cols, user_cols = _entity_columns(movies, users, version, derived)
    items = movielens_table({**item_cols, USER: np.full(len(movies), "", dtype=str)},
                            os.fspath(folder))
    users_table = movielens_table({**user_cols, ITEM: np.full(len(users), "", dtype=str)},
                                  os.fspath(folder))
    return Catalog(
        dataclasses.replace(items, user_features=(), rating_range=None),
        dataclasses.replace(users_table, item_features=(), rating_range=None))


def load_movielens(path: str, on_bad_lines: str = "error", **options) -> Interactions:
    """Parse a MovieLens-100K or -1M folder (see module docstring)."""
    derived = _check_options(path, options)
    folder, version, sep, files = _folder(path)
    ratings_path, movies_path, users_path = (folder / f for f in files)
    movies, users = _parse_entities(folder, version, files, on_bad_lines)

    bad = BadLines(ratings_path, on_bad_lines)
    uids: list[str] = []
    mids: list[str] = []
    ratings: list[float] = []
    stamps: list[int] = []
    for lineno, text in _lines(ratings_path):
        try:
            parts = _split(text, sep, 4, bad, lineno)
            uid = parse_id(parts[0], bad, lineno, "user_id")
            mid = parse_id(parts[1], bad, lineno, "movie_id")
            if uid not in users:
                bad.bad(f"user {uid!r} is not in {users_path.name}", lineno, "user_id")
            if mid not in movies:
                bad.bad(f"movie {mid!r} is not in {movies_path.name}", lineno, "movie_id")
            rating = parse_rating(parts[2], bad, lineno, RATING_RANGE, "user_rating")
            stamp = parse_timestamp(parts[3], bad, lineno)
        except SkipLine:
            continue
        uids.append(uid)
        mids.append(mid)
        ratings.append(rating)
        stamps.append(stamp)
    bad.report()
    if not uids:
        raise DataError("no ratings", path=str(ratings_path))

    # Side features: one row per distinct movie / user, then a gather per rating row.
    item_cols, user_cols = _entity_columns(movies, users, version, derived)
    movie_row = {m: i for i, m in enumerate(movies)}
    user_row = {u: i for i, u in enumerate(users)}
    mi = np.fromiter((movie_row[m] for m in mids), dtype=np.int64, count=len(mids))
    ui = np.fromiter((user_row[u] for u in uids), dtype=np.int64, count=len(uids))
    columns = {
        USER: np.array(uids), ITEM: np.array(mids),
        RATING: np.array(ratings, dtype=np.float32),
        TIMESTAMP: np.array(stamps, dtype=np.int64),
        **{k: v[mi] for k, v in item_cols.items() if k != ITEM},
        **{k: v[ui] for k, v in user_cols.items() if k != USER},
    }
    return movielens_table(columns, source=os.fspath(folder))


register("movielens", load_movielens, catalog=movielens_catalog)

__all__ = ["GENRE_LABELS", "OCCUPATION_LABELS", "load_movielens", "movielens_catalog",
           "movielens_table"]
