"""register_tfds: the TFRS tutorials' own ``tfds.load("movielens/...")`` lines, offline.

The 100K datasets are prepared once per module from ``../shared/data/ml-100k`` into a tmp
TFDS data dir with every socket blocked; then tutorial code reads them with ``tfds.load``
(in this process and in a fresh one) and gets TFDS's features, row counts and TFDS's row
order (the seeded TFRS 80/20 split equals ``tfrs_split_seed42.tsv``). 1M and the error
cases use tiny hand-made GroupLens folders (the shared ml-1m folder is a derived split).
"""

from __future__ import annotations

import contextlib
import csv
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

tfds = pytest.importorskip("tensorflow_datasets")
import tensorflow as tf  # noqa: E402  (after the skip; tfrec_p5 is imported by conftest)

from tfrec_p5.data import DataError, register_tfds  # noqa: E402
from tfrec_p5.data.tfds_register import _LocalDownloads  # noqa: E402

REPO = Path(__file__).resolve().parents[1]

#: Blocks every outgoing connection (Python level: requests, urllib, gcs via Python).
BLOCK_NETWORK = textwrap.dedent("""\
    import socket

    def _refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    socket.socket.connect = _refuse
    socket.socket.connect_ex = _refuse
    socket.create_connection = _refuse
    socket.getaddrinfo = _refuse
""")


@contextlib.contextmanager
def no_network():
    def refuse(*args, **kwargs):
        raise OSError("network blocked by the test")

    with pytest.MonkeyPatch.context() as mp:
        for name in ("connect", "connect_ex"):
            mp.setattr(socket.socket, name, refuse)
        mp.setattr(socket, "create_connection", refuse)
        mp.setattr(socket, "getaddrinfo", refuse)
        yield


@pytest.fixture(scope="module")
def data_dir(ml100k_dir, tmp_path_factory) -> Path:
    """A TFDS data dir with movielens/100k-ratings and -movies prepared offline, once."""
    out = tmp_path_factory.mktemp("tfds")
    with no_network():
        register_tfds("movielens/100k-ratings", ml100k_dir, data_dir=out)
        register_tfds("movielens/100k-movies", ml100k_dir, data_dir=out)
    return out


def _declared_spec(name: str, tmp_path: Path) -> dict:
    """The element spec TFDS's builder declares (from its code, not from prepared data)."""
    return tfds.builder(name, data_dir=str(tmp_path / "declared")).info.features \
        .get_tensor_spec()


def _pairs(ds: tf.data.Dataset) -> list[tuple[str, str]]:
    batch = next(ds.map(lambda x: (x["user_id"], x["movie_id"])).batch(100_000)
                 .as_numpy_iterator())
    return [(u.decode(), m.decode()) for u, m in zip(*batch, strict=True)]


# ----------------------------------------------------------------------------- 100K, real
def test_tutorial_ratings_offline(data_dir, tmp_path):
    with no_network():
        ratings = tfds.load("movielens/100k-ratings", split="train", data_dir=str(data_dir))
        assert ratings.element_spec == _declared_spec("movielens/100k-ratings", tmp_path)
        assert sorted(ratings.element_spec) == [
            "bucketized_user_age", "movie_genres", "movie_id", "movie_title", "raw_user_age",
            "timestamp", "user_gender", "user_id", "user_occupation_label",
            "user_occupation_text", "user_rating", "user_zip_code"]
        assert ratings.cardinality().numpy() == 100_000  # every row is read in the split test
        first = next(iter(ratings.take(1)))
        assert first["user_rating"].dtype == tf.float32 and first["timestamp"].dtype == tf.int64


def test_tutorial_movies_offline(data_dir, tmp_path):
    with no_network():
        movies = tfds.load("movielens/100k-movies", split="train", data_dir=str(data_dir))
        assert movies.element_spec == _declared_spec("movielens/100k-movies", tmp_path)
        assert sorted(movies.element_spec) == ["movie_genres", "movie_id", "movie_title"]
        assert movies.reduce(0, lambda n, _: n + 1).numpy() == 1_682
        titles = movies.map(lambda x: x["movie_title"])  # the retrieval tutorial's next line
        assert b"Toy Story (1995)" in set(titles.as_numpy_iterator())


def test_tfrs_tutorial_split_is_the_official_one(data_dir, ml100k_dir):
    with no_network():
        ratings = tfds.load("movielens/100k-ratings", split="train", data_dir=str(data_dir))
        tf.random.set_seed(42)
        shuffled = ratings.shuffle(100_000, seed=42, reshuffle_each_iteration=False)
        # train = shuffled.take(80_000); test = shuffled.skip(80_000).take(20_000): the same
        # fixed order each pass, so one pass (reading all 100,000 rows) gives both parts.
        rows = _pairs(shuffled)
        got = {"train": rows[:80_000], "test": rows[80_000:]}
    with (ml100k_dir / "tfrs_split_seed42.tsv").open(newline="") as handle:
        official = list(csv.DictReader(handle, delimiter="\t"))
    expected = {part: [(r["user_id"], r["item_id"]) for r in official if r["split"] == part]
                for part in ("train", "test")}
    assert len(expected["train"]) == 80_000 and len(expected["test"]) == 20_000
    assert got == expected  # same rows, same order: TFDS's row order, TFDS's shuffle


