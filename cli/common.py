"""What both command-line tools share: consoles, one-line errors, progress bars."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from omgmg.datakit.errors import DatasetError, InvalidDatasetError, RequestError, render_options
from omgmg.datakit.remote import RemoteLocation, is_remote

console = Console(soft_wrap=True)  # long paths and messages stay on one line
err_console = Console(stderr=True, soft_wrap=True)

EXIT_INVALID = 1  # the data, a file or the machine is in the way
EXIT_USAGE = 2  # the request is bad (click uses 2 for usage errors too)
EXIT_INTERRUPTED = 130


def dataset_location(value) -> Path | RemoteLocation:
    """A dataset argument: a URL (http(s)://, s3://, gs://) stays a URL, anything else is a path."""
    return RemoteLocation(value) if is_remote(str(value)) else Path(value)


class DatasetLocation(click.ParamType):
    """A dataset folder or URL (click.Path would turn ``http://host/x.zarr`` into ``http:/host/x.zarr``)."""

    name = "PATH|URL"

    def convert(self, value, param, ctx):
        return dataset_location(value)


DATASET = DatasetLocation()


def as_flag(name: str, value: str) -> str:
    """A setting named in a library message (``<<name=value>>``, see :func:`render_options`) as the
    command-line flag that sets it: ``--force`` starts over or replaces, ``--backend smax``, ``--out``."""
    if (name, value) in (("force", "True"), ("overwrite", "True"), ("resume", "False")):
        return "--force"
    if (name, value) == ("evaluate", "False"):
        return "--no-eval"
    option = name.replace("_", "-")
    if value == "False":
        return f"--no-{option}"
    return f"--{option}" if value in ("True", "...") else f"--{option} {value}"


def warn(message: str) -> None:
    message = render_options(message, as_flag)
    err_console.print(f"[bold yellow]warning:[/] {escape(message)}", highlight=False, soft_wrap=True)


def fail(message: str, code: int = EXIT_USAGE) -> None:
    """One error line and exit; library errors arrive rendered with their flags (``friendly_errors``)."""
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
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
            path = escape(str(e.path))
            err_console.print(f"[bold red]error:[/] {path} is not a valid omgmg dataset", highlight=False)
            for p in e.problems:
                err_console.print(f"  {p}", highlight=False, soft_wrap=True, markup=False)
            sys.exit(EXIT_INVALID)
        except RequestError as e:
            fail(e.render(as_flag), EXIT_USAGE)
        except DatasetError as e:
            fail(e.render(as_flag), EXIT_INVALID)
        except OSError as e:  # anything the library did not name itself: still one line
            from omgmg.datakit.outputs import output_error

            fail(str(output_error(e, e.filename or "a file", "working on")), EXIT_INVALID)
        except KeyboardInterrupt:
            fail(
                "interrupted; whatever was finished is kept and the command can be run again to resume",
                EXIT_INTERRUPTED,
            )
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


class ProgressBars:
    """Bars on one rich display (see :func:`progress_bars`)."""

    def __init__(self, progress: Progress):
        self._progress = progress

    def add(self, description: str, total: int | None = None) -> Callable:
        """A new bar; returns ``update(completed=None, total=None, *, advance=None, info=None)``."""
        task = self._progress.add_task(description, total=total, info="")

        def update(completed=None, total=None, *, advance=None, info=None):
            changes = {"completed": completed, "total": total, "advance": advance, "info": info}
            self._progress.update(task, **{k: v for k, v in changes.items() if v is not None})

        return update

    def note(self, message: str) -> None:
        """A line above the bars."""
        self._progress.console.print(render_options(message, as_flag), highlight=False, soft_wrap=True, markup=False)


@contextmanager
def progress_bars():
    """The one progress display of both tools (on stderr, off when it is not a terminal): description,
    bar, done/total, a free ``info`` text, time elapsed and left. Yields :class:`ProgressBars`."""
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    ]
    with Progress(*columns, console=err_console, transient=False, disable=not err_console.is_terminal) as p:
        yield ProgressBars(p)


@contextmanager
def progress_bar(description: str, total: int | None):
    """One bar (see :func:`progress_bars`); yields its ``update``."""
    with progress_bars() as bars:
        yield bars.add(description, total)


def version_option():
    from omgmg import __version__

    return click.version_option(__version__, prog_name="omgmg")
