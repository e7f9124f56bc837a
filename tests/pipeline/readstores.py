"""Small stores of random samples for the read-side tests (reader, sampler, read transform)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.store import Compression, StoreLayout, create_store, write_live, write_shard

MEAN = [0.485, 0.456, 0.406]
STD = [0.229, 0.224, 0.225]


@dataclass
class Made:
    path: Path
    pixels: np.ndarray  # (N, C, H, W) float64 in [0, 1] (float stores)
    stored: np.ndarray  # what was written, in the store's dtype
    labels: np.ndarray
    layout: StoreLayout


def make_store(
    root: Path,
    *,
    dtype: str = "float16",
    n: int = 27,
    shard: int = 5,
    normalize: bool = True,
    shards: list[int] | None = None,
    seed: int = 0,
    size: tuple[int, int] = (8, 6),
    codec: str = "zstd",
    name: str | None = None,
    retired: list[int] | None = None,
) -> Made:
    """A store of random samples: random pixels, labels in 0..2, written shard by shard."""
    h, w = size
    layout = StoreLayout(
        n_samples=n,
        channels=3,
        height=h,
        width=w,
        dtype=dtype,
        shard_size=shard,
        compression=Compression(codec),
    )
    attrs = {
        "classes": ["cat", "dog", "eel"],
        "config": {"transform": {"normalize": normalize and dtype != "uint8"}},
        "stats": {"channels": ["R", "G", "B"], "mean": MEAN, "std": STD},
    }
    path = root / (name or f"{dtype}-{normalize}-{codec}.zarr")
    create_store(path, layout, attrs=attrs, paths=["p"])
    rng = np.random.default_rng(seed)
    pixels = rng.random((n, 3, h, w))
    if dtype == "uint8":
        stored = rng.integers(0, 256, size=(n, 3, h, w), dtype=np.uint8)
        pixels = stored / 255.0
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
    if retired:
        import zarr

        live = np.asarray(zarr.open_group(path, mode="r")["live"][:])
        live[retired] = False
        write_live(path, live)
    return Made(path, pixels, stored, labels, layout)


def shard_file(path: Path, index: int, array: str = "images") -> Path:
    """The file of shard ``index`` of ``array`` in a local store (Zarr v3 default keys)."""
    key = "c/" + "/".join([str(index)] + (["0", "0", "0"] if array == "images" else []))
    return path / array / key