def test_a_new_process_loads_it_as_written(data_dir):
    """A fresh interpreter, network blocked, the tutorial lines verbatim (TFDS_DATA_DIR)."""
    code = BLOCK_NETWORK + textwrap.dedent("""\
        import tfrec_p5  # noqa: F401
        import tensorflow_datasets as tfds
        ratings = tfds.load("movielens/100k-ratings", split="train")
        movies = tfds.load("movielens/100k-movies", split="train")
        print(ratings.cardinality().numpy(), movies.cardinality().numpy())
    """)
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    env.update(TFDS_DATA_DIR=str(data_dir), PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["100000", "1682"]


def test_registering_again_reuses_the_prepared_dataset(data_dir, ml100k_dir):
    with no_network():
        builder = register_tfds("movielens/100k-ratings:0.1.1", ml100k_dir, data_dir=data_dir)
    assert builder.is_prepared() and str(builder.version) == "0.1.1"
    assert builder.info.splits["train"].num_examples == 100_000


def test_errors_are_one_line_data_errors(ml100k_dir, ml1m_dir, tmp_path):
    cases = [
        (("movielens/25m-ratings", ml100k_dir), "supported names are"),
        (("mnist", ml100k_dir), "supported names are"),
        (("movielens/100k-ratings:9.9.9", ml100k_dir), "9.9.9"),
        (("movielens/100k-ratings", tmp_path / "nowhere"), "not a folder"),
        (("movielens/100k-ratings", tmp_path), "missing u.data, u.item, u.user"),
        (("movielens/1m-ratings", ml1m_dir), "missing ratings.dat, movies.dat, users.dat"),
    ]
    for args, message in cases:
        with pytest.raises(DataError, match=message) as err:
            register_tfds(*args, data_dir=tmp_path / "tfds")
        assert "\n" not in str(err.value)
    assert not (tmp_path / "tfds").exists()  # nothing half-prepared


def test_an_altered_file_is_refused_unless_verify_is_false(ml100k_dir, tmp_path):
    folder = tmp_path / "ml-100k"
    folder.mkdir()
    (folder / "u.item").write_bytes((ml100k_dir / "u.item").read_bytes().replace(
        b"Toy Story", b"Toy Stories"))
    with pytest.raises(DataError, match=r"not GroupLens's original u\.item .*verify=False"):
        register_tfds("movielens/100k-movies", folder, data_dir=tmp_path / "tfds")
    with no_network():
        register_tfds("movielens/100k-movies", folder, data_dir=tmp_path / "tfds",
                      verify=False)
        movies = tfds.load("movielens/100k-movies", split="train", data_dir=str(tmp_path / "tfds"))
        assert b"Toy Stories (1995)" in {x["movie_title"] for x in movies.as_numpy_iterator()}


# ----------------------------------------------------------------------------- 1M, hand-made
def _write_ml1m(folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / "movies.dat").write_bytes(
        "1::Toy Story (1995)::Animation|Children's|Comedy\n"
        "2::Café Society (1995)::Drama\n".encode("latin-1"))
    (folder / "users.dat").write_text("1::F::1::10::48067\n2::M::56::16::70072\n")
    (folder / "ratings.dat").write_text(
        "1::1::5::978300760\n2::2::3::978298413\n2::1::4::978220179\n")
    return folder


def test_1m_from_grouplens_files(tmp_path):
    folder = _write_ml1m(tmp_path / "ml-1m")
    with pytest.raises(DataError, match="3 rows, GroupLens's ratings.dat has 1,000,209"):
        register_tfds("movielens/1m-ratings", folder, data_dir=tmp_path / "tfds")
    with no_network():
        register_tfds("movie_lens/1m-ratings", folder, data_dir=tmp_path / "tfds", verify=False)
        ratings = tfds.load("movie_lens/1m-ratings", split="train",
                            data_dir=str(tmp_path / "tfds"))
        rows = sorted((x["user_id"], x["movie_id"], float(x["user_rating"]))
                      for x in ratings.as_numpy_iterator())
    assert ratings.element_spec == _declared_spec("movielens/1m-ratings", tmp_path)
    assert rows == [(b"1", b"1", 5.0), (b"2", b"1", 4.0), (b"2", b"2", 3.0)]


def test_a_file_tfds_cannot_parse_is_a_data_error(tmp_path):
    folder = _write_ml1m(tmp_path / "ml-1m")
    (folder / "ratings.dat").write_text("1::1::5::978300760\n9::1::5::978300760\n")  # user 9?
    with pytest.raises(DataError, match="TFDS could not prepare movielens/1m-ratings") as err:
        register_tfds("movielens/1m-ratings", folder, data_dir=tmp_path / "tfds", verify=False)
    assert "\n" not in str(err.value)


def test_no_url_but_the_grouplens_one_is_served(tmp_path):
    archive = tmp_path / "ml-100k.zip"
    archive.write_bytes(b"")
    manager = _LocalDownloads(object(), {"https://x/ml-100k.zip": archive}, "movielens/x")
    assert manager.download("https://x/ml-100k.zip") == archive
    with pytest.raises(DataError, match="has no local copy; the network is not used"):
        manager.download("https://elsewhere/data.zip")
