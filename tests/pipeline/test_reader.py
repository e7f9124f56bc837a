from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.errors import InvalidArgumentError, StoreError
from pipeline.reader import ShardDataset, ShardLoader, iter_shards
from pipeline.store import StoreLayout, create_store, write_shard
from tests.pipeline.readstores import make_store

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


def _make(tmp_path, *, dtype="float16", n=27, shard=5, normalize=True, shards=None, seed=0):
    """A store of random samples; returns (path, pixels in [0, 1], stored arrays, labels)."""
    layout = StoreLayout(n_samples=n, channels=3, height=8, width=6, dtype=dtype, shard_size=shard)
    attrs = {
        "classes": ["cat", "dog", "eel"],
        "config": {"transform": {"normalize": normalize}},
        "stats": {"channels": ["R", "G", "B"], "mean": MEAN, "std": STD},
    }
    path = tmp_path / f"{dtype}-{normalize}.zarr"
    create_store(path, layout, attrs=attrs, paths=["p"])
    rng = np.random.default_rng(seed)
    pixels = rng.random((n, 3, 8, 6))
    if dtype == "uint8":
        stored = rng.integers(0, 256, size=(n, 3, 8, 6), dtype=np.uint8)
    elif normalize:
        mean = np.array(MEAN).reshape(3, 1, 1)
        std = np.array(STD).reshape(3, 1, 1)
        stored = ((pixels - mean) / std).astype(dtype)
    else:
        stored = pixels.astype(dtype)
    labels = rng.integers(0, 3, size=n)
    for i in shards if shards is not None else range(layout.n_shards):
        rows = layout.shard_rows(i)
        write_shard(
            path,
            i,
            images=stored[rows.start : rows.stop],
            labels=labels[rows.start : rows.stop],
            source_index=np.arange(rows.start, rows.stop),
            copy_index=np.zeros(len(rows), dtype=np.int32),
        )
    return path, pixels, stored, labels


def test_items_equal_what_was_written(tmp_path):
    path, _, stored, labels = _make(tmp_path)
    ds = ShardDataset(path)
    assert len(ds) == 27
    assert ds.classes == ["cat", "dog", "eel"]
    assert ds.normalized
    for i in [0, 4, 5, 26, -1, -27]:
        image, label = ds[i]
        assert image.dtype == torch.float32
        assert image.shape == (3, 8, 6)
        np.testing.assert_array_equal(image.numpy(), stored[i].astype(np.float32))
        assert isinstance(label, int)
        assert label == labels[i]
    with pytest.raises(IndexError, match="index 27 is out of range for 27 samples"):
        ds[27]
    with pytest.raises(IndexError):
        ds[-28]


def test_dataloader_with_workers_reads_every_sample(tmp_path):
    path, _, stored, labels = _make(tmp_path)
    ds = ShardDataset(path)
    ds[3]  # open the store in the parent first: workers must still open their own
    order = np.random.default_rng(2).permutation(len(ds)).tolist()
    loader = DataLoader(ds, batch_size=4, sampler=order, num_workers=2)
    images, got = zip(*loader, strict=True)
    images = torch.cat(images).numpy()
    np.testing.assert_array_equal(images, stored[order].astype(np.float32))
    np.testing.assert_array_equal(torch.cat(got).numpy(), labels[order])


def test_dataset_pickles_without_its_handle_or_cache(tmp_path):
    path, _, stored, _ = _make(tmp_path)
    ds = ShardDataset(path)
    ds[0]
    assert ds._source._group is not None
    assert ds._source.cached(0) is not None
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._source._group is None
    assert copy._source.cached(0) is None
    assert not copy._source._verified
    np.testing.assert_array_equal(copy[7][0].numpy(), stored[7].astype(np.float32))


def test_getitems_matches_getitem_with_repeats_and_negatives(tmp_path):
    path, _, _, _ = _make(tmp_path)
    ds = ShardDataset(path)
    indices = [3, 26, 3, 0, -1, 12]
    batch = ds.__getitems__(indices)
    for i, (image, label) in zip(indices, batch, strict=True):
        ref_image, ref_label = ds[i]
        assert torch.equal(image, ref_image)
        assert label == ref_label
    assert ds.__getitems__([]) == []


