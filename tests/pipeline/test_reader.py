from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.errors import InvalidArgumentError, StoreError
from pipeline.reader import ShardDataset, iter_shards
from pipeline.store import StoreLayout, create_store, write_shard

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


def test_dataset_pickles_without_its_handle(tmp_path):
    path, _, stored, _ = _make(tmp_path)
    ds = ShardDataset(path)
    ds[0]
    assert ds._images is not None
    copy = pickle.loads(pickle.dumps(ds))
    assert copy._images is None
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
