"""What both command-line tools share: consoles, one-line errors, progress bars."""
from __future__ import annotations

import functools
import sys
from contextlib import contextmanager

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from datakit.errors import DatasetError, InvalidDatasetError, RequestError

console = Console(soft_wrap=True)  # long paths and messages stay on one line
err_console = Console(stderr=True, soft_wrap=True)

EXIT_INVALID = 1  # the data, a file or the machine is in the way
EXIT_USAGE = 2  # the request is bad (click uses 2 for usage errors too)
EXIT_INTERRUPTED = 130


def warn(message: str) -> None:
    err_console.print(f"[bold yellow]warning:[/] {message}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    sys.exit(code)


def friendly_errors(fn):
    """Turn library errors into one clear line (per problem) and an exit code, never a traceback:
    a bad request (RequestError) exits 2, bad data or a file in the way 1, an interruption 130. A
    SIGTERM is an interruption like Ctrl-C: writers keep what they finished, for a later resume."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = _terminate_as_interrupt()
        try:
            return fn(*args, **kwargs)
        except InvalidDatasetError as e:
            err_console.print(f"[bold red]error:[/] {e.path} is not a valid omgmg dataset", highlight=False)
            for p in e.problems:
                err_console.print(f"  {p}", highlight=False, soft_wrap=True)
            sys.exit(EXIT_INVALID)
        except RequestError as e:
            fail(str(e), EXIT_USAGE)
        except DatasetError as e:
            fail(str(e), EXIT_INVALID)
        except OSError as e:  # anything the library did not name itself: still one line
            from datakit.outputs import output_error

            fail(str(output_error(e, e.filename or "a file", "working on")), EXIT_INVALID)
        except KeyboardInterrupt:
            fail("interrupted; whatever was finished is kept and the command can be run again to resume",
                 EXIT_INTERRUPTED)
        finally:
            if previous is not None:
                import signal

                signal.signal(signal.SIGTERM, previous)

    return wrapper


def _terminate_as_interrupt():
    """Make SIGTERM raise KeyboardInterrupt in the main thread; returns the handler it replaced."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():
        return None
    return signal.signal(signal.SIGTERM, interrupt)


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