def test_iter_shards_equals_item_reads(tmp_path):
    path, _, _, labels = _make(tmp_path, shard=4)
    ds = ShardDataset(path, denormalize=True)
    blocks = list(iter_shards(path, denormalize=True))
    assert [tuple(x.shape) for x, _ in blocks] == [(4, 3, 8, 6)] * 6 + [(3, 3, 8, 6)]
    images = torch.cat([x for x, _ in blocks])
    got = torch.cat([y for _, y in blocks])
    assert got.dtype == torch.int64
    np.testing.assert_array_equal(got.numpy(), labels)
    for i in range(len(ds)):
        assert torch.equal(images[i], ds[i][0])


def test_denormalize_inverts_the_normalization(tmp_path):
    path, pixels, stored, _ = _make(tmp_path)
    ds = ShardDataset(path, denormalize=True)
    got = torch.stack([ds[i][0] for i in range(len(ds))]).double().numpy()
    # float16 rounds x_norm to 11 significant bits: |error| <= std * |x_norm| * 2**-11,
    # plus float32 rounding of the multiply-add.
    std = np.array(STD).reshape(1, 3, 1, 1)
    bound = std * np.abs(stored.astype(np.float64)) * 2.0**-11 + 1e-6
    assert np.all(np.abs(got - pixels) <= bound)
    assert ShardDataset(path).normalized


def test_denormalize_in_float64_is_exact_arithmetic(tmp_path):
    path, _, stored, _ = _make(tmp_path)
    ds = ShardDataset(path, denormalize=True, dtype=torch.float64)
    ref = stored[5].astype(np.float64) * np.array(STD).reshape(3, 1, 1) + np.array(MEAN).reshape(
        3, 1, 1
    )
    image = ds[5][0]
    assert image.dtype == torch.float64
    np.testing.assert_allclose(image.numpy(), ref, rtol=0, atol=1e-15)


def test_uint8_store_reads_as_unit_interval(tmp_path):
    path, _, stored, _ = _make(tmp_path, dtype="uint8", normalize=False)
    for denormalize in (False, True):
        ds = ShardDataset(path, denormalize=denormalize)
        assert not ds.normalized
        ref = (stored[9].astype(np.float64) / 255.0).astype(np.float32)
        np.testing.assert_allclose(ds[9][0].numpy(), ref, rtol=0, atol=1e-7)
    top = next(iter_shards(path))[0]
    assert float(top.max()) <= 1.0
    assert float(top.min()) >= 0.0


def test_denormalize_leaves_an_unnormalized_store_alone(tmp_path):
    path, _, stored, _ = _make(tmp_path, dtype="float32", normalize=False)
    ds = ShardDataset(path, denormalize=True)
    assert not ds.normalized
    np.testing.assert_array_equal(ds[2][0].numpy(), stored[2])


def test_partial_store_is_refused_unless_allowed(tmp_path):
    path, _, stored, labels = _make(tmp_path, shards=[0, 2, 5])
    with pytest.raises(StoreError, match=r"3 of 6 shards are not written \(1, 3-4\)"):
        ShardDataset(path)
    with pytest.raises(StoreError, match="allow_partial=True"):
        list(iter_shards(path))
    ds = ShardDataset(path, allow_partial=True)
    rows = [*range(0, 5), *range(10, 15), *range(25, 27)]
    assert len(ds) == len(rows)
    np.testing.assert_array_equal(ds.rows(range(len(ds))), rows)
    for i, row in enumerate(rows):
        image, label = ds[i]
        np.testing.assert_array_equal(image.numpy(), stored[row].astype(np.float32))
        assert label == labels[row]
    blocks = list(iter_shards(path, allow_partial=True))
    assert [len(y) for _, y in blocks] == [5, 5, 2]


