"""The Prefect tasks of a run: scan, statistics, open store, write shards, verify, finish.

Each task is a thin call of one :mod:`pipeline.run` step (or
:func:`pipeline.shards.verify`); what Prefect adds is stated here once:

- **Granularity.** A run is six tasks whatever its size. The per-shard
  parallelism is Dask's: :func:`write_shards_task` runs
  :func:`pipeline.run.write_shards`, one Dask task per shard, on local threads
  or on the cluster at ``runtime.dask_address``. Prefect's per-task cost
  (a state change or two, a few log records) is then a fixed few tens of
  milliseconds per run instead of per shard (``benchmarks/bench_flow.py``).
- **Retries.** The I/O tasks retry :data:`IO_RETRIES` times with exponential
  backoff (:data:`IO_BACKOFF_SECONDS`, then twice as long each time) when the
  failure can be transient: an ``OSError``, or shards that could not be
  written (a retry rewrites only the shards still missing, the store is
  resumable). A bad config, a store of another run or a held lock fail at
  once (:func:`is_transient`).
- **Caching.** :func:`stats_task` is cached on :func:`stats_cache_key`: the
  source (folder, labelling, fingerprint of paths, sizes and mtimes) and
  everything that determines the statistics (``stats.method``, ``stats.at``,
  the content of ``stats.file``, and for ``stats.at: resized`` the
  ``transform.size`` and ``transform.resize``). Its result is persisted in
  Prefect's result storage (``$PREFECT_HOME/storage`` by default), so a
  scheduled rerun over unchanged data reads the statistics back (task state
  ``Cached``) and a touched, added or removed file recomputes them.
- **Logs.** Through Prefect's run logger: what was scanned, progress of the
  statistics (files/s) and of the shards (shards done / total, images/s).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

import pipeline.run as run
from flows._fork import install as _install_fork_handler
from pipeline.config import RunConfig
from pipeline.errors import StoreError
from pipeline.run import RunResult, RunStats, ShardWriteError, WriteResult
from pipeline.shards import StoreState
from pipeline.sources import Manifest

_install_fork_handler()  # forked children (DataLoader workers) of a flow's process exit cleanly

if TYPE_CHECKING:
    import logging

    from prefect.client.schemas.objects import State, TaskRun
    from prefect.context import TaskRunContext

    from pipeline.shards import VerifyReport

__all__ = [
    "IO_BACKOFF_SECONDS",
    "IO_RETRIES",
    "STATS_CACHE_VERSION",
    "ProgressLog",
    "StoreVerificationError",
    "finish_task",
    "is_transient",
    "open_store_task",
    "scan_task",
    "stats_cache_key",
    "stats_task",
    "verify_task",
    "write_shards_task",
]

#: Retries of the I/O tasks after the first attempt.
IO_RETRIES = 2
#: First retry delay in seconds; each further retry waits twice as long.
IO_BACKOFF_SECONDS = 2.0
#: Version of the statistics cache key; bump it when the statistics code changes its output.
STATS_CACHE_VERSION = "imageprep-stats-cache/1"


class StoreVerificationError(StoreError):
    """A written shard is missing or does not match its SHA-256 record (``verify_task``)."""


def is_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O errors and failed shards, nothing else.

    ``OSError`` (a network filesystem hiccup, a full disk freed meanwhile) and
    :class:`~pipeline.run.ShardWriteError` (some shard tasks raised; a retry
    rewrites only those) are retried. Every other
    :class:`~pipeline.errors.ImageprepError` (bad config, store of another
    run, a held lock, a missing folder) and any other exception fail at once.
    """
    exc = state.data
    if not isinstance(exc, BaseException):
        return False
    return isinstance(exc, OSError | ShardWriteError)


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The run logger inside a flow or task run; the ``flows`` logger outside (``task.fn``)."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger("flows")


def _io_task(name: str, **options: Any) -> Any:
    """The options shared by the I/O tasks (retries with backoff, no caching)."""
    defaults: dict[str, Any] = {
        "name": name,
        "retries": IO_RETRIES,
        "retry_delay_seconds": exponential_backoff(backoff_factor=IO_BACKOFF_SECONDS),
        "retry_condition_fn": is_transient,
        "cache_policy": NO_CACHE,
        "persist_result": False,
    }
    return task(**{**defaults, **options})


