"""Verification: every done shard's checksum recomputed from the stored arrays."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import zarr

from pipeline.errors import InvalidArgumentError
from pipeline.store.group import (
    PathLike,
    format_ranges,
    get_array,
    group_of,
    read_array,
    read_attrs,
    read_layout,
)
from pipeline.store.layout import StoreLayout
from pipeline.store.manifest import manifest_problems
from pipeline.store.shardio import read_images, shard_format, shard_object_crc32c
from pipeline.store.writer import ShardRecord, read_records, shard_digest

__all__ = ["ShardProblem", "VerifyReport", "verify"]


@dataclass(frozen=True)
class ShardProblem:
    """A shard whose stored values do not match its record, and why."""

    index: int
    reason: str


@dataclass(frozen=True)
class VerifyReport:
    """Result of :func:`verify`.

    Attributes:
        path: the store.
        n_shards: shards in the layout.
        verified: done shards whose stored values match their checksum.
        unfinished: shards with no ``done`` record (missing or interrupted).
        mismatched: done shards whose values differ from their record or
            cannot be read.
        manifest: parts of the manifest (paths, file table, live mask,
            classes, statistics, config, layout) that no longer match their
            checksum (:mod:`pipeline.store.manifest`).
    """

    path: str
    n_shards: int
    verified: tuple[int, ...]
    unfinished: tuple[int, ...]
    mismatched: tuple[ShardProblem, ...]
    manifest: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when every shard is written and matches its checksum, and so does the manifest."""
        return not self.unfinished and not self.mismatched and not self.manifest

    def summary(self) -> str:
        """One line per finding, first a count."""
        lines = [
            f"{self.path}: {len(self.verified)}/{self.n_shards} shards verified, "
            f"{len(self.unfinished)} unfinished, {len(self.mismatched)} mismatched"
            + (f", manifest: {len(self.manifest)} part(s) changed" if self.manifest else "")
        ]
        if self.unfinished:
            lines.append(f"  unfinished: {format_ranges(self.unfinished)}")
        lines.extend(f"  shard {p.index}: {p.reason}" for p in self.mismatched)
        lines.extend(f"  manifest: {m}" for m in self.manifest)
        return "\n".join(lines)


def _bytes_match(
    group: zarr.Group, images: zarr.Array, layout: StoreLayout, record: ShardRecord
) -> bool:
    """Whether the shard's stored bytes have the CRC32C its record holds (no decode).

    ``images`` is the store's ``images`` array, whose shards this module can
    read as objects (:func:`shard_format`). False when the bytes differ,
    cannot be read, or no CRC32C is recorded: the SHA-256 check then decides
    (and says why).
    """
    if record.crc32c is None:
        return False
    rows = layout.shard_rows(record.index)
    sl = slice(rows.start, rows.stop)
    try:
        crc = shard_object_crc32c(images, record.index)
        if crc is None:
            return False
        labels, source, copy = (read_array(get_array(group, name), sl) for name in _ROW_NAMES)
    except Exception:  # unreadable: the full check reports it
        return False
    return record.bytes_match(crc, labels, source, copy)


_ROW_NAMES = ("labels", "source_index", "copy_index")


def _check_shard(
    group: zarr.Group, layout: StoreLayout, record: ShardRecord, *, quick: zarr.Array | None
) -> str | None:
    """Why shard ``record.index`` does not match its record (``None``: it matches).

    ``quick``: the ``images`` array, when the stored bytes are first compared
    with the record's CRC32C (:func:`_bytes_match`).
    """
    rows = layout.shard_rows(record.index)
    if record.rows != len(rows):
        return f"record says {record.rows} rows, the layout has {len(rows)}"
    if quick is not None and _bytes_match(group, quick, layout, record):
        return None
    sl = slice(rows.start, rows.stop)
    try:
        images = get_array(group, "images")
        digest = shard_digest(
            read_images(images, record.index, len(rows)),
            read_array(get_array(group, "labels"), sl),
            read_array(get_array(group, "source_index"), sl),
            read_array(get_array(group, "copy_index"), sl),
        )
    except Exception as exc:  # a corrupt chunk fails to decode: that is a finding, not a crash
        return f"cannot read: {type(exc).__name__}: {exc}"
    if digest != record.sha256:
        return f"sha256 {digest[:16]}... does not match the record {record.sha256[:16]}..."
    return None


def verify(
    store: PathLike | zarr.Group,
    *,
    workers: int | None = None,
    start: int = 0,
    deep: bool = True,
) -> VerifyReport:
    """Recompute every done shard's checksum from the stored arrays and compare.

    Args:
        store: the store folder or its open root group.
        workers: threads reading shards (default ``min(8, cpu count)``).
        start: check the shards from this index on only (a run checks the
            shards written since the last verified run; shards never change
            once written). The manifest is checked when ``start`` is 0 and
            the store is complete.
        deep: decode every shard and recompute the SHA-256 of its values
            (``imageprep verify``). ``False`` checks the stored bytes against
            the CRC32C recorded when they were written (no decode: what a run
            does right after writing), and a shard without one, or whose
            bytes differ, gets the SHA-256 check, which decides and explains.

    Returns:
        The :class:`VerifyReport`; ``report.ok`` is True when every shard is
        done and matches.

    Raises:
        StoreError: not an imageprep store.
    """
    group = group_of(store)
    layout = read_layout(group)
    records = read_records(group)[start:]
    unfinished = tuple(r.index for r in records if not r.done)
    done = [r for r in records if r.done]
    n_workers = workers if workers is not None else min(8, os.cpu_count() or 1)
    if n_workers < 1:
        raise InvalidArgumentError(f"workers must be >= 1, got {n_workers}")
    quick = None
    if not deep:  # its shards read as objects (else every shard gets the SHA-256 check)
        images = get_array(group, "images")
        quick = images if shard_format(images) is not None else None
    with ThreadPoolExecutor(max_workers=n_workers) as pool:
        results = list(pool.map(lambda r: _check_shard(group, layout, r, quick=quick), done))
    pairs = list(zip(done, results, strict=True))
    mismatched = tuple(ShardProblem(r.index, why) for r, why in pairs if why)
    verified = tuple(r.index for r, why in pairs if why is None)
    meta = read_attrs(group)
    manifest = manifest_problems(group, meta) if start == 0 and meta.get("complete") else ()
    return VerifyReport(
        str(store if not isinstance(store, zarr.Group) else store.store),
        layout.n_shards,
        verified,
        unfinished,
        mismatched,
        manifest,
    )
