"""What both command-line tools share: consoles, one-line errors, progress bars."""

from __future__ import annotations

import functools
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Column

from omgmg.datakit.errors import DatasetError, InvalidDatasetError, RequestError, render_options
from omgmg.datakit.remote import RemoteLocation, is_remote

PIPED_WIDTH = 200
"""Width of output that is not a terminal (rich's default, 80, cut paths and tables short in logs)."""


def _console(stderr: bool = False) -> Console:
    """A console whose long paths and messages stay on one line; full width when piped."""
    c = Console(stderr=stderr, soft_wrap=True)
    if not c.is_terminal and "COLUMNS" not in os.environ:
        c.width = PIPED_WIDTH
    return c


console = _console()
err_console = _console(stderr=True)

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
    """The progress of a command's phases: live bars in a terminal, plain lines otherwise (see
    :func:`progress_bars`). One bar per phase: ``add`` draws one at once, ``later`` at its first update."""

    def __init__(self, progress: Progress | None, lines: ProgressLines | None = None):
        self._progress, self._lines = progress, lines

    def add(self, description: str, total: int | None = None, *, announce: bool = True) -> Callable:
        """A new bar; returns ``update(completed=None, total=None, *, advance=None, info=None)``. ``announce``:
        in a log, a line saying the phase started (a bar created at its first update has its own)."""
        if self._lines is not None:
            return self._lines.add(description, total, announce)
        task = self._progress.add_task(description, total=total, info="")

        def update(completed=None, total=None, *, advance=None, info=None):
            changes = {"completed": completed, "total": total, "advance": advance, "info": info}
            self._progress.update(task, **{k: v for k, v in changes.items() if v is not None})

        return update

    def later(self, description: str) -> Callable:
        """A bar that appears at its first update (a phase that may not happen): the same ``update``, and
        however often it is called, one bar."""
        bar: list[Callable] = []

        def update(completed=None, total=None, *, advance=None, info=None):
            if not bar:
                bar.append(self.add(description, total, announce=False))
            bar[0](completed, total, advance=advance, info=info)

        return update

    def result(self, text: str) -> None:
        """A line of the command's output (stdout, rich markup), printed above the bars while they are live:
        a terminal shows stdout and the bars' stderr on one screen, and a line printed past the live display
        would land on the bar's own line."""
        if self._progress is not None and console.is_terminal:
            self._progress.console.print(text, highlight=False)
        else:
            console.print(text, highlight=False)

    def note(self, message: str) -> None:
        """A line above the bars."""
        text = render_options(message, as_flag)
        if self._lines is not None:
            self._lines.print(text)
        else:
            self._progress.console.print(text, highlight=False, soft_wrap=True, markup=False)


class ProgressLines:
    """Progress for logs (output that is not a terminal: a file, a pipe, a cluster job): one plain line per
    phase when it starts, whenever its ``info`` changes (an evaluation, a finished cell), at most every
    ``interval`` seconds otherwise, and when it ends: ``[elapsed] phase: done/total (share) rate, ETA, info``."""

    def __init__(self, console: Console, interval: float):
        self.console, self.interval = console, interval
        self.t0 = time.monotonic()
        self.tasks: list[dict] = []

    def add(self, description: str, total: int | None, announce: bool = True) -> Callable:
        now = time.monotonic()
        task = {"description": description, "total": total, "completed": 0, "info": "", "start": now}
        task |= {"first": None, "shown": None, "last_line": -float("inf")}
        self.tasks.append(task)
        if announce:
            self._show(task)

        def update(completed=None, total=None, *, advance=None, info=None):
            if total is not None:
                task["total"] = total
            if completed is not None:
                task["completed"] = completed
            if advance is not None:
                task["completed"] += advance
            if task["first"] is None and (completed is not None or advance is not None):
                # a resumed phase starts part-way: its rate counts the work done from here on
                task["first"], task["start"] = task["completed"] - (advance or 0), time.monotonic()
            changed = info is not None and info != task["info"]
            if info is not None:
                task["info"] = info
            finished = task["total"] is not None and task["completed"] >= task["total"]
            if changed or finished or time.monotonic() - task["last_line"] >= self.interval:
                self._show(task)

        return update

    def _line(self, task: dict) -> str:
        done, total = task["completed"], task["total"]
        if task["first"] is None and not task["info"]:
            return f"[{_clock(time.monotonic() - self.t0)}] {task['description']}: started" + (
                f" (0/{_count(total)})" if total else ""
            )
        if total:
            parts = [f"{_count(done)}/{_count(total)} ({math.floor(100 * done / total)}%)"]
        else:  # a phase of unknown size: its count once it counts, its info alone before ("preparing datasets")
            parts = [_count(done)] if task["first"] is not None else []
        elapsed = time.monotonic() - task["start"]
        if task["first"] is not None and elapsed > 0 and done > task["first"]:
            rate = (done - task["first"]) / elapsed
            parts.append(f"{rate:,.0f}/s" if rate >= 100 else f"{rate:.3g}/s")
            if total and done < total:
                parts.append(f"ETA {_clock((total - done) / rate)}")
        if task["info"]:
            parts.append(task["info"])
        return f"[{_clock(time.monotonic() - self.t0)}] {task['description']}: " + ", ".join(parts)

    def _show(self, task: dict) -> None:
        state = (task["completed"], task["total"], task["info"])
        if state == task["shown"]:
            return
        task["shown"], task["last_line"] = state, time.monotonic()
        self.print(self._line(task))

    def print(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True, markup=False)

    def close(self) -> None:
        """Each phase's last state, where it was not the last line shown (a phase cut short)."""
        for task in self.tasks:
            self._show(task)


