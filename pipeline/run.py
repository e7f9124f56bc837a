"""The prepare run: the one sequence of steps, and the steps themselves.

:func:`prepare` owns the order of a run, for the command line and for the
Prefect flow alike; each step is a plain function of this module:

1. :func:`scan_source`: the manifest of the source folder and its fingerprint.
2. :func:`compute_run_stats`: the dataset statistics, per ``stats.method`` and
   ``stats.at`` (or read from ``stats.file``), and with them the set of
   accepted files; on a rerun over an unchanged source with the same config
   they are read back from the store instead (:func:`resume_stats`).
3. :func:`open_output`: create the store, or resume one made by the same
   config on the same source.
4. :func:`write_shards`: one Dask task per missing shard; each task decodes its
   files in threads, runs the transform plan in batches on the configured
   device, and writes exactly that shard with its checksummed record.
5. :func:`verify_output`: every shard's checksum recomputed (optional).
6. :func:`finish`: the final record (failures, timings) marks the store complete.

The store is complete only after it verified. :func:`prepare` calls each step
through a ``runner`` (:data:`direct` by default); the flow
(:mod:`flows.prepare`) passes one that runs each step as a Prefect task, with
retries, caching and logs, so the order and the steps are written once.
Progress goes to one :class:`pipeline.progress.Progress`.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from pipeline.errors import (
    DecodeError,
    Failure,
    ImageprepError,
    ShardFailures,
    ShardWriteError,
    StoreVerificationError,
)
from pipeline.execution import TaskError, decode_pool, resolve_workers, run_tasks, torch_threads
from pipeline.progress import Progress, counter

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.decode import ImageHistogram
    from pipeline.sources import Manifest
    from pipeline.store import ShardRecord, StoreLayout, StoreState, VerifyReport
    from pipeline.transforms import TransformPlan

__all__ = [
    "RunResult",
    "RunStats",
    "ShardJob",
    "StepRunner",
    "WriteResult",
    "check_runtime",
    "compute_run_stats",
    "config_differences",
    "direct",
    "finish",
    "open_output",
    "prepare",
    "resume_stats",
    "scan_source",
    "shard_jobs",
    "store_attrs",
    "store_layout",
    "validate_sources",
    "verify_output",
    "write_one_shard",
    "write_shards",
]

T = TypeVar("T")


class StepRunner(Protocol):
    """Calls one step of a run: ``runner(step, *args, **kwargs)`` is ``step(*args, **kwargs)``."""

    def __call__(self, step: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
        """Run ``step`` (directly, or as a task with its policies) and return its result."""
        ...


def direct(step: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """The plain runner: call the step in this process."""
    return step(*args, **kwargs)


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
    samples_written: int = 0

    @property
    def samples_per_second(self) -> float:
        """Samples written by this run per second of its write step (0 when none)."""
        seconds = self.timings.get("write", 0.0)
        return self.samples_written / seconds if self.samples_written and seconds > 0 else 0.0


# ----------------------------------------------------------------------------- the run


@contextlib.contextmanager
def _timed(timings: dict[str, float], name: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[name] = time.perf_counter() - start


def prepare(
    config: RunConfig,
    *,
    progress: Progress | None = None,
    verify: bool = True,
    refresh_stats: bool = False,
    runner: StepRunner = direct,
) -> RunResult:
    """Run the whole prepare job for ``config``: scan, stats, open, write, verify, finish.

    Holds :class:`pipeline.store.StoreLock` on ``output.path`` from the
    statistics to the end: a second run against the same output is refused.

    Args:
        config: the validated run config.
        progress: receives ``update(phase, done, total)`` for the phases
            ``"stats"`` (files decoded) and ``"shards"`` (shards written).
        verify: recompute every shard's checksum before the store is marked
            complete.
        refresh_stats: compute the statistics even when the store (or the
            runner's cache) holds them for this source.
        runner: calls each step (:data:`direct`; the flow's runs them as tasks).

    Returns:
        The run summary.

    Raises:
        ConfigError: ``runtime.device`` does not exist on this machine.
        StoreLockedError: another run holds the output.
        StoreMismatchError: the output holds a store of another run.
        ShardWriteError: some shards failed (the store stays resumable).
        StoreVerificationError: a shard does not match its record.
    """
    from pipeline.store import StoreLock

    check_runtime(config)
    timings: dict[str, float] = {}
    with _timed(timings, "scan"):
        manifest = runner(scan_source, config)
    with StoreLock(config.output.path):
        with _timed(timings, "stats"):
            run_stats = runner(
                compute_run_stats,
                config,
                manifest,
                reuse_store=not refresh_stats,
                progress=progress,
            )
        state = runner(open_output, config, manifest, run_stats)
        with _timed(timings, "write"):
            write = runner(
                write_shards, config, state, run_stats, root=str(manifest.root), progress=progress
            )
        if verify:
            with _timed(timings, "verify"):
                runner(verify_output, str(config.output.path), workers=config.runtime.workers)
        result: RunResult = runner(finish, config, state, run_stats, write, timings=timings)
        return result


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
    config: RunConfig,
    manifest: Manifest,
    *,
    reuse_store: bool = False,
    progress: Progress | None = None,
) -> RunStats:
    """The statistics the run normalizes with, and the accepted files.

    - With ``reuse_store``, a store at ``output.path`` made by this config
      from this very source gives them back without decoding anything
      (:func:`resume_stats`).
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
        reuse_store: read the statistics back from a store of this run.
        progress: receives ``("stats", files done, files)``.

    Returns:
        The statistics and the accepted files.
    """
    from pipeline.stats import Stats, compute_stats
    from pipeline.transforms import TransformPlan

    if reuse_store:
        stored = resume_stats(config, manifest)
        if stored is not None:
            return stored
    st = config.stats
    advance = counter(progress, "stats", len(manifest.files))
    kwargs: dict[str, Any] = {
        "workers": config.runtime.workers,
        "progress": advance,
        "address": config.runtime.dask_address,
    }
    if st.file is not None:
        stats = Stats.load(st.file)
        stats.failures = validate_sources(
            manifest,
            workers=config.runtime.workers,
            address=config.runtime.dask_address,
            progress=advance,
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
    from pipeline.store import ATTRIBUTE, get_array, open_group, read_array

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
    paths = tuple(str(p) for p in read_array(get_array(group, "paths")))
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


def _package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in ("imageprep", "numpy", "zarr", "torch", "dask", "pydantic", "pillow", "prefect"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def store_attrs(
    config: RunConfig,
    *,
    stats: Mapping[str, Any],
    classes: Sequence[str],
    source_fingerprint: str,
    failures: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """Build the ``imageprep`` group attribute for a run of ``config``.

    Args:
        config: the validated run config.
        stats: the stats JSON (contract shape) the samples are normalized with.
        classes: class names; label ``i`` is ``classes[i]``.
        source_fingerprint: the scanned manifest's fingerprint.
        failures: rejected inputs known so far, ``{"path", "error"}`` dicts.

    Returns:
        A JSON-safe dict: ``config`` (resolved), ``config_identity``, ``stats``,
        ``classes``, ``seed``, ``versions``, ``source_fingerprint``, ``failures``.
    """
    return {
        "config": config.resolved_dict(),
        "config_identity": config.identity(),
        "stats": json.loads(json.dumps(dict(stats))),
        "classes": [str(c) for c in classes],
        "seed": config.runtime.seed,
        "versions": _package_versions(),
        "source_fingerprint": str(source_fingerprint),
        "failures": [dict(f) for f in failures],
    }


def config_differences(stored: Any, config: RunConfig) -> list[str]:
    """``key: before -> after`` for each identity key where a stored config and ``config`` differ.

    Example:
        >>> from pipeline.config import validate_config
        >>> a = validate_config({"source": {"path": "/s"}, "output": {"path": "/o"}})
        >>> b = validate_config({"source": {"path": "/t"}, "output": {"path": "/o"},
        ...                      "transform": {"size": [64, 64]}})
        >>> config_differences(a.resolved_dict(), b)
        ['transform.size: [224, 224] -> [64, 64]']
    """
    from pipeline.store import differences

    return differences(_identity_view(stored), _identity_view(config.resolved_dict()))


def _identity_view(config: Any) -> Any:
    """A stored resolved config without the keys outside the identity."""
    from pipeline.config import NOT_IN_IDENTITY

    if not isinstance(config, dict):
        return {}
    view = json.loads(json.dumps(config))
    for section, key in NOT_IN_IDENTITY:
        if isinstance(view.get(section), dict):
            view[section].pop(key, None)
    return view


def store_layout(config: RunConfig, *, n_samples: int) -> StoreLayout:
    """The store layout a run of ``config`` writes for ``n_samples`` samples (3 channels)."""
    from pipeline.store import StoreLayout

    height, width = config.transform.size
    return StoreLayout(
        n_samples=n_samples,
        channels=3,
        height=height,
        width=width,
        dtype=config.output.dtype,
        shard_size=config.output.shard_size,
        compression=config.output.compression.compression(),
    )


def open_output(config: RunConfig, manifest: Manifest, run_stats: RunStats) -> StoreState:
    """Create the output store, or resume it when it was made by the same run.

    Call while holding :class:`pipeline.store.StoreLock` on ``output.path``.

    Raises:
        StoreMismatchError: the store was made by another config or source and
            ``output.overwrite`` is false; the message names the config keys
            that differ.
    """
    from pipeline.store import open_or_create

    layout = store_layout(config, n_samples=len(run_stats.accepted) * config.transform.copies)
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
        explain=lambda existing: config_differences(existing.get("config"), config),
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

    from pipeline.store import write_shard
    from pipeline.transforms import sample_generator

    # parallelism is Dask's; one torch thread keeps results bit-stable (on a cluster
    # worker this stays set; locally write_shards restores the caller's setting)
    torch.set_num_threads(1)
    generators = [
        sample_generator(plan.seed, s, k)
        for s, k in zip(job.source_index, job.copy_index, strict=True)
    ]
    pool = decode_pool(decode_threads)
    per_copy = plan.crop is not None
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
    progress: Progress | None = None,
) -> WriteResult:
    """Write every shard the store still misses, one Dask task per shard.

    Which shards are missing is read from the store's records when the step
    starts, so calling it again (a retry) writes only what is still missing.

    Args:
        config: the run config.
        state: the opened store (:func:`open_output`).
        run_stats: statistics and accepted files.
        root: the source folder.
        progress: receives ``("shards", shards done, shards, units=images written)``.

    Returns:
        Which shards were written now and how many were already done.

    Raises:
        ShardWriteError: some shards failed; the message names each with its
            cause. The others are written and the store stays resumable.
    """
    import dask

    from pipeline.execution import guarded
    from pipeline.store import done_shards
    from pipeline.transforms import TransformPlan

    plan = TransformPlan.from_config(config, run_stats.stats)
    jobs = shard_jobs(
        run_stats, copies=config.transform.copies, shard_size=config.output.shard_size
    )
    done = done_shards(state.path)
    todo = [job for job in jobs if job.index not in done]
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
    images = sum(job.rows for job in jobs if job.index in done)
    finished = 0

    def on_done(position: int, outcome: Any) -> None:
        nonlocal images, finished
        finished += 1
        if not isinstance(outcome, TaskError):
            images += todo[position].rows
        if progress is not None:
            progress.update("shards", result.skipped + finished, len(jobs), units=images)

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
    if result.errors:
        report = ShardFailures(
            store=str(config.output.path),
            n_shards=state.layout.n_shards,
            errors=tuple(str(e) for e in result.errors),
        )
        raise ShardWriteError(report.message(), report=report)
    return result


# ----------------------------------------------------------------------------- 5. verify


def verify_output(store: str | Path, *, workers: int | None = None) -> VerifyReport:
    """Recompute every shard's SHA-256 and compare with its record (:func:`pipeline.store.verify`).

    Raises:
        StoreVerificationError: a shard is missing or does not match its record.
    """
    from pipeline.store import verify

    report = verify(store, workers=workers)
    if not report.ok:
        raise StoreVerificationError(f"verification failed: {report.summary()}")
    return report


# ----------------------------------------------------------------------------- 6. finish


def finish(
    config: RunConfig,
    state: StoreState,
    run_stats: RunStats,
    write: WriteResult,
    *,
    timings: dict[str, float],
) -> RunResult:
    """Record the end of the run in the store (it is then complete) and return its summary.

    Raises:
        StoreError: some shards are not written (:func:`pipeline.store.finalize`).
    """
    from pipeline.store import finalize

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
        samples_written=write.samples,
    )
