"""``tfrec-p5 add-items``: new items in an export, without retraining.

Reads a CSV / TSV / Parquet file of items (an ID column plus the export's item feature
columns), scores them with the export's own item tower and feature encodings, and writes
the next version of the model folder, whose ``recommend`` and ``rank`` (a next-item
export: ``next_items`` and ``score_items``) serve them (``tfrec_p5.export.add_items``).
A refusal (unsupported export, missing column, an ID the export already has) is one line
and exit status 2.

    tfrec-p5 add-items --model saved_models/ml100k --items new_movies.csv
    # wrote saved_models/ml100k/2: 3 new item(s) from new_movies.csv added to version 1
    # (served by recommend and rank; the towers are not retrained)
"""

from __future__ import annotations

import argparse
import json

from tfrec_p5.cli.query import MODEL_HELP
from tfrec_p5.cli.registry import CliError

__all__ = ["add_parsers", "cmd_add_items"]


def cmd_add_items(args: argparse.Namespace) -> int:
    """Write the next version of ``--model`` with the items of ``--items``."""
    from tfrec_p5.export.add_items import ADDED_ITEMS_KEY, AddItemsRefused, add_items
    from tfrec_p5.export.saved_model import load_metadata

    try:
        path = add_items(args.model, args.items, id_column=args.id_column)
    except AddItemsRefused as err:
        raise CliError(str(err), status=2) from err
    added = load_metadata(path)[ADDED_ITEMS_KEY]
    served = added.get("served_by") or ["recommend", "rank"]
    summary = {"version_dir": path, "added": added["count"],
               "parent_version": added["parent_version"], "served_by": served}
    if args.json:
        print(json.dumps(summary, sort_keys=True))
    else:
        print(f"wrote {path}: {added['count']} new item(s) from {args.items} added to "
              f"version {added['parent_version']} (served by {' and '.join(served)}; the "
              "towers are not retrained)")
    return 0


def add_parsers(sub) -> None:
    """Add ``add-items`` to ``tfrec-p5``'s subparsers."""
    p = sub.add_parser("add-items", help="add items known by their features to an export",
                       description="Score the items of --items (an ID column plus the "
                       "export's item feature columns; multi-categorical values joined "
                       "with '|') with the export's item tower, without retraining, and "
                       "write the next version of the model folder serving them in "
                       "recommend and rank (next-item exports: next_items and "
                       "score_items). Needs an export with score_new_items (a "
                       "retrieval head and item side features, or a next-item model "
                       "with item features) and the brute-force index; IDs the export "
                       "already has are refused.")
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--items", required=True, metavar="FILE", help="new items: .csv, .tsv "
                   "or .parquet; a title column (title, item_title, movie_title) is "
                   "stored as their titles when the export has titles")
    p.add_argument("--id-column", default="item_id", metavar="NAME", help="the items' ID "
                   "column")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=cmd_add_items)