def _count(x: float) -> str:
    """A count as people read it: 2,000,000, not 2e+06; a part-done one rounded down (1.98 is 1.9, not 2.0)."""
    return f"{int(x):,}" if float(x).is_integer() else f"{math.floor(x * 10) / 10:,.1f}"


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


PROGRESS_INTERVAL = 30.0
"""Seconds between plain progress lines of a phase whose state changes but not its info
(``OMGMG_PROGRESS_INTERVAL`` sets it)."""


def progress_interval() -> float:
    """Seconds between progress reports: a live bar's text changes every 2 s, a log gets a line every
    ``OMGMG_PROGRESS_INTERVAL`` (default 30)."""
    if err_console.is_terminal:
        return 2.0
    try:
        return float(os.environ.get("OMGMG_PROGRESS_INTERVAL", PROGRESS_INTERVAL))
    except ValueError:
        return PROGRESS_INTERVAL


@contextmanager
def progress_bars():
    """The one progress display of both tools, on stderr. In a terminal: live bars (description, bar,
    done/total, a free ``info`` text, time elapsed and left), redrawn at most 10 times a second. Otherwise
    (a log file, a pipe): :class:`ProgressLines`. Yields :class:`ProgressBars`."""
    if not err_console.is_terminal:
        lines = ProgressLines(err_console, progress_interval())
        try:
            yield ProgressBars(None, lines)
        finally:
            lines.close()
        return
    # where the line is short, the description and the free text give way (ellipsis), never the counts or times
    # the counts and times keep their width; what is left is shared by the description, the bar and the free
    # text, which end in an ellipsis where the terminal is narrow (rich would otherwise cut the counts)
    left = max(30, err_console.width - 36)
    described, bar = min(40, int(0.45 * left)), min(40, max(8, int(0.2 * left)))
    columns = [
        TextColumn(
            "[bold]{task.description}", table_column=Column(max_width=described, no_wrap=True, overflow="ellipsis")
        ),
        BarColumn(bar_width=bar),
        MofNCompleteColumn(table_column=Column(no_wrap=True)),
        TextColumn(
            "{task.fields[info]}",
            table_column=Column(max_width=left - described - bar, no_wrap=True, overflow="ellipsis"),
        ),
        TimeElapsedColumn(table_column=Column(no_wrap=True)),
        TimeRemainingColumn(table_column=Column(no_wrap=True)),
    ]
    with Progress(*columns, console=err_console, transient=False) as p:
        yield ProgressBars(p)


@contextmanager
def progress_bar(description: str, total: int | None):
    """One bar (see :func:`progress_bars`); yields its ``update``."""
    with progress_bars() as bars:
        yield bars.add(description, total)


def version_option():
    from omgmg import __version__

    return click.version_option(__version__, prog_name="omgmg")
