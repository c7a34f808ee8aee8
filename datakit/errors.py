"""Errors raised by datakit. Each message names the problem and, where there is one, the fix.

The command-line tools map them to exit codes: :class:`RequestError` is a usage error (exit 2: the
command asked for something that cannot be done as asked), every other :class:`DatasetError` exits 1
(the data, a file or the machine is in the way).
"""
from __future__ import annotations

from dataclasses import dataclass


class DatasetError(Exception):
    """A dataset (or a request about one) is wrong in a way the user can fix."""


class RequestError(DatasetError):
    """The request itself cannot be carried out as asked: an output that exists without ``--force``,
    an unfinished write or run made for another request, a value out of range. Exit code 2."""


class OutputError(DatasetError):
    """An output cannot be written: another process holds it, the disk is full, a folder is missing
    or read-only, or ``--force`` points at something omgmg did not write."""


class CheckpointError(DatasetError):
    """A checkpoint is missing, damaged or of another run, and no earlier good one can stand in."""


@dataclass(frozen=True)
class Problem:
    """One failed check: which array (or metadata key), which index, what is wrong and how to fix it."""

    where: str
    message: str
    fix: str = ""
    index: int | None = None

    def __str__(self) -> str:
        at = self.where if self.index is None else f"{self.where}[{self.index}]"
        return f"{at}: {self.message}" + (f" (fix: {self.fix})" if self.fix else "")


class InvalidDatasetError(DatasetError):
    """A dataset failed validation; ``problems`` lists every failed check."""

    def __init__(self, path, problems: list[Problem]):
        self.path = path
        self.problems = list(problems)
        head = f"{path} is not a valid omgmg dataset ({len(self.problems)} problem(s))"
        super().__init__(head + ":\n" + "\n".join(f"  - {p}" for p in self.problems))
