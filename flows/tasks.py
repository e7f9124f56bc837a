"""The run's steps as Prefect tasks, and the runner that calls them.

Each task is a :mod:`pipeline.run` step function with Prefect's policies in
the decorator, nothing else; :class:`TaskRunner` is the
:class:`pipeline.run.StepRunner` that :func:`pipeline.run.prepare` calls each
step through inside the flow, so the order of a run is written once, in
:func:`pipeline.run.prepare`. What Prefect adds is stated here once:

- **Granularity.** A run is six tasks whatever its size. The per-shard
  parallelism is Dask's: :data:`write_shards_task` runs
  :func:`pipeline.run.write_shards`, one Dask task per shard, on local threads
  or on the cluster at ``runtime.dask_address``. Prefect's per-task cost
  (a state change or two, a few log records) is then a fixed few tens of
  milliseconds per run instead of per shard (``benchmarks/bench_flow.py``).
- **Retries.** The I/O tasks retry :data:`IO_RETRIES` times with exponential
  backoff (:data:`IO_BACKOFF_SECONDS`, then twice as long each time) when the
  failure can be transient: an ``OSError``, or shards that could not be
  written (a retry rewrites only the shards still missing: the step reads the
  store's records when it starts). A bad config, a store of another run or a
  held lock fail at once (:func:`is_transient`).
- **Caching.** :data:`stats_task` is cached on :func:`stats_cache_key`: the
  source (folder, labelling, fingerprint of paths, sizes and mtimes) and
  everything that determines the statistics (``stats.method``, ``stats.at``,
  the content of ``stats.file``, and for ``stats.at: resized`` the
  ``transform.size`` and ``transform.resize``). Its result is persisted in
  Prefect's result storage (``$PREFECT_HOME/storage`` by default), so a
  scheduled rerun over unchanged data reads the statistics back (task state
  ``Cached``) and a touched, added or removed file recomputes them.
- **Logs.** Through Prefect's run logger: one line per step (what was
  scanned, the statistics, the store, shards written, verification) and the
  progress of the statistics and of the shards (:class:`pipeline.progress.LogProgress`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff
from prefect.utilities.annotations import quote

import pipeline.run as run
from flows._compat import install as _install_null_filter_fix
from flows._fork import install as _install_fork_handler
from pipeline.config import RunConfig
from pipeline.errors import ShardWriteError

_install_fork_handler()  # forked children (DataLoader workers) of a flow's process exit cleanly
_install_null_filter_fix()  # no 422 from a FastAPI >= 0.151 server (`prefect deploy`, reads)

if TYPE_CHECKING:
    import logging

    from prefect.client.schemas.objects import State, TaskRun
    from prefect.context import TaskRunContext

__all__ = [
    "IO_BACKOFF_SECONDS",
    "IO_RETRIES",
    "STATS_CACHE_VERSION",
    "TASKS",
    "TaskRunner",
    "finish_task",
    "is_transient",
    "open_store_task",
    "scan_task",
    "stats_cache_key",
    "stats_task",
    "verify_task",
    "write_shards_task",
]

T = TypeVar("T")

#: Retries of the I/O tasks after the first attempt.
IO_RETRIES = 2
#: First retry delay in seconds; each further retry waits twice as long.
IO_BACKOFF_SECONDS = 2.0
#: Version of the statistics cache key; bump it when the statistics code changes its output.
STATS_CACHE_VERSION = "imageprep-stats-cache/2"


def is_transient(task: Any, task_run: TaskRun, state: State[Any]) -> bool:
    """Prefect ``retry_condition_fn``: retry I/O errors and failed shards, nothing else.

    ``OSError`` (a network filesystem hiccup, a full disk freed meanwhile) and
    :class:`~pipeline.errors.ShardWriteError` (some shard tasks raised; a retry
    rewrites only those) are retried. Every other
    :class:`~pipeline.errors.ImageprepError` (bad config, store of another
    run, a held lock, a missing folder) and any other exception fail at once.
    """
    exc = state.data
    if not isinstance(exc, BaseException):
        return False
    return isinstance(exc, OSError | ShardWriteError)


def _logger() -> logging.Logger | logging.LoggerAdapter[Any]:
    """The run logger inside a flow or task run; the ``flows`` logger outside."""
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        import logging

        return logging.getLogger("flows")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def stats_cache_key(config: RunConfig, fingerprint: str, base: str | None = None) -> str:
    """Return the cache key of the statistics of ``config``'s source.

    The key hashes everything the statistics step's result depends on, and
    nothing else:

    - the source: its folder, ``source.labels`` and the manifest
      ``fingerprint`` (relative paths, sizes and mtimes of every file: a
      touched, added, removed or renamed file changes it);
    - ``stats.file``: the SHA-256 of the file's content; otherwise
      ``stats.method`` and ``stats.at``, and for ``stats.at: resized`` the
      ``transform.size`` and ``transform.resize``;
    - ``base``, the ``state`` token of the store the source is compared with
      (``None``: no store, everything is new), and then ``stats.update``: an
      update's result depends on what the store holds;
    - the versions of imageprep and Pillow (the decoder), and
      :data:`STATS_CACHE_VERSION`.

    The output path, augmentations, normalization, seed and runtime options
    are not in it: two new stores of one source share the statistics.

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
    if base is not None:
        data["store"] = {"state": base, "update": config.stats.update}
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return "imageprep-stats-" + hashlib.sha256(canonical.encode()).hexdigest()