def test_bad_arguments(tmp_path):
    path, _, _, _ = _make(tmp_path)
    with pytest.raises(InvalidArgumentError, match="dtype must be a floating torch dtype"):
        ShardDataset(path, dtype=torch.int32)
    with pytest.raises(StoreError, match="no such store"):
        ShardDataset(tmp_path / "missing.zarr")


# -- whole-shard reads, the cache, random access ------------------------------------------


def _count_reads(monkeypatch) -> list[int]:
    """Record each whole-shard read (ShardSource._read) of this process."""
    from pipeline.shard_source import ShardSource

    calls: list[int] = []
    real = ShardSource._read

    def counted(self, index):
        calls.append(index)
        return real(self, index)

    monkeypatch.setattr(ShardSource, "_read", counted)
    return calls


def test_random_access_in_any_order_reads_each_shard_once(tmp_path, monkeypatch):
    made = make_store(tmp_path, n=23, shard=6)
    reads = _count_reads(monkeypatch)
    ds = ShardDataset(made.path, cache_shards=4)
    order = np.random.default_rng(5).permutation(len(ds))
    for i in order:
        image, label = ds[int(i)]
        np.testing.assert_array_equal(image.numpy(), made.stored[i].astype(np.float32))
        assert label == made.labels[i]
    assert sorted(reads) == [0, 1, 2, 3]  # the cache holds every shard: one read each


def test_shard_ordered_access_with_a_two_shard_cache_reads_each_shard_once(tmp_path, monkeypatch):
    made = make_store(tmp_path, n=23, shard=6)
    reads = _count_reads(monkeypatch)
    ds = ShardDataset(made.path)  # cache_shards=2
    for shard in (2, 0, 3, 1):
        rows = np.random.default_rng(shard).permutation(made.layout.shard_rows(shard))
        for start in range(0, len(rows), 4):  # batches straddle nothing: one shard each
            batch = ds.__getitems__(rows[start : start + 4].tolist())
            for i, (image, _) in zip(rows[start : start + 4], batch, strict=True):
                np.testing.assert_array_equal(image.numpy(), made.stored[i].astype(np.float32))
    assert reads == [2, 0, 3, 1]


def test_scattered_rows_of_a_verified_shard_are_read_row_by_row(tmp_path, monkeypatch):
    made = make_store(tmp_path, n=40, shard=10)
    reads = _count_reads(monkeypatch)
    ds = ShardDataset(made.path, cache_shards=0)
    for i in (0, 10, 20, 30):  # first touch: whole shard, verified
        ds[i]
    assert reads == [0, 1, 2, 3]
    rows_read: list[int] = []
    real = ds._source.read_rows
    ds._source.read_rows = lambda index, rows: rows_read.extend(rows) or real(index, rows)
    picks = [3, 17, 25, 38, 1, 12, 16, 14]  # random rows, twice the same shard in a row too
    for i in picks:
        np.testing.assert_array_equal(ds[i][0].numpy(), made.stored[i].astype(np.float32))
    assert reads == [0, 1, 2, 3]  # no whole-shard read again
    assert rows_read == picks
    # the row after the last one read: sequential access, the shard is read whole
    ds[4]
    ds[5]
    assert reads == [0, 1, 2, 3, 0]
    assert rows_read == [*picks, 4]


def test_retired_rows_are_skipped_everywhere(tmp_path):
    retired = [0, 6, 7, *range(10, 15), 16]  # shard 2 entirely
    made = make_store(tmp_path, n=17, shard=5, retired=retired)
    live = [r for r in range(17) if r not in retired]
    ds = ShardDataset(made.path)
    assert len(ds) == len(live)
    np.testing.assert_array_equal(ds.rows(range(len(ds))), live)
    got = torch.stack([ds[i][0] for i in range(len(ds))]).numpy()
    np.testing.assert_array_equal(got, made.stored[live].astype(np.float32))
    blocks = list(iter_shards(made.path))
    assert [len(y) for _, y in blocks] == [4, 3, 1]  # shard 2 has no live row
    images = torch.cat([x for x, _ in blocks]).numpy()
    np.testing.assert_array_equal(images, made.stored[live].astype(np.float32))
    np.testing.assert_array_equal(torch.cat([y for _, y in blocks]).numpy(), made.labels[live])
    assert [len(g) for g in ds.shard_groups()] == [4, 3, 0, 1]


