"""The stored augmented samples are the documented pipeline, step by step, not only deterministic.

Each sample ``(source i, copy k)`` is recomputed here from its source file with
the documented per-sample draws (one generator seeded from ``(seed, i, k)``;
the crop box first, then for each step in the listed order: the coin, then the
step's parameters, then for the noise the seed of its own generator) and the
public :mod:`ops` *functions* (not the augmentation classes the pipeline
uses): a pipeline that dropped a step, ignored ``p``, swapped parameters or
ran the steps out of order would not match. Also: ``labels: none`` and images
at the root of the source, through the run, the reader and ``info``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import zarr
from PIL import Image

import ops
from pipeline.config import validate_config
from pipeline.reader import ShardDataset, iter_shards
from pipeline.report import store_info
from pipeline.run import prepare
from pipeline.transforms import sample_generator

SIZE = (20, 24)
STEPS = [
    {"op": "random_resized_crop", "scale": [0.3, 0.9], "ratio": [0.7, 1.4]},
    {"op": "invert", "p": 0.5},
    {"op": "dog_noise", "band": [0.05, 0.25], "rms": [0.02, 0.08], "p": 0.7},
    {
        "op": "shadows_highlights",
        "method": "source",
        "gamma_shadows": [0.6, 1.0],
        "gamma_highlights": [1.0, 1.4],
        "p": 0.6,
    },
    {"op": "gaussian_blur", "sigma": [0.2, 1.2], "p": 0.5},
]


def _u(g: torch.Generator) -> float:
    return float(torch.rand((), generator=g, dtype=torch.float64))


def _between(g: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * _u(g)


ORDER = ("invert", "dog_noise", "shadows_highlights", "gaussian_blur")


def _reference(
    path: Path, i: int, k: int, seed: int, mean, std, *, order=ORDER, skip: str = ""
) -> np.ndarray:
    """The documented per-sample computation with the ops functions, in float32.

    ``order`` and ``skip`` build the wrong pipelines the test must tell apart.
    """
    with Image.open(path) as im:
        pixels = torch.from_numpy(np.asarray(im.convert("RGB")).copy()).permute(2, 0, 1)
    g = sample_generator(seed, i, k)
    crop = ops.RandomResizedCrop(SIZE, scale=(0.3, 0.9), ratio=(0.7, 1.4))
    box = crop.sample_box(pixels.shape[1], pixels.shape[2], g)  # draws first
    x = ops.resized_crop(pixels, box, SIZE).to(torch.float32)[None] / 255.0
    for step in order:
        if step == "invert":  # the coin
            if _u(g) < 0.5 and skip != step:
                x = ops.invert(x)
        elif step == "dog_noise":  # coin, f_low, f_high, rms, then the noise generator's seed
            apply = _u(g) < 0.7
            band = (_between(g, 0.05, 0.05), _between(g, 0.25, 0.25))
            rms = _between(g, 0.02, 0.08)
            noise_seed = int(torch.randint(0, 2**63 - 1, (), generator=g, dtype=torch.int64))
            if apply and skip != step:
                noise_gen = torch.Generator().manual_seed(noise_seed)
                x = x + ops.dog_noise(x.shape[1:], band=band, rms=rms, generator=noise_gen)
        elif step == "shadows_highlights":  # the source's method: coin, two gammas
            apply = _u(g) < 0.6
            gs, gh = _between(g, 0.6, 1.0), _between(g, 1.0, 1.4)
            if apply and skip != step:
                x = ops.shadows_highlights(x, gamma_shadows=gs, gamma_highlights=gh)
        elif step == "gaussian_blur":  # coin, sigma
            apply = _u(g) < 0.5
            sigma = _between(g, 0.2, 1.2)
            if apply and skip != step:
                x = ops.gaussian_blur(x, sigma)
    return ops.normalize(x, mean, std)[0].numpy()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("aug") / "src"
    rng = np.random.default_rng(5)
    for i in range(7):
        p = root / ("a" if i % 2 else "b") / f"{i}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        h, w = 30 + 3 * i, 40 - 2 * i
        Image.fromarray(rng.integers(0, 256, (h, w, 3)).astype(np.uint8)).save(p)
    return root


def test_every_stored_sample_is_the_documented_pipeline(source, tmp_path):
    out = tmp_path / "aug.zarr"
    cfg = validate_config(
        {
            "source": {"path": str(source)},
            "transform": {"size": list(SIZE), "copies": 3, "augment": STEPS},
            "output": {"path": str(out), "shard_size": 5, "dtype": "float32"},
            "runtime": {"workers": 2, "batch_size": 4, "device": "cpu", "seed": 11},
        }
    )
    result = prepare(cfg)
    mean, std = result.stats["mean"], result.stats["std"]
    g = zarr.open_group(out, mode="r")
    paths = g["paths"][:]
    rows = range(g["images"].shape[0])
    assert len(rows) == 7 * 3
    keys = [(int(g["source_index"][r]), int(g["copy_index"][r])) for r in rows]
    stored = [np.asarray(g["images"][r]) for r in rows]

    def matches(**wrong) -> bool:
        # float32 store: the same float32 operations up to their order of evaluation
        return all(
            np.allclose(
                got,
                _reference(source / str(paths[i]), i, k, 11, mean, std, **wrong),
                rtol=0,
                atol=2e-5,
            )
            for got, (i, k) in zip(stored, keys, strict=True)
        )

    assert matches()
    # a pipeline that dropped any step, or ran two of them the other way round, would not
    for step in ORDER:
        assert not matches(skip=step), step
    assert not matches(order=("invert", "dog_noise", "gaussian_blur", "shadows_highlights"))


def test_float16_store_within_one_ulp_of_the_reference(source, tmp_path):
    out = tmp_path / "aug16.zarr"
    cfg = validate_config(
        {
            "source": {"path": str(source)},
            "transform": {"size": list(SIZE), "copies": 2, "augment": STEPS},
            "output": {"path": str(out), "shard_size": 4},
            "runtime": {"workers": 2, "batch_size": 3, "device": "cpu", "seed": 3},
        }
    )
    result = prepare(cfg)
    mean, std = result.stats["mean"], result.stats["std"]
    g = zarr.open_group(out, mode="r")
    paths = g["paths"][:]
    for row in range(g["images"].shape[0]):
        i, k = int(g["source_index"][row]), int(g["copy_index"][row])
        ref = _reference(source / str(paths[i]), i, k, 3, mean, std).astype(np.float16)
        got = np.asarray(g["images"][row])
        ulps = np.abs(got.astype(np.float32) - ref.astype(np.float32)) / np.spacing(
            np.maximum(np.abs(ref), np.abs(got)).astype(np.float16)
        ).astype(np.float32)
        assert ulps.max() <= 1.0, (row, float(ulps.max()))


def test_labels_none_and_images_at_the_root(tmp_path):
    root = tmp_path / "flat"
    rng = np.random.default_rng(1)
    for name in ["top.png", "cls/inner.png", "cls/deep/deeper.png"]:
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (12, 14, 3)).astype(np.uint8)).save(p)
    # labels: none -> every label -1, no classes
    out = tmp_path / "none.zarr"
    prepare(
        validate_config(
            {
                "source": {"path": str(root), "labels": "none"},
                "transform": {"size": [8, 8]},
                "output": {"path": str(out), "shard_size": 2},
                "runtime": {"workers": 1, "device": "cpu"},
            }
        )
    )
    ds = ShardDataset(out)
    assert len(ds) == 3
    assert ds.classes == []
    assert [label for _, label in ds] == [-1, -1, -1]
    assert torch.equal(torch.cat([lab for _, lab in iter_shards(out)]), torch.full((3,), -1))
    info = store_info(out)
    assert info["classes"] == []
    assert info["class_counts"] == {"(no class)": 3}
    # labels: folders -> a root-level image has no class (-1), the folder's images have one
    out = tmp_path / "folders.zarr"
    prepare(
        validate_config(
            {
                "source": {"path": str(root)},
                "transform": {"size": [8, 8]},
                "output": {"path": str(out), "shard_size": 2},
                "runtime": {"workers": 1, "device": "cpu"},
            }
        )
    )
    ds = ShardDataset(out)
    g = zarr.open_group(out, mode="r")
    by_path = {
        str(g["paths"][int(s)]): label
        for s, label in zip(g["source_index"][:], ds.labels, strict=True)
    }
    assert ds.classes == ["cls"]
    assert by_path == {"top.png": -1, "cls/inner.png": 0, "cls/deep/deeper.png": 0}
    assert store_info(out)["class_counts"] == {"cls": 2, "(no class)": 1}
