"""Incremental updates: compare a source with the store made from it, and apply the difference.

A rerun over a folder that changed does not rebuild the store
(:func:`diff_source`, then :func:`apply_update`):

- a **new** file is decoded (its statistics and moments) and its samples are
  appended as new rows in new shards; the shards already written are not
  touched;
- a file whose **content changed** (size, or the SHA-256 of its bytes) has its
  old rows retired and its new content appended like a new file;
- a **removed** file has its rows retired;
- a file whose mtime changed but not its bytes (``touch``) changes nothing
  but the recorded mtime;
- a file that failed to decode before and is unchanged is not decoded again
  (its failure is kept).

Retired rows stay in the store until ``imageprep compact``; ``live`` says which
rows a reader serves. The statistics of the live files are a sum of the
per-file moments the store keeps (:class:`pipeline.stats.FileMoments`), so
they stay exact without decoding unchanged files again. What the new rows are
normalized with follows ``stats.update``: ``freeze`` keeps the statistics the
store was created with; ``refresh`` renormalizes every live row with the
current statistics (a full rewrite of the rows, resumable, no decode of the
statistics).

Every change of the store's attribute by a run writes a new ``state`` token;
a diff records the token it was computed against, and :func:`apply_update`
refuses a diff whose store changed meanwhile (a stale cached result, or
another writer).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np

from pipeline.errors import Failure, StoreError, StoreMismatchError

if TYPE_CHECKING:
    from pipeline.config import RunConfig
    from pipeline.sources import Manifest, SourceFile
    from pipeline.stats import FileMoments
    from pipeline.store import FileTable
    from pipeline.store.group import PathLike

__all__ = [
    "SourceDiff",
    "diff_source",
    "file_digest",
    "new_state",
    "store_token",
]


@dataclass(frozen=True)
class SourceDiff:
    """What changed between a source and the store made from it.

    Attributes:
        base: the store's ``state`` token the diff was computed against;
            ``None`` when there is no store of this run (everything is new).
        files: rows of the store's file table.
        new: files to decode and append (new paths, new content of changed ones).
        changed: paths whose content changed (their old rows are retired).
        removed: paths no longer in the source (their rows are retired).
        retire: file-table rows to retire (changed and removed).
        touched: ``(file row, new mtime_ns)`` of files whose mtime alone changed.
        unchanged: live files seen again as they were.
        known_failures: unchanged files that failed before; not decoded again.
        replaces: the existing store is of another config or format and
            ``output.overwrite`` replaces it.
    """

    base: str | None
    files: int = 0
    new: tuple[SourceFile, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    retire: tuple[int, ...] = ()
    touched: tuple[tuple[int, int], ...] = ()
    unchanged: int = 0
    known_failures: tuple[Failure, ...] = field(default_factory=tuple)
    replaces: bool = False

    @property
    def is_update(self) -> bool:
        """True when an existing store is updated (not created)."""
        return self.base is not None

    def summary(self) -> str:
        """One line: files new, changed, removed, touched, unchanged."""
        fresh = len(self.new) - len(self.changed)
        return (
            f"{fresh} new, {len(self.changed)} changed, {len(self.removed)} removed, "
            f"{len(self.touched)} touched (same bytes), {self.unchanged} unchanged"
        )


def new_state() -> str:
    """A fresh ``state`` token for the store's attribute."""
    return uuid.uuid4().hex


def file_digest(path: str | os.PathLike[str] | BinaryIO) -> bytes:
    """The SHA-256 of a file's bytes (read in 1 MiB blocks); a path, or an open binary file."""
    h = hashlib.sha256()
    with open(path, "rb") if isinstance(path, str | os.PathLike) else path as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.digest()


def _existing(path: PathLike) -> dict[str, Any] | None:
    """The ``imageprep`` attribute of the store at ``path``, ``{}`` for a half-made one, or None."""
    from pipeline.store import ATTRIBUTE, read_metadata, store_location

    try:
        raw = read_metadata(store_location(path))
        if raw is None:
            return None
        attributes = json.loads(raw.decode("utf-8")).get("attributes") or {}
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable zarr.json ({exc})") from exc
    meta = attributes.get(ATTRIBUTE)
    if isinstance(meta, dict):
        return meta
    if "imageprep_creating" in attributes:
        return {}
    raise StoreError(f"{path}: is a Zarr store but not an imageprep store; refusing to use it")


def store_token(path: PathLike) -> str | None:
    """The ``state`` token of the imageprep store at ``path`` (None: no store, or half-made)."""
    meta = _existing(path)
    token = meta.get("state") if meta else None
    return str(token) if token is not None else None


def _mismatch(config: RunConfig, path: PathLike, meta: dict[str, Any]) -> list[str]:
    """Why the store at ``path`` was not made by this run (empty: it was)."""
    from pipeline.config import config_differences
    from pipeline.store import FORMAT_VERSION

    problems = []
    if meta.get("format_version") != FORMAT_VERSION:
        problems.append(
            f"format_version: {meta.get('format_version')!r} -> {FORMAT_VERSION} "
            "(made by another imageprep version)"
        )
    elif meta.get("config_identity") != config.identity():
        changed = config_differences(meta.get("config"), config)
        detail = f" ({'; '.join(changed)})" if changed else ""
        problems.append(
            f"config identity: {str(meta.get('config_identity'))[:12]} -> "
            f"{config.identity()[:12]}{detail}"
        )
    return problems


