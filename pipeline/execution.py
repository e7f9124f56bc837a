"""Where the data-parallel work runs: local Dask threads or an existing Dask cluster.

One entry point, :func:`run_tasks`, takes a list of ``dask.delayed`` tasks and
runs them either with Dask's threaded scheduler (the default: ``workers``
threads in this process) or on a ``dask.distributed`` cluster reached at
``address`` (``tcp://host:8786``). Each task's outcome is handed to a callback
as it finishes, so callers can log progress and fold results as they arrive
(:class:`TreeMerge`), and one failing task does not hide the others:
exceptions are captured per task and returned as :class:`TaskError` objects,
never raised half-way through a run.

On a cluster, each call logs the cluster's address and its dashboard link
(``client.dashboard_link``) at ``INFO`` on the ``pipeline.execution`` logger,
so that whoever runs the work can watch it; the flows forward that logger to
the run's log and ``imageprep run --no-prefect`` prints it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

__all__ = [
    "TaskError",
    "TreeMerge",
    "dashboard_link",
    "decode_pool",
    "guarded",
    "resolve_workers",
    "run_tasks",
    "torch_threads",
]

T = TypeVar("T")

log = logging.getLogger(__name__)


def resolve_workers(workers: int | None) -> int:
    """Return the number of local threads: ``workers`` or every core available."""
    if workers is not None:
        return max(1, int(workers))
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class TaskError:
    """A task that raised: which one, the exception's text, and its traceback."""

    name: str
    error: str
    traceback: str

    def __str__(self) -> str:
        return f"{self.name}: {self.error}"


def guarded(name: str, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Call ``fn``; on an exception return a :class:`TaskError` instead of raising."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # reported to the caller with its traceback
        return TaskError(
            name=name, error=f"{type(exc).__name__}: {exc}", traceback=traceback.format_exc()
        )


_POOLS: dict[int, ThreadPoolExecutor] = {}
_POOLS_LOCK = threading.Lock()


def decode_pool(threads: int) -> ThreadPoolExecutor:
    """A process-wide thread pool for decoding, shared by every task in the process.

    Tasks running concurrently in one process (Dask threads) share it, so the
    number of decoding threads stays ``threads`` whatever the task count.
    """
    with _POOLS_LOCK:
        pool = _POOLS.get(threads)
        if pool is None:
            pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imageprep-decode")
            _POOLS[threads] = pool
        return pool


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Set torch's intra-op thread count for the block (parallelism is Dask's)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_tasks(
    tasks: Sequence[Any],
    *,
    workers: int | None = None,
    address: str | None = None,
    on_done: Callable[[int, Any], None] | None = None,
    names: Sequence[str] | None = None,
    keep: bool = True,
) -> list[Any]:
    """Run ``dask.delayed`` tasks; return their results in order.

    Args:
        tasks: delayed objects, each computing one independent result.
        workers: local threads (default: every core); ignored with ``address``.
        address: a ``dask.distributed`` scheduler address to run on instead.
        on_done: called as ``on_done(position, result)`` as each task finishes
            (one call at a time; from a worker thread when local).
        names: what to call each task in a :class:`TaskError` when its worker
            dies on a cluster (default: the Dask key).
        keep: return the results; with ``False`` each result is dropped once
            ``on_done`` has seen it (memory bounded by the tasks in flight)
            and the returned list holds ``None``.

    Returns:
        The results, in the order of ``tasks``.
    """
    if not tasks:
        return []
    if address:
        return _run_distributed(tasks, address, on_done, names, keep)
    return _run_threads(tasks, resolve_workers(workers), on_done, keep)


def _run_threads(
    tasks: Sequence[Any],
    workers: int,
    on_done: Callable[[int, Any], None] | None,
    keep: bool,
) -> list[Any]:
    import dask

    lock = threading.Lock()

    def report(result: Any, position: int) -> Any:
        # runs in the worker thread right after the task; Dask then frees the
        # task's result unless it is kept
        if on_done is not None:
            with lock:
                on_done(position, result)
        return result if keep else None

    wrapped = [dask.delayed(report, pure=False)(task, i) for i, task in enumerate(tasks)]
    # the scheduler function itself, not the name "threads": Dask looks a name up only
    # after importing dask.distributed to check for a default client (0.4 s of start-up)
    from dask.threaded import get

    return list(dask.compute(*wrapped, scheduler=get, num_workers=workers))


def dashboard_link(client: Any) -> str | None:
    """The dashboard URL of a ``distributed.Client``'s scheduler, or ``None`` if it serves none."""
    try:
        link = client.dashboard_link
    except (KeyError, AttributeError, OSError):  # no dashboard service on the scheduler
        return None
    return str(link) if link else None


def _run_distributed(
    tasks: Sequence[Any],
    address: str,
    on_done: Callable[[int, Any], None] | None,
    names: Sequence[str] | None,
    keep: bool,
) -> list[Any]:
    from distributed import Client, as_completed

    with Client(address, set_as_default=False) as client:
        log.info(
            "Dask cluster %s: %d task(s); dashboard: %s",
            address,
            len(tasks),
            dashboard_link(client) or "none (the scheduler serves no dashboard)",
        )
        futures = client.compute(list(tasks))
        positions = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for future in as_completed(futures, loop=client.loop):
            pos = positions[future.key]
            try:
                result = future.result()
            except Exception as exc:  # a worker died or the task raised
                name = names[pos] if names is not None else str(future.key)
                result = TaskError(name=name, error=f"{type(exc).__name__}: {exc}", traceback="")
            future.release()
            if on_done is not None:
                on_done(pos, result)
            if keep:
                results[pos] = result
        return results


class TreeMerge(Generic[T]):
    """Merge ``n`` partial results in a fixed tree as they arrive, in any order.

    Items ``0..n-1`` are merged in groups of ``fan_in`` consecutive positions,
    then the group results in groups of ``fan_in``, and so on up to one root:
    the same tree whatever the order of arrival, so a merge that is not
    associative in floating point (Chan et al.'s update) gives the same bits
    for every worker count. A group is merged as soon as all its members are
    there, so only the pending groups are held in memory. Thread-safe.

    Example:
        >>> tree = TreeMerge(5, lambda *xs: "(" + "+".join(xs) + ")", fan_in=2)
        >>> for i in (3, 0, 4, 2, 1):
        ...     tree.add(i, str(i))
        >>> tree.result()
        '(((0+1)+(2+3))+((4)))'
    """

    def __init__(self, n: int, merge: Callable[..., T], *, fan_in: int = 8) -> None:
        self.merge = merge
        self.fan_in = fan_in
        self.sizes = [n]
        while self.sizes[-1] > 1:
            self.sizes.append(-(-self.sizes[-1] // fan_in))
        self._levels: list[dict[int, T]] = [{} for _ in self.sizes]
        self._root: T | None = None
        self._lock = threading.Lock()

    def add(self, position: int, item: T) -> None:
        """Add the item at ``position`` (each position once); merge what is complete."""
        with self._lock:
            level = 0
            while True:
                if self.sizes[level] == 1:
                    self._root = item
                    return
                pending = self._levels[level]
                pending[position] = item
                group = position // self.fan_in
                lo = group * self.fan_in
                hi = min(lo + self.fan_in, self.sizes[level])
                if any(p not in pending for p in range(lo, hi)):
                    return
                item = self.merge(*(pending.pop(p) for p in range(lo, hi)))
                position, level = group, level + 1

    def result(self) -> T | None:
        """The root, once every item is added (``None`` for ``n == 0`` or before the end)."""
        return self._root
