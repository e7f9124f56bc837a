"""Read-time augmentation and normalization: the run's kernels, per (seed, epoch, row)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

import ops
from pipeline.config import STEPS, validate_config
from pipeline.errors import InvalidArgumentError
from pipeline.execution import torch_threads
from pipeline.read_transform import ReadTransform, parse_augment, read_generators, read_seed
from pipeline.reader import ShardDataset, ShardLoader, iter_shards
from pipeline.run import prepare
from pipeline.sampler import ShardBatchSampler
from pipeline.synthetic import make_dataset
from pipeline.transforms import sample_seed
from tests.pipeline.readstores import MEAN, STD, make_store

AUGMENT = [
    {"op": "invert", "p": 0.5},
    {"op": "dog_noise", "band": [0.05, 0.25], "rms": [0.02, 0.08], "p": 0.8},
    {"op": "shadows_highlights", "shadows": [0.0, 0.4], "highlights": [-0.3, 0.0], "p": 0.5},
    {"op": "gaussian_blur", "sigma": [0.1, 1.2], "p": 0.5},
]


@pytest.fixture(scope="module", params=["uint8", "float16"])
def store(request, tmp_path_factory):
    return make_store(
        tmp_path_factory.mktemp("aug"), dtype=request.param, n=23, shard=5, size=(16, 12)
    )


def _reference(made, rows, epoch, *, seed, normalize) -> np.ndarray:
    """Each sample alone: [0, 1] pixels in float32, the ops classes one by one, normalize.

    With one torch thread, the reader's (and the run's) convention on the CPU.
    """
    augs = [STEPS[step["op"]].model_validate(step).build((16, 12)) for step in AUGMENT]
    out = []
    with torch_threads(1):
        for row in rows:
            out.append(_reference_one(made, augs, row, epoch, seed=seed, normalize=normalize))
    return np.stack(out)


def _reference_one(made, augs, row, epoch, *, seed, normalize) -> np.ndarray:
    if made.stored.dtype == np.uint8:
        x = torch.from_numpy(made.stored[row : row + 1]).float() / 255.0
    else:
        x = ops.denormalize(torch.from_numpy(made.stored[row : row + 1]).float(), MEAN, STD)
    g = [torch.Generator().manual_seed(sample_seed(seed, int(row), epoch))]
    for aug in augs:
        x = aug(x, generators=g)
    if normalize:
        x = ops.normalize(x, MEAN, STD)
    return x[0].numpy()


def test_samples_equal_the_ops_applied_one_by_one(store):
    ds = ShardDataset(store.path, augment=AUGMENT, seed=11, normalize=True)
    for epoch in (0, 3):
        ds.set_epoch(epoch)
        got = torch.stack([ds[i][0] for i in range(len(ds))]).numpy()
        ref = _reference(store, range(len(ds)), epoch, seed=11, normalize=True)
        # normalize_ (the run's in-place kernel) and normalize (fused) differ by float32 ulps
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-6)
    pixels = ShardDataset(store.path, augment=AUGMENT, seed=11, normalize=False)
    ref = _reference(store, [4, 17], 0, seed=11, normalize=False)
    np.testing.assert_array_equal(torch.stack([pixels[4][0], pixels[17][0]]).numpy(), ref)


def test_epochs_draw_fresh_augmentations(store):
    ds = ShardDataset(store.path, augment=AUGMENT, seed=0)
    first = ds[7][0]
    assert torch.equal(ds[7][0], first)  # same epoch, same values
    ds.set_epoch(1)
    assert not torch.equal(ds[7][0], first)
    ds.set_epoch(0)
    assert torch.equal(ds[7][0], first)
    assert not torch.equal(ShardDataset(store.path, augment=AUGMENT, seed=1)[7][0], first)


def _by_index(batches, outputs) -> torch.Tensor:
    index = np.concatenate([np.asarray(b) for b in batches])
    images = torch.cat(outputs)
    out = torch.empty_like(images)
    out[torch.from_numpy(index)] = images
    return out


@pytest.mark.parametrize("epoch", [0, 2])
def test_any_worker_count_and_batch_size_gives_the_same_bytes(store, epoch):
    results = []
    for workers in (0, 2):
        for batch_size in (3, 7):
            ds = ShardDataset(store.path, augment=AUGMENT, seed=5, normalize=True)
            loader = ShardLoader(ds, batch_size, num_workers=workers, seed=batch_size)
            loader.set_epoch(epoch)
            batches = loader.sampler.batches()
            results.append(_by_index(batches, [x for x, _ in loader]))
            # the plain DataLoader with the sampler: __getitems__ in the workers
            sampler = ShardBatchSampler(ds, batch_size, num_workers=workers, seed=workers)
            sampler.set_epoch(epoch)
            plain = DataLoader(ds, batch_sampler=sampler, num_workers=workers)
            results.append(_by_index(sampler.batches(), [x for x, _ in plain]))
    ds = ShardDataset(store.path, augment=AUGMENT, seed=5, normalize=True)
    ds.set_epoch(epoch)
    results.append(torch.stack([ds[i][0] for i in range(len(ds))]))
    results.append(
        torch.cat(
            [
                x
                for x, _ in iter_shards(
                    store.path, augment=AUGMENT, seed=5, epoch=epoch, normalize=True
                )
            ]
        )
    )
    for r in results[1:]:
        assert torch.equal(r, results[0])


def test_persistent_workers_follow_set_epoch(store):
    ds = ShardDataset(store.path, augment=AUGMENT, seed=2)
    loader = ShardLoader(ds, 4, num_workers=2, persistent_workers=True, seed=0)
    per_epoch = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        per_epoch.append(_by_index(loader.sampler.batches(), [x for x, _ in loader]))
    fresh = ShardDataset(store.path, augment=AUGMENT, seed=2)
    fresh.set_epoch(1)
    assert torch.equal(per_epoch[1], torch.stack([fresh[i][0] for i in range(len(fresh))]))
    assert not torch.equal(per_epoch[0], per_epoch[1])


def test_read_seed_is_the_run_seed_with_row_and_epoch():
    assert read_seed(3, 2, 40) == sample_seed(3, 40, 2)
    gens = read_generators(3, 2, [40, 41])
    assert torch.equal(
        torch.rand(4, generator=gens[0]),
        torch.rand(4, generator=torch.Generator().manual_seed(sample_seed(3, 40, 2))),
    )


# -- the write-time path: the same kernels, the same draws ------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One source, three stores: uint8 clean, float16 clean, float16 with 2 augmented copies."""
    root = tmp_path_factory.mktemp("runs")
    src = make_dataset(root / "src", n_per_class=4, sizes=(20, 40), seed=9).root
    stores = {}
    for name, output, transform in (
        ("uint8", {"dtype": "uint8"}, {"normalize": False}),
        ("float16", {}, {}),
        ("copies", {}, {"copies": 2, "augment": AUGMENT}),
    ):
        cfg = validate_config(
            {
                "source": {"path": str(src)},
                "transform": {"size": [16, 12], **transform},
                "output": {"path": str(root / f"{name}.zarr"), "shard_size": 5, **output},
                "runtime": {"workers": 1, "batch_size": 3, "device": "cpu", "seed": 4},
            }
        )
        prepare(cfg)
        stores[name] = root / f"{name}.zarr"
    return stores


