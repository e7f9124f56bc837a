"""The prepare run: scan, statistics, transform and write shards, final record.

:func:`prepare` is the whole job as one plain function (what ``imageprep run``
and the Prefect flow both execute); its steps are public so that the flow can
make each one a task:

1. :func:`scan_source`: the manifest of the source folder and its fingerprint.
2. :func:`compute_run_stats`: the dataset statistics, per ``stats.method`` and
   ``stats.at`` (or read from ``stats.file``), and with them the set of
   accepted files: every file is decoded once here, so the rejected ones are
   known before the store is laid out.
3. :func:`open_output`: create the store, or resume one made by the same
   config on the same source (:func:`pipeline.shards.open_or_create`).
4. :func:`write_shards`: one Dask task per missing shard; each task decodes its
   files in threads, runs the transform plan in batches on the configured
   device, and writes exactly that shard with its checksummed record.
5. :func:`finish`: the final record (failures, timings) in the store.

On a rerun over an unchanged source with the same config, step 2 reads the
statistics back from the store instead of decoding everything again
(:func:`resume_stats`), and step 4 only writes the shards not yet done.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.errors import DecodeError, Failure, ImageprepError
from pipeline.execution import TaskError, decode_pool, resolve_workers, run_tasks, torch_threads

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.decode import ImageHistogram
    from pipeline.shards import ShardRecord, StoreState
    from pipeline.sources import Manifest
    from pipeline.transforms import TransformPlan

__all__ = [
    "RunResult",
    "check_runtime",
    "RunStats",
    "ShardJob",
    "ShardWriteError",
    "WriteResult",
    "compute_run_stats",
    "finish",
    "open_output",
    "prepare",
    "resume_stats",
    "validate_sources",
    "scan_source",
    "shard_failure_message",
    "shard_jobs",
    "write_one_shard",
    "write_shards",
]

#: ``progress(phase, done, total)``: phase is ``"stats"`` (files) or ``"shards"``.
ProgressFn = Callable[[str, int, int], None]


class ShardWriteError(ImageprepError):
    """One or more shards could not be written; the store stays resumable."""


@dataclass(frozen=True)
class RunStats:
    """The statistics a run normalizes with, and the inputs it accepted.

    Attributes:
        stats: the stats JSON (contract shape), ``failures`` included.
        accepted: relative paths of the accepted sources, sorted (the store's
            ``paths``).
        labels: the label of each accepted source (``-1`` without classes).
        failures: every rejected input (scan and decode), sorted by path.
    """

    stats: dict[str, Any]
    accepted: tuple[str, ...]
    labels: tuple[int, ...]
    failures: tuple[Failure, ...]


@dataclass(frozen=True)
class ShardJob:
    """What one shard task writes: its rows and, per row, where the sample comes from."""

    index: int
    start: int
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    source_index: tuple[int, ...]
    copy_index: tuple[int, ...]

    @property
    def rows(self) -> int:
        """Number of samples in the shard."""
        return len(self.paths)


@dataclass
class WriteResult:
    """Outcome of :func:`write_shards`."""

    written: list[int] = field(default_factory=list)
    skipped: int = 0
    errors: list[TaskError] = field(default_factory=list)
    samples: int = 0
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        """Samples written per second of wall time."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunResult:
    """Summary of a finished :func:`prepare`."""

    store: Path
    stats: dict[str, Any]
    failures: list[Failure]
    samples: int
    shards: int
    shards_written: int
    shards_skipped: int
    resumed: bool
    seconds: float
    timings: dict[str, float]


# ----------------------------------------------------------------------------- 1. scan


def check_runtime(config: RunConfig) -> None:
    """Check what the config asks of this machine before any work starts.

    A CUDA ``runtime.device`` must exist here, unless the work runs on a Dask
    cluster (``runtime.dask_address``), whose workers resolve it themselves.

    Raises:
        ConfigError: the device does not exist on this machine.
    """
    from pipeline.errors import ConfigError, InvalidArgumentError
    from pipeline.transforms import resolve_device

    if config.runtime.dask_address is not None:
        return
    try:
        resolve_device(config.runtime.device)
    except InvalidArgumentError as exc:
        raise ConfigError(str(exc)) from exc


