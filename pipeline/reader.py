"""Reading a store back for training: a torch ``Dataset``, a shard-ordered loader, a shard iterator.

Three ways in, one pipeline underneath (read whole shards, verify, convert,
augment):

- :class:`ShardDataset`: a map-style ``torch.utils.data.Dataset`` of
  ``(image, label)``; random access in any order, and ``__getitems__`` for a
  whole batch. It works with ``DataLoader(num_workers>0)``: it holds no open
  Zarr handle when pickled and opens the store lazily, once per process.
- :class:`ShardLoader`: the fast path for training, the way FFCV's ``Loader``
  and DALI's iterators are used: a ``DataLoader`` whose workers read whole
  shards in a shard-ordered shuffle (:class:`~pipeline.sampler.ShardBatchSampler`)
  and return compact stored batches, and whose conversion and augmentation
  run batched on the dataset's ``device`` in the main process (on the CPU
  they run in the workers instead, in parallel). Yields ``(images, labels)``
  batches on the device; :meth:`ShardLoader.set_epoch` once per epoch.
- :func:`iter_shards`: every live row once, one whole shard at a time, with
  the next shards read in background threads while the caller works.

Conventions:

- Output scale. By default samples come back on the store's scale: float
  stores as stored (normalized when the run normalized), uint8 stores as
  ``x / 255`` in [0, 1], the image convention everywhere in imageprep.
  ``normalize=True`` returns ``(x - mean) / std`` with the store's stats
  whatever the store (a uint8 store is normalized at read time with
  :func:`ops.normalize_`, the run's own kernel); ``normalize=False`` or
  ``denormalize=True`` returns [0, 1] pixels (``x * std + mean`` for a
  normalized store). Computed in float32 or wider, then cast to ``dtype``.
- Integrity. The first time a process reads a shard, the bytes read are
  checked against the shard's record (their CRC32C; where there is none, or
  they differ, the SHA-256 of the values, :func:`pipeline.store.shard_digest`);
  a mismatch raises :class:`~pipeline.errors.StoreError` naming the store,
  the shard and what mismatched (:mod:`pipeline.shard_source`).
  ``verify=False`` skips the check.
- Reads. A shard is read whole on its first touch and served from a small
  per-process cache (``cache_shards``); scattered single rows of a shard that
  is already verified and no longer cached are read one inner chunk each.
- Augmentation at read time (``augment=[...]``, steps as in the run config's
  ``transform.augment``, without ``random_resized_crop``): per epoch, batched,
  on ``device``; the sample in store row ``r`` at epoch ``e`` draws from a
  generator seeded by ``(seed, e, r)`` (:func:`~pipeline.read_transform.read_seed`),
  so worker count, batch size and order do not change its values. The epoch
  is the one of the batch (a :class:`~pipeline.sampler.EpochBatch` from the
  sampler, so persistent workers see it too), else :meth:`ShardDataset.set_epoch`'s.
- A reader serves the ``live`` rows of written shards, in row order. A store
  that was never completely written raises :class:`~pipeline.errors.StoreError`
  naming the missing shards, unless ``allow_partial=True``.

Example:
    >>> import tempfile, numpy as np
    >>> from pipeline.store import StoreLayout, create_store, write_shard
    >>> path = tempfile.mkdtemp() + "/ds.zarr"
    >>> layout = StoreLayout(n_samples=3, channels=1, height=2, width=2, dtype="uint8",
    ...                      shard_size=2)
    >>> attrs = {"classes": ["cat", "dog"], "stats": {"mean": [0.5], "std": [0.5]}}
    >>> create_store(path, layout, attrs=attrs, paths=["x.png"])
    >>> for i, rows in enumerate([2, 1]):
    ...     _ = write_shard(path, i, images=np.full((rows, 1, 2, 2), 255, np.uint8),
    ...                     labels=np.arange(rows), source_index=np.zeros(rows, int),
    ...                     copy_index=np.arange(rows))
    >>> ds = ShardDataset(path)
    >>> len(ds), ds.classes, ds[1][0].shape, ds[1][0].max().item(), ds[1][1]
    (3, ['cat', 'dog'], torch.Size([1, 2, 2]), 1.0, 1)
    >>> ShardDataset(path, normalize=True)[0][0].flatten().tolist()   # (1 - 0.5) / 0.5
    [1.0, 1.0, 1.0, 1.0]
    >>> [tuple(x.shape) for x, _ in iter_shards(path)]
    [(2, 1, 2, 2), (1, 1, 2, 2)]
    >>> [tuple(y.tolist()) for _, y in ShardLoader(ds, 2, shuffle=False)]
    [(0, 1), (0,)]
"""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, NamedTuple