class ProgressLog:
    """Progress lines for a phase, through a logger, at most ``steps`` + 1 of them.

    Thread-safe: Dask's callbacks may come from worker threads. A line is
    logged when the count crosses the next ``1/steps`` of the total, and at the
    end, with the rate of ``unit`` per second since the object was made.

    Example:
        >>> import logging
        >>> lines = []
        >>> class Keep(logging.Handler):
        ...     def emit(self, record): lines.append(record.getMessage())
        >>> log = logging.getLogger("progress-example"); log.addHandler(Keep())
        >>> log.setLevel(logging.INFO)
        >>> p = ProgressLog(log, "shards", total=4, unit="images", steps=2)
        >>> for done in range(1, 5):
        ...     p.update(done, units=8 * done)
        >>> [line.split(",")[0] for line in lines]
        ['shards: 2/4 (50%)', 'shards: 4/4 (100%)']
    """

    def __init__(
        self,
        logger: logging.Logger | logging.LoggerAdapter[Any],
        phase: str,
        *,
        total: int,
        unit: str,
        steps: int = 10,
    ) -> None:
        self.logger, self.phase, self.total, self.unit = logger, phase, total, unit
        self.steps = max(1, steps)
        self.start = time.perf_counter()
        self._next = 1
        self._lock = threading.Lock()

    def update(self, done: int, *, units: int | None = None) -> None:
        """Report ``done`` of ``total`` items, ``units`` of the rated unit so far."""
        with self._lock:
            if self.total <= 0:
                return
            if done < self.total and done * self.steps < self._next * self.total:
                return
            while self._next * self.total <= done * self.steps:
                self._next += 1
            elapsed = max(time.perf_counter() - self.start, 1e-9)
            n = done if units is None else units
            self.logger.info(
                "%s: %d/%d (%d%%), %d %s in %.1f s, %.1f %s/s",
                self.phase,
                done,
                self.total,
                100 * done // self.total,
                n,
                self.unit,
                elapsed,
                n / elapsed,
                self.unit,
            )


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def stats_cache_key(config: RunConfig, fingerprint: str) -> str:
    """Return the cache key of the statistics of ``config``'s source.

    The key hashes everything the statistics and the set of accepted files
    depend on, and nothing else:

    - the source: its folder, ``source.labels`` and the manifest
      ``fingerprint`` (relative paths, sizes and mtimes of every file: a
      touched, added, removed or renamed file changes it);
    - ``stats.file``: the SHA-256 of the file's content; otherwise
      ``stats.method`` and ``stats.at``, and for ``stats.at: resized`` the
      ``transform.size`` and ``transform.resize``;
    - the versions of imageprep and Pillow (the decoder), and
      :data:`STATS_CACHE_VERSION`.

    The output store, augmentations, normalization, seed and runtime options
    are not in it: they do not change the statistics.

    Raises:
        ConfigError: ``stats.file`` can no longer be read.

    Example:
        >>> cfg = RunConfig.model_validate({"source": {"path": "/d"}, "output": {"path": "/o"}})
        >>> key = stats_cache_key(cfg, "fp")
        >>> key.startswith("imageprep-stats-"), len(key)
        (True, 80)
        >>> other = cfg.model_copy(update={"output": cfg.output.model_copy(update={"path": "/x"})})
        >>> stats_cache_key(other, "fp") == key, stats_cache_key(cfg, "fp2") == key
        (True, False)
    """
    from pipeline.errors import ConfigError

    st = config.stats
    stats: dict[str, Any]
    if st.file is not None:
        try:
            digest = hashlib.sha256(Path(st.file).read_bytes()).hexdigest()
        except OSError as exc:
            raise ConfigError(f"stats.file: cannot read {st.file}: {exc}") from exc
        stats = {"file_sha256": digest}
    else:
        stats = {"method": st.method, "at": st.at}
        if st.at == "resized":
            size = config.transform.size
            stats["resize"] = {
                "size": [int(size[0]), int(size[1])],
                "mode": config.transform.resize,
            }
    data = {
        "version": STATS_CACHE_VERSION,
        "packages": {"imageprep": _version("imageprep"), "pillow": _version("pillow")},
        "source": {
            "path": str(config.source.path),
            "labels": config.source.labels,
            "fingerprint": fingerprint,
        },
        "stats": stats,
    }
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "imageprep-stats-" + hashlib.sha256(canonical.encode()).hexdigest()


