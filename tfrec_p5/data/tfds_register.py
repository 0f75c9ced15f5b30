"""``register_tfds`` — unmodified TFRS tutorial code (``tfds.load("movielens/...")``) offline.

Why: the TFRS tutorials start with ``tfds.load("movielens/100k-ratings", split="train")``,
which downloads GroupLens's ``ml-100k.zip``. Offline, or where the data must come from an
approved local copy, that first line fails. ``register_tfds`` prepares the dataset into the
TFDS data dir from a local GroupLens folder, using TFDS's **own** ``movielens`` builder and
parser: only the download is replaced. Features, encodings and row order are therefore
exactly TFDS's, and afterwards a plain ``tfds.load`` — in this or any later process, with no
network — reads the prepared dataset as if TFDS had downloaded it.

    import tfrec_p5  # before tensorflow / tensorflow_recommenders
    import tensorflow_datasets as tfds
    from tfrec_p5.data import register_tfds

    register_tfds("movielens/100k-ratings", "../shared/data/ml-100k")
    register_tfds("movielens/100k-movies", "../shared/data/ml-100k")
    ratings = tfds.load("movielens/100k-ratings", split="train")    # the tutorial, as written

Names: ``movielens/{100k,1m}-{ratings,movies}``, optionally with the builder's version
(``movielens/100k-ratings:0.1.1``) or TFDS's deprecated ``movie_lens/`` alias. 100K needs
the GroupLens ``ml-100k`` folder (``u.data``, ``u.item``, ``u.user``); 1M needs the
original GroupLens ``ml-1m`` files (``ratings.dat``, ``movies.dat``, ``users.dat``) — the
derived LightGCN ``train/valid/test.txt`` split some ``ml-1m`` folders hold is not enough.
``data_dir`` is where TFDS keeps prepared datasets (default: TFDS's own default, the one a
plain ``tfds.load`` uses). An already prepared dataset is reused, not rebuilt.

How the download is replaced: the needed files are zipped, in the layout of GroupLens's zip
(``ml-100k/u.data``, ...), into a temporary download folder; the builder's download manager
is TFDS's own, wrapped so that ``download_and_extract`` of the GroupLens URL returns TFDS's
extraction of that zip and any other URL raises ``DataError`` — the network is never used.

``verify=True`` (default) first checks the files are GroupLens's originals (100K: sha256 of
each file; 1M: row counts 1,000,209 / 3,883 / 6,040), because whatever is prepared here is
what every later ``tfds.load`` of that name returns. ``verify=False`` accepts any folder in
the GroupLens format (e.g. a subsample); the TFDS name then no longer means the official
data. Problems (unknown name, missing or altered files, a file TFDS cannot parse) raise a
one-line ``DataError``.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tfrec_p5.data.errors import DataError

if TYPE_CHECKING:
    from tensorflow_datasets.core import DatasetBuilder

#: TFDS dataset names (the current one and TFDS's deprecated alias) of the MovieLens builder.
_DATASETS = ("movielens", "movie_lens")
#: Supported builder config → the GroupLens files its TFDS parser reads.
_CONFIG_FILES = {
    "100k-ratings": ("u.data", "u.item", "u.user"),
    "100k-movies": ("u.item",),
    "1m-ratings": ("ratings.dat", "movies.dat", "users.dat"),
    "1m-movies": ("movies.dat",),
}
#: sha256 of GroupLens's ml-100k files (as in ml-100k.zip).
_SHA256_100K = {
    "u.data": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490",
    "u.item": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701",
    "u.user": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c",
}
#: Row counts of GroupLens's ml-1m files (ml-1m/README).
_ROWS_1M = {"ratings.dat": 1_000_209, "movies.dat": 3_883, "users.dat": 6_040}


def _one_line(err: BaseException, limit: int = 300) -> str:
    """``err`` as one line: its type (for bare ``KeyError('9')``-like messages) and text."""
    text = " ".join(str(err).split())
    text = text if len(text) <= limit else text[:limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def _check_name(name: str) -> str:
    """The builder config named by ``name`` (``DataError`` unless it is one we support)."""
    supported = ", ".join(f"movielens/{c}" for c in _CONFIG_FILES)
    dataset, _, config = str(name).partition(":")[0].partition("/")
    if dataset not in _DATASETS or config not in _CONFIG_FILES:
        raise DataError(f"register_tfds cannot prepare {name!r}: supported names are "
                        f"{supported} (optionally :VERSION)", field="name")
    return config


def _check_folder(folder: Path, config: str, verify: bool) -> tuple[str, ...]:
    """The files the TFDS parser reads, after checking they exist (and are GroupLens's)."""
    if not folder.is_dir():
        raise DataError(f"not a folder (expected the GroupLens ml-{config.split('-')[0]} "
                        f"folder)", path=str(folder))
    files = _CONFIG_FILES[config]
    missing = [f for f in files if not (folder / f).is_file()]
    if missing:
        raise DataError(f"missing {', '.join(missing)} (movielens/{config} needs the GroupLens "
                        f"files {', '.join(files)})", path=str(folder))
    if not verify:
        return files
    for file in files:
        path = folder / file
        if file in _SHA256_100K:
            digest = hashlib.sha256(path.read_bytes()).hexdigest()
            if digest != _SHA256_100K[file]:
                raise DataError(f"not GroupLens's original {file} (sha256 {digest[:12]}... "
                                f"differs); pass verify=False to register a modified copy",
                                path=str(path))
        else:
            with path.open("rb") as handle:
                rows = sum(1 for line in handle if line.strip())
            if rows != _ROWS_1M[file]:
                raise DataError(f"{rows:,} rows, GroupLens's {file} has {_ROWS_1M[file]:,}; "
                                f"pass verify=False to register a modified copy",
                                path=str(path))
    return files


def _write_grouplens_zip(folder: Path, files: tuple[str, ...], top: str, zip_path: Path) -> None:
    """``zip_path`` with ``top/FILE`` entries, the layout of GroupLens's ``ml-*.zip``."""
    with zipfile.ZipFile(zip_path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for file in files:
            archive.write(folder / file, f"{top}/{file}")


class _LocalDownloads:
    """TFDS's download manager, except that downloads come from local archives.

    ``archives`` maps each URL the builder may ask for to a local file; any other URL raises
    ``DataError`` instead of touching the network. Everything else (extraction, paths,
    ``downloaded_size``...) is the wrapped TFDS manager's.
    """

    def __init__(self, manager: Any, archives: dict[str, Path], name: str) -> None:
        self._manager = manager
        self._archives = archives
        self._name = name
        self.served: list[str] = []

    def download(self, url: Any) -> Path:
        key = str(getattr(url, "url", url))  # a str or a tfds.download.Resource
        if key not in self._archives:
            raise DataError(f"register_tfds: preparing {self._name} asked to download {key}, "
                            f"which has no local copy; the network is not used")
        self.served.append(key)
        return self._archives[key]

    def download_and_extract(self, url: Any) -> Any:
        return self._manager.extract(self.download(url))

    @property
    def downloaded_size(self) -> int:
        return sum(self._archives[url].stat().st_size for url in set(self.served))

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._manager, attr)


def register_tfds(name: str, path: str | os.PathLike, *,
                  data_dir: str | os.PathLike | None = None,
                  verify: bool = True) -> DatasetBuilder:
    """Prepare TFDS dataset ``name`` from the local GroupLens folder ``path``, so that
    ``tfds.load(name, ...)`` works offline (see the module docstring).

    Returns the prepared TFDS builder (``builder.as_dataset(split="train")`` works too).
    """
    config = _check_name(name)
    folder = Path(path).expanduser()
    files = _check_folder(folder, config, verify)
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(f"register_tfds needs tensorflow-datasets: {_one_line(err)}") from err
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(data_dir))
    except Exception as err:  # a version the builder does not have, ...
        raise DataError(f"TFDS cannot load {name!r}: {_one_line(err)}", field="name") from err
    if builder.is_prepared():
        return builder
    if not callable(getattr(type(builder), "_make_download_manager", None)):
        raise DataError("this tensorflow-datasets version has no DatasetBuilder."
                        "_make_download_manager; register_tfds cannot replace the download")
    url = builder.builder_config.download_url
    top = f"ml-{builder.builder_config.format_version}"  # the folder TFDS's builder opens
    make_manager = builder._make_download_manager  # TFDS's own, wrapped below
    with tempfile.TemporaryDirectory(prefix="tfrec_p5_tfds_") as tmp:
        archive = Path(tmp) / url.rsplit("/", 1)[-1]
        _write_grouplens_zip(folder, files, top, archive)
        managers: list[_LocalDownloads] = []

        def local_manager(**kwargs: Any) -> _LocalDownloads:
            managers.append(_LocalDownloads(make_manager(**kwargs), {url: archive}, name))
            return managers[-1]

        builder._make_download_manager = local_manager
        try:
            builder.download_and_prepare(
                download_dir=tmp,
                download_config=tfds.download.DownloadConfig(try_download_gcs=False))
        except DataError:
            raise
        except Exception as err:  # TFDS's parser on a malformed file, a full disk, ...
            hint = (" (an ID the movies or users file does not define?)"
                    if isinstance(err, KeyError) else "")
            raise DataError(f"TFDS could not prepare {name} from these files: "
                            f"{_one_line(err)}{hint}", path=str(folder)) from err
        finally:
            del builder._make_download_manager  # back to the class's method
    if not builder.is_prepared() or (managers and not any(m.served for m in managers)):
        raise DataError(f"TFDS did not prepare {name} from the local files (an unexpected "
                        f"tensorflow-datasets version?)", path=str(folder))
    return builder


__all__ = ["register_tfds"]