def scan_source(config: RunConfig) -> Manifest:
    """Scan ``source.path`` with the configured labelling."""
    from pipeline.sources import scan

    return scan(config.source.path, labels=config.source.labels)


# ----------------------------------------------------------------------------- 2. stats


def _resized_loader(plan: TransformPlan) -> Callable[[str], ImageHistogram]:
    """A per-file loader for ``stats.at: resized``: decode, resize, histogram."""
    import torch

    from pipeline.decode import ImageHistogram

    def load(path: str) -> ImageHistogram:
        pixels, bits = plan.load(path, None, crop=False)
        flat = pixels.reshape(pixels.shape[0], -1).to(torch.int64)
        size = 2**bits
        counts = torch.stack([torch.bincount(ch, minlength=size) for ch in flat])
        return ImageHistogram(bits, counts.numpy())

    return load


def compute_run_stats(
    config: RunConfig, manifest: Manifest, *, progress: Callable[[int], None] | None = None
) -> RunStats:
    """Compute the statistics the run normalizes with, and the accepted files.

    - ``stats.at: source``: statistics of the decoded source pixels with
      ``stats.method`` (:func:`pipeline.stats.compute_stats`).
    - ``stats.at: resized``: the same methods over the pixels after the
      resize/crop of ``transform.resize`` (no augmentation): resized pixels
      are still integers, so ``exact`` stays exact.
    - ``stats.file``: the statistics come from that JSON; the files are still
      checked once (:func:`validate_sources`) to find the rejected ones before
      the store is laid out.

    Args:
        config: the run config.
        manifest: the scanned source.
        progress: called with the number of files just decoded.

    Returns:
        The statistics and the accepted files.
    """
    from pipeline.stats import Stats, compute_stats
    from pipeline.transforms import TransformPlan

    st = config.stats
    kwargs: dict[str, Any] = {
        "workers": config.runtime.workers,
        "progress": progress,
        "address": config.runtime.dask_address,
    }
    if st.file is not None:
        stats = Stats.load(st.file)
        stats.failures = validate_sources(
            manifest,
            workers=config.runtime.workers,
            address=config.runtime.dask_address,
            progress=progress,
        )
    elif st.at == "resized":
        plan = TransformPlan.for_stats(config)
        stats = compute_stats(manifest, method=st.method, loader=_resized_loader(plan), **kwargs)
    else:
        stats = compute_stats(manifest, method=st.method, **kwargs)
    failures = tuple(sorted(stats.failures))
    rejected = {f.path for f in failures}
    accepted = [f for f in manifest.files if f.path not in rejected]
    return RunStats(
        stats=stats.to_json(),
        accepted=tuple(f.path for f in accepted),
        labels=tuple(f.label for f in accepted),
        failures=failures,
    )


def _validate_chunk(root: str, paths: Sequence[str]) -> list[Failure]:
    from pipeline.decode import decode

    failures = []
    for rel in paths:
        try:
            # JPEGs decode at 1/8 scale: every entropy-coded byte is still read
            # (truncation and corrupt streams fail the same way), the IDCT is cheap.
            decode(os.path.join(root, rel), draft=(1, 1))
        except DecodeError as exc:
            failures.append(Failure(rel, exc.reason))
    return failures


def validate_sources(
    manifest: Manifest,
    *,
    workers: int | None = None,
    address: str | None = None,
    progress: Callable[[int], None] | None = None,
    chunk_size: int = 64,
) -> list[Failure]:
    """Decode every file once, cheaply, and return the rejected ones (scan's included).

    Used when the statistics come from a file, so that the store's layout
    (which files are accepted) is known before any shard is written.
    """
    import dask

    paths = [f.path for f in manifest.files]
    chunks = [paths[i : i + chunk_size] for i in range(0, len(paths), chunk_size)]
    tasks = [dask.delayed(_validate_chunk, pure=False)(str(manifest.root), c) for c in chunks]

    def on_done(position: int, outcome: Any) -> None:
        if progress is not None:
            progress(len(chunks[position]))

    results = run_tasks(tasks, workers=workers, address=address, on_done=on_done)
    return sorted([*manifest.rejected, *(f for part in results for f in part)])