import numpy as np
import torch
import zarr
from torch.utils.data import DataLoader, Dataset, get_worker_info

from pipeline.errors import InvalidArgumentError, StoreError
from pipeline.read_transform import ReadTransform, read_seed
from pipeline.sampler import EpochBatch, ShardBatchSampler
from pipeline.shard_source import Shard, ShardSource, store_name
from pipeline.store import (
    ShardRecord,
    StoreLayout,
    format_ranges,
    get_array,
    open_group,
    read_array,
    read_attrs,
    read_layout,
    read_records,
)

__all__ = [
    "EpochBatch",
    "ReadTransform",
    "ShardBatchSampler",
    "ShardDataset",
    "ShardLoader",
    "iter_shards",
    "read_seed",
    "readable_rows",
]

#: A shard is read whole (and cached) when a batch wants at least 1/WHOLE of its rows.
WHOLE = 4


def _output_scale(denormalize: bool, normalize: bool | None) -> bool | None:
    if not isinstance(denormalize, bool):
        raise InvalidArgumentError(f"denormalize must be True or False, got {denormalize!r}")
    if denormalize and normalize:
        raise InvalidArgumentError(
            "denormalize=True and normalize=True ask for both scales; give one"
        )
    return False if denormalize else normalize


def _check_epoch(epoch: Any) -> int:
    if not isinstance(epoch, int | np.integer) or isinstance(epoch, bool) or epoch < 0:
        raise InvalidArgumentError(f"epoch must be an integer >= 0, got {epoch!r}")
    return int(epoch)


