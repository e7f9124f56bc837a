"""ShardBatchSampler: every index once per epoch, shard locality, worker runs, epochs."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
from torch.utils.data import DataLoader

from pipeline.errors import InvalidArgumentError
from pipeline.reader import ShardDataset, ShardLoader
from pipeline.sampler import EpochBatch, ShardBatchSampler
from tests.pipeline.readstores import make_store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    # 53 rows in shards of 8 (the last one 5), rows 9 and 20-23 retired
    return make_store(
        tmp_path_factory.mktemp("sampler"), n=53, shard=8, retired=[9, 20, 21, 22, 23]
    )


def _shards(ds: ShardDataset, indices) -> np.ndarray:
    return ds.rows(indices) // ds.layout.shard_size


@pytest.mark.parametrize("batch_size", [1, 4, 7, 64])
@pytest.mark.parametrize("drop_last", [False, True])
def test_every_index_once_per_epoch(store, batch_size, drop_last):
    ds = ShardDataset(store.path)
    sampler = ShardBatchSampler(ds, batch_size, seed=1, drop_last=drop_last)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        assert all(isinstance(b, EpochBatch) and b.epoch == epoch for b in batches)
        flat = [i for b in batches for i in b]
        assert len(flat) == len(set(flat))
        if drop_last:
            assert all(len(b) == batch_size for b in batches)
            assert len(flat) == len(ds) // batch_size * batch_size
        else:
            assert sorted(flat) == list(range(len(ds)))
            assert all(len(b) == batch_size for b in batches[:-1])


def test_order_depends_on_seed_and_epoch_only(store):
    ds = ShardDataset(store.path)
    a = ShardBatchSampler(ds, 5, seed=7)
    b = ShardBatchSampler(ds, 5, seed=7)
    assert np.array_equal(a.order(), b.order())
    a.set_epoch(1)
    assert not np.array_equal(a.order(), b.order())
    b.set_epoch(1)
    assert np.array_equal(a.order(), b.order())
    assert not np.array_equal(a.order(), ShardBatchSampler(ds, 5, seed=8, mix=1).order())


def test_no_shuffle_is_row_order(store):
    ds = ShardDataset(store.path)
    sampler = ShardBatchSampler(ds, 6, shuffle=False)
    sampler.set_epoch(4)
    assert [i for b in sampler for i in b] == list(range(len(ds)))


def test_each_shard_is_one_run_of_the_order(store):
    ds = ShardDataset(store.path)
    sampler = ShardBatchSampler(ds, 4, seed=3)
    for epoch in range(4):
        sampler.set_epoch(epoch)
        shards = _shards(ds, sampler.order())
        runs = [s for k, s in enumerate(shards) if k == 0 or s != shards[k - 1]]
        assert len(runs) == len(set(runs)) == 7  # 7 shards with live rows, one run each
    # rows within a shard are shuffled too
    first = sampler.order()[: len(ds.shard_groups()[int(runs[0])])]
    assert not np.array_equal(first, np.sort(first))


def test_mix_shuffles_pools_of_shards_together(store):
    ds = ShardDataset(store.path, cache_shards=4)
    sampler = ShardBatchSampler(ds, 4, seed=3, mix=2)
    shards = _shards(ds, sampler.order())
    # the order is a run of pools; each pool holds two shards, interleaved
    pools, start = [], 0
    sizes = {s: len(g) for s, g in enumerate(ds.shard_groups()) if len(g)}
    while start < len(shards):
        pair = set(shards[start : start + 1].tolist())
        end = start
        while end < len(shards) and (len(pair) < 2 or shards[end] in pair):
            pair.add(int(shards[end]))
            end += 1
        pools.append(pair)
        assert end - start == sum(sizes[s] for s in pair)
        start = end
    assert sorted(s for p in pools for s in p) == sorted(sizes)
    with pytest.raises(InvalidArgumentError, match=r"mix=3 needs a dataset that caches >= 6"):
        ShardBatchSampler(ds, 4, mix=3)


@pytest.mark.parametrize("workers", [2, 3])
def test_each_worker_gets_one_contiguous_run_of_batches(store, workers):
    ds = ShardDataset(store.path)
    sampler = ShardBatchSampler(ds, 3, seed=2, num_workers=workers)
    plain = ShardBatchSampler(ds, 3, seed=2)
    batches = [list(b) for b in sampler]
    reference = [list(b) for b in plain]
    assert sorted(map(tuple, batches)) == sorted(map(tuple, reference))
    # the DataLoader hands batch j to worker j mod W: each worker's batches, in the
    # order it receives them, are one contiguous run of the un-interleaved batches
    start = 0
    for w in range(workers):
        mine = batches[w::workers]
        assert mine == reference[start : start + len(mine)]
        start += len(mine)
    assert start == len(reference)


def test_epoch_batch_pickles_with_its_epoch():
    b = pickle.loads(pickle.dumps(EpochBatch([3, 1, 2], epoch=5)))
    assert isinstance(b, EpochBatch)
    assert b == [3, 1, 2]
    assert b.epoch == 5


def test_workers_read_each_shard_about_once(store, tmp_path, monkeypatch):
    """With the worker runs, the workers together read a shard whole at most once, plus
    one shared shard at each boundary between two workers' runs."""
    from pipeline.shard_source import ShardSource

    log = tmp_path / "reads"
    log.mkdir()
    real = ShardSource._read

    def logged(self, index):  # runs in the (forked) worker processes
        (log / f"{os.getpid()}-{index}").touch()
        return real(self, index)

    monkeypatch.setattr(ShardSource, "_read", logged)
    ds = ShardDataset(store.path)
    workers = 2
    loader = ShardLoader(ds, 4, num_workers=workers, seed=1, multiprocessing_context="fork")
    for epoch in range(2):
        loader.set_epoch(epoch)
        for f in log.iterdir():
            f.unlink()
        n = sum(len(y) for _, y in loader)
        assert n == len(ds)
        reads = [f.name.split("-") for f in log.iterdir()]
        shards = [int(s) for _, s in reads]
        assert len(set(shards)) == 7
        assert len(shards) <= 7 + workers - 1
        assert len({pid for pid, _ in reads}) == workers


def test_plain_dataloader_with_the_sampler(store):
    ds = ShardDataset(store.path)
    sampler = ShardBatchSampler(ds, 5, seed=4, num_workers=2)
    sampler.set_epoch(2)
    loader = DataLoader(ds, batch_sampler=sampler, num_workers=2)
    got = [(x, y) for x, y in loader]
    for (images, labels), idx in zip(got, sampler.batches(), strict=True):
        rows = ds.rows(idx)
        np.testing.assert_array_equal(images.numpy(), store.stored[rows].astype(np.float32))
        np.testing.assert_array_equal(labels.numpy(), store.labels[rows])


def test_bad_arguments(store):
    ds = ShardDataset(store.path)
    with pytest.raises(InvalidArgumentError, match="batch_size must be an integer >= 1, got 0"):
        ShardBatchSampler(ds, 0)
    with pytest.raises(InvalidArgumentError, match="num_workers must be an integer >= 0"):
        ShardBatchSampler(ds, 2, num_workers=-1)
    with pytest.raises(InvalidArgumentError, match="shuffle and drop_last must be bools"):
        ShardBatchSampler(ds, 2, shuffle=1)
    sampler = ShardBatchSampler(ds, 2)
    with pytest.raises(InvalidArgumentError, match="epoch must be an integer >= 0, got -1"):
        sampler.set_epoch(-1)
