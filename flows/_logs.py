"""Show what the library logs about where the work runs: in the run's log, or on the console.

:mod:`pipeline.execution` logs the Dask cluster and its dashboard link on the
``pipeline.execution`` logger (:data:`EXECUTION_LOGGER`), which nothing shows
by default (Python's last-resort handler prints warnings only). Two context
managers show it for the length of a run:

- :func:`to_run_log`: inside a flow, each record goes to the Prefect run
  logger of the thread that logged it (the task run's, or the flow run's), so
  it is stored with the run and shown in the UI and on the worker's console;
- :func:`to_console`: ``imageprep run --no-prefect`` prints each record on
  its (rich) console, above the progress bars.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

__all__ = ["EXECUTION_LOGGER", "LOCAL_DASHBOARD_HINT", "to_console", "to_run_log"]

EXECUTION_LOGGER = "pipeline.execution"
"""The logger :mod:`pipeline.execution` reports the cluster and its dashboard on."""

LOCAL_DASHBOARD_HINT = (
    "Dask: local threads of this process (no dashboard). To watch a run in the Dask "
    "dashboard, start a scheduler and workers (`dask scheduler`, then `dask worker "
    "tcp://HOST:8786`) and set runtime.dask_address=tcp://HOST:8786; the dashboard is "
    "then at http://HOST:8787/status (it needs bokeh>=3.1 where the scheduler runs)."
)
"""What a run on local threads logs instead of a dashboard link (docs/flows.md)."""


class _Forward(logging.Handler):
    def __init__(self, emit: Callable[[logging.LogRecord], None]) -> None:
        super().__init__(logging.INFO)
        self._emit = emit

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self._emit(record)
        except Exception:  # a display must never fail the run
            self.handleError(record)


@contextlib.contextmanager
def _attached(handler: logging.Handler, name: str, *, propagate: bool = True) -> Iterator[None]:
    logger = logging.getLogger(name)
    level, propagates = logger.level, logger.propagate
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    logger.propagate = propagate and propagates
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
        logger.propagate = propagates


@contextlib.contextmanager
def to_run_log(
    fallback: logging.Logger | logging.LoggerAdapter[Any], name: str = EXECUTION_LOGGER
) -> Iterator[None]:
    """Forward ``INFO`` records of logger ``name`` to the current Prefect run logger.

    Args:
        fallback: the logger for records from threads outside any run context
            (the flow's run logger).
        name: the library logger to forward.
    """
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    def emit(record: logging.LogRecord) -> None:
        try:
            logger: logging.Logger | logging.LoggerAdapter[Any] = get_run_logger()
        except MissingContextError:
            logger = fallback
        logger.log(record.levelno, record.getMessage())

    # not also to the root logger: in a flow run Prefect's console handler sits
    # there and would print each line a second time
    with _attached(_Forward(emit), name, propagate=False):
        yield


@contextlib.contextmanager
def to_console(console: Console, name: str = EXECUTION_LOGGER) -> Iterator[None]:
    """Print ``INFO`` records of logger ``name`` on ``console`` (above any live progress bars).

    Example:
        >>> import io
        >>> from rich.console import Console
        >>> out = io.StringIO()
        >>> with to_console(Console(file=out, width=200)):
        ...     logging.getLogger(EXECUTION_LOGGER).info("dashboard: %s", "http://h:8787/status")
        >>> print(out.getvalue(), end="")
        dashboard: http://h:8787/status
    """

    def emit(record: logging.LogRecord) -> None:
        console.print(record.getMessage(), markup=False, highlight=False, soft_wrap=True)

    with _attached(_Forward(emit), name):
        yield
