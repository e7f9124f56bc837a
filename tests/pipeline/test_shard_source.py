"""Integrity on read: every corrupted shard raises a StoreError naming the store and the shard.

Each corruption is made on the files of a local store, as a disk error, a
careless copy or a hand edit would make it, and read through the three read
paths: ``ShardDataset``, ``iter_shards`` and a ``DataLoader`` with worker
processes (and the ``ShardLoader``).
"""

from __future__ import annotations

import re
import shutil

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from pipeline.errors import StoreError
from pipeline.reader import ShardDataset, ShardLoader, iter_shards
from pipeline.store import verify
from tests.pipeline.readstores import make_store, shard_file

# shard 1 of a store of 27 rows in shards of 5
SHARD = r"shard 1 \(rows 5-9\)"


def _flip_bit(made) -> str:
    """Flip one bit inside the raw pixel bytes of shard 1 (codec none: a plain value change)."""
    f = shard_file(made.path, 1)
    data = bytearray(f.read_bytes())
    data[100] ^= 0x10  # inside the first inner chunk, far from the index at the end
    f.write_bytes(bytes(data))
    return "does not match its SHA-256 record"


def _delete(made) -> str:
    shard_file(made.path, 1).unlink()  # zarr reads a missing shard as fill values
    return "all zeros: the images shard file is probably missing"


def _swap_files(made, array: str = "images") -> None:
    """Swap the files of shards 1 and 2 of ``array`` (a file zarr did not write: none)."""
    a, b = shard_file(made.path, 1, array), shard_file(made.path, 2, array)
    tmp = a.with_name("tmp")
    for src, dst in ((a, tmp), (b, a), (tmp, b)):
        if src.exists():
            shutil.move(src, dst)


def _swap(made) -> str:
    _swap_files(made)
    return "its images are shard 2's"


def _edit_labels(made) -> str:
    labels = zarr.open_group(made.path, mode="r+")["labels"]
    labels[7] = (int(labels[7]) + 1) % 3
    return "does not match its SHA-256 record"


CORRUPTIONS = {"flip": _flip_bit, "delete": _delete, "swap": _swap, "labels": _edit_labels}


@pytest.fixture(params=sorted(CORRUPTIONS))
def corrupted(request, tmp_path):
    """(store, reason): a store whose shard 1 is corrupted one way, and the expected reason."""
    made = make_store(tmp_path, codec="none")
    reason = CORRUPTIONS[request.param](made)
    assert not verify(made.path).ok  # the store's own check agrees that it is corrupted
    return made, reason


def _message(made, reason: str) -> str:
    return re.escape(str(made.path)) + ": " + SHARD + ".*" + re.escape(reason)


def test_dataset_raises_on_the_corrupted_shard_only(corrupted):
    made, reason = corrupted
    ds = ShardDataset(made.path)
    np.testing.assert_array_equal(ds[3][0].numpy(), made.stored[3].astype(np.float32))
    with pytest.raises(StoreError, match=_message(made, reason)):
        ds[6]
    with pytest.raises(StoreError, match=SHARD):  # again: never served after a failure
        ds.__getitems__([0, 8])
    np.testing.assert_array_equal(ds[17][0].numpy(), made.stored[17].astype(np.float32))


def test_iter_shards_raises_at_the_corrupted_shard(corrupted):
    made, reason = corrupted
    it = iter_shards(made.path)
    first, _ = next(it)
    np.testing.assert_array_equal(first.numpy(), made.stored[:5].astype(np.float32))
    with pytest.raises(StoreError, match=_message(made, reason)):
        next(it)


def _raises_in_workers(loader, pattern: str) -> None:
    it = iter(loader)
    try:
        with pytest.raises(StoreError, match=pattern):
            list(it)
    finally:  # the traceback pytest keeps holds the iterator: stop its workers now
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()


def test_dataloader_workers_raise(corrupted):
    made, reason = corrupted
    pattern = SHARD + ".*" + re.escape(reason)
    _raises_in_workers(DataLoader(ShardDataset(made.path), batch_size=4, num_workers=2), pattern)
    loader = ShardLoader(ShardDataset(made.path), 4, shuffle=False, num_workers=2)
    _raises_in_workers(loader, pattern)


