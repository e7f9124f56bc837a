"""A thread-safe progress callback backed by a rich progress bar (terminals only).

Library functions take ``progress: Callable[[int], None] | None`` and call it
with the number of items just finished, possibly from worker threads; this
module turns such a callback into a rich bar when the output is a terminal and
into a no-op otherwise (pipes, files, CI logs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["progress_bar"]


@contextmanager
def progress_bar(
    total: int,
    *,
    description: str,
    console: Console | None = None,
    enabled: bool | None = None,
) -> Iterator[Callable[[int], None]]:
    """Show a progress bar of ``total`` items while the block runs.

    Args:
        total: number of items.
        description: text left of the bar.
        console: rich console to draw on (default: a new one on stderr).
        enabled: force the bar on or off; ``None`` shows it only when the
            console is a terminal.

    Yields:
        ``advance(n)``: call with the number of items finished; thread-safe.

    Example:
        >>> with progress_bar(3, description="files", enabled=False) as advance:
        ...     for _ in range(3):
        ...         advance(1)
    """
    from rich.console import Console

    con = console if console is not None else Console(stderr=True)
    show = con.is_terminal if enabled is None else enabled
    if not show:
        yield lambda n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    lock = threading.Lock()
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=con,
        transient=True,
    ) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int) -> None:
            with lock:
                bar.advance(task, n)

        yield advance
