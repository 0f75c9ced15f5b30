"""csv: and parquet: sources, and how every kind of bad input is reported."""

from __future__ import annotations

import logging
import sys

import numpy as np
import pytest

from tfrec_p5.data import DataError, load


def _csv(tmp_path, text: str, name: str = "r.csv", raw: bytes | None = None):
    path = tmp_path / name
    path.write_bytes(raw if raw is not None else text.encode("utf-8"))
    return path


def _spec(tmp_path, text: str = "", raw: bytes | None = None, query: str = "") -> str:
    return f"csv:{_csv(tmp_path, text, raw=raw)}{query}"


GOOD = "user_id,item_id,rating,timestamp\nu1,i1,4,100\nu2,i1,5,200\nu1,i2,1.5,300\n"


def test_csv_defaults(tmp_path):
    t = load(f"csv:{_csv(tmp_path, GOOD)}")
    assert list(t.user_id) == ["u1", "u2", "u1"] and list(t.item_id) == ["i1", "i1", "i2"]
    assert t.rating.dtype == np.float32 and list(t.rating) == [4.0, 5.0, 1.5]
    assert t.timestamp.dtype == np.int64 and list(t.timestamp) == [100, 200, 300]


def test_csv_optional_columns_absent(tmp_path):
    t = load(_spec(tmp_path, 'user_id,item_id\nu1,i1\n'))
    assert t.rating is None and t.timestamp is None and len(t) == 1
    t = load(f"csv:{_csv(tmp_path, GOOD)}?rating=none")
    assert t.rating is None and t.timestamp is not None


def test_csv_named_columns_query_and_kwargs(tmp_path):
    path = _csv(tmp_path, "ts\tuid\tmovie\tstars\tage\n7\ta\tm1\t3\t30\n8\tb\tm2\t2\t40\n",
                name="r.tsv")
    t = load(f"csv:{path}?sep=tab&user=uid&item=movie&rating=stars&timestamp=ts"
             "&user_features=age")
    assert list(t.user_id) == ["a", "b"] and list(t.item_id) == ["m1", "m2"]
    assert list(t.rating) == [3.0, 2.0] and list(t.timestamp) == [7, 8]
    assert t.user_features == ("age",) and t.feature_kinds["age"] == "categorical"
    assert list(t.columns["age"]) == ["30", "40"]
    t2 = load(f"csv:{path}", sep="\t", user="uid", item="movie", rating="stars",
              timestamp="ts")
    np.testing.assert_array_equal(t2.rating, t.rating)


def test_csv_bom_and_windows_line_endings(tmp_path):
    raw = "\ufeffuser_id,item_id,rating\r\nu1,i1,4\r\nu2,i2,5\r\n".encode()
    t = load(_spec(tmp_path, raw=raw))
    assert list(t.user_id) == ["u1", "u2"] and list(t.item_id) == ["i1", "i2"]
    assert list(t.rating) == [4.0, 5.0]


def test_csv_quoted_fields(tmp_path):
    t = load(_spec(tmp_path, 'user_id,item_id\n\"a,b\",\"x\"\"y\"\n'))
    assert (t.user_id[0], t.item_id[0]) == ("a,b", 'x"y')


@pytest.mark.parametrize("body, message, line", [
    ("u1,i1,4,100\nu2,i1,5\n", r"expected 4 fields, got 3", 3),            # field count
    ("u1,i1,4,100\nu2,i1,abc,200\n", r"rating 'abc' is not a number", 3),  # non-numeric
    ("u1,i1,nan,100\n", r"rating 'nan' is not finite", 2),                  # NaN
    ("u1,i1,inf,100\n", r"rating 'inf' is not finite", 2),                  # inf
    ("u1,,4,100\n", r"empty item_id", 2),                                   # empty ID
    ("u1,i1,4,yesterday\n", r"timestamp 'yesterday' is not an integer", 2),
])
def test_csv_bad_rows_name_file_and_line(tmp_path, body, message, line):
    path = _csv(tmp_path, "user_id,item_id,rating,timestamp\n" + body)
    with pytest.raises(DataError, match=rf"r\.csv:{line}: {message}") as err:
        load(f"csv:{path}")
    assert err.value.line == line and err.value.path == str(path)


def test_csv_rating_range(tmp_path):
    path = _csv(tmp_path, "user_id,item_id,rating\nu1,i1,4\nu2,i1,6\n")
    assert len(load(f"csv:{path}")) == 2  # no range declared: 6 is fine
    with pytest.raises(DataError, match=r"r\.csv:3: rating 6 is outside the declared range "
                                        r"\[1, 5\]"):
        load(f"csv:{path}?rating_range=1,5")
    with pytest.raises(DataError, match="outside"):
        load(f"csv:{path}", rating_range=(1, 5))
    assert load(f"csv:{_csv(tmp_path, GOOD)}?rating_range=1,5").rating_range == (1.0, 5.0)


