"""The Zarr v3 store: layout, codecs, creation and resume, shard writer, verify, lock.

The storage layer takes plain values (shapes, a :class:`Compression`, JSON
attributes), never the run config: :mod:`pipeline.run` turns a config into
those values. A store is a local folder, a URL (``s3://bucket/ds.zarr``) or a
:class:`~pipeline.storage.Location` (a URL with storage options): every
function here takes any of them (:func:`store_location`).

- :mod:`~pipeline.store.layout`: :class:`StoreLayout` (shape, dtype, shard size).
- :mod:`~pipeline.store.codecs`: :class:`Compression` and the codec table.
- :mod:`~pipeline.store.group`: opening a store, its attribute and arrays.
- :mod:`~pipeline.store.create`: :func:`create_store`, :func:`open_or_create`.
- :mod:`~pipeline.store.writer`: :func:`write_shard`, records, :func:`finalize`.
- :mod:`~pipeline.store.verify`: :func:`verify`.
- :mod:`~pipeline.store.lock`: :func:`lock_for` (:class:`StoreLock` locally,
  :class:`~pipeline.storage.ObjectStoreLock` in object storage).
- :mod:`~pipeline.store.files`: the file table (:class:`FileTable`).
- :mod:`~pipeline.store.compaction`: :func:`compact` (drop retired rows).

Example:
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/ds.zarr"
    >>> layout = StoreLayout(n_samples=5, channels=3, height=4, width=4, dtype="float16",
    ...                      shard_size=2)
    >>> layout.n_shards, list(layout.shard_rows(2))
    (3, [4])
    >>> attrs = {"config_identity": "abc", "source_fingerprint": "fp", "classes": ["a", "b"]}
    >>> create_store(path, layout, attrs=attrs, paths=["a/0.png", "b/1.png"])
    >>> rng = np.random.default_rng(0)
    >>> for i in range(layout.n_shards):
    ...     n = len(layout.shard_rows(i))
    ...     _ = write_shard(path, i, images=rng.random((n, 3, 4, 4)), labels=np.zeros(n, int),
    ...                     source_index=np.zeros(n, int), copy_index=np.zeros(n, int))
    >>> sorted(done_shards(path)), verify(path).ok
    ([0, 1, 2], True)
"""

from pipeline.store.codecs import CODEC_LEVELS, CODECS, Compression
from pipeline.store.compaction import CompactResult, compact, finish_swap
from pipeline.store.create import (
    STORE_ENTRIES,
    SampleRows,
    StoreState,
    create_store,
    differences,
    foreign_entries,
    grow_store,
    open_or_create,
    read_metadata,
    remove_partials,
    reset_rows,
    restore_layout,
)
from pipeline.store.files import FILE_ARRAYS, FileTable, read_files, set_file_rows
from pipeline.store.group import (
    ATTRIBUTE,
    FORMAT_VERSION,
    format_ranges,
    get_array,
    open_group,
    read_array,
    read_attrs,
    read_layout,
    store_location,
    store_ref,
)
from pipeline.store.layout import DTYPES, StoreLayout
from pipeline.store.lock import AnyLock, StoreLock, lock_for
from pipeline.store.shardio import ShardFormat, shard_format
from pipeline.store.verify import ShardProblem, VerifyReport, verify
from pipeline.store.writer import (
    EncodedImages,
    ShardRecord,
    done_shards,
    finalize,
    read_records,
    rows_crc32c,
    shard_digest,
    unmark_shards,
    write_live,
    write_shard,
)

__all__ = [
    "ATTRIBUTE",
    "EncodedImages",
    "AnyLock",
    "CODECS",
    "CODEC_LEVELS",
    "DTYPES",
    "FILE_ARRAYS",
    "FORMAT_VERSION",
    "STORE_ENTRIES",
    "CompactResult",
    "Compression",
    "FileTable",
    "SampleRows",
    "ShardProblem",
    "ShardFormat",
    "ShardRecord",
    "StoreLayout",
    "StoreLock",
    "StoreState",
    "VerifyReport",
    "compact",
    "create_store",
    "differences",
    "done_shards",
    "finalize",
    "finish_swap",
    "foreign_entries",
    "format_ranges",
    "get_array",
    "grow_store",
    "lock_for",
    "open_group",
    "open_or_create",
    "read_array",
    "read_attrs",
    "read_files",
    "read_layout",
    "read_metadata",
    "read_records",
    "remove_partials",
    "reset_rows",
    "restore_layout",
    "rows_crc32c",
    "set_file_rows",
    "shard_digest",
    "shard_format",
    "store_location",
    "store_ref",
    "unmark_shards",
    "verify",
    "write_live",
    "write_shard",
]
