"""``imageprep compact``: rewrite a store without its retired rows, with a run's guarantees.

An update retires rows (their source file was removed or changed) and leaves
holes at the end of segments; both stay on disk until the store is compacted.
:func:`compact` copies the live rows, as stored (nothing is decoded or
normalized again), into a new store beside the old one
(``<store>.compacting``), shard by shard (one task writes one shard, with its
checksummed record), verifies it, then swaps the two folders. The file table,
the statistics, the classes and each row's ``source_index``/``copy_index``
(hence its seeds) are kept, so later updates go on as before.

Killed at any point, a second ``compact`` resumes: the copy's shards already
written are kept (the copy records which state of the store it copies), and
an interrupted swap is completed (:func:`finish_swap`).

Only local stores are compacted. The swap is two renames of folders, atomic
on one filesystem; an object store has no rename of a prefix (S3 copies and
deletes object by object), so a reader or a run could find half of the old
store and half of the new one. :func:`compact` refuses a store in object
storage with a :class:`~pipeline.errors.UnsupportedStoreError` that says so; the
retired rows stay in it (readers skip them), and a new run of the same config
to a new ``output.path`` writes a store without them.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import StoreError, UnsupportedStoreError
from pipeline.store.create import SampleRows, create_store, remove_partials
from pipeline.store.files import read_files
from pipeline.store.group import (
    PathLike,
    get_array,
    open_group,
    read_array,
    read_attrs,
    read_layout,
    store_location,
)
from pipeline.store.layout import StoreLayout
from pipeline.store.lock import StoreLock
from pipeline.store.verify import verify
from pipeline.store.writer import done_shards, finalize, write_shard

__all__ = ["CompactResult", "compact", "finish_swap"]

_RESERVED = {
    "format_version",
    "layout",
    "files",
    "created",
    "complete",
    "finalized",
    "verified",
    "manifest",
}


@dataclass(frozen=True)
class CompactResult:
    """What :func:`compact` did."""

    path: Path
    rows_before: int
    rows_after: int
    shards_written: int
    bytes_before: int
    bytes_after: int

    @property
    def dropped(self) -> int:
        """Rows dropped (retired rows and holes)."""
        return self.rows_before - self.rows_after


def _siblings(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + ".compacting"), path.with_name(path.name + ".old")


def _rename(source: Path, target: Path) -> None:
    """One rename of the swap (atomic on one filesystem)."""
    os.replace(source, target)


def _folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def finish_swap(path: PathLike) -> bool:
    """Complete a swap that a killed :func:`compact` left half done; True when there was one.

    The swap renames the store to ``<store>.old``, the verified copy to the
    store, then deletes ``<store>.old``. Found with the store missing, the copy
    is moved in place (it was complete: the swap starts only after it
    verified); found with the store in place, a leftover ``.old`` is deleted.
    A store in object storage is never compacted, so there is nothing to
    complete there (False).
    """
    location = store_location(path)
    if not location.is_local:
        return False
    path = Path(location.path)
    new, old = _siblings(path)
    if not path.exists() and new.is_dir() and old.is_dir():
        _rename(new, path)
        shutil.rmtree(old)
        return True
    if path.is_dir() and old.is_dir() and not new.exists():
        shutil.rmtree(old)
        return True
    return False


def _copy_shard(
    source: str, target: str, index: int, rows: np.ndarray, layout: StoreLayout
) -> None:
    src = open_group(source)
    images = get_array(src, "images")
    labels = read_array(get_array(src, "labels"))
    sources = read_array(get_array(src, "source_index"))
    copies = read_array(get_array(src, "copy_index"))
    block = np.stack([read_array(images, int(r)) for r in rows]) if len(rows) else None
    write_shard(
        target,
        index,
        images=block if block is not None else np.zeros((0, *layout.sample_shape), layout.dtype),
        labels=labels[rows],
        source_index=sources[rows],
        copy_index=copies[rows],
    )


def compact(
    path: PathLike,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> CompactResult:
    """Rewrite the store at ``path`` without its retired rows and holes.

    Holds the store's lock. A store with nothing to drop is left as it is.

    Args:
        path: the store.
        workers: threads copying shards (default: every core).
        progress: called as ``progress(shards done, shards)``.

    Returns:
        Rows and bytes before and after, and the shards written.

    Raises:
        StoreError: not an imageprep store, never completely written, the
            copy does not verify (the original is then untouched), or the
            store is in object storage (no atomic swap there; see the module).
        StoreLockedError: a run holds the store.
    """
    import dask

    from pipeline.execution import TaskError, run_tasks

    location = store_location(path)
    if not location.is_local:
        open_group(location)  # not a store at all: say that first
        raise UnsupportedStoreError(
            f"{path}: compact works on a local folder only: an object store has no atomic "
            "rename, so the swap of the compacted copy could leave a half-replaced store. "
            "Retired rows are skipped by readers; to drop them, rerun the config with a new "
            "output.path (or compact a local copy of the store)"
        )
    path = Path(location.path)
    new, old = _siblings(path)
    with StoreLock(path):
        finish_swap(path)
        group = open_group(path)
        meta = read_attrs(group)
        if not meta.get("complete"):
            raise StoreError(
                f"{path}: the store was never completely written; finish the run first"
            )
        layout = read_layout(group)
        rows = np.flatnonzero(read_array(get_array(group, "live"))).astype(np.int64)
        before = _folder_bytes(path)
        if len(rows) == layout.n_samples:
            return CompactResult(path, layout.n_samples, len(rows), 0, before, before)
        target = StoreLayout(
            n_samples=len(rows),
            channels=layout.channels,
            height=layout.height,
            width=layout.width,
            dtype=layout.dtype,
            shard_size=layout.shard_size,
            compression=layout.compression,
        )
        state = meta.get("state")
        if new.exists():  # an interrupted compaction: resume it if it copies this very store
            try:
                resumable = read_attrs(open_group(new)).get("compacted_from") == state
            except StoreError:
                resumable = False
            if not resumable:
                shutil.rmtree(new)
            else:
                remove_partials(new)  # chunk writes the killed compaction left half done
        if not new.exists():
            labels = read_array(get_array(group, "labels"))
            sources = read_array(get_array(group, "source_index"))
            copies = read_array(get_array(group, "copy_index"))
            attrs = {k: v for k, v in meta.items() if k not in _RESERVED}
            attrs["compacted_from"] = state
            create_store(
                new,
                target,
                attrs=attrs,
                files=read_files(group, int(meta["files"])),
                rows=SampleRows(labels[rows], sources[rows], copies[rows].astype(np.int32)),
            )
        done = done_shards(new)
        todo = [i for i in range(target.n_shards) if i not in done]
        tasks = []
        for i in todo:
            span = target.shard_rows(i)
            tasks.append(
                dask.delayed(_copy_shard, pure=False)(
                    str(path), str(new), i, rows[span.start : span.stop], target
                )
            )
        finished = len(done)

        def on_done(position: int, outcome: Any) -> None:
            nonlocal finished
            finished += 1
            if progress is not None:
                progress(finished, target.n_shards)

        outcomes = run_tasks(tasks, workers=workers, on_done=on_done)
        errors = [o for o in outcomes if isinstance(o, TaskError)]
        if errors:
            raise StoreError(f"{path}: compaction failed (rerun to resume): {errors[0]}")
        report = verify(new, workers=workers)
        if not report.ok:
            raise StoreError(f"{path}: the compacted copy does not verify: {report.summary()}")
        finalize(
            new,
            {"compacted_from": state, "state": uuid.uuid4().hex, "verified": target.n_shards},
        )
        written = len(todo)
        # the swap: a kill between the two renames is completed by finish_swap
        _rename(path, old)
        _rename(new, path)
        shutil.rmtree(old)
        after = _folder_bytes(path)
        return CompactResult(path, layout.n_samples, len(rows), written, before, after)