def _stats_key_fn(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn`` of :func:`stats_task`."""
    manifest = parameters["manifest"]
    if isinstance(manifest, quote):  # the flows pass large values quoted (not introspected)
        manifest = manifest.unquote()
    return stats_cache_key(parameters["config"], manifest.fingerprint)


# ----------------------------------------------------------------------------- tasks


@_io_task("scan")
def scan_task(config: RunConfig) -> Manifest:
    """Scan ``source.path`` (:func:`pipeline.run.scan_source`); never cached."""
    logger = _logger()
    manifest = run.scan_source(config)
    logger.info(
        "scanned %s: %d image files, %d classes, %d entries rejected, fingerprint %s",
        manifest.root,
        len(manifest.files),
        len(manifest.classes),
        len(manifest.rejected),
        manifest.fingerprint[:12],
    )
    return manifest


def _stats(config: RunConfig, manifest: Manifest, *, reuse_store: bool = False) -> RunStats:
    """Statistics and accepted files of the source (:func:`pipeline.run.compute_run_stats`).

    Args:
        config: the run config.
        manifest: the scanned source; its fingerprint is part of the cache key.
        reuse_store: first look for the statistics in an existing store of the
            same config and source (:func:`pipeline.run.resume_stats`); call
            it only while holding the store's lock. Not part of the cache key:
            both ways give the same result.
    """
    logger = _logger()
    if reuse_store:
        resumed = run.resume_stats(config, manifest)
        if resumed is not None:
            logger.info("statistics read back from the existing store %s", config.output.path)
            return resumed
    progress = ProgressLog(logger, "stats", total=len(manifest.files), unit="files")
    done = 0
    lock = threading.Lock()

    def advance(n: int) -> None:
        nonlocal done
        with lock:
            done += n
            progress.update(done)

    run_stats = run.compute_run_stats(config, manifest, progress=advance)
    logger.info(
        "statistics of %d images (method %s, at %s): mean %s, std %s; %d inputs rejected",
        run_stats.stats.get("images", 0),
        run_stats.stats.get("method"),
        config.stats.at,
        _short(run_stats.stats.get("mean")),
        _short(run_stats.stats.get("std")),
        len(run_stats.failures),
    )
    return run_stats


def _short(values: Any) -> str:
    if not isinstance(values, list | tuple):
        return str(values)
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


stats_task = task(
    name="stats",
    cache_key_fn=_stats_key_fn,
    persist_result=True,
    retries=IO_RETRIES,
    retry_delay_seconds=exponential_backoff(backoff_factor=IO_BACKOFF_SECONDS),
    retry_condition_fn=is_transient,
)(_stats)
"""Cached statistics task; see :func:`_stats` and :func:`stats_cache_key`."""


@_io_task("open-store")
def open_store_task(config: RunConfig, manifest: Manifest, run_stats: RunStats) -> StoreState:
    """Create the store or resume it (:func:`pipeline.run.open_output`); hold the lock."""
    logger = _logger()
    state = run.open_output(config, manifest, run_stats)
    layout = state.layout
    logger.info(
        "%s store %s: %d samples in %d shards (%d already written)",
        "resumed" if state.resumed else "created",
        state.path,
        layout.n_samples,
        layout.n_shards,
        len(state.done),
    )
    return state


@_io_task("write-shards")
def write_shards_task(
    config: RunConfig, state: StoreState, run_stats: RunStats, *, root: str
) -> WriteResult:
    """Write the shards the store still misses (:func:`pipeline.run.write_shards`).

    One Dask task per shard, on local threads or at ``runtime.dask_address``.
    A retry first re-reads which shards are done, so it writes only the rest.

    Raises:
        ShardWriteError: some shards failed; each is named with its cause.
    """
    from prefect.context import TaskRunContext

    from pipeline.shards import done_shards

    logger = _logger()
    ctx = TaskRunContext.get()
    attempt = 1 + (ctx.task_run.run_count - 1 if ctx is not None else 0)
    if attempt > 1:
        state = dataclasses.replace(state, done=frozenset(done_shards(state.path)))
    layout = state.layout
    todo = state.todo
    logger.info(
        "writing %d of %d shards (%d samples each, %s)%s",
        len(todo),
        layout.n_shards,
        layout.shard_size,
        f"Dask cluster {config.runtime.dask_address}"
        if config.runtime.dask_address
        else "local threads",
        f", attempt {attempt}" if attempt > 1 else "",
    )
    progress = ProgressLog(logger, "shards", total=layout.n_shards, unit="images")
    images = 0
    lock = threading.Lock()

    def on_shard(index: int, done: int, total: int) -> None:
        nonlocal images
        with lock:
            images += len(layout.shard_rows(index))
            progress.update(done, units=images)

    write = run.write_shards(config, state, run_stats, root=root, on_shard=on_shard)
    if write.errors:
        raise ShardWriteError(run.shard_failure_message(config, state, write, attempts=attempt))
    return write


@_io_task("verify")
def verify_task(store: str, *, workers: int | None = None) -> VerifyReport:
    """Recompute every shard's SHA-256 and compare with its record (:func:`pipeline.shards.verify`).

    Raises:
        StoreVerificationError: a shard is missing or does not match its record.
    """
    from pipeline.shards import verify

    logger = _logger()
    report = verify(store, workers=workers)
    if not report.ok:
        raise StoreVerificationError(f"verification failed: {report.summary()}")
    logger.info(
        "verified %d/%d shards against their SHA-256", len(report.verified), report.n_shards
    )
    return report


@_io_task("finish")
def finish_task(
    config: RunConfig,
    state: StoreState,
    run_stats: RunStats,
    write: WriteResult,
    *,
    timings: dict[str, float],
) -> RunResult:
    """Record the run's end in the store and return its summary (:func:`pipeline.run.finish`)."""
    return run.finish(config, state, run_stats, write, timings=timings)