def test_uint8_store_normalized_at_read_time_is_the_float16_store(runs):
    """The run's normalization, at read time: equal after the cast to float16."""
    read = torch.cat([x for x, _ in iter_shards(runs["uint8"], normalize=True)])
    stored = torch.cat([x for x, _ in iter_shards(runs["float16"], dtype=torch.float16)])
    assert torch.equal(read.to(torch.float16), stored)
    ds = ShardDataset(runs["uint8"], normalize=True, dtype=torch.float16)
    assert torch.equal(torch.stack([ds[i][0] for i in range(len(ds))]), stored)


def test_epoch_k_on_the_fly_is_copy_k_written_by_the_run(runs):
    """On a clean uint8 store (row r = source r), epoch k draws what copy k drew at write time."""
    written = torch.cat([x for x, _ in iter_shards(runs["copies"], dtype=torch.float16)])
    for k in (0, 1):
        on_the_fly = torch.cat(
            [
                x
                for x, _ in iter_shards(
                    runs["uint8"], augment=AUGMENT, seed=4, epoch=k, normalize=True
                )
            ]
        )
        assert torch.equal(on_the_fly.to(torch.float16), written[k::2])


# -- arguments ---------------------------------------------------------------------------


def test_random_resized_crop_is_refused_with_the_step_named(store):
    steps = [{"op": "invert"}, {"op": "random_resized_crop", "scale": [0.5, 1.0]}]
    with pytest.raises(
        InvalidArgumentError,
        match=r"augment\[1\]: random_resized_crop is not available at read time: it cuts the "
        r"crop out of the full source image.*16x12",
    ):
        ShardDataset(store.path, augment=steps)


