"""Where the data-parallel work runs: local Dask threads or an existing Dask cluster.

One entry point, :func:`run_tasks`, takes a list of ``dask.delayed`` tasks and
runs them either with Dask's threaded scheduler (the default: ``workers``
threads in this process) or on a ``dask.distributed`` cluster reached at
``address`` (``tcp://host:8786``). Each task's outcome is reported to a
callback as it finishes, so callers can log progress and so that one failing
task does not hide the others: exceptions are captured per task and returned
as :class:`TaskError` objects, never raised half-way through a run.
"""

from __future__ import annotations

import contextlib
import os
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

__all__ = [
    "TaskError",
    "decode_pool",
    "guarded",
    "resolve_workers",
    "run_tasks",
    "torch_threads",
]


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
) -> list[Any]:
    """Run ``dask.delayed`` tasks; return their results in order.

    Args:
        tasks: delayed objects, each computing one independent result.
        workers: local threads (default: every core); ignored with ``address``.
        address: a ``dask.distributed`` scheduler address to run on instead.
        on_done: called as ``on_done(position, result)`` as each task finishes.
        names: what to call each task in a :class:`TaskError` when its worker
            dies on a cluster (default: the Dask key).

    Returns:
        The results, in the order of ``tasks``.
    """
    if not tasks:
        return []
    if address:
        return _run_distributed(tasks, address, on_done, names)
    return _run_threads(tasks, resolve_workers(workers), on_done)


def _run_threads(
    tasks: Sequence[Any], workers: int, on_done: Callable[[int, Any], None] | None
) -> list[Any]:
    import dask
    from dask.callbacks import Callback

    positions = {task.key: i for i, task in enumerate(tasks)}
    lock = threading.Lock()

    class _Done(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, worker_id: Any) -> None:
            pos = positions.get(key)
            if pos is not None and on_done is not None:
                with lock:
                    on_done(pos, result)

    with _Done():
        results = dask.compute(*tasks, scheduler="threads", num_workers=workers)
    return list(results)


def _run_distributed(
    tasks: Sequence[Any],
    address: str,
    on_done: Callable[[int, Any], None] | None,
    names: Sequence[str] | None = None,
) -> list[Any]:
    from distributed import Client, as_completed

    with Client(address, set_as_default=False) as client:
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
            results[pos] = result
            if on_done is not None:
                on_done(pos, result)
        return results