class ShardDataset(Dataset[tuple[torch.Tensor, int]]):
    """A ``Dataset`` of ``(image, label)`` read from a store (see the module docstring).

    Args:
        path: the store (a folder, or what :func:`pipeline.store.open_group` opens).
        denormalize: return [0, 1] pixels (same as ``normalize=False``).
        normalize: ``None`` the store's scale, ``True`` normalized with the
            store's stats (also for uint8 stores), ``False`` [0, 1] pixels.
        dtype: floating dtype of the returned images (float32 by default).
        allow_partial: open a store with unwritten shards, exposing the done
            shards' rows only.
        verify: check each shard against its record on its first read in a process.
        augment: read-time augmentation steps, as in ``transform.augment``.
        seed: the augmentation seed (also the default seed of :meth:`loader`).
        device: where conversion and augmentation run (``"cpu"``, ``"cuda"``,
            ``"cuda:N"``, ``"auto"``); the returned tensors live there.
        cache_shards: whole shards kept decoded per process (``>= 0``).

    Raises:
        StoreError: not an imageprep store, unwritten shards and not
            ``allow_partial``, or stats missing for the asked scale.
        InvalidArgumentError: a bad argument (``dtype``, ``augment``, ``device``, ...).
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        denormalize: bool = False,
        normalize: bool | None = None,
        dtype: torch.dtype = torch.float32,
        allow_partial: bool = False,
        verify: bool = True,
        augment: Sequence[Any] = (),
        seed: int = 0,
        device: str | torch.device = "cpu",
        cache_shards: int = 2,
    ) -> None:
        scale = _output_scale(denormalize, normalize)
        self.path = path
        group = open_group(path)
        self.meta = read_attrs(group)
        self.layout = read_layout(group)
        self.denormalize = denormalize
        self.transform = ReadTransform(
            self.meta,
            self.layout.dtype,
            self.layout.channels,
            normalize=scale,
            dtype=dtype,
            augment=augment,
            seed=seed,
            device=device,
            size=(self.layout.height, self.layout.width),
        )
        records = read_records(group)
        self._source = ShardSource(
            path, self.layout, verify=verify, cache_shards=cache_shards, records=records
        )
        # dataset index -> store row
        self._rows = _readable_rows(group, self.layout, records, allow_partial=allow_partial)
        self._labels = read_array(get_array(group, "labels"))[self._rows].astype(np.int64)
        self.epoch = 0
        self._last_row: int | None = None  # the last row of the last row-by-row read

    # -- metadata

    @property
    def classes(self) -> list[str]:
        """Class names; label ``i`` is ``classes[i]`` (empty when unlabelled)."""
        return list(self.meta.get("classes") or [])

    @property
    def stats(self) -> dict[str, Any]:
        """The stats JSON the samples were normalized with."""
        return dict(self.meta.get("stats") or {})

    @property
    def normalized(self) -> bool:
        """True when the stored samples are ``(x - mean) / std``."""
        return self.transform.stored_normalized

    @property
    def labels(self) -> np.ndarray:
        """Labels of every sample, in dataset order (a copy).

        Read when the dataset was opened; a shard's labels are checked
        against its record when the shard is first read.
        """
        return self._labels.copy()

    @property
    def seed(self) -> int:
        """The augmentation seed."""
        return self.transform.seed

    @property
    def device(self) -> torch.device:
        """Where conversion and augmentation run."""
        return self.transform.device

    @property
    def verify(self) -> bool:
        """Whether shards are checked against their records on first read."""
        return self._source.verify

    @property
    def cache_shards(self) -> int:
        """Whole shards kept decoded per process."""
        return self._source.cache_shards

    def __len__(self) -> int:
        return int(self._rows.shape[0])

    def set_epoch(self, epoch: int) -> None:
        """Augment with the randomness of ``epoch`` (``>= 0``) from now on.

        Batches from a :class:`~pipeline.sampler.ShardBatchSampler` carry
        their own epoch, which wins; this one serves ``ds[i]`` and other
        samplers (in ``DataLoader`` workers only when they are not persistent:
        the workers get a copy of the dataset when an epoch's iterator starts).
        """
        self.epoch = _check_epoch(epoch)

    def rows(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """Return the store rows of dataset ``indices`` (negative indices count from the end).

        Raises:
            IndexError: an index is out of range.
        """
        idx = self._indices(indices)
        rows: np.ndarray = self._rows[idx]
        return rows

    def _indices(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        n = len(self)
        bad = (idx < -n) | (idx >= n)
        if bad.any():
            raise IndexError(f"index {int(idx[bad][0])} is out of range for {n} samples")
        return np.where(idx < 0, idx + n, idx)

    def shard_groups(self) -> list[np.ndarray]:
        """Dataset indices of each shard's served rows, for every shard in index order."""
        shard_of = self._rows // self.layout.shard_size
        bounds = np.searchsorted(shard_of, np.arange(self.layout.n_shards + 1))
        return [np.arange(bounds[i], bounds[i + 1]) for i in range(self.layout.n_shards)]

    # -- reading

    def read_stored(
        self,
        indices: Sequence[int] | np.ndarray,
        *,
        whole: bool = False,
        out: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Read dataset ``indices`` as stored: ``(images, labels, rows)``.

        ``images`` is ``(B, C, H, W)`` in the store's dtype, ``labels`` and
        ``rows`` (store rows) ``(B,)`` int64. Each shard involved is read whole
        (verified on its first read in this process) and cached, unless it is
        verified, not cached, and the batch wants fewer than a ``1/4`` of its
        rows and does not continue where the last row-by-row read stopped
        (sequential access): those rows are read one by one, one byte-range
        read each (random access).
        ``whole=True`` always reads whole shards (shard-ordered batches).

        Args:
            indices: dataset indices (negative ones count from the end).
            whole: always read whole shards.
            out: a C-contiguous ``(B, C, H, W)`` array of the store's dtype to
                fill (e.g. in shared memory), instead of a new one.

        Raises:
            IndexError: an index is out of range.
            StoreError: a shard cannot be read or does not match its record.
            InvalidArgumentError: ``out`` has another shape or dtype.
        """
        idx = self._indices(indices)
        rows = self._rows[idx]
        shape = (len(rows), *self.layout.sample_shape)
        if out is None:
            out = np.empty(shape, dtype=self.layout.dtype)
        elif out.shape != shape or out.dtype != self.layout.dtype or not out.flags.c_contiguous:
            raise InvalidArgumentError(
                f"out must be a C-contiguous {shape} {self.layout.dtype} array, "
                f"got {out.shape} {out.dtype}"
            )
        shard_of = rows // self.layout.shard_size
        shards = dict.fromkeys(shard_of.tolist())
        for shard in shards:
            sel = np.flatnonzero(shard_of == shard) if len(shards) > 1 else slice(None)
            block = self._source.cached(shard)
            if block is None:
                span = self.layout.shard_rows(shard)
                if (
                    whole
                    or not self._source.is_verified(shard)
                    or len(rows[sel]) * WHOLE >= len(span)
                    or self._last_row == int(np.min(rows[sel])) - 1  # sequential access
                ):
                    block = self._whole(shard)
                else:
                    self._last_row = int(np.max(rows[sel]))
                    wanted, inverse = np.unique(rows[sel], return_inverse=True)
                    out[sel] = self._source.read_rows(shard, wanted)[inverse.reshape(-1)]
                    continue
            if isinstance(sel, slice):  # one shard: gather straight into out
                np.take(block.images, rows - block.start, axis=0, out=out)
            else:
                out[sel] = block.images[rows[sel] - block.start]
        return out, self._labels[idx], rows

    def _whole(self, index: int) -> Shard:
        shard = self._source.read(index)
        span = self.layout.shard_rows(index)
        lo, hi = np.searchsorted(self._rows, [span.start, span.stop])
        if not np.array_equal(shard.labels[self._rows[lo:hi] - span.start], self._labels[lo:hi]):
            raise StoreError(
                f"{store_name(self.path)}: shard {index} (rows {span.start}-{span.stop - 1}): "
                "its labels changed since the dataset was opened; open it again"
            )
        return shard

    def _check_process(self) -> None:
        if self.device.type != "cpu" and get_worker_info() is not None:
            raise InvalidArgumentError(
                f"device={str(self.device)!r} runs the conversion and augmentation where the "
                "dataset is called, and DataLoader workers cannot use CUDA after fork: use "
                "ShardLoader (workers read, the main process augments on the device), or "
                "num_workers=0"
            )

    def get_batch(
        self, indices: Sequence[int] | np.ndarray, *, epoch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Read, convert and augment dataset ``indices`` as one batch.

        Returns:
            ``(images (B, C, H, W), labels (B,) int64)``, images on ``device``,
            labels on the CPU.

        Raises:
            IndexError: an index is out of range.
            StoreError: a shard cannot be read or does not match its record.
        """
        self._check_process()
        epoch = _check_epoch(getattr(indices, "epoch", self.epoch) if epoch is None else epoch)
        stored, labels, rows = self.read_stored(indices, whole=isinstance(indices, EpochBatch))
        images = self.transform(torch.from_numpy(stored), rows=rows, epoch=epoch)
        return images, torch.from_numpy(labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.get_batch([index])
        return images[0], int(labels[0])

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """Read a batch at once (the ``DataLoader`` calls this with each batch of indices)."""
        if len(indices) == 0:
            return []
        images, labels = self.get_batch(indices)
        return list(zip(images.unbind(0), labels.tolist(), strict=True))

    def loader(self, batch_size: int, **kwargs: Any) -> ShardLoader:
        """A :class:`ShardLoader` over this dataset (same arguments)."""
        return ShardLoader(self, batch_size, **kwargs)

    def __repr__(self) -> str:
        return (
            f"ShardDataset({store_name(self.path)!r}, samples={len(self)}, "
            f"shape={self.layout.sample_shape}, dtype={self.layout.dtype}, "
            f"classes={len(self.classes)}, verify={self.verify}, transform={self.transform!r})"
        )


class StoredBatch(NamedTuple):
    """A batch as the loader's workers return it.

    Attributes:
        images: ``(B, C, H, W)``: stored values, or finished ones when ``finished``.
        labels: ``(B,)`` int64.
        rows: ``(B,)`` int64 store rows.
        epoch: the batch's epoch.
        finished: True when the workers already converted (and augmented) it.
    """

    images: torch.Tensor
    labels: np.ndarray
    rows: np.ndarray
    epoch: int
    finished: bool


def _empty(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A new tensor; in shared memory inside a ``DataLoader`` worker.

    A worker's result crosses to the main process through shared memory; a
    batch made there from the start crosses without a copy (as
    ``default_collate`` makes its batches).
    """
    if get_worker_info() is None:
        return torch.empty(shape, dtype=dtype)
    try:
        numel = int(np.prod(shape))
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(numel)
        return torch.empty(0, dtype=dtype).new(storage).view(shape)
    except (AttributeError, RuntimeError, TypeError):  # another torch: the public way
        return torch.empty(shape, dtype=dtype).share_memory_()


class _WorkerStage(Dataset[StoredBatch]):
    """What the loader's workers do: read whole shards, and finish on the CPU."""

    def __init__(self, dataset: ShardDataset, *, finish: bool) -> None:
        self.dataset = dataset
        self.finish = finish

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitems__(self, indices: Sequence[int]) -> StoredBatch:
        ds = self.dataset
        epoch = int(getattr(indices, "epoch", ds.epoch))
        shape = (len(indices), *ds.layout.sample_shape)
        if self.finish:
            stored, labels, rows = ds.read_stored(indices, whole=True)
            images = ds.transform(
                torch.from_numpy(stored),
                rows=rows,
                epoch=epoch,
                out=_empty(shape, ds.transform.dtype),
            )
        else:
            images = _empty(shape, _TORCH_DTYPES[ds.layout.dtype])
            _, labels, rows = ds.read_stored(indices, whole=True, out=images.numpy())
        return StoredBatch(images, labels, rows, epoch, self.finish)

    def __getitem__(self, index: int) -> StoredBatch:  # pragma: no cover - batches only
        return self.__getitems__([index])


_TORCH_DTYPES = {"uint8": torch.uint8, "float16": torch.float16, "float32": torch.float32}


def _as_is(batch: Any) -> Any:
    return batch


class ShardLoader:
    """Shard-ordered batches of a :class:`ShardDataset`, finished on its device.

    The FFCV/DALI-style loop: workers (a ``DataLoader`` with a
    :class:`~pipeline.sampler.ShardBatchSampler`) read whole shards, verify
    them and gather each batch in the store's dtype (uint8 or float16: the
    compact bytes cross the process boundary); the main process moves the
    batch to the dataset's ``device`` and converts, augments and normalizes it
    there. On a CPU device the workers do that part too, in parallel.

    Args:
        dataset: the :class:`ShardDataset` (its ``augment``, ``seed``,
            ``device``, scale and dtype apply).
        batch_size: samples per batch.
        shuffle: shard-ordered shuffle per epoch (else row order).
        seed: the order's seed (default: the dataset's seed).
        drop_last: drop a last, shorter batch.
        num_workers: ``DataLoader`` worker processes.
        mix: shards shuffled together (see :class:`~pipeline.sampler.ShardBatchSampler`).
        pin_memory: pin the stored batches (default: when the device is CUDA).
        **dataloader: more ``DataLoader`` arguments (``persistent_workers``,
            ``prefetch_factor``, ``multiprocessing_context``, ``timeout``, ...).

    Raises:
        InvalidArgumentError: a bad argument.

    Yields:
        ``(images (B, C, H, W), labels (B,) int64)``, both on the dataset's device.
    """

    def __init__(
        self,
        dataset: ShardDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int | None = None,
        drop_last: bool = False,
        num_workers: int = 0,
        mix: int = 1,
        pin_memory: bool | None = None,
        **dataloader: Any,
    ) -> None:
        if not isinstance(dataset, ShardDataset):
            raise InvalidArgumentError(
                f"dataset must be a ShardDataset, got {type(dataset).__name__}"
            )
        for key in ("batch_sampler", "sampler", "batch_size", "collate_fn", "shuffle"):
            if key in dataloader:
                raise InvalidArgumentError(f"{key} is set by ShardLoader, got {key}=...")
        self.dataset = dataset
        self.sampler = ShardBatchSampler(
            dataset,
            batch_size,
            shuffle=shuffle,
            seed=dataset.seed if seed is None else seed,
            drop_last=drop_last,
            num_workers=num_workers,
            mix=mix,
        )
        on_device = dataset.device.type != "cpu"
        self._loader = DataLoader(
            _WorkerStage(dataset, finish=not on_device),
            batch_sampler=self.sampler,
            num_workers=num_workers,
            collate_fn=_as_is,
            pin_memory=on_device if pin_memory is None else pin_memory,
            **dataloader,
        )

    @property
    def epoch(self) -> int:
        """The epoch the next iteration serves."""
        return self.sampler.epoch

    def set_epoch(self, epoch: int) -> None:
        """Serve ``epoch``'s order and augmentation from the next iteration on."""
        self.sampler.set_epoch(epoch)
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        ds = self.dataset
        device = ds.device
        it = iter(self._loader)
        complete = False
        try:
            for batch in it:
                labels = torch.from_numpy(batch.labels).to(device, non_blocking=True)
                if batch.finished:
                    yield batch.images, labels
                else:
                    yield ds.transform(batch.images, rows=batch.rows, epoch=batch.epoch), labels
            complete = True
        finally:
            if not complete and not self._loader.persistent_workers:
                # an error or a break: stop the workers now, not when the collector frees the
                # iterator (a traceback that holds it keeps them alive until then)
                shutdown = getattr(it, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()


def readable_rows(group: zarr.Group, layout: StoreLayout, *, allow_partial: bool) -> np.ndarray:
    """The store rows a reader serves, in row order: the ``live`` rows of done shards.

    A row is live once its shard is written, until its source file is removed
    or changed (an update retires it). A store that was never completely
    written is refused unless ``allow_partial``; a finished store that an
    update is extending serves its live rows meanwhile.

    Raises:
        StoreError: the store was never completely written, and not ``allow_partial``.
    """
    return _readable_rows(group, layout, read_records(group), allow_partial=allow_partial)


def _readable_rows(
    group: zarr.Group, layout: StoreLayout, records: list[ShardRecord], *, allow_partial: bool
) -> np.ndarray:
    done = np.array([r.done for r in records], dtype=bool)
    if not allow_partial and not read_attrs(group).get("complete"):
        missing = np.flatnonzero(~done).tolist()
        if missing:
            raise StoreError(
                f"{group.store}: {len(missing)} of {layout.n_shards} shards are not written "
                f"({format_ranges(missing)}); finish the run, or pass allow_partial=True to "
                "read the written ones"
            )
    live = read_array(get_array(group, "live")).astype(bool)
    rows = np.flatnonzero(live).astype(np.int64)
    if len(done):
        rows = rows[done[rows // layout.shard_size]]
    return rows


def _check_prefetch(prefetch: Any) -> int:
    if not isinstance(prefetch, int) or isinstance(prefetch, bool) or prefetch < 0:
        raise InvalidArgumentError(f"prefetch must be an integer >= 0, got {prefetch!r}")
    return prefetch


def iter_shards(
    path: str | os.PathLike[str],
    *,
    denormalize: bool = False,
    normalize: bool | None = None,
    dtype: torch.dtype = torch.float32,
    allow_partial: bool = False,
    verify: bool = True,
    augment: Sequence[Any] = (),
    seed: int = 0,
    epoch: int = 0,
    device: str | torch.device = "cpu",
    prefetch: int = 2,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(images, labels)`` one whole shard at a time, in row order.

    ``images`` is ``(rows, C, H, W)`` on ``device`` (converted and augmented
    as :class:`ShardDataset` does), ``labels`` is ``(rows,)`` int64 on the CPU:
    the shard's live rows (:func:`readable_rows`). Each shard is read once
    (one Zarr read per array), checked against its record unless
    ``verify=False``; background threads (up to one per core) read up to
    ``prefetch`` shards ahead while the caller works on the current one
    (``prefetch=0`` reads in the caller's thread); the shards come in row
    order whichever thread read them. The arguments are checked when it is called, the
    shards are read as it is iterated.

    Args:
        path: the store.
        denormalize: as :class:`ShardDataset`.
        normalize: as :class:`ShardDataset`.
        dtype: as :class:`ShardDataset`.
        allow_partial: as :class:`ShardDataset`.
        verify: as :class:`ShardDataset`.
        augment: as :class:`ShardDataset`.
        seed: as :class:`ShardDataset`.
        epoch: the epoch of the augmentation's randomness.
        device: as :class:`ShardDataset`.
        prefetch: shards read ahead (``>= 0``); at most ``prefetch`` shards are
            in flight beside the one the caller holds.

    Raises:
        StoreError: not an imageprep store, or unwritten shards and not
            ``allow_partial``; while iterating, a shard that cannot be read or
            does not match its record.
        InvalidArgumentError: a bad argument.
    """
    scale = _output_scale(denormalize, normalize)
    epoch = _check_epoch(epoch)
    prefetch = _check_prefetch(prefetch)
    group = open_group(path)
    meta = read_attrs(group)
    layout = read_layout(group)
    transform = ReadTransform(
        meta,
        layout.dtype,
        layout.channels,
        normalize=scale,
        dtype=dtype,
        augment=augment,
        seed=seed,
        device=device,
        size=(layout.height, layout.width),
    )
    records = read_records(group)
    rows = _readable_rows(group, layout, records, allow_partial=allow_partial)
    source = ShardSource(path, layout, verify=verify, cache_shards=0, records=records)
    bounds = np.searchsorted(rows // layout.shard_size, np.arange(layout.n_shards + 1))
    shards = [i for i in range(layout.n_shards) if bounds[i + 1] > bounds[i]]

    def load(index: int) -> tuple[torch.Tensor, torch.Tensor, np.ndarray]:
        shard = source.read(index)
        wanted = rows[bounds[index] : bounds[index + 1]]
        keep = wanted - shard.start
        images, labels = shard.images, shard.labels
        if len(keep) != len(images):  # retired rows or holes in this shard
            images, labels = images[keep], labels[keep]
        return torch.from_numpy(images), torch.from_numpy(labels), wanted

    return _iterate(shards, load, transform, epoch, prefetch)


def _iterate(
    shards: list[int],
    load: Any,
    transform: ReadTransform,
    epoch: int,
    prefetch: int,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    if prefetch == 0:
        for index in shards:
            images, labels, rows = load(index)
            yield transform(images, rows=rows, epoch=epoch), labels
        return
    # shards read (and decoded) side by side, up to one per core: the codecs release the
    # GIL (a zstd 3 store reads 1.19x as fast with two threads as with one, on 2 cores)
    threads = max(1, min(prefetch, os.cpu_count() or 1))
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="imageprep-read")
    pending: deque[Future[Any]] = deque()
    todo = iter(shards)
    try:
        for index in todo:
            pending.append(pool.submit(load, index))
            if len(pending) >= prefetch:
                break
        while pending:
            images, labels, rows = pending.popleft().result()
            nxt = next(todo, None)
            if nxt is not None:
                pending.append(pool.submit(load, nxt))
            yield transform(images, rows=rows, epoch=epoch), labels
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