def test_csv_skip_bad_lines_is_counted(tmp_path, caplog):
    path = _csv(tmp_path, "user_id,item_id,rating\nu1,i1,4\nu2,i1,nan\nu3\nu4,i4,9\nu5,i5,2\n")
    with caplog.at_level(logging.WARNING, logger="tfrec_p5.data"):
        t = load(f"csv:{path}?on_bad_lines=skip&rating_range=1,5")
    assert list(t.user_id) == ["u1", "u5"]
    assert "skipped 3 bad line(s)" in caplog.text and "r.csv:3" in caplog.text


def test_csv_empty_file_header_only_and_missing_column(tmp_path):
    with pytest.raises(DataError, match="empty file"):
        load(_spec(tmp_path, ''))
    with pytest.raises(DataError, match="empty file"):
        load(_spec(tmp_path, raw=b"\xef\xbb\xbf"))  # only a BOM
    with pytest.raises(DataError, match="no data rows"):
        load(_spec(tmp_path, 'user_id,item_id\n'))
    with pytest.raises(DataError, match=r"missing column 'item_id'") as err:
        load(_spec(tmp_path, 'user_id,movie\nu1,m1\n'))
    assert err.value.field == "item_id" and err.value.line == 1
    with pytest.raises(DataError, match=r"missing column 'stars'"):
        load(f"csv:{_csv(tmp_path, GOOD)}?rating=stars")


def test_csv_wrong_encoding_is_a_clear_error(tmp_path):
    raw = "user_id,item_id\nu1,Café\n".encode("latin-1")
    with pytest.raises(DataError, match="encoding=latin-1"):
        load(_spec(tmp_path, raw=raw))
    t = load(_spec(tmp_path, raw=raw, query="?encoding=latin-1"))
    assert t.item_id[0] == "Café"


def test_unknown_scheme_and_option(tmp_path):
    with pytest.raises(DataError, match="unknown data spec"):
        load("nosuch:thing")
    with pytest.raises(DataError, match="unknown csv option"):
        load(f"csv:{_csv(tmp_path, GOOD)}?usr=x")


# ----------------------------------------------------------------------------- parquet
@pytest.fixture()
def parquet_file(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")

    def write(**cols):
        path = tmp_path / "e.parquet"
        pq.write_table(pa.table(cols), path)
        return path
    return write


def test_parquet_defaults_and_options(parquet_file):
    path = parquet_file(user_id=["u1", "u2"], item_id=["a", "b"], rating=[1.0, 5.0],
                        timestamp=[10, 20])
    t = load(f"parquet:{path}")
    assert list(t.user_id) == ["u1", "u2"] and list(t.rating) == [1.0, 5.0]
    assert list(t.timestamp) == [10, 20]
    path = parquet_file(visitor=[1, 2], sku=["a", "b"], stars=[3, 4])
    t = load(f"parquet:{path}?user=visitor&item=sku&rating=stars")
    assert list(t.user_id) == ["1", "2"] and list(t.rating) == [3.0, 4.0]


def test_parquet_bad_values(parquet_file, caplog):
    path = parquet_file(user_id=["u1", "u2", "u3"], item_id=["a", "b", "c"],
                        rating=[1.0, float("nan"), 7.0])
    with pytest.raises(DataError, match=r"row 2: rating is NaN"):
        load(f"parquet:{path}")
    with caplog.at_level(logging.WARNING, logger="tfrec_p5.data"):
        t = load(f"parquet:{path}?on_bad_lines=skip&rating_range=1,5")
    assert list(t.user_id) == ["u1"] and "skipped 2 bad line(s)" in caplog.text
    path = parquet_file(user_id=["u1", ""], item_id=["a", "b"])
    with pytest.raises(DataError, match=r"row 2: empty or missing user_id"):
        load(f"parquet:{path}")
    with pytest.raises(DataError, match=r"missing column 'item_id'"):
        load(f"parquet:{parquet_file(user_id=['u1'], item=['a'])}")


def test_parquet_without_pyarrow_is_a_clear_error(tmp_path, monkeypatch):
    for mod in ("pyarrow", "pyarrow.parquet", "pyarrow.compute"):
        monkeypatch.setitem(sys.modules, mod, None)
    with pytest.raises(ImportError, match=r"pip install 'tfrec_p5\[parquet\]'"):
        load(f"parquet:{tmp_path / 'x.parquet'}")
