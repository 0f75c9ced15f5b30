"""``tfds:NAME`` — a TensorFlow Datasets dataset, mapped to the same interactions table.

Why: users online can start from ``tfds:movielens/100k-ratings`` exactly as the TFRS
tutorials do; MovieLens names are mapped back to the canonical table (``movie_id`` →
``item_id``, ``user_rating`` → ``rating``, side features as ``movielens:PATH`` gives them),
so everything downstream is identical whichever way the data came in.

    table = load("tfds:movielens/100k-ratings")                       # downloads once
    table = load("tfds:movielens/1m-ratings?data_dir=/data/tfds")
    table = load("tfds:my_dataset?user=visitor&item=product")         # other datasets

Offline (no network, dataset not yet prepared in ``data_dir``) this fails fast with a
``DataError`` naming the local alternative (``movielens:PATH`` with the GroupLens folder),
instead of hanging on a download. Options: ``data_dir``, ``split`` (default ``train``),
``download`` (default true; ``download=0`` never touches the network), and for
non-MovieLens datasets ``user``/``item``/``rating``/``timestamp`` feature names.
"""

from __future__ import annotations

import socket
from urllib.parse import urlparse

import numpy as np

from tfrec_p5.data.errors import DataError
from tfrec_p5.data.interactions import ITEM, RATING, TIMESTAMP, USER, Interactions
from tfrec_p5.data.sources import register
from tfrec_p5.data.sources.movielens import movielens_table

PROBE_TIMEOUT_S = 5.0
_DEFAULT_HOST = "storage.googleapis.com"


def _online(url: str | None) -> bool:
    """Can we open a TCP connection to the download host? (DNS + connect, short timeout)."""
    host = urlparse(url).hostname if url else None
    try:
        with socket.create_connection((host or _DEFAULT_HOST, 443), timeout=PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def _alternative(name: str) -> str:
    if name.startswith(("movielens", "movie_lens")):
        version = "1m" if "1m" in name else "100k"
        files = ("ratings.dat, movies.dat, users.dat" if version == "1m"
                 else "u.data, u.item, u.user")
        return (f"use the local GroupLens files instead: load('movielens:PATH/ml-{version}') "
                f"(a folder with {files}) gives the same table")
    return "use a local copy instead: csv:PATH, parquet:PATH or movielens:PATH"


def _is_true(value) -> bool:
    return str(value).strip().lower() not in ("0", "false", "no", "none", "")


def table_from_tfds(ds, name: str, user: str | None = None, item: str | None = None,
                    rating: str | None = None, timestamp: str | None = None,
                    batch_size: int = 65_536) -> Interactions:
    """Convert a TFDS-style dataset of per-example dicts into an ``Interactions`` table.

    MovieLens datasets (``name`` starts with ``movielens``) get the ``movielens:PATH``
    table layout; other datasets need ``user``/``item`` feature names unless they are
    called ``user_id``/``item_id``. Variable-length features become ``-1``-padded int
    matrices.
    """
    import tensorflow as tf

    chunks: dict[str, list[np.ndarray]] = {}
    for batch in ds.ragged_batch(batch_size):
        for key, value in batch.items():
            if isinstance(value, tf.RaggedTensor):
                value = value.to_tensor(default_value=-1)
            arr = value.numpy()
            if arr.dtype.kind in ("S", "O"):
                arr = np.char.decode(arr.astype(bytes), "utf-8")
            chunks.setdefault(key, []).append(arr)
    if not chunks:
        raise DataError(f"TFDS dataset {name!r} has no examples", path=f"tfds:{name}")
    columns = {}
    for key, parts in chunks.items():
        if parts[0].ndim == 2:  # pad every chunk to the widest
            width = max(p.shape[1] for p in parts)
            parts = [np.pad(p, ((0, 0), (0, width - p.shape[1])), constant_values=-1)
                     for p in parts]
        columns[key] = np.concatenate(parts)
    if name.startswith(("movielens", "movie_lens")) and user is None and item is None:
        return movielens_table(columns, source=f"tfds:{name}")
    mapping = {USER: user or USER, ITEM: item or ITEM}
    if rating or "rating" in columns:
        mapping[RATING] = rating or "rating"
    if timestamp or "timestamp" in columns:
        mapping[TIMESTAMP] = timestamp or "timestamp"
    for canon, key in mapping.items():
        if key not in columns:
            raise DataError(f"TFDS dataset {name!r} has no feature {key!r} for {canon}; "
                            f"pass {canon.split('_')[0]}=FEATURE (features: "
                            f"{sorted(columns)})", path=f"tfds:{name}", field=key)
    out = {canon: columns.pop(key) for canon, key in mapping.items()}
    out.update(columns)
    return Interactions.from_columns(out, source=f"tfds:{name}",
                                     tfds_names={c: k for c, k in mapping.items() if c != k})


def load_tfds(name: str, data_dir: str | None = None, split: str = "train", download=True,
              user: str | None = None, item: str | None = None, rating: str | None = None,
              timestamp: str | None = None) -> Interactions:
    """``tfds.load(name, split=split, data_dir=data_dir)`` → interactions table."""
    try:
        import tensorflow_datasets as tfds
    except ImportError as err:
        raise DataError(f"tfds:{name} needs tensorflow-datasets (pip install "
                        f"tensorflow-datasets); or {_alternative(name)}") from err
    if not name:
        raise DataError("tfds: needs a dataset name, e.g. tfds:movielens/100k-ratings")
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as err:  # DatasetNotFoundError, bad config names, ...
        raise DataError(f"unknown TFDS dataset {name!r}: {err}", path=f"tfds:{name}") from err
    prepared = builder.is_prepared()
    if not prepared:
        where = data_dir or "the default TFDS data_dir"
        if not _is_true(download):
            raise DataError(f"TFDS dataset {name!r} is not prepared in {where} and "
                            f"download=0; {_alternative(name)}", path=f"tfds:{name}")
        url = getattr(getattr(builder, "builder_config", None), "download_url", None)
        if not _online(url):
            host = urlparse(url).hostname if url else _DEFAULT_HOST
            raise DataError(f"TFDS dataset {name!r} is not prepared in {where} and cannot be "
                            f"downloaded (no network: {host} is unreachable); "
                            f"{_alternative(name)}", path=f"tfds:{name}")
    try:
        ds = tfds.load(name, split=split, data_dir=data_dir, download=not prepared)
    except Exception as err:  # network errors, checksum errors, bad split names, ...
        raise DataError(f"tfds.load({name!r}) failed: {err}; {_alternative(name)}",
                        path=f"tfds:{name}") from err
    return table_from_tfds(ds, name, user=user, item=item, rating=rating, timestamp=timestamp)


register("tfds", load_tfds)

__all__ = ["load_tfds", "table_from_tfds"]
