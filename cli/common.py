"""What both command-line tools share: consoles, one-line errors, progress bars."""
from __future__ import annotations

import functools
import sys
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from datakit.errors import DatasetError, InvalidDatasetError

console = Console(soft_wrap=True)  # long paths and messages stay on one line
err_console = Console(stderr=True, soft_wrap=True)

EXIT_INVALID = 1  # the data is bad
EXIT_USAGE = 2  # the request is bad (click uses 2 for usage errors too)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def friendly_errors(fn):
    """Turn library errors into one clear line (per problem) and an exit code, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except InvalidDatasetError as e:
            err_console.print(f"[bold red]error:[/] {e.path} is not a valid omgmg dataset", highlight=False)
            for p in e.problems:
                err_console.print(f"  {p}", highlight=False, soft_wrap=True)
            sys.exit(EXIT_INVALID)
        except DatasetError as e:
            fail(str(e), EXIT_INVALID)
        except KeyboardInterrupt:
            fail("interrupted; whatever was finished is kept and the command can be run again to resume", 130)

    return wrapper


@contextmanager
def progress_bar(description: str, total: int | None):
    """A rich progress bar; yields ``update(completed)``."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn(), TimeRemainingColumn()]
    with Progress(*columns, console=err_console, transient=False, disable=not err_console.is_terminal) as p:
        task = p.add_task(description, total=total)
        yield lambda completed, total_=None: p.update(task, completed=completed,
                                                      **({"total": total_} if total_ else {}))


def version_option():
    from omgmg import __version__

    return click.version_option(__version__, prog_name="omgmg")
