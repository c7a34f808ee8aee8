"""Errors raised by datakit. Each message names the problem and, where there is one, the fix."""
from __future__ import annotations

from dataclasses import dataclass


class DatasetError(Exception):
    """A dataset (or a request about one) is wrong in a way the user can fix."""


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