def test_invalid_steps_are_named_as_the_config_names_them():
    with pytest.raises(InvalidArgumentError, match=r"augment\[0\]\.band: f_low must be < f_high"):
        parse_augment([{"op": "dog_noise", "band": [0.3, 0.2], "rms": 0.1}], (8, 8))
    with pytest.raises(InvalidArgumentError, match=r"augment\[1\]\.op: unknown op \"blurr\""):
        parse_augment([{"op": "invert"}, {"op": "blurr"}], (8, 8))
    with pytest.raises(InvalidArgumentError, match=r"augment\[0\]\.sigmaa: unknown key"):
        parse_augment([{"op": "gaussian_blur", "sigma": 1.0, "sigmaa": 2}], (8, 8))
    with pytest.raises(InvalidArgumentError, match="augment must be a sequence of steps"):
        parse_augment({"op": "invert"}, (8, 8))
    built = parse_augment([STEPS["invert"](op="invert", p=0.25)], (8, 8))  # models work too
    assert isinstance(built[0], ops.RandomInvert)
    assert built[0].p == 0.25


def test_transform_arguments():
    meta = {"stats": {"mean": [0.5], "std": [0.5]}}
    with pytest.raises(InvalidArgumentError, match="seed must be an integer >= 0, got -1"):
        ReadTransform(meta, "uint8", 1, seed=-1)
    with pytest.raises(InvalidArgumentError, match="normalize must be None, True or False"):
        ReadTransform(meta, "uint8", 1, normalize="yes")
    with pytest.raises(InvalidArgumentError, match="dtype must be a floating torch dtype"):
        ReadTransform(meta, "uint8", 1, dtype=torch.uint8)


# -- CUDA == CPU -------------------------------------------------------------------------


@pytest.mark.gpu
def test_cuda_augmentation_equals_cpu(store):
    from tests.ops.checker import tol

    cpu = ShardDataset(store.path, augment=AUGMENT, seed=3, normalize=True)
    gpu = ShardDataset(store.path, augment=AUGMENT, seed=3, normalize=True, device="cuda")
    ref = torch.stack([cpu[i][0] for i in range(len(cpu))])
    for workers in (0, 2):
        loader = ShardLoader(gpu, 4, num_workers=workers)
        out = [x for x, _ in loader]
        assert all(x.device.type == "cuda" for x in out)
        got = _by_index(loader.sampler.batches(), [x.cpu() for x in out])
        torch.testing.assert_close(got, ref, **tol(torch.float32))
    blocks = torch.cat(
        [
            x.cpu()
            for x, _ in iter_shards(
                store.path, augment=AUGMENT, seed=3, normalize=True, device="cuda"
            )
        ]
    )
    torch.testing.assert_close(blocks, ref, **tol(torch.float32))
