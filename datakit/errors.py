"""Errors raised by datakit. Each message names the problem and, where there is one, the fix.

The command-line tools map them to exit codes: :class:`RequestError` (and :class:`ConfigError`) is a
usage error (exit 2: the command asked for something that cannot be done as asked), every other
:class:`DatasetError` exits 1 (the data, a file or the machine is in the way).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

OPTION = re.compile(r"<<(\w+)=([^>]*)>>")
"""A setting the caller can change, named in a message as ``<<name=value>>`` (``<<force=True>>``,
``<<backend=smax>>``, ``<<out=...>>``): messages name the library's parameter, never a command-line
flag; :func:`render_options` shows it as a keyword, and the command-line tools as their flag."""


def render_options(text: str, option=None) -> str:
    """``text`` with each ``<<name=value>>`` shown by ``option(name, value)``, by default as the
    keyword ``name=value`` (``name='value'`` for a word that is not a Python constant)."""

    def keyword(name: str, value: str) -> str:
        literal = value in ("True", "False", "None", "...") or value.replace(".", "", 1).isdigit()
        return f"{name}={value if literal else repr(value)}"

    return OPTION.sub(lambda m: (option or keyword)(m[1], m[2]), text)


class DatasetError(Exception):
    """A dataset (or a request about one) is wrong in a way the user can fix."""

    def __str__(self) -> str:
        return render_options(super().__str__())

    def render(self, option=None) -> str:
        """The message with its settings shown by ``option(name, value)`` (see :func:`render_options`)."""
        return render_options(super().__str__(), option)


class RequestError(DatasetError):
    """The request itself cannot be carried out as asked: an output that exists without ``--force``,
    an unfinished write or run made for another request, a value out of range. Exit code 2."""


class ConfigError(RequestError, ValueError):
    """A configuration value is out of range, unknown, or does not fit the task (an algorithm's
    hyperparameter, a behaviour algorithm for the wrong kind of actions). Exit code 2. Messages name
    the field as the config dataclass does, not a command-line flag."""


class BackendUnavailable(DatasetError):
    """A simulator the task needs is not installed or cannot run here (StarCraft II, JaxMARL, MuJoCo)."""


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