def diff_source(config: RunConfig, manifest: Manifest, *, compare: bool = True) -> SourceDiff:
    """Compare ``manifest`` with the store at ``output.path``.

    Files with the same path, size and mtime as a live file of the store are
    unchanged; with the same size but another mtime their bytes are hashed
    and compared with the store's SHA-256 (``touch`` changes nothing); any
    other difference is a change.

    Args:
        config: the run config.
        manifest: the scanned source.
        compare: ``False`` treats every file as new (statistics of the whole
            source, as ``imageprep stats`` computes them).

    Returns:
        The difference; ``base`` is None when there is no store of this run.

    Raises:
        StoreMismatchError: the store was made by another config (the message
            names the keys that differ) or format, and ``output.overwrite`` is false.
        StoreError: the output holds something that is not an imageprep store.
    """
    path = config.output.location
    meta = _existing(path) if compare else None
    fresh = SourceDiff(base=None, new=tuple(manifest.files))
    if not meta:  # no store, or a creation that was interrupted (redone from scratch)
        return fresh
    problems = _mismatch(config, path, meta)
    if problems:
        if config.output.overwrite:
            return SourceDiff(base=None, new=tuple(manifest.files), replaces=True)
        raise StoreMismatchError(
            f"{path}: the existing store was made by another run: {' | '.join(problems)}. "
            "Set output.overwrite: true (--set output.overwrite=true) to replace it, "
            "or choose another output.path"
        )
    from pipeline.store import open_group, read_files

    table = read_files(open_group(path), int(meta["files"]))
    live_rows = {p: j for j, p in enumerate(table.paths) if table.live[j]}
    failed = {
        f["path"]: f
        for f in meta.get("failures", [])
        if isinstance(f, dict) and "size" in f and "mtime_ns" in f
    }
    new: list[SourceFile] = []
    changed: list[str] = []
    retire: list[int] = []
    suspects: list[tuple[SourceFile, int]] = []
    unchanged = 0
    known: list[Failure] = []
    seen: set[int] = set()
    for f in manifest.files:
        j = live_rows.get(f.path)
        if j is None:
            old = failed.get(f.path)
            if old is not None and (old["size"], old["mtime_ns"]) == (f.size, f.mtime_ns):
                known.append(Failure(f.path, str(old["error"])))
            else:
                new.append(f)
            continue
        seen.add(j)
        if int(table.size[j]) != f.size:
            changed.append(f.path)
            retire.append(j)
            new.append(f)
        elif int(table.mtime_ns[j]) != f.mtime_ns:
            suspects.append((f, j))
        else:
            unchanged += 1
    touched: list[tuple[int, int]] = []
    if suspects:
        with ThreadPoolExecutor(max_workers=min(8, len(suspects))) as pool:
            digests = list(pool.map(lambda s: _digest_or_none(manifest, s[0]), suspects))
        for (f, j), digest in zip(suspects, digests, strict=True):
            if digest is not None and digest == bytes(table.sha256[j]):
                touched.append((j, f.mtime_ns))
            else:
                changed.append(f.path)
                retire.append(j)
                new.append(f)
    removed = [p for p, j in live_rows.items() if j not in seen]
    retire.extend(live_rows[p] for p in removed)
    return SourceDiff(
        base=str(meta.get("state")),
        files=len(table),
        new=tuple(sorted(new, key=lambda f: f.path)),
        changed=tuple(sorted(changed)),
        removed=tuple(sorted(removed)),
        retire=tuple(sorted(retire)),
        touched=tuple(sorted(touched)),
        unchanged=unchanged,
        known_failures=tuple(sorted(known)),
    )


def _digest_or_none(manifest: Manifest, f: SourceFile) -> bytes | None:
    try:
        return file_digest(manifest.open(f))
    except OSError:
        return None


def file_rows(
    files: Sequence[SourceFile],
    moments: FileMoments,
    *,
    labels: Sequence[int],
) -> FileTable:
    """The file-table rows of decoded files (``moments`` in the order of ``files``)."""
    from pipeline.store import FileTable

    if [f.path for f in files] != list(moments.paths):
        raise AssertionError("moments must follow the files")  # pragma: no cover
    return FileTable(
        paths=[f.path for f in files],
        size=np.asarray([f.size for f in files], np.int64),
        mtime_ns=np.asarray([f.mtime_ns for f in files], np.int64),
        sha256=moments.sha256,
        label=np.asarray(labels, np.int64),
        live=np.ones(len(files), bool),
        measured=np.ones(len(files), bool),
        n=moments.n,
        s1=moments.s1,
        s2=moments.s2,
        min=moments.min,
        max=moments.max,
        image_mean=moments.image_mean,
        image_std=moments.image_std,
    )


def unmeasured_rows(files: Sequence[SourceFile], *, labels: Sequence[int]) -> FileTable:
    """File-table rows of files not decoded yet (measured when their samples are made)."""
    from pipeline.store import FileTable

    table = FileTable.blank([f.path for f in files], labels=labels)
    table.size = np.asarray([f.size for f in files], np.int64)
    table.mtime_ns = np.asarray([f.mtime_ns for f in files], np.int64)
    return table


def moments_of(table: FileTable) -> FileMoments:
    """The :class:`~pipeline.stats.FileMoments` of file-table rows."""
    from pipeline.stats import FileMoments

    return FileMoments(
        paths=list(table.paths),
        sha256=table.sha256,
        n=table.n,
        s1=table.s1,
        s2=table.s2,
        min=table.min,
        max=table.max,
        image_mean=table.image_mean,
        image_std=table.image_std,
    )
