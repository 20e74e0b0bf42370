"""Errors raised while reading and locating data.

`DataFormatError` is the one error for bad input files: its message always
starts with the file, then the 1-based line when it is known, then what is
wrong, for example::

    train.txt.gz line 17: item id 'x3' is not a non-negative integer

`DataNotFoundError` is a `FileNotFoundError` for a missing file or dataset; its
message says where the data was looked for and how to provide it.
"""
from __future__ import annotations

import os


class DataFormatError(ValueError):
    """A data file is malformed.

    Attributes:
        path: the file, as given by the caller (``str``).
        line: 1-based line (or table row) number, or ``None`` when the problem
            concerns the whole file.
        problem: what is wrong, without the location prefix.
    """

    def __init__(self, path: str | os.PathLike, problem: str, line: int | None = None) -> None:
        self.path = str(path)
        self.problem = problem
        self.line = None if line is None else int(line)
        where = self.path if self.line is None else f"{self.path} line {self.line}"
        super().__init__(f"{where}: {problem}")

    def __reduce__(self):  # keep the three fields when pickled (e.g. across worker processes)
        return (type(self), (self.path, self.problem, self.line))


class DataNotFoundError(FileNotFoundError):
    """A data file or a named dataset is missing; the message says where it looked."""

    def __init__(self, message: str) -> None:
        super().__init__(message)

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""

    def __reduce__(self):
        return (type(self), (str(self),))