# -- iter_shards: prefetch --------------------------------------------------------------


@pytest.mark.parametrize("prefetch", [0, 1, 3])
def test_iter_shards_prefetch_gives_the_same_shards(tmp_path, prefetch):
    made = make_store(tmp_path, n=31, shard=4)
    blocks = list(iter_shards(made.path, prefetch=prefetch, normalize=False))
    ref = list(iter_shards(made.path, prefetch=0, normalize=False))
    assert len(blocks) == len(ref) == 8
    for (x, y), (rx, ry) in zip(blocks, ref, strict=True):
        assert torch.equal(x, rx)
        assert torch.equal(y, ry)
    mean = np.array(MEAN).reshape(1, 3, 1, 1)
    std = np.array(STD).reshape(1, 3, 1, 1)
    ref64 = made.stored.astype(np.float64) * std + mean
    got = torch.cat([x for x, _ in blocks]).double().numpy()
    np.testing.assert_allclose(got, ref64, rtol=0, atol=1e-6)


def test_iter_shards_yields_in_row_order_when_a_later_shard_is_read_first(tmp_path, monkeypatch):
    import time

    from pipeline.shard_source import ShardSource

    made = make_store(tmp_path, n=31, shard=4)
    ref = list(iter_shards(made.path, prefetch=0, normalize=False))
    finished: list[int] = []
    real = ShardSource.read

    def uneven_read(self, index):
        time.sleep(0.15 if index % 2 == 0 else 0.0)  # an even shard takes longer
        shard = real(self, index)
        finished.append(index)
        return shard

    monkeypatch.setattr(ShardSource, "read", uneven_read)
    blocks = list(iter_shards(made.path, prefetch=2, normalize=False))
    if (os.cpu_count() or 1) >= 2:  # two reader threads: the reads did overtake each other
        assert finished != sorted(finished)
    assert len(blocks) == len(ref)
    for (x, y), (rx, ry) in zip(blocks, ref, strict=True):
        assert torch.equal(x, rx)
        assert torch.equal(y, ry)


def test_iter_shards_keeps_at_most_prefetch_shards_in_flight(tmp_path, monkeypatch):
    import threading
    import time

    from pipeline.shard_source import ShardSource

    made = make_store(tmp_path, n=40, shard=4)
    started: list[int] = []
    real = ShardSource.read

    def slow_read(self, index):
        started.append(index)
        return real(self, index)

    monkeypatch.setattr(ShardSource, "read", slow_read)
    before = threading.active_count()
    it = iter_shards(made.path, prefetch=2)
    first = next(it)
    time.sleep(0.3)  # the background thread fills the queue meanwhile
    # the caller holds shard 0; shards 1 and 2 are read ahead (by two threads), not more
    assert sorted(started) == [0, 1, 2]
    assert first[0].shape[0] == 4
    it.close()  # stopping early ends the reader thread
    time.sleep(0.1)
    assert threading.active_count() == before


def test_iter_shards_checks_its_arguments_when_called(tmp_path):
    made = make_store(tmp_path)
    with pytest.raises(InvalidArgumentError, match="prefetch must be an integer >= 0, got -1"):
        iter_shards(made.path, prefetch=-1)
    with pytest.raises(InvalidArgumentError, match="epoch must be an integer >= 0"):
        iter_shards(made.path, epoch=-2)
    with pytest.raises(InvalidArgumentError, match="both scales"):
        iter_shards(made.path, denormalize=True, normalize=True)


# -- output scale: normalize at read time -----------------------------------------------


def _normalized_reference(pixels01: np.ndarray) -> np.ndarray:
    mean = np.array(MEAN).reshape(-1, 3, 1, 1)
    std = np.array(STD).reshape(-1, 3, 1, 1)
    return (pixels01 - mean) / std


