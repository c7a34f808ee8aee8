"""Running a command as a person does: in a pseudo-terminal of a given size, its screen rendered by a
terminal emulator (pyte), so a test sees what a person would see, bars included.

    run = run_in_terminal("omgmg-data", "fixture", "out.zarr", cwd=tmp_path)
    run.lines_with("writing episodes")   # the transcript's lines (scrolled-off ones too) holding that text
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from dataclasses import dataclass

import pyte

COMMANDS = {"omgmg-data": "omgmg.cli.data", "omgmg": "omgmg.cli.train"}


@dataclass
class TerminalRun:
    exit_code: int
    output: bytes  # everything the command wrote to the terminal
    transcript: list[str]  # the terminal's lines at the end, those scrolled off the top first
    seconds: float

    def lines_with(self, text: str) -> list[str]:
        return [line for line in self.transcript if text in line]

    @property
    def screen(self) -> str:
        return "\n".join(self.transcript).rstrip()


def run_in_terminal(command: str, *args: str, **kw) -> TerminalRun:
    """Run ``command`` (omgmg-data or omgmg) with ``args`` in a pseudo-terminal (see :func:`run_argv_in_terminal`)."""
    return run_argv_in_terminal([sys.executable, "-m", COMMANDS[command], *args], **kw)


def run_argv_in_terminal(
    argv: list[str], *, cols: int = 100, rows: int = 30, cwd=None, env: dict | None = None, timeout: float = 300
) -> TerminalRun:
    """Run ``argv`` in a ``cols`` x ``rows`` pseudo-terminal as its stdin, stdout and stderr; returns what it
    wrote and what the terminal shows."""
    import fcntl
    import struct
    import termios

    master, slave = os.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
    environment = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "NO_COLOR", "FORCE_COLOR")}
    environment |= {"TERM": "xterm-256color"} | (env or {})
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        argv,
        stdin=slave,
        stdout=slave,
        stderr=slave,
        cwd=cwd,
        env=environment,
        start_new_session=True,
    )
    os.close(slave)
    chunks = []
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 1.0)
            if ready:
                try:
                    data = os.read(master, 65536)
                except OSError:  # EIO: the command closed the terminal
                    break
                if not data:
                    break
                chunks.append(data)
            elif proc.poll() is not None:
                break
            if time.perf_counter() - t0 > timeout:
                proc.kill()
                raise TimeoutError(f"{' '.join(argv)} ran past {timeout} s")
        code = proc.wait(timeout=30)
    finally:
        os.close(master)
    seconds = time.perf_counter() - t0
    output = b"".join(chunks)
    screen = pyte.HistoryScreen(cols, rows, history=100_000, ratio=0.5)
    stream = pyte.ByteStream(screen)
    stream.feed(output)
    scrolled = ["".join(ch.data for ch in (line[x] for x in range(cols))).rstrip() for line in screen.history.top]
    return TerminalRun(code, output, scrolled + [line.rstrip() for line in screen.display], seconds)