def resume_stats(config: RunConfig, manifest: Manifest) -> RunStats | None:
    """Return the :class:`RunStats` stored by an earlier run of this config on this source.

    ``None`` when there is no store at ``output.path``, or it was made by
    another config or from another source (then the statistics are computed).
    """
    from pipeline.shards import ATTRIBUTE, open_group

    path = Path(config.output.path)
    if not (path / "zarr.json").is_file():
        return None
    try:
        group = open_group(path, mode="r")
    except ImageprepError:
        return None
    attrs = group.attrs.get(ATTRIBUTE)
    if not isinstance(attrs, dict):
        return None
    if (
        attrs.get("config_identity") != config.identity()
        or attrs.get("source_fingerprint") != manifest.fingerprint
    ):
        return None
    paths_array = group["paths"]
    paths = tuple(str(p) for p in np.asarray(paths_array[:]))  # type: ignore[index]
    label_of = {f.path: f.label for f in manifest.files}
    if any(p not in label_of for p in paths):
        return None
    failures = tuple(sorted(Failure(f["path"], f["error"]) for f in attrs.get("failures", [])))
    return RunStats(
        stats=dict(attrs["stats"]),
        accepted=paths,
        labels=tuple(label_of[p] for p in paths),
        failures=failures,
    )


# ----------------------------------------------------------------------------- 3. output


def open_output(config: RunConfig, manifest: Manifest, run_stats: RunStats) -> StoreState:
    """Create the output store, or resume it when it was made by the same run.

    Call while holding :class:`pipeline.shards.StoreLock` on ``output.path``.

    Raises:
        StoreMismatchError: the store was made by another config or source and
            ``output.overwrite`` is false.
    """
    from pipeline.shards import StoreLayout, open_or_create, store_attrs

    layout = StoreLayout.from_config(
        config, n_samples=len(run_stats.accepted) * config.transform.copies, channels=3
    )
    attrs = store_attrs(
        config,
        stats=run_stats.stats,
        classes=manifest.classes,
        source_fingerprint=manifest.fingerprint,
        failures=[f.to_json() for f in run_stats.failures],
    )
    return open_or_create(
        config.output.path,
        layout,
        attrs=attrs,
        paths=run_stats.accepted,
        overwrite=config.output.overwrite,
    )


# ----------------------------------------------------------------------------- 4. shards