def test_uint8_store_normalized_at_read_time(tmp_path):
    made = make_store(tmp_path, dtype="uint8")
    ref = _normalized_reference(made.stored.astype(np.float64) / 255.0)
    ds = ShardDataset(made.path, normalize=True)
    assert not ds.normalized  # the store holds pixels
    got = torch.stack([ds[i][0] for i in range(len(ds))]).double().numpy()
    # float32 arithmetic on values |x| < 2.7: a few float32 ulps
    np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6)
    blocks = torch.cat([x for x, _ in iter_shards(made.path, normalize=True)])
    np.testing.assert_array_equal(blocks.numpy(), got.astype(np.float32))
    loader = ShardLoader(ds, 4, shuffle=False)
    np.testing.assert_array_equal(torch.cat([x for x, _ in loader]).numpy(), got)
    # float64 output: the same formula in float64
    exact = ShardDataset(made.path, normalize=True, dtype=torch.float64)[3][0].numpy()
    np.testing.assert_allclose(exact, ref[3], rtol=0, atol=1e-14)


def test_normalize_and_denormalize_on_float_stores(tmp_path):
    plain = make_store(tmp_path, dtype="float32", normalize=False)
    got = ShardDataset(plain.path, normalize=True)[4][0].double().numpy()
    np.testing.assert_allclose(got, _normalized_reference(plain.stored[4:5])[0], atol=2e-6)
    normed = make_store(tmp_path, dtype="float16", normalize=True)
    a = ShardDataset(normed.path, normalize=False)[2][0]
    b = ShardDataset(normed.path, denormalize=True)[2][0]
    assert torch.equal(a, b)
    same = ShardDataset(normed.path, normalize=True)[2][0]  # already normalized: as stored
    np.testing.assert_array_equal(same.numpy(), normed.stored[2].astype(np.float32))
    with pytest.raises(InvalidArgumentError, match="both scales"):
        ShardDataset(normed.path, denormalize=True, normalize=True)


def test_a_store_without_stats_cannot_be_normalized(tmp_path):
    made = make_store(tmp_path, dtype="uint8")
    import zarr

    group = zarr.open_group(made.path, mode="r+")
    meta = dict(group.attrs["imageprep"])
    meta["stats"] = {}
    group.attrs["imageprep"] = meta
    ShardDataset(made.path)  # pixels need no stats
    with pytest.raises(StoreError, match="stats have no mean/std"):
        ShardDataset(made.path, normalize=True)


def test_bad_device_is_refused(tmp_path):
    made = make_store(tmp_path)
    with pytest.raises(InvalidArgumentError, match="'cuda:99' asked for"):
        ShardDataset(made.path, device="cuda:99")
    with pytest.raises(InvalidArgumentError, match="device must be"):
        ShardDataset(made.path, device="tpu")
    with pytest.raises(InvalidArgumentError, match="cache_shards must be an integer >= 0"):
        ShardDataset(made.path, cache_shards=-1)
    with pytest.raises(InvalidArgumentError, match="verify must be True or False"):
        ShardDataset(made.path, verify="yes")


# -- ShardLoader -------------------------------------------------------------------------


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_serves_every_sample_once_per_epoch(tmp_path, workers):
    made = make_store(tmp_path, n=29, shard=6)
    ds = ShardDataset(made.path)
    loader = ShardLoader(ds, 4, num_workers=workers, seed=3)
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        batches = loader.sampler.batches()
        got = list(loader)
        assert len(got) == len(loader) == len(batches) == 8
        for (images, labels), idx in zip(got, batches, strict=True):
            np.testing.assert_array_equal(images.numpy(), made.stored[idx].astype(np.float32))
            np.testing.assert_array_equal(labels.numpy(), made.labels[idx])
        assert sorted(np.concatenate(batches).tolist()) == list(range(29))


def test_loader_refuses_what_it_sets(tmp_path):
    made = make_store(tmp_path)
    ds = ShardDataset(made.path)
    with pytest.raises(InvalidArgumentError, match="collate_fn is set by ShardLoader"):
        ShardLoader(ds, 4, collate_fn=None)
    with pytest.raises(InvalidArgumentError, match="dataset must be a ShardDataset"):
        ShardLoader([1, 2], 4)


