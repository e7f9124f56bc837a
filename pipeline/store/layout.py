"""The shape of a store: samples, channels, size, dtype, rows per shard, compression.

The rows are laid out in *segments*: the first run writes one, and each
incremental update appends one that starts at the next shard boundary, so the
shards already written are never touched. Shard ``i`` covers rows
``[i S, (i + 1) S)`` cut at the end of its segment; the rows between a
segment's end and the next shard boundary are holes (never written, never
live).

Example:
    >>> layout = StoreLayout(n_samples=10, channels=3, height=8, width=8, dtype="uint8",
    ...                      shard_size=4)
    >>> layout.n_shards, layout.shard_rows(2), layout.sample_shape
    (3, range(8, 10), (3, 8, 8))
    >>> grown = layout.extended(5)  # an update appends 5 rows from row 12
    >>> grown.segments, grown.n_samples, grown.n_shards, grown.shard_rows(2), grown.shard_rows(4)
    (((0, 10), (12, 5)), 17, 5, range(8, 10), range(16, 17))
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.errors import InvalidArgumentError
from pipeline.store.codecs import Compression

__all__ = ["DTYPES", "StoreLayout"]

#: The sample dtypes a store may hold.
DTYPES = ("float16", "float32", "uint8")


@dataclass(frozen=True)
class StoreLayout:
    """Shape, dtype, sharding and compression of a store (plain values only).

    Attributes:
        n_samples: number of samples ``N`` (source images times copies), >= 0.
        channels: ``C``, >= 1.
        height: ``H``, >= 1.
        width: ``W``, >= 1.
        dtype: ``"float16"``, ``"float32"`` or ``"uint8"``.
        shard_size: rows per shard ``S``, >= 1; the last shard may be shorter.
        compression: the codec of every array (a :class:`Compression`, or any
            object with ``codec`` and ``level``, converted).
    """

    n_samples: int
    channels: int
    height: int
    width: int
    dtype: str
    shard_size: int
    compression: Compression = field(default_factory=Compression)
    segments: tuple[tuple[int, int], ...] = ()

    def __post_init__(self) -> None:
        for name, low in (
            ("n_samples", 0),
            ("channels", 1),
            ("height", 1),
            ("width", 1),
            ("shard_size", 1),
        ):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise InvalidArgumentError(f"{name} must be an integer >= {low}, got {value!r}")
        if self.dtype not in DTYPES:
            raise InvalidArgumentError(
                f"dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}"
            )
        if not isinstance(self.compression, Compression):
            if not (hasattr(self.compression, "codec") and hasattr(self.compression, "level")):
                raise InvalidArgumentError(
                    "compression must be a Compression (codec, level), "
                    f"got {type(self.compression).__name__}"
                )
            object.__setattr__(self, "compression", Compression.from_json(self.compression))
        if not self.segments:
            object.__setattr__(self, "segments", ((0, self.n_samples),))
        segments = tuple((int(a), int(b)) for a, b in self.segments)
        object.__setattr__(self, "segments", segments)
        end = 0
        for i, (start, rows) in enumerate(segments):
            expected = -(-end // self.shard_size) * self.shard_size
            if start != expected or rows < 0 or (rows == 0 and i > 0):
                raise InvalidArgumentError(
                    f"segments must start at the shard boundary after the previous one "
                    f"and hold rows > 0, got {list(map(list, segments))}"
                )
            end = start + rows
        if end != self.n_samples:
            raise InvalidArgumentError(
                f"n_samples must be the end of the last segment ({end}), got {self.n_samples}"
            )

    @property
    def n_shards(self) -> int:
        """Number of shards, ``ceil(N / S)``."""
        return -(-self.n_samples // self.shard_size)

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return (self.channels, self.height, self.width)

    @property
    def sample_bytes(self) -> int:
        """Bytes of one decoded sample."""
        return self.channels * self.height * self.width * np.dtype(self.dtype).itemsize

    def shard_rows(self, index: int) -> range:
        """Rows of shard ``index``: ``range(index * S, min((index + 1) * S, N))``.

        Raises:
            InvalidArgumentError: ``index`` is not in ``[0, n_shards)``.
        """
        if not isinstance(index, int | np.integer) or not 0 <= index < self.n_shards:
            raise InvalidArgumentError(
                f"index must be a shard index in [0, {self.n_shards}), got {index!r}"
            )
        start = int(index) * self.shard_size
        for first, rows in self.segments:
            if first <= start < first + rows:
                return range(start, min(start + self.shard_size, first + rows))
        raise AssertionError("unreachable: segments cover every shard")  # pragma: no cover

    def extended(self, rows: int) -> StoreLayout:
        """This layout with a segment of ``rows`` more rows, from the next shard boundary.

        Raises:
            InvalidArgumentError: ``rows`` is not a positive integer.
        """
        if not isinstance(rows, int) or isinstance(rows, bool) or rows < 1:
            raise InvalidArgumentError(f"rows must be an integer >= 1, got {rows!r}")
        start = self.n_shards * self.shard_size
        segments = self.segments if self.n_samples else ()
        return StoreLayout(
            n_samples=start + rows,
            channels=self.channels,
            height=self.height,
            width=self.width,
            dtype=self.dtype,
            shard_size=self.shard_size,
            compression=self.compression,
            segments=(*segments, (start, rows)),
        )

    def rows_of(self, shards: range | list[int]) -> int:
        """How many rows the given shards hold."""
        return sum(len(self.shard_rows(i)) for i in shards)

    def to_json(self) -> dict[str, Any]:
        """Return the layout as a JSON-safe dict (stored in the group attribute)."""
        return {
            "n_samples": self.n_samples,
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "dtype": self.dtype,
            "shard_size": self.shard_size,
            "compression": self.compression.to_json(),
            "segments": [list(seg) for seg in self.segments],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> StoreLayout:
        """Inverse of :meth:`to_json`."""
        fields = dict(data)
        fields["compression"] = Compression.from_json(fields.get("compression", {}))
        fields["segments"] = tuple(tuple(seg) for seg in fields.get("segments", ()))
        return cls(**fields)
