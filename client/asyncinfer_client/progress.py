"""Progress of `asyncinfer run` on stderr: a live bar on a terminal (rich when installed), plain periodic
lines otherwise (a pipe or a log file gets a line every few seconds, not a stream of carriage returns)."""

from __future__ import annotations

import sys
import time
from typing import Protocol, TextIO

BAR_WIDTH = 30  # the fallback bar's cells


class Progress(Protocol):
    """What the run reports to: started once, advanced per finished input, ticked by a timer, closed once."""

    def start(self, total: int, already_done: int) -> None: ...

    def advance(self, failed: bool) -> None: ...

    def tick(self) -> None: ...

    def close(self) -> None: ...


class Counts:
    """Done/failed counts and the rate and ETA derived from them (only this run's completions count)."""

    def __init__(self) -> None:
        self.total = 0
        self.done = 0
        self.failed = 0
        self.done_this_run = 0
        self.started_at = time.monotonic()

    def start(self, total: int, already_done: int) -> None:
        self.total, self.done, self.started_at = total, already_done, time.monotonic()

    def advance(self, failed: bool) -> None:
        self.done += 1
        self.done_this_run += 1
        self.failed += failed

    @property
    def rate(self) -> float:
        """Inputs finished per second in this run."""
        elapsed = time.monotonic() - self.started_at
        return self.done_this_run / elapsed if elapsed > 0 else 0.0

    @property
    def eta_s(self) -> float | None:
        if self.done >= self.total:
            return 0.0
        rate = self.rate
        return (self.total - self.done) / rate if rate > 0 else None

    def line(self) -> str:
        percent = 100 * self.done / self.total if self.total else 100.0
        eta = format_duration(self.eta_s) if self.eta_s is not None else "?"
        return f"{self.done}/{self.total} ({percent:.0f}%) done, {self.failed} failed, {self.rate:.1f}/s, ETA {eta}"


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class PlainProgress:
    """One line every `interval_s` seconds (and a last one at the end): for pipes, CI logs, files."""

    def __init__(self, stream: TextIO, interval_s: float) -> None:
        self.stream = stream
        self.interval_s = interval_s
        self.counts = Counts()
        self._last_line_at = 0.0

    def start(self, total: int, already_done: int) -> None:
        self.counts.start(total, already_done)
        self._last_line_at = time.monotonic()
        if already_done:
            self._write(f"resuming: {already_done} of {total} inputs already in the output")

    def advance(self, failed: bool) -> None:
        self.counts.advance(failed)
        self.tick()

    def tick(self) -> None:
        if time.monotonic() - self._last_line_at >= self.interval_s:
            self._write(self.counts.line())

    def close(self) -> None:
        self._write(self.counts.line())

    def _write(self, text: str) -> None:
        self._last_line_at = time.monotonic()
        self.stream.write(f"asyncinfer run: {text}\n")
        self.stream.flush()


class TerminalProgress:
    """A one-line bar redrawn in place, for a terminal without rich installed."""

    def __init__(self, stream: TextIO, refresh_s: float = 0.2) -> None:
        self.stream = stream
        self.refresh_s = refresh_s
        self.counts = Counts()
        self._drawn_at = 0.0

    def start(self, total: int, already_done: int) -> None:
        self.counts.start(total, already_done)
        self._draw()

    def advance(self, failed: bool) -> None:
        self.counts.advance(failed)
        self.tick()

    def tick(self) -> None:
        if time.monotonic() - self._drawn_at >= self.refresh_s:
            self._draw()

    def close(self) -> None:
        self._draw()
        self.stream.write("\n")
        self.stream.flush()

    def _draw(self) -> None:
        self._drawn_at = time.monotonic()
        filled = BAR_WIDTH * self.counts.done // self.counts.total if self.counts.total else BAR_WIDTH
        bar = "#" * filled + "-" * (BAR_WIDTH - filled)
        self.stream.write(f"\r[{bar}] {self.counts.line()}\x1b[K")
        self.stream.flush()


class RichProgress:
    """rich's live progress bar: done/total, failed, rate and ETA."""

    def __init__(self, stream: TextIO) -> None:
        # imported here: rich is optional (the `progress` extra) and ImportError picks the fallback bar
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, ProgressColumn, TextColumn, TimeRemainingColumn
        from rich.progress import Progress as RichBar
        from rich.text import Text

        counts = self.counts = Counts()

        class RateColumn(ProgressColumn):
            """Inputs per second over this run (rich's own speed is a short window, jumpy at start)."""

            def render(self, task: object) -> Text:
                return Text(f"{counts.rate:.1f}/s")

        self._bar = RichBar(
            TextColumn("asyncinfer run"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("done, {task.fields[failed]} failed,"),
            RateColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            console=Console(file=stream),
            transient=False,
        )
        self._task = self._bar.add_task("run", total=None, failed=0)

    def start(self, total: int, already_done: int) -> None:
        self.counts.start(total, already_done)
        self._bar.update(self._task, total=total, completed=already_done)
        self._bar.start()

    def advance(self, failed: bool) -> None:
        self.counts.advance(failed)
        self._bar.update(self._task, advance=1, failed=self.counts.failed)

    def tick(self) -> None:
        """rich redraws from its own thread."""

    def close(self) -> None:
        self._bar.stop()


def progress_for(stream: TextIO | None = None, interval_s: float = 10.0) -> Progress:
    """A bar when `stream` (stderr by default) is a terminal, rich's if installed; plain lines otherwise."""
    stream = stream or sys.stderr
    if not stream.isatty():
        return PlainProgress(stream, interval_s)
    try:
        return RichProgress(stream)
    except ImportError:
        return TerminalProgress(stream)