# -- CUDA == CPU -------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["uint8", "float16"])
def test_cuda_reads_equal_cpu_reads(tmp_path, dtype):
    from tests.ops.checker import tol

    made = make_store(tmp_path, dtype=dtype, n=19, shard=4)
    for kwargs in ({}, {"normalize": True}, {"normalize": False}):
        cpu = ShardDataset(made.path, **kwargs)
        gpu = ShardDataset(made.path, device="cuda", **kwargs)
        x = gpu[5][0]
        assert x.device.type == "cuda"
        torch.testing.assert_close(x.cpu(), cpu[5][0], **tol(torch.float32))
        blocks = [x for x, _ in iter_shards(made.path, device="cuda", **kwargs)]
        assert all(b.device.type == "cuda" for b in blocks)
        ref = torch.cat([x for x, _ in iter_shards(made.path, **kwargs)])
        torch.testing.assert_close(torch.cat(blocks).cpu(), ref, **tol(torch.float32))
        for workers in (0, 2):
            out = list(ShardLoader(gpu, 5, shuffle=False, num_workers=workers))
            assert all(x.device.type == "cuda" and y.device.type == "cuda" for x, y in out)
            torch.testing.assert_close(
                torch.cat([x for x, _ in out]).cpu(), ref, **tol(torch.float32)
            )


@pytest.mark.gpu
def test_cuda_dataset_in_a_worker_points_to_the_loader(tmp_path):
    made = make_store(tmp_path)
    ds = ShardDataset(made.path, device="cuda")
    it = iter(DataLoader(ds, batch_size=4, num_workers=1))
    try:
        with pytest.raises(InvalidArgumentError, match="use ShardLoader"):
            next(it)
    finally:  # the traceback pytest keeps holds the iterator: stop its worker now
        it._shutdown_workers()


# -- buffers -----------------------------------------------------------------------------


def test_read_stored_fills_a_given_buffer(tmp_path):
    made = make_store(tmp_path, dtype="uint8")
    ds = ShardDataset(made.path)
    out = np.zeros((4, 3, 8, 6), np.uint8)
    images, labels, rows = ds.read_stored([7, 2, 9, 3], out=out)
    assert images is out
    np.testing.assert_array_equal(out, made.stored[[7, 2, 9, 3]])
    np.testing.assert_array_equal(labels, made.labels[[7, 2, 9, 3]])
    np.testing.assert_array_equal(rows, [7, 2, 9, 3])
    with pytest.raises(InvalidArgumentError, match=r"out must be a C-contiguous \(2, 3, 8, 6\)"):
        ds.read_stored([0, 1], out=np.zeros((2, 3, 8, 6), np.float32))


def test_transform_writes_into_a_given_tensor(tmp_path):
    made = make_store(tmp_path, dtype="uint8")
    for kwargs in ({}, {"normalize": True}, {"augment": [{"op": "invert", "p": 0.5}]}):
        ds = ShardDataset(made.path, **kwargs)
        stored = torch.from_numpy(made.stored[:5])
        ref = ds.transform(stored, rows=range(5), epoch=1)
        out = torch.empty(5, 3, 8, 6)
        assert ds.transform(stored, rows=range(5), epoch=1, out=out) is out
        assert torch.equal(out, ref)
    with pytest.raises(InvalidArgumentError, match="out must be a"):
        ds.transform(stored, rows=range(5), epoch=1, out=torch.empty(5, 3, 8, 6).double())


class _SharedProbe(torch.utils.data.Dataset):
    def __len__(self):
        return 2

    def __getitem__(self, i):
        from pipeline.reader import _empty

        t = _empty((2, 3), torch.float16)
        return torch.tensor([t.is_shared(), t.shape == (2, 3), t.dtype == torch.float16])


def test_worker_batches_are_made_in_shared_memory():
    from pipeline.reader import _empty

    assert not _empty((2, 3), torch.float32).is_shared()  # the main process: plain memory
    got = next(iter(DataLoader(_SharedProbe(), batch_size=2, num_workers=1)))
    assert got.all()