def shard_jobs(run_stats: RunStats, *, copies: int, shard_size: int) -> list[ShardJob]:
    """Split the samples into shards: row ``n`` is source ``n // copies``, copy ``n % copies``."""
    n = len(run_stats.accepted) * copies
    jobs = []
    for index, start in enumerate(range(0, n, shard_size)):
        rows = range(start, min(n, start + shard_size))
        sources = [r // copies for r in rows]
        jobs.append(
            ShardJob(
                index=index,
                start=start,
                paths=tuple(run_stats.accepted[s] for s in sources),
                labels=tuple(run_stats.labels[s] for s in sources),
                source_index=tuple(sources),
                copy_index=tuple(r % copies for r in rows),
            )
        )
    return jobs


def _retry_io(fn: Callable[[], Any], *, attempts: int = 3, delay: float = 0.5) -> Any:
    """Call ``fn``, retrying transient I/O errors (``OSError``) with exponential backoff."""
    for attempt in range(attempts):
        try:
            return fn()
        except OSError:
            if attempt == attempts - 1:
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


def write_one_shard(
    job: ShardJob,
    plan: TransformPlan,
    *,
    store: str,
    root: str,
    batch_size: int,
    decode_threads: int,
) -> ShardRecord:
    """Produce and write one whole shard: decode, transform in batches, write, record.

    This is the body of one Dask task. The shard's files are decoded in the
    process-wide decode pool (a file shared by several copies is decoded once,
    unless ``random_resized_crop`` draws a different box per copy); batches of
    ``batch_size`` samples go through :meth:`TransformPlan.finish`; the shard
    and its record are written by :func:`pipeline.shards.write_shard`.

    Raises:
        ShardWriteError: a source file accepted by the statistics pass can no
            longer be decoded (the source changed during the run).
    """
    import torch

    from pipeline.shards import write_shard
    from pipeline.transforms import sample_generator

    # parallelism is Dask's; one torch thread keeps results bit-stable (on a cluster
    # worker this stays set; locally write_shards restores the caller's setting)
    torch.set_num_threads(1)
    generators = [
        sample_generator(plan.seed, s, k)
        for s, k in zip(job.source_index, job.copy_index, strict=True)
    ]
    pool = decode_pool(decode_threads)
    per_copy = plan.crop_step is not None
    loads: dict[Any, Any] = {}
    futures = []
    for row, rel in enumerate(job.paths):
        key = row if per_copy else job.source_index[row]
        if key not in loads:
            gen = generators[row] if per_copy else None
            loads[key] = pool.submit(plan.load, os.path.join(root, rel), gen)
        futures.append(loads[key])

    out = np.empty((job.rows, 3, *plan.size), dtype=plan.out_dtype)
    for start in range(0, job.rows, batch_size):
        stop = min(job.rows, start + batch_size)
        pixels, bits = [], []
        for row in range(start, stop):
            try:
                p, b = futures[row].result()
            except DecodeError as exc:
                raise ShardWriteError(
                    f"shard {job.index}: {job.paths[row]} can no longer be decoded "
                    f"({exc.reason}); the source changed since the scan, rerun to rescan"
                ) from exc
            pixels.append(p)
            bits.append(b)
        plan.finish(pixels, bits, generators[start:stop], out=out[start:stop])
    futures.clear()
    loads.clear()

    def write() -> ShardRecord:
        return write_shard(
            store,
            job.index,
            images=out,
            labels=np.asarray(job.labels, dtype=np.int64),
            source_index=np.asarray(job.source_index, dtype=np.int64),
            copy_index=np.asarray(job.copy_index, dtype=np.int32),
        )

    record: ShardRecord = _retry_io(write)
    return record


def write_shards(
    config: RunConfig,
    state: StoreState,
    run_stats: RunStats,
    *,
    root: str | Path,
    on_shard: Callable[[int, int, int], None] | None = None,
) -> WriteResult:
    """Write every shard the store still misses, one Dask task per shard.

    Args:
        config: the run config.
        state: the opened store (:func:`open_output`).
        run_stats: statistics and accepted files.
        root: the source folder.
        on_shard: called as ``on_shard(index, done, total)`` after each shard.

    Returns:
        Which shards were written, how many were already done, and the errors
        of shards that failed (the store stays resumable; rerun to retry them).
    """
    import dask

    from pipeline.execution import guarded
    from pipeline.transforms import TransformPlan

    plan = TransformPlan.from_config(config, run_stats.stats)
    check_runtime(config)  # fail here rather than in every shard
    jobs = shard_jobs(
        run_stats, copies=config.transform.copies, shard_size=config.output.shard_size
    )
    todo = [jobs[i] for i in state.todo]
    result = WriteResult(skipped=len(jobs) - len(todo))
    workers = resolve_workers(config.runtime.workers)
    tasks = [
        dask.delayed(guarded, pure=False)(
            f"shard {job.index}",
            write_one_shard,
            job,
            plan,
            store=str(Path(config.output.path)),
            root=str(root),
            batch_size=config.runtime.batch_size,
            decode_threads=workers,
        )
        for job in todo
    ]
    done_count = 0

    def on_done(position: int, outcome: Any) -> None:
        nonlocal done_count
        done_count += 1
        if on_shard is not None:
            on_shard(todo[position].index, done_count + result.skipped, len(jobs))

    start = time.perf_counter()
    # shard tasks run torch single-threaded (write_one_shard); in this process
    # the setting is restored afterwards
    with torch_threads(1):
        outcomes = run_tasks(
            tasks,
            workers=workers,
            address=config.runtime.dask_address,
            on_done=on_done,
            names=[f"shard {job.index}" for job in todo],
        )
    result.seconds = time.perf_counter() - start
    for job, outcome in zip(todo, outcomes, strict=True):
        if isinstance(outcome, TaskError):
            result.errors.append(outcome)
        else:
            result.written.append(job.index)
            result.samples += job.rows
    return result


# ----------------------------------------------------------------------------- 5. finish


def shard_failure_message(
    config: RunConfig, state: StoreState, write: WriteResult, *, attempts: int | None = None
) -> str:
    """The message of a run whose shards failed: count, store, one line per shard and cause.

    Example:
        >>> from pipeline.config import RunConfig
        >>> from pipeline.execution import TaskError
        >>> from pipeline.shards import StoreLayout, StoreState
        >>> cfg = RunConfig.model_validate({"source": {"path": "/d"}, "output": {"path": "/o"}})
        >>> layout = StoreLayout(n_samples=4, channels=3, height=2, width=2, dtype="float16",
        ...                      shard_size=2)
        >>> state = StoreState(Path("/o"), layout, resumed=False, done=frozenset())
        >>> write = WriteResult(errors=[TaskError("shard 1", "OSError: disk full", "")])
        >>> print(shard_failure_message(cfg, state, write))
        1 of 2 shards failed; the store at /o is resumable (rerun the same command):
          - shard 1: OSError: disk full
    """
    after = f" after {attempts} attempts" if attempts and attempts > 1 else ""
    lines = "\n".join(f"  - {e}" for e in write.errors)
    return (
        f"{len(write.errors)} of {state.layout.n_shards} shards failed{after}; the store at "
        f"{config.output.path} is resumable (rerun the same command):\n{lines}"
    )


def finish(
    config: RunConfig,
    state: StoreState,
    run_stats: RunStats,
    write: WriteResult,
    *,
    timings: dict[str, float],
) -> RunResult:
    """Record the end of the run in the store and return its summary.

    Raises:
        ShardWriteError: some shards failed; they are named with their cause.
    """
    from pipeline.shards import finalize

    if write.errors:
        raise ShardWriteError(shard_failure_message(config, state, write))
    finalize(
        config.output.path,
        {
            "failures": [f.to_json() for f in run_stats.failures],
            "timings": {k: round(v, 3) for k, v in timings.items()},
        },
    )
    return RunResult(
        store=Path(config.output.path),
        stats=run_stats.stats,
        failures=list(run_stats.failures),
        samples=state.layout.n_samples,
        shards=state.layout.n_shards,
        shards_written=len(write.written),
        shards_skipped=write.skipped,
        resumed=state.resumed,
        seconds=sum(timings.values()),
        timings=timings,
    )


def prepare(
    config: RunConfig,
    *,
    progress: ProgressFn | None = None,
) -> RunResult:
    """Run the whole prepare job for ``config`` (without Prefect).

    Holds :class:`pipeline.shards.StoreLock` on ``output.path`` for the whole
    run: a second run against the same output is refused.

    Args:
        config: the validated run config.
        progress: ``progress(phase, done, total)`` for phases ``"stats"``
            (files decoded) and ``"shards"`` (shards written).

    Returns:
        The run summary.

    Raises:
        ConfigError: ``runtime.device`` does not exist on this machine.
        StoreLockedError: another run holds the output.
        StoreMismatchError: the output holds a store of another run.
        ShardWriteError: some shards failed (the store stays resumable).
    """
    from pipeline.shards import StoreLock

    check_runtime(config)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    manifest = scan_source(config)
    timings["scan"] = time.perf_counter() - t0
    with StoreLock(config.output.path):
        t0 = time.perf_counter()
        run_stats = resume_stats(config, manifest)
        if run_stats is None:
            total = len(manifest.files)
            counter = _Counter("stats", total, progress)
            run_stats = compute_run_stats(config, manifest, progress=counter)
        timings["stats"] = time.perf_counter() - t0
        state = open_output(config, manifest, run_stats)

        def on_shard(index: int, done: int, total: int) -> None:
            if progress is not None:
                progress("shards", done, total)

        t0 = time.perf_counter()
        write = write_shards(config, state, run_stats, root=manifest.root, on_shard=on_shard)
        timings["write"] = time.perf_counter() - t0
        return finish(config, state, run_stats, write, timings=timings)


class _Counter:
    """Turns per-item ``advance(n)`` calls into ``progress(phase, done, total)``."""

    def __init__(self, phase: str, total: int, progress: ProgressFn | None) -> None:
        import threading

        self.phase, self.total, self.progress = phase, total, progress
        self.done = 0
        self._lock = threading.Lock()

    def __call__(self, n: int) -> None:
        if self.progress is None:
            return
        with self._lock:
            self.done += n
            self.progress(self.phase, self.done, self.total)