def _stats_key_fn(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    """Prefect ``cache_key_fn`` of :func:`stats_task`."""
    from pipeline.update import store_token

    manifest = parameters["manifest"]
    if isinstance(manifest, quote):  # the flows pass large values quoted (not introspected)
        manifest = manifest.unquote()
    from pipeline.errors import ImageprepError

    config = parameters["config"]
    base = None
    if parameters.get("reuse_store"):
        try:
            base = store_token(config.output.location)
        except ImageprepError:  # not a store of ours: the task itself says so
            base = "unreadable"
    return stats_cache_key(config, manifest.fingerprint, base)


# ----------------------------------------------------------------------------- tasks

_IO_POLICY: dict[str, Any] = {
    "retries": IO_RETRIES,
    "retry_delay_seconds": exponential_backoff(backoff_factor=IO_BACKOFF_SECONDS),
    "retry_condition_fn": is_transient,
}
_NOT_CACHED: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}

#: :func:`pipeline.run.scan_source`; never cached.
scan_task = task(name="scan", **_IO_POLICY, **_NOT_CACHED)(run.scan_source)
#: :func:`pipeline.run.compute_run_stats`, cached on :func:`stats_cache_key`.
stats_task = task(name="stats", cache_key_fn=_stats_key_fn, persist_result=True, **_IO_POLICY)(
    run.compute_run_stats
)
#: :func:`pipeline.run.open_output`.
open_store_task = task(name="open-store", **_IO_POLICY, **_NOT_CACHED)(run.open_output)


def _write_shards(*args: Any, **kwargs: Any) -> run.WriteResult:
    """:func:`pipeline.run.write_shards`; a failure says how many attempts were made."""
    from prefect.context import TaskRunContext

    try:
        return run.write_shards(*args, **kwargs)
    except ShardWriteError as exc:
        ctx = TaskRunContext.get()
        attempt = ctx.task_run.run_count if ctx is not None else 1
        if attempt <= 1 or exc.report is None:
            raise
        raise ShardWriteError(exc.report.message(attempts=attempt), report=exc.report) from exc


#: :func:`pipeline.run.write_shards`; the failure message counts the attempts.
write_shards_task = task(name="write-shards", **_IO_POLICY, **_NOT_CACHED)(_write_shards)
#: :func:`pipeline.run.verify_output`.
verify_task = task(name="verify", **_IO_POLICY, **_NOT_CACHED)(run.verify_output)
#: :func:`pipeline.run.finish`.
finish_task = task(name="finish", **_IO_POLICY, **_NOT_CACHED)(run.finish)

#: The task of each :mod:`pipeline.run` step (what :class:`TaskRunner` runs).
TASKS: dict[Callable[..., Any], Any] = {
    run.scan_source: scan_task,
    run.compute_run_stats: stats_task,
    run.open_output: open_store_task,
    run.write_shards: write_shards_task,
    run.verify_output: verify_task,
    run.finish: finish_task,
}


def _short(values: Any) -> str:
    if not isinstance(values, list | tuple):
        return str(values)
    return "[" + ", ".join(f"{v:.4g}" for v in values) + "]"


def _summary(step: Callable[..., Any], result: Any, cached: bool) -> str | None:
    """One log line about a step's result."""
    if step is run.scan_source:
        return (
            f"scanned {result.root}: {len(result.files)} image files, "
            f"{len(result.classes)} classes, {len(result.rejected)} entries rejected, "
            f"fingerprint {result.fingerprint[:12]}"
        )
    if step is run.compute_run_stats:
        stats = result.stats
        how = "reused from the cache: the source is unchanged" if cached else "computed"
        return (
            f"statistics of {stats.get('images', 0)} images ({how}; method "
            f"{stats.get('method')}): mean {_short(stats.get('mean'))}, std "
            f"{_short(stats.get('std'))}; {len(result.failures)} inputs rejected"
        )
    if step is run.open_output:
        layout = result.layout
        return (
            f"{'resumed' if result.resumed else 'created'} store {result.path}: "
            f"{layout.n_samples} samples in {layout.n_shards} shards "
            f"({len(result.done)} already written)"
        )
    if step is run.write_shards:
        return (
            f"wrote {len(result.written)} shards ({result.samples} samples, "
            f"{result.samples_per_second:.1f} samples/s); {result.skipped} were already done"
        )
    if step is run.verify_output:
        return f"verified {len(result.verified)}/{result.n_shards} shards against their records"
    return None


def _quoted(value: Any) -> Any:
    """Large values go quoted, so Prefect does not walk every element of them per call."""
    if value is None or isinstance(value, str | int | float | bool | RunConfig):
        return value
    return quote(value)


class TaskRunner:
    """The :class:`pipeline.run.StepRunner` of the flow: each step runs as its Prefect task.

    Arguments are passed quoted (a manifest or the accepted files are large),
    each step's outcome is logged in one line, and the final state name of
    each task is kept in :attr:`states` (``"Cached"`` for statistics read from
    the cache).

    Args:
        refresh_stats: recompute the statistics even when cached.
    """

    def __init__(self, *, refresh_stats: bool = False) -> None:
        self.refresh_stats = refresh_stats
        self.states: dict[str, str] = {}

    def __call__(self, step: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``step`` as its task and return the result (raising the task's error)."""
        prefect_task = TASKS.get(step)
        if prefect_task is None:
            raise TypeError(f"{getattr(step, '__name__', step)!r} is not a step of pipeline.run")
        if step is run.compute_run_stats and self.refresh_stats:
            prefect_task = prefect_task.with_options(refresh_cache=True)
        state = prefect_task(
            *(_quoted(a) for a in args),
            **{k: _quoted(v) for k, v in kwargs.items()},
            return_state=True,
        )
        self.states[prefect_task.name] = state.name
        result: T = state.result()
        line = _summary(step, result, cached=state.name == "Cached")
        if line is not None:
            _logger().info(line)
        return result