def test_a_flipped_bit_in_a_compressed_shard_raises(tmp_path):
    made = make_store(tmp_path, codec="zstd", size=(32, 32))
    f = shard_file(made.path, 1)
    data = bytearray(f.read_bytes())
    data[len(data) // 3] ^= 0x01
    f.write_bytes(bytes(data))
    # either the codec fails to decode it or it decodes to other values: a StoreError either way
    with pytest.raises(StoreError, match=SHARD + r".*(cannot be read|does not match)"):
        ShardDataset(made.path)[6]


def test_a_truncated_shard_file_cannot_be_read(tmp_path):
    made = make_store(tmp_path, codec="zstd")
    f = shard_file(made.path, 1)
    f.write_bytes(f.read_bytes()[:50])
    with pytest.raises(StoreError, match=SHARD + " cannot be read"):
        list(iter_shards(made.path))


def test_a_shard_swapped_with_all_its_arrays_is_named(tmp_path):
    made = make_store(tmp_path, codec="none")
    for array in ("images", "labels", "source_index", "copy_index"):
        _swap_files(made, array)
    with pytest.raises(StoreError, match=SHARD + ".*match shard 2's record"):
        ShardDataset(made.path)[5]


def test_a_record_with_another_row_count_is_refused(tmp_path):
    made = make_store(tmp_path)
    zarr.open_group(made.path, mode="r+")["records/rows"][1] = 4
    with pytest.raises(StoreError, match=SHARD + ".*record says 4 rows were written"):
        ShardDataset(made.path)[5]


def test_verify_false_skips_the_check(tmp_path):
    made = make_store(tmp_path, codec="none")
    _delete(made)
    ds = ShardDataset(made.path, verify=False)
    assert not ds.verify
    assert float(ds[6][0].abs().sum()) == 0.0  # the fill values, as the opt-out accepts
    blocks = list(iter_shards(made.path, verify=False))
    assert float(blocks[1][0].abs().sum()) == 0.0


def _counting(monkeypatch, module, name: str) -> list[int]:
    """Calls of ``module.name`` from now on, one entry each."""
    calls: list[int] = []
    real = getattr(module, name)

    def counted(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_each_shard_is_checked_once_per_process_by_its_crc32c(tmp_path, monkeypatch):
    import pipeline.shard_source as module
    import pipeline.store.writer as records

    made = make_store(tmp_path, n=20, shard=5)
    checked = _counting(monkeypatch, records, "rows_crc32c")
    hashed = _counting(monkeypatch, module, "shard_digest")
    ds = ShardDataset(made.path, cache_shards=0)
    for _ in range(2):
        for i in range(len(ds)):
            ds[i]
    assert len(checked) == 4  # one check per shard, whatever the re-reads
    assert hashed == []  # the bytes matched their CRC32C: the values were not hashed
    list(iter_shards(made.path))  # another reader: its own checks
    assert len(checked) == 8


def test_the_corruptions_fail_the_crc32c_check_too(corrupted):
    made, _ = corrupted
    quick = verify(made.path, deep=False)  # what a run checks after writing: no decode
    assert 1 in [p.index for p in quick.mismatched]
    assert quick.mismatched == verify(made.path).mismatched  # the same findings, the same reasons


def test_a_store_without_crc32c_records_is_checked_by_sha256(tmp_path, monkeypatch):
    """A store made before the CRC32C records: every shard is hashed, corruption still found."""
    import pipeline.shard_source as module

    made = make_store(tmp_path, n=20, shard=5, codec="none")
    shutil.rmtree(made.path / "records" / "crc32c")
    hashed = _counting(monkeypatch, module, "shard_digest")
    assert len(list(iter_shards(made.path))) == 4
    assert len(hashed) == 4
    assert verify(made.path, deep=False).ok
    _flip_bit(made)
    with pytest.raises(StoreError, match=SHARD + ".*does not match its SHA-256 record"):
        ShardDataset(made.path)[5]
    assert [p.index for p in verify(made.path, deep=False).mismatched] == [1]


def test_a_wrong_crc32c_record_defers_to_the_sha256(tmp_path, monkeypatch):
    """The SHA-256 of the values is the authority: bytes that differ but decode right pass."""
    import pipeline.shard_source as module

    made = make_store(tmp_path, n=20, shard=5)
    crc = zarr.open_group(made.path, mode="r+")["records/crc32c"]
    crc[1] = [int(crc[1, 0]) ^ 1, int(crc[1, 1])]
    hashed = _counting(monkeypatch, module, "shard_digest")
    blocks = list(iter_shards(made.path))
    assert len(hashed) == 1  # shard 1 only, and it matched
    np.testing.assert_array_equal(blocks[1][0].numpy(), made.stored[5:10].astype(np.float32))
    assert verify(made.path, deep=False).ok


def test_a_shard_rewritten_after_opening_is_refused(tmp_path):
    made = make_store(tmp_path)
    ds = ShardDataset(made.path)
    ds[0]
    labels = zarr.open_group(made.path, mode="r+")["labels"]
    # a consistent rewrite of shard 1 (a repair) with other labels, after the dataset opened
    from pipeline.store import write_shard

    new = (made.labels[5:10] + 1) % 3
    write_shard(
        made.path,
        1,
        images=made.stored[5:10],
        labels=new,
        source_index=np.arange(5, 10),
        copy_index=np.zeros(5, np.int32),
    )
    assert verify(made.path).ok
    assert labels[5] == new[0]
    with pytest.raises(StoreError, match=SHARD + " was rewritten since the reader opened"):
        ds[5]
    assert ShardDataset(made.path)[5][1] == new[0]  # opened again: the new labels


def test_the_shard_loader_finishes_verified_batches_only(tmp_path):
    made = make_store(tmp_path, codec="none")
    _edit_labels(made)
    ds = ShardDataset(made.path)
    loader = ShardLoader(ds, 5, shuffle=False)
    it = iter(loader)
    images, labels = next(it)  # shard 0: fine
    assert torch.equal(labels, torch.from_numpy(made.labels[:5]))
    with pytest.raises(StoreError, match=SHARD):
        next(it)


def test_labels_rewritten_after_the_first_check_are_refused(tmp_path):
    from pipeline.store import write_shard

    made = make_store(tmp_path)
    ds = ShardDataset(made.path, cache_shards=0)
    ds[5]  # shard 1 verified in this process: not hashed again
    write_shard(
        made.path,
        1,
        images=made.stored[5:10],
        labels=(made.labels[5:10] + 1) % 3,
        source_index=np.arange(5, 10),
        copy_index=np.zeros(5, np.int32),
    )
    with pytest.raises(StoreError, match=SHARD + ": its labels changed since the dataset"):
        ds.__getitems__([5, 6, 7])  # a whole-shard read again
