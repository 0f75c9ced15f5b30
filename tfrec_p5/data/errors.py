"""The one error type the data layer raises for bad input.

Why: a pipeline that runs unattended on data nobody cleaned must say *where* the data is
wrong (file and line, or column) instead of failing deep inside TensorFlow or, worse,
training on silently wrong rows.

    try:
        table = load("csv:ratings.csv")
    except DataError as err:
        print(err)          # "ratings.csv:17: rating 'abc' is not a number"
"""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data. ``str(err)`` names the file, line and/or field at fault."""

    def __init__(
        self,
        message: str,
        *,
        path: str | None = None,
        line: int | None = None,
        field: str | None = None,
    ) -> None:
        self.path = path
        self.line = line
        self.field = field
        where = ""
        if path is not None:
            where = str(path) + (f":{line}" if line is not None else "")
        elif line is not None:
            where = f"line {line}"
        if field is not None and f"'{field}'" not in message:
            message = f"{message} (field '{field}')"
        super().__init__(f"{where}: {message}" if where else message)
