"""The one progress protocol of a run, and its two displays.

Library steps report progress as ``progress.update(phase, done, total)``
(:class:`Progress`), possibly from worker threads: ``phase`` is ``"stats"``
(files decoded) or ``"shards"`` (shards written), ``units`` optionally counts
the phase's rated unit (images written). A step sends one update as its phase
starts, with what was already done (a resumed run's shards), so that rates
count from then and only what the phase itself did. Two displays implement it:

- :class:`BarProgress`: rich progress bars on a terminal, nothing otherwise
  (the command line);
- :class:`LogProgress`: at most ``steps + 1`` lines per phase through a logger,
  with the rate (Prefect's run logger in the flows).

:func:`counter` turns a ``Progress`` into the ``advance(n)`` callback that
parallel library functions (:func:`pipeline.stats.compute_stats`) call with
the number of items just finished.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from rich.console import Console
    from rich.progress import Progress as RichProgress
    from rich.progress import TaskID

__all__ = ["BarProgress", "LogProgress", "Progress", "counter"]

#: How each phase is labelled in displays.
PHASES = {"stats": "statistics (files)", "shards": "writing (shards)", "verify": "verify (shards)"}


class Progress(Protocol):
    """Receives ``update(phase, done, total)`` calls; must be thread-safe."""

    def update(self, phase: str, done: int, total: int, *, units: int | None = None) -> None:
        """``done`` of ``total`` items of ``phase`` are finished (``units`` of its rated unit)."""


def counter(progress: Progress | None, phase: str, total: int) -> Callable[[int], None]:
    """An ``advance(n)`` callback that adds up ``n`` and reports to ``progress``.

    Example:
        >>> seen = []
        >>> class Keep:
        ...     def update(self, phase, done, total, *, units=None):
        ...         seen.append((phase, done, total))
        >>> advance = counter(Keep(), "stats", 5)
        >>> advance(2); advance(3)
        >>> seen
        [('stats', 0, 5), ('stats', 2, 5), ('stats', 5, 5)]
    """
    lock = threading.Lock()
    done = 0
    if progress is not None:
        progress.update(phase, 0, total)  # the phase starts now

    def advance(n: int) -> None:
        nonlocal done
        if progress is None:
            return
        with lock:
            done += n
            progress.update(phase, done, total)

    return advance


class BarProgress:
    """Rich progress bars, one per phase, shown only on a terminal (a context manager).

    Example:
        >>> from rich.console import Console
        >>> import io
        >>> with BarProgress(Console(file=io.StringIO())) as bars:  # not a terminal: silent
        ...     bars.update("stats", 1, 2)
    """

    def __init__(self, console: Console | None = None, *, enabled: bool | None = None) -> None:
        from rich.console import Console

        self.console = console if console is not None else Console(stderr=True)
        self.enabled = self.console.is_terminal if enabled is None else enabled
        self._bars: RichProgress | None = None
        self._tasks: dict[str, TaskID] = {}
        self._lock = threading.Lock()

    def __enter__(self) -> BarProgress:
        if self.enabled:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._bars = Progress(
                "{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=self.console,
                transient=True,
            )
            self._bars.start()
        return self

    def update(self, phase: str, done: int, total: int, *, units: int | None = None) -> None:
        """Move the bar of ``phase`` (created on its first update)."""
        if self._bars is None:
            return
        with self._lock:
            if phase not in self._tasks:
                self._tasks[phase] = self._bars.add_task(PHASES.get(phase, phase), total=total)
            self._bars.update(self._tasks[phase], completed=done, total=total)

    def __exit__(self, *exc: object) -> None:
        if self._bars is not None:
            self._bars.stop()
            self._bars = None


class LogProgress:
    """Progress lines through a logger, at most ``steps`` + 1 per phase, with the rate.

    A phase's first update starts its clock and is not logged unless it
    completes the phase. Then a line is logged when the count crosses the
    next ``1/steps`` of its total, and at the end, with the ``units`` (or
    items) done since the first update and their rate. Thread-safe.

    Example:
        >>> lines = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record): lines.append(record.getMessage())
        >>> log = logging.getLogger("progress-example"); log.addHandler(Keep())
        >>> log.setLevel(logging.INFO)
        >>> p = LogProgress(log, steps=2)
        >>> for done in range(0, 5):
        ...     p.update("shards", done, 4, units=8 * done)
        >>> [line.split(",")[0] for line in lines]
        ['shards: 2/4 (50%)', 'shards: 4/4 (100%)']
    """

    UNITS = {"stats": "files", "shards": "images", "verify": "shards"}

    def __init__(
        self, logger: logging.Logger | logging.LoggerAdapter[Any], *, steps: int = 10
    ) -> None:
        self.logger = logger
        self.steps = max(1, steps)
        # phase -> (start, next step, units at the start)
        self._phases: dict[str, tuple[float, int, int]] = {}
        self._lock = threading.Lock()

    def update(self, phase: str, done: int, total: int, *, units: int | None = None) -> None:
        """Log a line when ``done`` crosses the next step of ``total``."""
        n = done if units is None else units
        with self._lock:
            now = time.perf_counter()
            first = phase not in self._phases
            if first:
                self._phases[phase] = (now, 1, n)
            start, step, n0 = self._phases[phase]
            if total <= 0 or (done < total and (first or done * self.steps < step * total)):
                return
            while step * total <= done * self.steps:
                step += 1
            self._phases[phase] = (start, step, n0)
            elapsed = now - start
            unit = self.UNITS.get(phase, "items")
            line = "%s: %d/%d (%d%%), %d %s in %.1f s"
            args: list[Any] = [phase, done, total, 100 * done // total, n - n0, unit, elapsed]
            if n > n0 and elapsed > 0:
                line += ", %.1f %s/s"
                args += [(n - n0) / elapsed, unit]
            self.logger.info(line, *args)
