"""Shard-ordered batches: shuffle shards and the rows within them, per epoch.

A store is read fastest one whole shard at a time (one object, one decode);
a uniformly shuffled order touches a different shard for every sample. FFCV's
"quasi-random" order is the usual compromise, and :class:`ShardBatchSampler`
is that order for a :class:`~pipeline.reader.ShardDataset`:

1. the shards are shuffled (per epoch), and grouped ``mix`` at a time into
   pools;
2. the rows of each pool are shuffled together; the pools are concatenated
   and cut into batches of ``batch_size`` (a batch may straddle two pools);
3. with ``num_workers = W > 1`` the batches are cut into ``W`` contiguous
   runs and interleaved, so that the ``DataLoader`` (which hands batch ``j``
   to worker ``j mod W``) gives each worker one contiguous run: a worker reads
   each of its shards once and serves its rows from its cache.

Every batch carries its epoch (:class:`EpochBatch`), which the dataset uses
to seed its read-time augmentation, so ``set_epoch`` reaches the worker
processes even when they are persistent.

Convention: a store is written in source order (sorted paths, so by class
folder), so one shard often holds few classes; ``mix > 1`` puts rows of more
shards in each batch, at the price of ``2 * mix`` cached shards per worker.

Example:
    >>> import tempfile, numpy as np
    >>> from pipeline.store import StoreLayout, create_store, write_shard
    >>> from pipeline.reader import ShardDataset
    >>> path = tempfile.mkdtemp() + "/ds.zarr"
    >>> layout = StoreLayout(n_samples=10, channels=1, height=2, width=2, dtype="uint8",
    ...                      shard_size=4)
    >>> create_store(path, layout, attrs={}, paths=["x.png"])
    >>> for i in range(3):
    ...     n = len(layout.shard_rows(i))
    ...     _ = write_shard(path, i, images=np.zeros((n, 1, 2, 2), np.uint8),
    ...                     labels=np.zeros(n, int), source_index=np.zeros(n, int),
    ...                     copy_index=np.zeros(n, int))
    >>> sampler = ShardBatchSampler(ShardDataset(path), 3, shuffle=False)
    >>> [list(b) for b in sampler], len(sampler)
    ([[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]], 4)
    >>> sampler.set_epoch(1)
    >>> sorted(i for b in sampler for i in b), next(iter(sampler)).epoch
    ([0, 1, 2, 3, 4, 5, 6, 7, 8, 9], 1)
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import numpy as np
from torch.utils.data import Sampler

from pipeline.errors import InvalidArgumentError

__all__ = ["EpochBatch", "ShardBatchSampler", "ShardedDataset"]


class ShardedDataset(Protocol):
    """What the sampler needs of a dataset: its size, its shards, its cache."""

    @property
    def cache_shards(self) -> int:
        """Whole shards the dataset keeps decoded per process."""
        ...  # pragma: no cover

    def __len__(self) -> int: ...  # pragma: no cover

    def shard_groups(self) -> list[np.ndarray]:
        """Dataset indices of each shard's served rows, shard by shard."""
        ...  # pragma: no cover


class EpochBatch(list[int]):
    """A batch of dataset indices that knows its epoch (a ``list`` of ``int``).

    Attributes:
        epoch: the epoch the batch belongs to (the sampler's at iteration).

    Example:
        >>> b = EpochBatch([4, 2], epoch=3)
        >>> b, b.epoch
        ([4, 2], 3)
    """

    def __init__(self, indices: Sequence[int] = (), *, epoch: int = 0) -> None:
        super().__init__(indices)
        self.epoch = epoch

    def __reduce__(self) -> tuple[Any, ...]:  # pickled to DataLoader workers
        return (_epoch_batch, (list(self), self.epoch))


def _epoch_batch(indices: list[int], epoch: int) -> EpochBatch:
    return EpochBatch(indices, epoch=epoch)


def _check_int(value: Any, name: str, low: int) -> int:
    if not isinstance(value, int | np.integer) or isinstance(value, bool) or value < low:
        raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


