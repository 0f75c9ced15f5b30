"""One-line notes about the training data that change what a model learns.

Why: two defaults change what a model learns. Data without a declared rating range get
the range ``[min, max]`` (so one typo such as ``1000`` widens the clip of every
prediction), and ``--split leave-one-out`` on data without timestamps takes the file
order as time. Both defaults are right for clean data and for sequence files, so they
stay, but a training command says so in one line, and warns when ratings look like
typos.

    table = check_training_data(load("csv:ratings.csv"), "leave-one-out", sys.stdout)
    # rating range [1, 5] inferred from the data; set rating_range= to override
    # note: leave-one-out: the data have no timestamps; using file order as time
"""

from __future__ import annotations

import dataclasses
from typing import Any, TextIO

from tfrec_p5.data.rating_range import infer_rating_range
from tfrec_p5.data.splits import FILE_ORDER_NOTE, uses_file_order

#: Outlier examples named in the warning (the count is always given).
_EXAMPLES = 3


def _g(value: float) -> str:
    return f"{value:g}"


def check_training_data(table: Any, split: str | None, info: TextIO) -> Any:
    """``table`` with its rating range set (inferred when the data declare none), after
    printing what was inferred or assumed on ``info``:

    * no declared range: ``rating range [LOW, HIGH] inferred from the data; set
      rating_range= to override``, and a ``warning:`` line naming the ratings far outside
      the bulk of the data (rule: ``tfrec_p5.data.rating_range``). The range is the
      data's min and max, so the model trains and clips on exactly what the data hold;
      the warning says how to declare the intended range instead.
    * ``split`` is leave-one-out and the data have no timestamps:
      ``note: leave-one-out: the data have no timestamps; using file order as time``.

    Setting the range on the whole table (not each split part) gives the training part,
    the validation part and the export one range.

        table = check_training_data(load("csv:r.csv"), "random:0.8", sys.stdout)
    """
    if table.rating is not None and len(table) and table.rating_range is None:
        check = infer_rating_range(table.rating)
        print(f"rating range [{_g(check.low)}, {_g(check.high)}] inferred from the data; "
              "set rating_range= to override (e.g. csv:PATH?rating_range=1,5)", file=info)
        if len(check.outliers):
            rows = check.outliers
            shown = ", ".join(f"{_g(float(table.rating[r]))} (user {table.user_id[r]}, item "
                              f"{table.item_id[r]})" for r in rows[:_EXAMPLES])
            more = f" and {len(rows) - _EXAMPLES:,} more" if len(rows) > _EXAMPLES else ""
            print(f"warning: {len(rows):,} rating(s) lie far outside the bulk "
                  f"[{_g(check.bulk[0])}, {_g(check.bulk[1])}] of the data: {shown}{more}; "
                  f"they widen the inferred range (which clips every prediction) and are "
                  "trained on: fix them, or declare the range with rating_range=LOW,HIGH "
                  "(ratings outside it are then bad lines; on_bad_lines=skip drops them)",
                  file=info)
        table = dataclasses.replace(table, rating_range=check.range)
    if split and uses_file_order(split, table):
        print(f"note: {FILE_ORDER_NOTE}", file=info)
    return table


__all__ = ["check_training_data"]
