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
5. :func:`verify_output`: every new shard checked against its record (optional).
6. :func:`finish`: the final record (failures, timings) marks the store complete.

The store is complete only after it verified. :func:`prepare` calls each step
through a ``runner`` (:data:`direct` by default); the flow
(:mod:`flows.prepare`) passes one that runs each step as a Prefect task, with
retries, caching and logs, so the order and the steps are written once.
Progress goes to one :class:`pipeline.progress.Progress`.
"""

from __future__ import annotations

import contextlib
import errno
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
    StoreError,
    StoreVerificationError,
)
from pipeline.execution import TaskError, decode_pool, resolve_workers, run_tasks, torch_threads
from pipeline.progress import Progress, counter
from pipeline.update import SourceDiff, new_state

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.decode import ImageHistogram
    from pipeline.sources import Manifest, SourceFile
    from pipeline.stats import FileMoments, Stats
    from pipeline.storage import Location
    from pipeline.store import ShardFormat, ShardRecord, StoreLayout, StoreState, VerifyReport
    from pipeline.transforms import TransformPlan

__all__ = [
    "RunPlan",
    "RunResult",
    "RepairResult",
    "RunStats",
    "ShardJob",
    "ShardOutcome",
    "StepRunner",
    "WriteResult",
    "check_runtime",
    "compute_run_stats",
    "direct",
    "finish",
    "load_stats_file",
    "open_output",
    "plan_run",
    "prepare",
    "repair",
    "scan_source",
    "shard_jobs",
    "store_attrs",
    "store_layout",
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
    """The outcome of the statistics step: what the run normalizes with, and what it adds.

    Attributes:
        stats: the stats JSON (contract shape) the rows are normalized with,
            ``failures`` included: for a new store the statistics of the source
            (or ``stats.file``); for an update those the store was made with
            (``stats.update: freeze``) or those of the live files after it
            (``refresh``).
        accepted: the decoded files this run adds, sorted (a new store: every
            accepted file).
        labels: the label of each accepted file (index into the scan's classes).
        failures: every rejected input (scan, decode, and earlier failures of
            unchanged files), sorted by path.
        diff: the comparison of the source with the store (:mod:`pipeline.update`).
        moments: the accepted files' exact moments and digests, in ``accepted``
            order; ``None`` when the statistics were known before the run (a
            stats file, or an update with ``freeze``): then ``accepted`` are
            the candidates, each measured (or rejected) by the shard task
            that first decodes it.
        failure_records: the failures as the store records them (a file's size
            and mtime beside its reason, so an unchanged bad file is not decoded again).
        rewrite: ``stats.update: refresh`` changed the statistics: every live
            row is written again.
    """

    stats: dict[str, Any]
    accepted: tuple[str, ...]
    labels: tuple[int, ...]
    failures: tuple[Failure, ...]
    diff: SourceDiff = field(default_factory=lambda: SourceDiff(base=None))
    moments: FileMoments | None = None
    failure_records: tuple[dict[str, Any], ...] = ()
    rewrite: bool = False

    @property
    def measure_in_write(self) -> bool:
        """The new files are measured by the shard tasks (no decoding pass before)."""
        return self.moments is None


@dataclass(frozen=True)
class ShardJob:
    """What one shard task writes: its rows and, per row, where the sample comes from."""

    index: int
    start: int
    paths: tuple[str, ...]
    labels: tuple[int, ...]
    source_index: tuple[int, ...]
    copy_index: tuple[int, ...]
    live: tuple[bool, ...] = ()
    measure: tuple[bool, ...] = ()
    draft: bool = True
    seen: tuple[tuple[int, int, bytes] | None, ...] = ()
    """Per row, its file as measured: ``(size, mtime_ns, sha256)``; ``None``: unchecked."""

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
    rejected: list[dict[str, Any]] = field(default_factory=list)

    @property
    def samples_per_second(self) -> float:
        """Samples written per second of wall time."""
        return self.samples / self.seconds if self.seconds > 0 else 0.0


@dataclass
class RunResult:
    """Summary of a finished :func:`prepare`."""

    store: Path | Location
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
    diff: SourceDiff | None = None
    live: int = 0
    retired: int = 0
    current_stats: dict[str, Any] | None = None

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

    Holds the lock of ``output.path`` for the whole run
    (:func:`pipeline.store.lock_for`: ``flock`` on a local folder, a lease
    object in object storage, renewed, which checks with the store that it is
    still this run's, before the store is changed and before it is
    finalized): a second run against the same output is refused. Over a store made by
    the same config, the run is an incremental update (:mod:`pipeline.update`):
    it decodes and appends only what is new or changed, retires what was
    removed or changed, and resumes shards an interrupted run left unwritten.

    Args:
        config: the validated run config.
        progress: receives ``update(phase, done, total)`` for the phases
            ``"stats"`` (files decoded) and ``"shards"`` (shards written).
        verify: check every shard this run wrote against its record (its
            stored bytes against their CRC32C) before the store is marked
            complete.
        refresh_stats: do not take the statistics from the runner's cache (the
            flow's); the plain run has no cache.
        runner: calls each step (:data:`direct`; the flow's runs them as tasks).

    Returns:
        The run summary.

    Raises:
        ConfigError: ``runtime.device`` does not exist on this machine.
        StoreLockedError: another run holds the output, or this run lost its
            lease on an object store.
        StoreMismatchError: the output holds a store of another run.
        ShardWriteError: some shards failed (the store stays resumable).
        StoreVerificationError: a shard does not match its record.
    """
    from pipeline.store import lock_for, store_ref

    check_runtime(config)
    timings: dict[str, float] = {}
    store = store_ref(config.output.location)
    with lock_for(config.output.location) as lock:
        with _timed(timings, "scan"):
            manifest = runner(scan_source, config)
        check_memory(config, n_files=len(manifest.files))
        with _timed(timings, "stats"):
            run_stats = runner(
                compute_run_stats, config, manifest, reuse_store=True, progress=progress
            )
        lock.renew()  # a lease taken over (object store) raises here: the store is not touched
        state = runner(open_output, config, manifest, run_stats)
        with _timed(timings, "write"):
            write = runner(
                write_shards, config, state, run_stats, root=manifest.root, progress=progress
            )
        if verify:
            with _timed(timings, "verify"):
                runner(
                    verify_output,
                    store,
                    workers=config.runtime.workers,
                    incremental=True,
                    deep=False,
                )
        lock.renew()  # still ours, checked with the store, before it is marked complete
        result: RunResult = runner(
            finish,
            config,
            state,
            run_stats,
            write,
            root=manifest.root,
            timings=timings,
            verified=verify,
        )
    if result.live == 0 and not run_stats.diff.is_update and result.failures:
        # statistics known beforehand: the shard tasks found every file unreadable
        _nothing_to_write(manifest, result.failures)
    return result


# ----------------------------------------------------------------------------- dry run


@dataclass(frozen=True)
class RunPlan:
    """What a run of a config would do now (:func:`plan_run`); nothing is written.

    Attributes:
        store: the output store.
        exists: a store of this config is there (the run is an update, or resumes).
        diff: the source compared with it.
        files_to_decode: files the statistics step would decode.
        rows_to_add: sample rows the new files would add (fewer if some fail).
        shards_to_write: new shards, plus shards an interrupted run left unwritten.
        rows_to_retire: live rows whose file was removed or changed.
        refresh: ``stats.update: refresh``: every live row is rewritten when
            the statistics change.
    """

    store: Path | Location
    exists: bool
    diff: SourceDiff
    files_to_decode: int
    rows_to_add: int
    shards_to_write: int
    rows_to_retire: int
    refresh: bool

    def lines(self) -> list[str]:
        """The plan, one line per fact."""
        what = "update" if self.exists else ("replace" if self.diff.replaces else "create")
        out = [
            f"store: {self.store} ({what})",
            f"files: {self.diff.summary()}",
            f"statistics: {self.files_to_decode} files to decode"
            + ("" if self.files_to_decode else " (nothing new: no decoding)"),
            f"rows: {self.rows_to_add} to add, {self.rows_to_retire} to retire",
            f"shards to write: {self.shards_to_write}",
        ]
        if self.diff.known_failures:
            out.append(f"known failures kept (not decoded again): {len(self.diff.known_failures)}")
        if self.exists and self.refresh:
            out.append(
                "stats.update: refresh: every live row is rewritten if the statistics change"
            )
        return out


def plan_run(config: RunConfig) -> RunPlan:
    """Scan the source and compare it with the store: what a run would do (``--dry-run``).

    Reads the source and the store (and hashes the files whose mtime alone
    changed); writes nothing, takes no lock.

    Raises:
        StoreMismatchError: the store was made by another config, as a run would say.
    """
    from pipeline.store import done_shards, read_layout, store_ref
    from pipeline.update import diff_source

    check_output_path(config, probe=False)
    manifest = scan_source(config)
    check_memory(config, n_files=len(manifest.files))
    diff = diff_source(config, manifest)
    copies = config.transform.copies
    size = config.output.shard_size
    rows_to_add = len(diff.new) * copies
    shards = -(-rows_to_add // size)
    retire = 0
    if diff.is_update:
        from pipeline.store import get_array, open_group, read_array

        group = open_group(config.output.location)
        layout = read_layout(group)
        shards += layout.n_shards - len(done_shards(group))
        if diff.retire:
            sources = read_array(get_array(group, "source_index"))
            live = read_array(get_array(group, "live"))
            retire = int((live & np.isin(sources, np.asarray(diff.retire))).sum())
    return RunPlan(
        store=store_ref(config.output.location),
        exists=diff.is_update,
        diff=diff,
        files_to_decode=len(diff.new),
        rows_to_add=rows_to_add,
        shards_to_write=shards,
        rows_to_retire=retire,
        refresh=config.stats.update == "refresh",
    )


# ----------------------------------------------------------------------------- 1. scan


def check_runtime(config: RunConfig) -> None:
    """Check what the config asks of this machine before any work starts.

    A CUDA ``runtime.device`` must exist here, unless the work runs on a Dask
    cluster (``runtime.dask_address``), whose workers resolve it themselves.

    Raises:
        ConfigError: the device does not exist on this machine.
    """
    from pipeline.errors import ConfigError, InvalidArgumentError

    source = config.source.location
    if source.is_local and not os.path.isdir(source.path):  # before the lock: nothing left behind
        raise ConfigError(f"source.path: root must be an existing folder, got {source.path!r}")
    check_output_path(config)
    check_memory(config)
    if config.stats.file is not None:
        load_stats_file(config)
    if config.runtime.dask_address is not None:
        return
    if not config.runtime.device.startswith("cuda"):
        return  # "cpu" and "auto" exist everywhere: no torch import (a run with nothing to do)
    from pipeline.transforms import resolve_device

    try:
        resolve_device(config.runtime.device)
    except InvalidArgumentError as exc:
        raise ConfigError(str(exc)) from exc


MEMORY_FRACTION = 0.5
"""Share of this machine's memory a run may plan to hold at once (:func:`check_memory`)."""

_ROW_BYTES = 8 + 8 + 4 + 1 + 8
"""Bytes per planned sample row held while a store is laid out (label, source, copy, live...)."""


def _gib(n: float) -> str:
    return f"{n / 2**30:.1f} GiB"


def check_memory(
    config: RunConfig, *, n_files: int | None = None, total: int | None = None
) -> None:
    """Refuse sizes this machine cannot hold, before any work, naming the keys.

    A shard task on a GPU holds its whole shard (``output.shard_size`` samples
    of ``3 x transform.size`` in ``output.dtype``) while it is made, and about
    as much again while it is encoded, plus a float32 batch of
    ``runtime.batch_size`` samples; on the CPU it holds the encoded samples,
    no more than that. The check takes the larger; ``runtime.workers`` tasks
    run at once. A
    new store's row plan holds ``transform.copies`` rows per file. Either
    beyond :data:`MEMORY_FRACTION` of the machine's memory is refused (on a
    Dask cluster the workers' memory is the cluster's business; the row plan
    is still made here).

    Args:
        config: the run config.
        n_files: the number of source files, once scanned (checks the row plan).
        total: the memory to check against (default: this machine's).

    Raises:
        ConfigError: the plan does not fit; the message names the keys and sizes.
    """
    from pipeline.errors import ConfigError

    if total is None:
        import psutil  # type: ignore[import-untyped]

        total = int(psutil.virtual_memory().total)
    budget = MEMORY_FRACTION * total
    h, w = config.transform.size
    sample = 3 * h * w * np.dtype(config.output.dtype).itemsize
    shard = config.output.shard_size * sample
    batch = config.runtime.batch_size * 3 * h * w * 4
    workers = 1 if config.runtime.dask_address else resolve_workers(config.runtime.workers)
    per_task = 2 * shard + 2 * batch
    if workers * per_task > budget:
        raise ConfigError(
            f"output.shard_size x transform.size: {config.output.shard_size} samples of "
            f"3x{h}x{w} {config.output.dtype} is {_gib(shard)} per shard; with "
            f"runtime.batch_size {config.runtime.batch_size} and runtime.workers {workers} "
            f"a run would hold about {_gib(workers * per_task)}, more than "
            f"{MEMORY_FRACTION:.0%} of this machine's {_gib(total)}; lower output.shard_size, "
            "transform.size, runtime.batch_size or runtime.workers"
        )
    if n_files is not None:
        rows = n_files * config.transform.copies
        if rows * _ROW_BYTES > budget:
            raise ConfigError(
                f"transform.copies: {config.transform.copies} copies of {n_files} files are "
                f"{rows} sample rows, about {_gib(rows * _ROW_BYTES)} to plan, more than "
                f"{MEMORY_FRACTION:.0%} of this machine's {_gib(total)}; lower transform.copies"
            )


def check_output_path(config: RunConfig, *, probe: bool = True) -> None:
    """Refuse an ``output.path`` that cannot hold a store, before any work.

    Refused: the file system root; the source folder, a folder inside it (the
    store would become source files) or one that contains it (``overwrite``
    would delete the source); an existing file; a parent folder that cannot be
    created or written (``probe``: the parent is created and a file made and
    removed there; a dry run does not). For an object-store URL: a bucket
    itself (the lock object goes beside the store), and a prefix inside the
    source's or containing it on the same store (:func:`_check_output_url`).

    Raises:
        OutputPathError: the message names ``output.path`` and why.
    """
    import tempfile

    from pipeline.errors import OutputPathError

    out_location = config.output.location
    if not out_location.is_local:
        _check_output_url(config)
        return
    out = Path(config.output.path).resolve()
    src = Path(str(config.source.path)).resolve() if "://" not in str(config.source.path) else None
    key = f"output.path {str(out)!r}"
    if out == Path(out.anchor):
        raise OutputPathError(
            f"{key}: is the root of the file system; choose a folder for the store"
        )
    if src is not None:
        if out == src or src in out.parents:
            raise OutputPathError(
                f"{key}: is inside source.path {str(src)!r}; the store's files would be "
                "scanned as source files: choose a folder outside it"
            )
        if out in src.parents:
            raise OutputPathError(
                f"{key}: contains source.path {str(src)!r}; overwriting the store would "
                "delete the source: choose another folder"
            )
    if out.exists() and not out.is_dir():
        raise OutputPathError(f"{key}: exists and is not a folder")
    if not probe:
        return
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputPathError(
            f"{key}: cannot create its folder {str(parent)!r} ({exc.strerror or exc})"
        ) from None
    try:  # a real probe: os.access says yes to root even where nothing can be made (/proc)
        with tempfile.TemporaryFile(dir=parent, prefix=".imageprep-probe-"):
            pass
    except OSError as exc:
        reason = exc.strerror or os.strerror(exc.errno or errno.EACCES)
        raise OutputPathError(
            f"{key}: cannot write in its folder {str(parent)!r} ({reason})"
        ) from None


def _check_output_url(config: RunConfig) -> None:
    """:func:`check_output_path` for a store in object storage (no request is made)."""
    from pipeline.errors import OutputPathError

    out, src = config.output.location, config.source.location
    key = f"output.path {out.url!r}"
    if "/" not in out.path.strip("/"):
        raise OutputPathError(
            f"{key}: is a whole bucket; choose a prefix in it (s3://bucket/ds.zarr): the "
            "store's lock object goes beside the store"
        )
    if src.protocol != out.protocol:
        return
    o, p = out.path.rstrip("/"), src.path.rstrip("/")
    if o == p or o.startswith(p + "/"):
        raise OutputPathError(
            f"{key}: is inside source.path {src.url!r}; the store's objects would be scanned "
            "as source files: choose a prefix outside it"
        )
    if p.startswith(o + "/"):
        raise OutputPathError(
            f"{key}: contains source.path {src.url!r}; overwriting the store would delete the "
            "source: choose another prefix"
        )


def load_stats_file(config: RunConfig) -> Stats:
    """Read the statistics of ``stats.file``.

    Raises:
        ConfigError: it cannot be read or is not a stats JSON; the message names
            ``stats.file`` and why.
    """
    from pipeline.errors import ConfigError
    from pipeline.stats import Stats

    path = config.stats.file
    try:
        return Stats.load(str(path))
    except OSError as exc:
        raise ConfigError(
            f"stats.file {str(path)!r}: cannot read it ({exc.strerror or exc})"
        ) from None
    except (ValueError, TypeError, KeyError) as exc:  # not JSON, or not the contract's shape
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(f"stats.file {str(path)!r}: not a stats JSON ({reason})") from None


def scan_source(config: RunConfig) -> Manifest:
    """Scan ``source.path`` (a folder or an object-store URL) with the configured labelling.

    Raises:
        ConfigError: ``source.path`` is not an existing folder (no object under
            the prefix); the key is named.
    """
    from pipeline.errors import ConfigError, InvalidArgumentError
    from pipeline.sources import scan

    try:
        return scan(config.source.location, labels=config.source.labels)
    except InvalidArgumentError as exc:
        raise ConfigError(f"source.path: {exc}") from None


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
    """Compare the source with the store, decode what is new, decide the statistics.

    Only the files the store does not know (new ones, and new content of
    changed ones) are decoded, once each: their exact moments and SHA-256
    (kept in the store), the statistics, and the rejected ones all come from
    that pass (:func:`pipeline.stats.measure`).

    - ``stats.at: source``: statistics of the decoded source pixels with
      ``stats.method``; ``stats.at: resized``: the same over the pixels after
      the resize/crop of ``transform.resize`` (still integers, so ``exact``
      stays exact).
    - ``stats.file``: the statistics come from that JSON; the files are still
      decoded once for their moments and to find the rejected ones before the
      store is laid out.
    - An update keeps the store's statistics (``stats.update: freeze``) or
      takes the exact statistics of the live files after it (``refresh``),
      summed from the stored moments.

    Args:
        config: the run config.
        manifest: the scanned source.
        reuse_store: compare with the store at ``output.path`` (an update, or a
            resumed run); ``False`` treats every file as new.
        progress: receives ``("stats", files done, files to decode)``.

    Returns:
        The statistics, the files this run adds, the failures and the diff.

    Raises:
        StoreMismatchError: the store was made by another config (the message
            names the keys that differ) and ``output.overwrite`` is false.
    """
    from pipeline.sources import Manifest, fingerprint_of
    from pipeline.stats import FileMoments, Stats, measure
    from pipeline.store import finish_swap
    from pipeline.update import diff_source

    st = config.stats
    if reuse_store:
        finish_swap(config.output.location)  # a compaction killed between its two renames
    diff = diff_source(config, manifest, compare=reuse_store)
    todo = Manifest(
        root=manifest.root,
        files=diff.new,
        classes=manifest.classes,
        rejected=(),
        fingerprint=fingerprint_of(diff.new),
    )
    # statistics known before anything is written (a stats file, or an update that keeps
    # the store's): no decoding pass here, the shard tasks measure each new file in the
    # decode that makes its samples
    known = st.at == "source" and (
        st.file is not None or (diff.is_update and st.update == "freeze")
    )
    # the decoded statistics normalize a new store; otherwise only the moments count
    method = st.method if (st.file is None and not diff.is_update) else "exact"
    if known:
        decoded, moments = Stats.empty(method=method), None
    elif todo.files:
        loader = None
        if st.at == "resized":  # torch only where it resizes
            from pipeline.transforms import TransformPlan

            loader = _resized_loader(TransformPlan.for_stats(config))
        decoded, moments = measure(
            todo,
            method=method,
            workers=config.runtime.workers,
            address=config.runtime.dask_address,
            loader=loader,
            progress=counter(progress, "stats", len(todo.files)),
        )
    else:
        decoded, moments = Stats.empty(method=method), FileMoments.empty()
    failures = tuple(sorted([*manifest.rejected, *decoded.failures, *diff.known_failures]))
    kept = set(moments.paths) if moments is not None else {f.path for f in diff.new}
    accepted = [f for f in diff.new if f.path in kept]
    if not accepted and not diff.is_update:
        _nothing_to_write(manifest, failures)
    rewrite = False
    if not diff.is_update:
        stats = load_stats_file(config) if st.file is not None else decoded
        stats.fingerprint = manifest.fingerprint
        stats_json = stats.to_json()
    else:
        stored = _stored_stats(config)
        stats_json = stored
        if st.update == "refresh" and moments is not None:
            current = _live_moments_after(config, diff, moments).stats()
            if [current.mean, current.std] != [stored.get("mean"), stored.get("std")]:
                stats_json, rewrite = current.to_json(), True
    stats_json["failures"] = [f.to_json() for f in failures]
    by_path = {f.path: f for f in manifest.files}
    records = []
    for f in failures:
        record: dict[str, Any] = f.to_json()
        source = by_path.get(f.path)
        if source is not None:  # a file that failed to decode: not decoded again unchanged
            record.update(size=source.size, mtime_ns=source.mtime_ns)
        records.append(record)
    return RunStats(
        stats=stats_json,
        accepted=tuple(f.path for f in accepted),
        labels=tuple(f.label for f in accepted),
        failures=failures,
        diff=diff,
        moments=moments,
        failure_records=tuple(records),
        rewrite=rewrite,
    )


def _nothing_to_write(manifest: Manifest, failures: Sequence[Failure]) -> None:
    """Refuse a new store without a single image (before anything is created)."""
    from pipeline.errors import SourceError

    if not failures:
        raise SourceError(
            f"{manifest.root}: no image files (extensions: jpg jpeg png webp bmp tif tiff gif); "
            "nothing written"
        )
    shown = "; ".join(f"{f.path}: {f.error}" for f in failures[:3])
    more = f"; ... and {len(failures) - 3} more" if len(failures) > 3 else ""
    raise SourceError(
        f"{manifest.root}: none of its {len(failures)} files could be read as an image "
        f"({shown}{more}); nothing written"
    )


def _stored_stats(config: RunConfig) -> dict[str, Any]:
    from pipeline.store import read_attrs

    return dict(read_attrs(config.output.location)["stats"])


def _live_moments_after(config: RunConfig, diff: SourceDiff, new: FileMoments) -> FileMoments:
    """The moments of the files that are live once ``diff`` is applied."""
    from pipeline.stats import FileMoments
    from pipeline.store import open_group, read_attrs, read_files
    from pipeline.update import moments_of

    group = open_group(config.output.location)
    table = read_files(group, int(read_attrs(group)["files"]))
    live = table.live.copy()
    live[list(diff.retire)] = False
    return FileMoments.concat([moments_of(table.take(np.flatnonzero(live))), new])


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
        A JSON-safe dict: ``config`` (resolved, secrets of the storage options
        redacted: :meth:`~pipeline.config.RunConfig.recorded_dict`), ``config_identity``, ``stats``,
        ``classes``, ``seed``, ``versions``, ``source_fingerprint``, ``failures``,
        and a fresh ``state`` token (:mod:`pipeline.update`).
    """
    return {
        "config": config.recorded_dict(),  # credentials in storage options redacted
        "config_identity": config.identity(),
        "stats": json.loads(json.dumps(dict(stats))),
        "classes": [str(c) for c in classes],
        "seed": config.runtime.seed,
        "versions": _package_versions(),
        "source_fingerprint": str(source_fingerprint),
        "failures": [dict(f) for f in failures],
        "state": new_state(),
    }


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
    """Create the store, or apply the update that the statistics step planned.

    A new store gets one segment: every accepted file, ``transform.copies``
    rows each, in path order. An update marks the retired files, records the
    new mtimes of touched ones, appends the new files to the file table and
    their rows as a new segment of new shards, or, when ``stats.update:
    refresh`` changed the statistics, plans every live file's rows again. A
    resumed run finds nothing to add and keeps the plan in the store. New
    class folders are appended to ``classes`` (labels already written keep
    their meaning).

    Call while holding the lock of ``output.path`` (:func:`pipeline.store.lock_for`).

    Raises:
        StoreError: the store changed since the statistics step (a stale
            result, or another writer), or ``output.path`` holds something
            that is not an imageprep store.
    """
    from pipeline.store import (
        ATTRIBUTE,
        SampleRows,
        StoreState,
        create_store,
        done_shards,
        get_array,
        grow_store,
        open_group,
        read_array,
        read_attrs,
        read_files,
        read_layout,
        remove_partials,
        reset_rows,
        restore_layout,
        store_ref,
        write_live,
    )
    from pipeline.update import file_rows, store_token, unmeasured_rows

    path = store_ref(config.output.location)
    remove_partials(path)  # chunk writes a killed run left half done (we hold the lock)
    diff = run_stats.diff
    copies = config.transform.copies
    moments = run_stats.moments
    kept = set(run_stats.accepted)
    accepted = [f for f in diff.new if f.path in kept]
    if not diff.is_update:
        if store_token(path) is not None and not diff.replaces:
            if _made_from(path, accepted):  # this very step ran before (a retry): resume
                layout = read_layout(path)
                return StoreState(path, layout, resumed=True, done=frozenset(done_shards(path)))
            raise StoreError(f"{path}: a store appeared after the statistics step; rerun")
        labels0 = [f.label for f in accepted]
        table = (
            unmeasured_rows(accepted, labels=labels0)
            if moments is None
            else file_rows(accepted, moments, labels=labels0)
        )
        layout = store_layout(config, n_samples=len(table) * copies)
        attrs = store_attrs(
            config,
            stats=run_stats.stats,
            classes=manifest.classes,
            source_fingerprint=manifest.fingerprint,
            failures=run_stats.failure_records,
        )
        attrs["draft"] = [moments is not None]  # per segment: JPEG draft decoding allowed
        rows = SampleRows.of_files(range(len(table)), table.label, copies=copies)
        create_store(path, layout, attrs=attrs, files=table, rows=rows, overwrite=True)
        return StoreState(path, layout, resumed=False, done=frozenset())
    if store_token(path) != diff.base:
        raise StoreError(
            f"{path}: the store changed after the statistics step (another writer, or "
            "statistics from a cache of an older store); rerun"
        )
    group = open_group(path, mode="r+")
    restore_layout(group)  # an update or refresh killed before its layout was recorded
    meta = read_attrs(group)
    if "manifest" in meta:  # the update changes what it covers; finish writes a new one
        meta = {k: v for k, v in meta.items() if k != "manifest"}
        group.attrs[ATTRIBUTE] = meta
    classes = list(meta.get("classes") or [])
    extra = sorted(set(manifest.classes) - set(classes))
    classes += extra
    position = {name: i for i, name in enumerate(classes)}
    labels = [position[manifest.classes[f.label]] if f.label >= 0 else -1 for f in accepted]
    count = int(meta["files"])
    if diff.touched:
        mtimes = get_array(group, "files/mtime_ns")
        for row, mtime in diff.touched:
            mtimes[row] = mtime
    if diff.retire:
        files_live = get_array(group, "files/live")
        for row in diff.retire:
            files_live[row] = False
        # the retired files' rows stop being served now
        alive = read_array(get_array(group, "files/live"), slice(0, count))
        sources = read_array(get_array(group, "source_index"))
        rows_live = read_array(get_array(group, "live"))
        write_live(group, rows_live & alive[np.minimum(sources, max(count - 1, 0))])
    update: dict[str, Any] = {
        "classes": classes,
        "state": new_state(),
        "source_fingerprint": manifest.fingerprint,
    }
    layout = read_layout(group)
    table = (
        unmeasured_rows(accepted, labels=labels)
        if moments is None
        else file_rows(accepted, moments, labels=labels)
    )
    drafts = list(meta.get("draft") or [True] * len(layout.segments))
    if run_stats.rewrite:
        from pipeline.store import FileTable
        from pipeline.store.files import append_files

        append_files(group, table, at=count)
        whole = FileTable.concat([read_files(group, count), table])
        keep = np.flatnonzero(whole.live)
        layout = store_layout(config, n_samples=len(keep) * copies)
        rows = SampleRows.of_files(keep, whole.label[keep], copies=copies)
        reset_rows(
            group,
            layout,
            rows=rows,
            attrs_update={
                **update,
                "stats": run_stats.stats,
                "files": len(whole),
                "draft": [True],
            },
        )
    elif len(table):
        rows = SampleRows.of_files(range(count, count + len(table)), labels, copies=copies)
        update["draft"] = [*drafts, moments is not None]
        layout = grow_store(group, layout, files=table, rows=rows, attrs_update=update)
    else:
        group.attrs[ATTRIBUTE] = {**meta, **update}
    return StoreState(path, layout, resumed=True, done=frozenset(done_shards(group)))


def _made_from(path: Path | Location, accepted: Sequence[SourceFile]) -> bool:
    """True when the store at ``path`` holds exactly these files, as created from them."""
    from pipeline.store import open_group, read_attrs, read_files

    group = open_group(path)
    table = read_files(group, int(read_attrs(group)["files"]))
    return (
        table.paths == [f.path for f in accepted]
        and table.size.tolist() == [f.size for f in accepted]
        and table.mtime_ns.tolist() == [f.mtime_ns for f in accepted]
        and bool(table.live.all())
    )


# ----------------------------------------------------------------------------- 4. shards


def shard_jobs(store: str | Path | Location, shards: Sequence[int]) -> list[ShardJob]:
    """What each of ``shards`` holds, as the store plans it: paths, labels, sources, copies.

    The plan of every row is in the store (written when the rows were laid
    out), so an interrupted run writes exactly the rows it planned.
    """
    from pipeline.store import get_array, open_group, read_array, read_attrs, read_layout

    group = open_group(store)
    layout = read_layout(group)
    count = int(read_attrs(group)["files"])
    paths = [str(p) for p in read_array(get_array(group, "paths"), slice(0, count))]
    files_live = read_array(get_array(group, "files/live"), slice(0, count))
    measured = read_array(get_array(group, "files/measured"), slice(0, count))
    sizes = read_array(get_array(group, "files/size"), slice(0, count))
    mtimes = read_array(get_array(group, "files/mtime_ns"), slice(0, count))
    digests = read_array(get_array(group, "files/sha256"), slice(0, count))
    drafts = read_attrs(group).get("draft") or [True] * len(layout.segments)
    labels = read_array(get_array(group, "labels"))
    sources = read_array(get_array(group, "source_index"))
    copies = read_array(get_array(group, "copy_index"))
    jobs = []
    for index in shards:
        rows = layout.shard_rows(index)
        sl = slice(rows.start, rows.stop)
        jobs.append(
            ShardJob(
                index=int(index),
                start=rows.start,
                paths=tuple(paths[int(k)] for k in sources[sl]),
                labels=tuple(int(v) for v in labels[sl]),
                source_index=tuple(int(v) for v in sources[sl]),
                copy_index=tuple(int(v) for v in copies[sl]),
                live=tuple(bool(files_live[k]) for k in sources[sl]),
                measure=tuple(not bool(measured[k]) for k in sources[sl]),
                draft=bool(drafts[_segment_of(layout, rows.start)]),
                seen=tuple(
                    (int(sizes[k]), int(mtimes[k]), digests[k].tobytes()) if measured[k] else None
                    for k in sources[sl]
                ),
            )
        )
    return jobs


def _segment_of(layout: StoreLayout, row: int) -> int:
    return next(i for i, (a, n) in enumerate(layout.segments) if a <= row < a + n)


_LASTING_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})


def _retry_io(fn: Callable[[], Any], *, attempts: int = 3, delay: float = 0.5) -> Any:
    """Call ``fn``, retrying transient I/O errors (``OSError``) with exponential backoff.

    A full disk or quota, a read-only file system and a file too large are not
    transient: raised at once.
    """
    for attempt in range(attempts):
        try:
            return fn()
        except OSError as exc:
            if attempt == attempts - 1 or exc.errno in _LASTING_ERRNOS:
                raise
            time.sleep(delay * 2**attempt)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class ShardOutcome:
    """What one shard task did: its record, and the files it measured or rejected.

    Attributes:
        record: the written shard's record.
        rows: file-table rows measured by this task (:attr:`ShardJob.measure`).
        moments: their exact moments and digests, in ``rows`` order.
        rejected: ``(file-table row, failure)`` for each file this task could
            not decode while measuring it: its samples are holes, not served.
    """

    record: ShardRecord
    rows: tuple[int, ...] = ()
    moments: FileMoments | None = None
    rejected: tuple[tuple[int, Failure], ...] = ()


class SourceChangedError(Exception):
    """A file is not what the run measured: it changed after the run planned its rows."""

    def __init__(self, rel: str, what: str) -> None:
        super().__init__(f"{rel}: {what}")
        self.rel, self.what = rel, what


#: A file as the run measured it: ``(size, mtime_ns, sha256)`` (:attr:`ShardJob.seen`).
Seen = tuple[int, int, bytes]


def _load_checked(
    root: str | Location, rel: str, seen: Seen | None
) -> tuple[str | Any, bytes | None]:
    """What to decode for ``rel``: its local path, or its bytes read once (and their digest).

    ``seen`` is the file as the run measured it (``None``: the file is measured
    in this task, so whatever is read now is what the statistics get). A
    local file of the same size and mtime is taken as unchanged (one
    ``stat``); a different mtime reads and hashes it (a ``touch`` changes
    nothing); an object is always read whole and hashed (one GET).

    Raises:
        SourceChangedError: the size or the content is not what was measured.
        DecodeError: the file cannot be read (gone, refused, empty).
    """
    from pipeline.sources import read_source, source_path
    from pipeline.storage import Location

    local = not isinstance(root, Location) or root.is_local
    if local and seen is not None:
        path = source_path(root.path if isinstance(root, Location) else root, rel)
        try:
            st = os.stat(path)
        except OSError:
            return path, None  # gone: the decoder's rejection names it
        if st.st_size != seen[0]:
            raise SourceChangedError(rel, f"its size is {st.st_size} bytes, it was {seen[0]}")
        if st.st_mtime_ns == seen[1]:
            return path, None
    elif local:
        return source_path(root.path if isinstance(root, Location) else root, rel), None
    data, digest = read_source(root, rel)
    if seen is not None and digest != seen[2]:
        size = data.seek(0, os.SEEK_END)
        data.seek(0)
        what = (
            f"its size is {size} bytes, it was {seen[0]}"
            if size != seen[0]
            else "same size, but its content is not the one measured"
        )
        raise SourceChangedError(rel, what)
    return data, digest


def _load_measured(
    plan: TransformPlan,
    root: str | Location,
    rel: str,
    generator: Any,
) -> tuple[Any, int, Any, bytes]:
    """:func:`_load`, measured: the file read once, hashed, decoded at full resolution."""
    from pipeline.sources import read_source

    source, digest = read_source(root, rel)
    pixels, bits, histogram = plan.load_measured(source, generator)
    return pixels, bits, histogram, digest


def _load(
    plan: TransformPlan,
    root: str | Location,
    rel: str,
    generator: Any,
    draft: bool,
    seen: Seen | None = None,
) -> tuple[Any, int]:
    """:meth:`TransformPlan.load` of the manifest name ``rel`` under ``root`` (a folder or a URL).

    A local file is decoded from its path; an object is read whole (one GET,
    :func:`pipeline.sources.read_source`) and decoded from memory: a missing
    or refused object is a :class:`~pipeline.errors.DecodeError`, like a local
    file that went away; other errors (the network) fail the task. A file
    that is not what the run measured (``seen``, :func:`_load_checked`)
    raises :class:`SourceChangedError` instead of writing samples of an image
    the statistics did not measure.
    """
    source, _ = _load_checked(root, rel, seen)
    return plan.load(source, generator, draft=draft)


def _changed_during_run(job: ShardJob, exc: SourceChangedError) -> ShardWriteError:
    return ShardWriteError(
        f"shard {job.index}: {exc.rel} changed during the run ({exc.what}), so the shard "
        "is not written; the store is resumable, and a rerun updates it: the file's "
        "rows planned from its old version become holes and its new version is appended"
    )


def _made_in_pool(
    load: Callable[[], tuple[Any, ...]],
    plan: TransformPlan,
    fmt: ShardFormat,
    rows: Sequence[tuple[int, Any]],
) -> tuple[tuple[Any, ...], dict[int, tuple[np.ndarray, Any]]]:
    """Load one file and make its rows' samples: finished and encoded, in this thread.

    Returns what the load returned after the pixels and bit depth (the
    histogram and digest of a measured file), and for each ``(row,
    generator)`` of ``rows`` its sample and encoded chunk.
    """
    pixels, bits, *measured = load()
    samples: dict[int, tuple[np.ndarray, Any]] = {}
    for row, generator in rows:
        sample = np.empty((1, 3, *plan.size), dtype=plan.out_dtype)
        plan.finish([pixels], [bits], [generator], out=sample)
        samples[row] = (sample[0], fmt.encode_chunk(sample[0]))
    return tuple(measured), samples


def write_one_shard(
    job: ShardJob,
    plan: TransformPlan,
    *,
    store: str | Location,
    root: str | Location,
    batch_size: int,
    decode_threads: int,
    fmt: ShardFormat | None = None,
) -> ShardOutcome:
    """Produce and write one whole shard: decode, transform, encode, write, record.

    This is the body of one Dask task. The shard's files are decoded in the
    process-wide decode pool (a file shared by several copies is decoded once,
    unless ``random_resized_crop`` draws a different box per copy). On the
    CPU, when ``fmt`` is the format of the store's ``images`` array
    (:func:`pipeline.store.shard_format`), the pool thread that decoded a file
    also finishes its samples (:meth:`TransformPlan.finish`, one sample at a
    time) and encodes them (:meth:`~pipeline.store.ShardFormat.encode_chunk`)
    while they are in its cache, and this task only hashes them in row order
    and writes the object (:class:`pipeline.store.EncodedImages`): no array of
    the whole shard is made, and the work is spread over the pool. Otherwise
    (a GPU, or an array zarr must write) batches of ``batch_size`` samples go
    through :meth:`TransformPlan.finish` here, into an array of the shard.
    Both give the same bytes. The shard and its record are written by
    :func:`pipeline.store.write_shard`. ``store`` and ``root`` may be
    locations in object storage: the task then reads each source file with
    one GET and writes through ``FsspecStore``.

    A file the job marks to measure (its statistics were known before the
    run) is read once, hashed, and decoded at full resolution: the same decode
    gives its samples and its exact moments (:meth:`TransformPlan.load_measured`).
    A file that fails then is rejected like a file the statistics pass
    rejects: its samples are holes (``live`` false) and the failure is
    returned; the coordinator records both in the file table.

    Raises:
        ShardWriteError: the source changed during the run: a file measured
            earlier has another size or content (:attr:`ShardJob.seen`), or
            can no longer be decoded. Nothing of the shard is written; a rerun
            updates the store.
    """
    import functools

    import torch

    from pipeline.stats import FileMoments
    from pipeline.store import EncodedImages, write_shard
    from pipeline.transforms import resolve_device, sample_generator

    # parallelism is Dask's; one torch thread keeps results bit-stable (on a cluster
    # worker this stays set; locally write_shards restores the caller's setting)
    torch.set_num_threads(1)
    generators = [
        sample_generator(plan.seed, s, k)
        for s, k in zip(job.source_index, job.copy_index, strict=True)
    ]
    pool = decode_pool(decode_threads)
    per_copy = plan.crop is not None
    measure = job.measure or (False,) * job.rows
    seen = job.seen or (None,) * job.rows
    live = list(job.live) if job.live else [True] * job.rows
    in_pool = (
        fmt is not None
        and fmt.dtype == np.dtype(plan.out_dtype)
        and resolve_device(plan.device) == "cpu"
    )
    # the rows of each load: a file shared by several copies is decoded once
    loads: dict[Any, list[int]] = {}
    for row in range(job.rows):
        if live[row]:  # else its file was removed or changed since the rows were planned
            loads.setdefault(row if per_copy else job.source_index[row], []).append(row)
    futures: list[Any] = [None] * job.rows
    measuring: dict[int, int] = {}  # file (source index) -> the row whose load measures it
    for rows_of in loads.values():
        first = rows_of[0]
        source, rel = job.source_index[first], job.paths[first]
        gen = generators[first] if per_copy else None
        load: Callable[[], tuple[Any, ...]]
        future: Any
        if measure[first] and source not in measuring:
            measuring[source] = first
            load = functools.partial(_load_measured, plan, root, rel, gen)
        else:
            load = functools.partial(_load, plan, root, rel, gen, job.draft, seen[first])
        if in_pool:
            assert fmt is not None
            made = [(r, generators[r]) for r in rows_of]
            future = pool.submit(_made_in_pool, load, plan, fmt, made)
        else:
            future = pool.submit(load)
        for r in rows_of:
            futures[r] = future

    rows: list[int] = []
    paths: list[str] = []
    histograms: list[Any] = []
    digests: list[bytes] = []
    rejected: dict[int, Failure] = {}

    def loaded(row: int) -> Any:
        """The row's load (``None``: the row is a hole), its file's moments kept once."""
        source = job.source_index[row]
        if futures[row] is None or source in rejected:
            return None
        try:
            result = futures[row].result()
        except SourceChangedError as exc:
            raise _changed_during_run(job, exc) from None
        except DecodeError as exc:
            if measuring.get(source) == row:  # measured now: rejected, its rows are holes
                rejected[source] = Failure(job.paths[row], exc.reason)
                return None
            raise ShardWriteError(
                f"shard {job.index}: {job.paths[row]} can no longer be decoded "
                f"({exc.reason}): the source changed during the run; the store is "
                "resumable, and a rerun updates it (the changed file is compared again)"
            ) from exc
        if measuring.get(source) == row:
            histogram, digest = result[0] if in_pool else result[2:]
            rows.append(source)
            paths.append(job.paths[row])
            histograms.append(histogram)
            digests.append(digest)
        return result

    hole = torch.zeros((3, *plan.size), dtype=torch.uint8)  # a retired or rejected row
    images: np.ndarray | EncodedImages
    if in_pool:
        assert fmt is not None
        images = EncodedImages(fmt)
        for row in range(job.rows):
            result = loaded(row)
            if result is None:
                sample = plan.finish([hole], [8], [generators[row]])[0]
                images.add(sample, fmt.encode_chunk(sample))
            else:
                images.add(*result[1].pop(row))
    else:
        images = np.empty((job.rows, 3, *plan.size), dtype=plan.out_dtype)
        for start in range(0, job.rows, batch_size):
            stop = min(job.rows, start + batch_size)
            pixels, bits = [], []
            for row in range(start, stop):
                result = loaded(row)
                pixels.append(hole if result is None else result[0])
                bits.append(8 if result is None else result[1])
            plan.finish(pixels, bits, generators[start:stop], out=images[start:stop])
    futures.clear()
    for row in range(job.rows):
        if job.source_index[row] in rejected:
            live[row] = False

    def write() -> ShardRecord:
        return write_shard(
            store,
            job.index,
            images=images,
            labels=np.asarray(job.labels, dtype=np.int64),
            source_index=np.asarray(job.source_index, dtype=np.int64),
            copy_index=np.asarray(job.copy_index, dtype=np.int32),
            live=np.asarray(live, dtype=bool),
        )

    record: ShardRecord = _retry_io(write)
    return ShardOutcome(
        record,
        rows=tuple(rows),
        moments=FileMoments.of_histograms(paths, histograms, digests) if rows else None,
        rejected=tuple(sorted(rejected.items())),
    )


def record_files(group: Any, rows: Sequence[int], moments: FileMoments | None) -> None:
    """Store the moments and digests of files measured by a shard task (rows of the file table)."""
    from pipeline.store import set_file_rows

    if not rows or moments is None:
        return
    values = {name: getattr(moments, name) for name in _MOMENT_ARRAYS}
    set_file_rows(group, rows, {**values, "measured": np.ones(len(rows), bool)})


_MOMENT_ARRAYS = ("sha256", "n", "s1", "s2", "min", "max", "image_mean", "image_std")


def reject_files(group: Any, rejected: Sequence[tuple[int, Failure]]) -> list[dict[str, Any]]:
    """Retire files that failed to decode while measured; add their failure records to the store.

    Each record carries the file's size and mtime (from the file table), so an
    unchanged bad file is not decoded again by the next run.

    Returns:
        The new failure records.
    """
    from pipeline.store import ATTRIBUTE, get_array, read_array, read_attrs, set_file_rows

    if not rejected:
        return []
    rows = [row for row, _ in rejected]
    set_file_rows(group, rows, {"live": np.zeros(len(rows), bool)})
    size = read_array(get_array(group, "files/size"))
    mtime = read_array(get_array(group, "files/mtime_ns"))
    records = [
        {**failure.to_json(), "size": int(size[row]), "mtime_ns": int(mtime[row])}
        for row, failure in rejected
    ]
    meta = read_attrs(group)
    known = {f.get("path") for f in meta.get("failures", []) if isinstance(f, dict)}
    new = [r for r in records if r["path"] not in known]
    if new:
        group.attrs[ATTRIBUTE] = {**meta, "failures": [*meta.get("failures", []), *new]}
    return records


def write_shards(
    config: RunConfig,
    state: StoreState,
    run_stats: RunStats,
    *,
    root: str | Path | Location,
    progress: Progress | None = None,
) -> WriteResult:
    """Write every shard the store still misses, one Dask task per shard.

    Which shards are missing is read from the store's records when the step
    starts, so calling it again (a retry) writes only what is still missing.

    Args:
        config: the run config.
        state: the opened store (:func:`open_output`).
        run_stats: statistics and accepted files.
        root: the source folder, or the location of a source in object storage
            (:attr:`pipeline.sources.Manifest.root`).
        progress: receives ``("shards", shards done, shards, units=images written)``.

    Returns:
        Which shards were written now and how many were already done.

    Raises:
        ShardWriteError: some shards failed; the message names each with its
            cause. The others are written and the store stays resumable.
    """
    from pipeline.store import done_shards, get_array, open_group, read_layout, shard_format

    layout = read_layout(state.path)
    done = done_shards(state.path)
    todo = shard_jobs(state.path, [i for i in range(layout.n_shards) if i not in done])
    result = WriteResult(skipped=layout.n_shards - len(todo))
    if not todo:  # an unchanged source: nothing to decode, and no torch or Dask to import
        return result

    import dask

    from pipeline.execution import guarded
    from pipeline.storage import Location
    from pipeline.transforms import TransformPlan

    plan = TransformPlan.from_config(config, run_stats.stats)
    workers = resolve_workers(config.runtime.workers)
    group = open_group(state.path, mode="r+")
    fmt = shard_format(get_array(group, "images"))  # None: zarr writes the images
    tasks = [
        dask.delayed(guarded, pure=False)(
            f"shard {job.index}",
            write_one_shard,
            job,
            plan,
            store=config.output.location,  # pickles to a worker without its filesystem
            root=root if isinstance(root, Location) else str(root),
            batch_size=config.runtime.batch_size,
            decode_threads=workers,
            fmt=fmt,
        )
        for job in todo
    ]
    images = layout.rows_of(sorted(done))
    finished = 0

    def on_done(position: int, outcome: Any) -> None:
        nonlocal images, finished
        finished += 1
        if not isinstance(outcome, TaskError):
            images += todo[position].rows
            # the coordinator alone writes the file table (one call at a time)
            record_files(group, outcome.rows, outcome.moments)
            result.rejected.extend(reject_files(group, outcome.rejected))
        if progress is not None:
            progress.update("shards", result.skipped + finished, layout.n_shards, units=images)

    if progress is not None:  # the phase starts now, with what a previous run wrote
        progress.update("shards", result.skipped, layout.n_shards, units=images)
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
            store=str(config.output.location),
            n_shards=layout.n_shards,
            errors=tuple(str(e) for e in result.errors),
        )
        raise ShardWriteError(report.message(), report=report)
    return result


# ----------------------------------------------------------------------------- 5. verify


def verify_output(
    store: str | Path | Location,
    *,
    workers: int | None = None,
    incremental: bool = False,
    deep: bool = True,
) -> VerifyReport:
    """Check the shards against their records (:func:`pipeline.store.verify`).

    Shards never change once written (an update appends new ones), so a run
    checks only what it wrote and what an interrupted run left unverified
    (``incremental``: the shards from the store's ``verified`` count on);
    otherwise every shard is checked, as ``imageprep verify`` does. A run
    checks its shards' stored bytes against the CRC32C recorded as they were
    written (``deep=False``: no decode); a shard without one, or whose bytes
    differ, is decoded and its SHA-256 recomputed, as ``imageprep verify``
    does for every shard.

    Raises:
        StoreVerificationError: a shard is missing or does not match its record.
    """
    from pipeline.store import read_attrs, verify

    start = int(read_attrs(store).get("verified", 0)) if incremental else 0
    report = verify(store, workers=workers, start=start, deep=deep)
    if not report.ok:
        raise StoreVerificationError(f"verification failed: {report.summary()}")
    return report


@dataclass(frozen=True)
class RepairResult:
    """What :func:`repair` found and did.

    Attributes:
        before: the verification before the repair.
        unmarked: shards whose records were cleared (corrupt or unreadable).
        run: the run that rewrote them (None when nothing needed rewriting).
        after: the verification after the run.
    """

    before: VerifyReport
    unmarked: tuple[int, ...]
    run: RunResult | None
    after: VerifyReport


def _unredacted(source: Mapping[str, Any], store: Location) -> dict[str, Any]:
    """The source's storage options for a repair (:func:`repair` says which)."""
    from pipeline.storage import REDACTED, resolve_location

    try:
        protocol = resolve_location(str(source.get("path")), key="source.path").protocol
    except ImageprepError:
        protocol = ""
    if protocol == store.protocol and not store.is_local:
        return dict(store.storage_options)

    def keep(options: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: keep(v) if isinstance(v, Mapping) else v for k, v in options.items() if v != REDACTED
        }

    return keep(source.get("storage_options") or {})


def repair(
    store: str | Path | Location, *, workers: int | None = None, progress: Progress | None = None
) -> RepairResult:
    """Verify a store, un-mark its corrupt shards and rewrite them with the store's own config.

    Shards that do not match their checksum (a flipped bit, a deleted or
    swapped shard file) are un-marked (:func:`pipeline.store.unmark_shards`);
    then :func:`prepare` runs with the config recorded in the store, which
    writes every shard that is not done (the un-marked ones and any an
    interrupted run left) from the source files, bit for bit as before, and
    verifies them. The source must still be there; a source that changed
    since is updated as any rerun updates it.

    The store's recorded config has no credentials (they are redacted): a
    store in object storage is repaired with the storage options of
    ``store`` (a :class:`~pipeline.storage.Location`), and so is its source
    when it is on the same kind of storage; otherwise the source's recorded
    options without the redacted values, and the environment's credentials.

    Raises:
        StoreError: the manifest does not match (paths, file table, classes,
            statistics, config or layout were edited or corrupted: rewriting
            shards cannot restore them; rebuild with ``output.overwrite``). A
            changed ``live`` mask is repaired (the run recomputes it).
        StoreVerificationError: the rewritten shards still do not match.
    """
    from pipeline.config import RunConfig
    from pipeline.errors import StoreError
    from pipeline.store import read_attrs, store_location, unmark_shards
    from pipeline.store import verify as verify_store

    before = verify_store(store, workers=workers)
    repairable = {"live"}  # recomputed by finish from the file table and the records
    lost = [m for m in before.manifest if m.split(":", 1)[0] not in repairable]
    if lost:
        raise StoreError(
            f"{store}: cannot repair: {'; '.join(lost)}; rebuild the store from its source "
            "(output.overwrite: true)"
        )
    bad = tuple(p.index for p in before.mismatched)
    if before.ok:
        return RepairResult(before, (), None, before)
    unmark_shards(store, bad)
    recorded = read_attrs(store)["config"]
    # the store may have been moved since: it is repaired where it is now
    location = store_location(store)
    recorded["output"] = {
        **recorded["output"],
        "path": location.url,
        "storage_options": dict(location.storage_options),
    }
    recorded["source"] = {
        **recorded["source"],
        "storage_options": _unredacted(recorded["source"], location),
    }
    config = RunConfig.model_validate(recorded)
    result = prepare(config, progress=progress, verify=True)
    after = verify_store(store, workers=workers)
    if not after.ok:
        raise StoreVerificationError(f"repair did not restore the store: {after.summary()}")
    return RepairResult(before, bad, result, after)


# ----------------------------------------------------------------------------- 6. finish


def _measure_leftovers(
    config: RunConfig, group: Any, table: Any, rows: np.ndarray, *, root: str | Path | Location
) -> list[dict[str, Any]]:
    """Measure live, unmeasured files of the file table; record their moments or rejections."""
    from pipeline.sources import Manifest, SourceFile, fingerprint_of
    from pipeline.stats import measure
    from pipeline.storage import Location

    files = tuple(
        SourceFile(table.paths[j], int(table.size[j]), int(table.mtime_ns[j]), int(table.label[j]))
        for j in rows
    )
    todo = Manifest(
        root=root if isinstance(root, Location) else Path(root),
        files=files,
        classes=(),
        rejected=(),
        fingerprint=fingerprint_of(files),
    )
    stats, moments = measure(
        todo, method="exact", workers=config.runtime.workers, address=config.runtime.dask_address
    )
    row_of = {table.paths[j]: int(j) for j in rows}
    record_files(group, [row_of[p] for p in moments.paths], moments)
    return reject_files(group, [(row_of[f.path], f) for f in stats.failures])


def finish(
    config: RunConfig,
    state: StoreState,
    run_stats: RunStats,
    write: WriteResult,
    *,
    root: str | Path | Location,
    timings: dict[str, float],
    verified: bool = False,
) -> RunResult:
    """Record the end of the run in the store (it is then complete) and return its summary.

    With ``verified`` (the run's verify step passed), every shard now counts as verified
    (``verified`` in the group attribute), so the next run checks only the shards it writes. The
    ``live`` mask becomes the rows of written shards whose file is live (only the chunks that
    change are written), ``current_stats`` the exact statistics of the live files (summed from
    their stored moments), and the failures those of this scan.

    Raises:
        StoreError: some shards are not written (:func:`pipeline.store.finalize`).
    """
    from pipeline.store import (
        finalize,
        get_array,
        open_group,
        read_array,
        read_attrs,
        read_files,
        read_layout,
        read_records,
        store_ref,
        write_live,
    )
    from pipeline.update import moments_of, new_state

    group = open_group(config.output.location, mode="r+")
    layout = read_layout(group)
    count = int(read_attrs(group)["files"])
    table = read_files(group, count)
    # files a shard task wrote but whose moments never reached the file table (the
    # coordinator stopped in between): measured here, as the statistics pass would
    leftover = np.flatnonzero(table.live & ~table.measured)
    rejected = list(write.rejected)
    if leftover.size:
        rejected += _measure_leftovers(config, group, table, leftover, root=root)
        table = read_files(group, count)
    sources = read_array(get_array(group, "source_index"))
    live = np.zeros(layout.n_samples, dtype=bool)
    for record in read_records(group):
        if record.done:
            start = layout.shard_rows(record.index).start
            sl = slice(start, start + record.rows)
            live[sl] = table.live[sources[sl]]
    write_live(group, live)
    live_files = np.flatnonzero(table.live)
    failures = sorted([*run_stats.failures, *(Failure(r["path"], r["error"]) for r in rejected)])
    current = moments_of(table.take(live_files)).stats(failures=failures).to_json()
    n_live = int(live.sum())
    finalize(
        group,
        {
            "failures": [*run_stats.failure_records, *rejected],
            "timings": {k: round(v, 3) for k, v in timings.items()},
            "current_stats": current,
            "live_rows": n_live,
            "state": new_state(),
            **({"verified": layout.n_shards} if verified else {}),
        },
    )
    return RunResult(
        store=store_ref(config.output.location),
        stats=run_stats.stats,
        failures=failures,
        samples=n_live,
        shards=layout.n_shards,
        shards_written=len(write.written),
        shards_skipped=write.skipped,
        resumed=state.resumed,
        seconds=sum(timings.values()),
        timings=timings,
        samples_written=write.samples,
        diff=run_stats.diff,
        live=n_live,
        retired=int(layout.n_samples - n_live),
        current_stats=current,
    )