class ShardBatchSampler(Sampler[list[int]]):
    """Batches of dataset indices in shard order, shuffled per epoch (see the module docstring).

    Pass it as ``DataLoader(dataset, batch_sampler=sampler, num_workers=W)``
    with the same ``W`` (or use :class:`~pipeline.reader.ShardLoader`, which
    does), and call :meth:`set_epoch` before each epoch.

    Args:
        dataset: a :class:`~pipeline.reader.ShardDataset`.
        batch_size: indices per batch, ``>= 1``.
        shuffle: shuffle shards and rows (else the row order of the store).
        seed: the sampler's seed; the order of epoch ``e`` depends only on
            ``(seed, e)``.
        drop_last: drop the last batch when it is shorter than ``batch_size``.
        num_workers: the ``DataLoader``'s ``num_workers``, so each worker
            gets contiguous batches (0 or 1: no interleaving).
        mix: shards whose rows are shuffled together (``>= 1``); the dataset
            must cache ``2 * mix`` shards (its ``cache_shards``).

    Raises:
        InvalidArgumentError: a bad argument, or ``cache_shards < 2 * mix``.
    """

    def __init__(
        self,
        dataset: ShardedDataset,
        batch_size: int,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_workers: int = 0,
        mix: int = 1,
    ) -> None:
        self.batch_size = _check_int(batch_size, "batch_size", 1)
        self.num_workers = _check_int(num_workers, "num_workers", 0)
        self.mix = _check_int(mix, "mix", 1)
        self.seed = _check_int(seed, "seed", 0)
        if not isinstance(shuffle, bool) or not isinstance(drop_last, bool):
            raise InvalidArgumentError(
                f"shuffle and drop_last must be bools, got {shuffle!r} and {drop_last!r}"
            )
        cache = getattr(dataset, "cache_shards", None)
        if mix > 1 and (not isinstance(cache, int) or cache < 2 * mix):
            raise InvalidArgumentError(
                f"mix={mix} needs a dataset that caches >= {2 * mix} shards "
                f"(ShardDataset(cache_shards={2 * mix})), got cache_shards={cache!r}"
            )
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.groups = [g for g in dataset.shard_groups() if len(g)]
        self.n = int(sum(len(g) for g in self.groups))
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Use the order of ``epoch`` from the next iteration on (``>= 0``)."""
        self.epoch = _check_int(epoch, "epoch", 0)

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.batch_size
        return -(-self.n // self.batch_size)

    def order(self) -> np.ndarray:
        """Every dataset index of the current epoch, in the order batches are cut from."""
        if not self.groups:
            return np.zeros(0, dtype=np.int64)
        if not self.shuffle:
            return np.concatenate(self.groups)
        rng = np.random.default_rng([self.seed, self.epoch])
        shards = rng.permutation(len(self.groups))
        pools = []
        for start in range(0, len(shards), self.mix):
            pool = np.concatenate([self.groups[i] for i in shards[start : start + self.mix]])
            pools.append(rng.permutation(pool))
        return np.concatenate(pools)

    def batches(self) -> list[np.ndarray]:
        """The current epoch's batches, in the order the ``DataLoader`` receives them."""
        order = self.order()
        batches = [order[i : i + self.batch_size] for i in range(0, len(order), self.batch_size)]
        if self.drop_last and batches and len(batches[-1]) < self.batch_size:
            batches.pop()
        workers = self.num_workers
        if workers <= 1 or len(batches) <= 1:
            return batches
        # W contiguous runs (the first ones one batch longer), interleaved: the DataLoader
        # hands batch j to worker j mod W, so worker w receives run w in order.
        q, r = divmod(len(batches), workers)
        runs, start = [], 0
        for w in range(workers):
            size = q + (1 if w < r else 0)
            runs.append(batches[start : start + size])
            start += size
        return [
            runs[w][k]
            for k in range(q + (1 if r else 0))
            for w in range(workers)
            if k < len(runs[w])
        ]

    def __iter__(self) -> Iterator[list[int]]:
        epoch = self.epoch
        for batch in self.batches():
            yield EpochBatch(batch.tolist(), epoch=epoch)
